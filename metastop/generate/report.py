"""The figure and data-card text that describe a generated curve corpus.

Example:
    >>> from metastop.curves import CurveSet
    >>> curves = read_curves("data/em_curves.parquet")  # doctest: +SKIP
    >>> plot_shape_examples(curves, "data/em_curve_shapes.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ..curves import Curve, CurveSet, atomic_path
from ..errors import ParameterError
from .shapes import SHAPES, classify_shape, shape_counts

logger = logging.getLogger(__name__)


def examples_by_shape(curves: CurveSet, *, per_shape: int) -> dict[str, list[Curve]]:
    """Up to ``per_shape`` curves of each shape: those with the widest range (max - min)."""
    if per_shape < 1:
        raise ParameterError(f"per_shape must be >= 1, got per_shape={per_shape!r}")
    grouped: dict[str, list[Curve]] = {shape: [] for shape in SHAPES}
    for curve in sorted(curves, key=lambda c: (-float(np.ptp(c.values)), c.curve_id)):
        grouped[classify_shape(curve)].append(curve)
    return {shape: members[:per_shape] for shape, members in grouped.items()}


def plot_shape_examples(curves: CurveSet, path: str | Path, *, per_shape: int = 4) -> Path:
    """Save a figure with one panel per shape showing example curves (EM against budget share).

    Uses matplotlib's object API (no pyplot), so no global backend is changed.
    """
    from matplotlib.figure import Figure

    picked = examples_by_shape(curves, per_shape=per_shape)
    counts = shape_counts(curves)
    figure = Figure(figsize=(3.2 * len(SHAPES), 3.0), layout="constrained")
    axes = figure.subplots(1, len(SHAPES), sharey=True)
    for ax, shape in zip(axes, SHAPES):
        for curve in picked[shape]:
            ax.plot(curve.tokens / curve.budget, curve.values, marker=".", markersize=3,
                    linewidth=1, label=f"{curve.task} d{curve.meta.get('difficulty', '?')}")
        ax.set_title(f"{shape} (n={counts[shape]})", fontsize=9)
        ax.set_xlabel("tokens / budget")
        ax.set_ylim(-0.03, 1.03)
        if picked[shape]:
            ax.legend(fontsize=6, loc="best")
    axes[0].set_ylabel("held-out exact match")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format=path.suffix.lstrip(".") or "png")
    logger.info("wrote %s", path)
    return path


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_tables(curves: CurveSet) -> str:
    """Markdown tables: shape counts overall and curves per task x shape."""
    counts = shape_counts(curves)
    total = max(1, len(curves))
    overall = _markdown_table(("shape", "curves", "share"),
                              [(s, counts[s], f"{counts[s] / total:.0%}") for s in SHAPES])
    by_task = Counter((c.task, classify_shape(c)) for c in curves)
    tasks = sorted({c.task for c in curves})
    per_task = _markdown_table(("task", *SHAPES),
                               [(t, *(by_task.get((t, s), 0) for s in SHAPES)) for t in tasks])
    return f"{overall}\n\nBy task:\n\n{per_task}"


_SCHEMA_ROWS = (
    ("`curve_id`", "`<run_id>/em`: one curve per run"),
    ("`run_id`", "`<task>-d<difficulty>-<sha1 of the config>`"),
    ("`task`", "`addition`, `reversal`, `sorting`, `modular`, `copy`, `qa`"),
    ("`metric`, `direction`", "`exact_match`, `maximize`"),
    ("`tokens`", "cumulative training input tokens at the evaluation, counted exactly "
                 "(`<bos>` + prompt + answer per example; padding excluded)"),
    ("`value`", "exact match on a fixed held-out set (greedy decoding), in [0, 1]"),
    ("`budget`", "the run's planned total input tokens (known up front from the seed)"),
    ("`step`", "optimizer steps done at the evaluation"),
    ("`difficulty`", "digits (addition), length (reversal, sorting, copy), modulus "
                     "(modular), people in the passage (qa)"),
    ("`d_model`, `n_layers`, `n_heads`", "transformer width, depth, heads"),
    ("`lr`, `batch_size`, `weight_decay`", "AdamW peak learning rate, batch, decoupled "
                                           "weight decay"),
    ("`schedule`, `warmup_frac`, `cooldown_frac`", "`cosine`, `linear`, `constant`, "
                                                   "`constant_cooldown` (warmup, decay share)"),
    ("`train_size`, `eval_size`", "distinct training examples; held-out examples"),
    ("`steps`, `n_evals`, `seed`", "planned steps, evaluations, seed (data, init, order)"),
    ("`truncated`", "whether a time cap cut the run (false for every run here)"),
)


def data_card(curves: CurveSet, *, command: str, wall_minutes: float, note: str = "") -> str:
    """The ``em_curves.parquet`` section of ``data/README.md`` (markdown; one template, so
    longer than a function should be)."""
    lengths = [len(c) for c in curves]
    schema = _markdown_table(("column", "meaning"), _SCHEMA_ROWS)
    per_curve = (f"{min(lengths)}" if min(lengths) == max(lengths)
                 else f"{min(lengths)} to {max(lengths)}")
    return f"""## `em_curves.parquet`: exact match against tokens from tiny transformers

**What.** {len(curves)} held-out exact-match (EM) curves, {sum(lengths):,} points
({per_curve} per curve), from decoder-only transformers (1-3 layers,
width 32-96) trained from scratch on CPU with PyTorch by `metastop.generate` on generated
exact-answer tasks: multi-digit addition, string reversal, digit sorting, modular addition,
copying a bracketed segment among distractors, and extractive QA over a passage of people
(`ann 23 rome;bob 41 oslo;?age bob=` -> `41`). Loss on answer tokens only; EM by greedy
decoding on a fixed held-out set (disjoint prompts) at 25 points evenly spaced in tokens.
Made by this project; same license as the repository.

**How.** A random sweep over task x difficulty x width x depth x learning rate x batch size
x training-set size (64-4096; small sets overfit) x weight decay x LR schedule x seed. Each
run's step count comes from a CPU cost model so that runs take a few seconds; the result
depends only on the config (same seed, same curve on CPU). Finished runs are cached one file
per run in `data/.em_runs/` (not committed), so the command resumes. Sweep wall time:
{wall_minutes:.0f} min on a shared 2-core machine with 2 workers. Command:

    {command}

{note}

**Schema** (the curve table, one row per evaluation point; every hyperparameter a column):

{schema}

**Shapes.** `metastop.generate.shapes.classify_shape`, on the values `y` with
`x = tokens / last tokens` and `range = max - min`, checked in this order:
1. `never_learns`: `max < 0.1` or `range < 0.05`;
2. `overfit_decline`: on the 3-point moving average `m`, `max(m) - m[-1] >= max(0.05,
   0.2 * range)` and the best comes before `x = 0.9`;
3. `plateau_then_jump`: some point `s` with `x[s] >= 0.15` whose preceding 0.15 of the
   tokens (>= 3 points) lie within 0.05, followed within two evaluations by a rise of
   `>= max(0.1, 0.3 * range)`;
4. `rising_at_end`: the last 20% of the tokens add `>= max(0.02, 0.1 * range)`;
5. `saturating`: the rest (rises, then holds).

{summary_tables(curves)}

Example curves of each shape: `em_curve_shapes.png`.
"""
