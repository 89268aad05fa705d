"""The figure and data-card text that describe a generated curve corpus.

Example:
    >>> from metastop.curves import CurveSet
    >>> curves = CurveSet.read("data/em_curves.parquet")  # doctest: +SKIP
    >>> plot_shape_examples(curves, "data/em_curve_shapes.png")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..curves import Curve, CurveSet, atomic_path
from ..errors import ParameterError
from .shapes import SHAPES, classify_shape, shape_counts

logger = logging.getLogger(__name__)


def examples_by_shape(curves: CurveSet, *, per_shape: int) -> dict[str, list[Curve]]:
    """Up to ``per_shape`` curves of each shape, spread evenly over the sorted curve ids."""
    if per_shape < 1:
        raise ParameterError(f"per_shape must be >= 1, got per_shape={per_shape!r}")
    grouped: dict[str, list[Curve]] = {shape: [] for shape in SHAPES}
    for curve in sorted(curves, key=lambda c: c.curve_id):
        grouped[classify_shape(curve)].append(curve)
    picked = {}
    for shape, members in grouped.items():
        stride = max(1, len(members) // per_shape)
        picked[shape] = members[::stride][:per_shape]
    return picked


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
