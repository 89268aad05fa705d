"""The torch curve generator: tiny transformers trained on exact-answer tasks.

Names load lazily, so ``import metastop.generate`` does not import torch; only the training
code (``RunConfig``, ``train_run``, ``run_sweep`` workers) needs it.

Example:
    >>> from metastop.generate import RunConfig, train_run  # doctest: +SKIP
    >>> train_run(RunConfig(task="sorting", difficulty=4, steps=100, n_evals=5)).values  # doctest: +SKIP
"""

from __future__ import annotations

from metastop._lazy import lazy_exports

_EXPORTS = {
    "TASKS": "tasks", "Example": "tasks", "make_split": "tasks",
    "RunConfig": "train", "RunResult": "train", "train_run": "train",
    "sample_configs": "sweep", "run_sweep": "sweep", "SweepOutcome": "sweep",
    "classify_shape": "shapes", "shape_counts": "shapes", "SHAPES": "shapes",
    "plot_shape_examples": "report", "summary_tables": "report",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
