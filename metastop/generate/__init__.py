"""The torch curve generator: tiny transformers trained on exact-answer tasks.

Each run gives two curves against training tokens, held-out exact match and held-out loss,
and may train under a batch-size lever (fixed, ramp, adaptive) or a freezing lever
(FreezeOut, adaptive) from ``metastop.adapt``.

Names load lazily, so ``import metastop.generate`` does not import torch; only the training
code (``RunConfig``, ``train_run``, ``run_sweep`` workers) needs it.

Example:
    >>> from metastop.generate import RunConfig, train_run  # doctest: +SKIP
    >>> train_run(RunConfig(task="sorting", difficulty=4, steps=100, n_evals=5)).values  # doctest: +SKIP
    >>> RunConfig(task="sorting", difficulty=4, batch_rule="ramp", max_batch_size=64).batch_rule
    'ramp'
"""

from __future__ import annotations

from metastop._lazy import lazy_exports

_EXPORTS = {
    "TASKS": "tasks", "Example": "tasks", "make_split": "tasks",
    "RunConfig": "train", "RunResult": "train", "train_run": "train",
    "LeverEvent": "levers", "BATCH_RULES": "levers", "FREEZE_RULES": "levers",
    "evaluate": "evalset", "LEVERS": "sweep",
    "sample_configs": "sweep", "run_sweep": "sweep", "SweepOutcome": "sweep",
    "classify_shape": "shapes", "shape_counts": "shapes", "SHAPES": "shapes",
    "plot_shape_examples": "report", "summary_tables": "report",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
