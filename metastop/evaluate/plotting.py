"""Figures: a curve with its prediction and stop point, the analyze grid, policy frontiers.

matplotlib is imported lazily, with the non-interactive Agg backend, so importing metastop
never needs a display. Everything is drawn in the metric's own units (``Curve.to_metric``).

Example:
    >>> from metastop.evaluate.plotting import curve_grid
    >>> curve_grid([CurvePanel(curve, prediction, stop_index=7)], "reports/analyze.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..curves import Curve, atomic_path
from ..predict.prediction import Prediction
from ..stop.prices import to_points

BAND = (0.1, 0.9)
"""The quantile levels of the predicted band: an 80% interval."""


@dataclass(frozen=True, eq=False)
class CurvePanel:
    """What one panel shows: a curve, the points the prediction was made from, the prediction
    and the stop point.

    Attributes:
        curve: the whole curve (points after ``seen`` are drawn faded: the future).
        prediction: the prediction from ``curve.prefix(seen)``, or ``None``.
        stop_index: where a policy stopped (or would stop), or ``None``.
        seen: points the prediction saw; ``None`` means all of them.
        title: the panel title; default the curve id.
    """

    curve: Curve
    prediction: Prediction | None = None
    stop_index: int | None = None
    seen: int | None = None
    title: str | None = None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_curve(ax: Any, panel: CurvePanel) -> None:
    """Draw one panel on matplotlib axes ``ax``."""
    curve = panel.curve
    seen = len(curve) if panel.seen is None else panel.seen
    ax.plot(curve.tokens[:seen], curve.values[:seen], "o-", color="C0", ms=3, lw=1.2,
            label="observed")
    if seen < len(curve):
        ax.plot(curve.tokens[seen - 1:], curve.values[seen - 1:], "o-", color="C0", ms=2,
                lw=0.8, alpha=0.3, label="not yet seen")
    if panel.prediction is not None:
        _draw_prediction(ax, curve, panel.prediction)
    if panel.stop_index is not None:
        _draw_stop(ax, curve, panel.stop_index)
    if curve.tokens[0] > 0 and curve.budget / curve.tokens[0] > 100:
        ax.set_xscale("log")  # geometric schedules (LCDB sample sizes, doubling checkpoints)
    else:
        from matplotlib.ticker import EngFormatter

        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150G, not 1.5 with a 1e11 offset
    if log_values(curve):
        ax.set_yscale("log")
    ax.set_title(_wrap(panel.title or curve.curve_id), fontsize=8)
    ax.set_xlabel("tokens", fontsize=7)
    ax.set_ylabel(curve.metric or "value", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


LOG_METRICS = ("loss", "ppl", "perplexity", "nll", "bpb", "bits")


def log_values(curve: Curve) -> bool:
    """Whether to draw ``curve``'s values on a log scale: losses and perplexities (a metric
    to minimize, named like one or spanning a decade) with every value positive."""
    values = np.asarray(curve.values, dtype=float)
    if curve.direction != "minimize" or not np.all(values > 0):
        return False
    named = any(word in (curve.metric or "").lower() for word in LOG_METRICS)
    return named or float(values.max() / values.min()) >= 10


def _draw_prediction(ax: Any, curve: Curve, prediction: Prediction) -> None:
    xs = np.r_[prediction.tokens_now, prediction.horizons]
    start = curve.scores[np.searchsorted(curve.tokens, prediction.tokens_now, side="right") - 1]
    def with_start(scores: np.ndarray) -> np.ndarray:
        return curve.to_metric(np.r_[start, scores])
    low, high = (with_start(prediction.quantile(q)) for q in BAND)
    ax.fill_between(xs, np.minimum(low, high), np.maximum(low, high), color="C1", alpha=0.25,
                    label="80% interval")
    ax.plot(xs, with_start(prediction.median), "--", color="C1", lw=1.2, label="predicted median")


def _draw_stop(ax: Any, curve: Curve, stop_index: int) -> None:
    t = curve.tokens[stop_index]
    ax.axvline(t, color="C3", lw=1, ls=":")
    ax.plot([t], [curve.values[stop_index]], "X", color="C3", ms=8, label="stop")


def curve_figure(panels: Sequence[CurvePanel], *, columns: int = 4, title: str | None = None) -> Any:
    """A figure with a grid of panels (one per curve)."""
    plt = _pyplot()
    n = max(1, len(panels))
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        draw_curve(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if panels:
        handles, labels = _legend_entries(axes.flat)
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 if panels else 0, 1, 0.97 if title else 1))
    return fig


def _legend_entries(axes: Any) -> tuple[list, list]:
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    return list(entries.values()), list(entries)


def curve_grid(panels: Sequence[CurvePanel], path: str | Path, *, columns: int = 4,
               title: str | None = None, dpi: int = 110) -> Path:
    """Save a grid of curve panels as a PNG; return its path."""
    return save(curve_figure(panels, columns=columns, title=title), path, dpi=dpi)


def frontier_figure(frontiers: Mapping[str, Any], points: Mapping[str, tuple[float, float]] | None = None,
                    *, title: str | None = None) -> Any:
    """Token savings against mean EM loss: one line per swept policy (``Frontier``), one
    marker per single setting in ``points`` (name -> (savings, loss)), oracle lines dashed.

    Savings are drawn in percent and losses in points (``to_points``: 0.01 of a 0-1 metric).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, front) in enumerate(frontiers.items()):
        xs = [100 * p.token_savings_mean for p in front.points]
        ys = [to_points(p.em_loss_mean) for p in front.points]
        order = np.argsort(xs)
        style = "k--" if name.startswith("oracle") else "o-"
        ax.plot(np.array(xs)[order], np.array(ys)[order], style, ms=4, lw=1.3, label=name,
                **({} if name.startswith("oracle") else {"color": f"C{i}"}))
    for j, (name, (savings, loss)) in enumerate((points or {}).items()):
        marker = "*" if name.startswith("oracle") else "s"
        ax.plot([100 * savings], [to_points(loss)], marker, ms=12 if marker == "*" else 7,
                color="k" if marker == "*" else f"C{(j + len(frontiers)) % 10}", label=name)
    ax.set_xlabel("token savings (%)")
    ax.set_ylabel("mean EM loss, keep-best (points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def frontier_plot(frontiers: Mapping[str, Any], path: str | Path,
                  points: Mapping[str, tuple[float, float]] | None = None, *, title: str | None = None,
                  dpi: int = 110) -> Path:
    """Save the frontier figure as a PNG; return its path."""
    return save(frontier_figure(frontiers, points, title=title), path, dpi=dpi)


def save(fig: Any, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _wrap(text: str, width: int = 40) -> str:
    """A long id on at most two lines, broken at ``/`` where it can be (the end kept)."""
    if len(text) <= width:
        return text
    cut = text.rfind("/", 0, len(text) - width // 3)
    if 0 < cut and cut + 1 <= width and len(text) - cut - 1 <= width:
        return text[:cut + 1] + "\n" + text[cut + 1:]
    if len(text) <= 2 * width:
        return text[:width] + "\n" + text[width:]
    return text[:width - 3] + "...\n" + text[-width:]
