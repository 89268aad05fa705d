"""Figures are written as real PNGs, with predictions, stop points and frontiers drawn."""

from __future__ import annotations

import numpy as np
import pytest

from metastop.evaluate.frontiers import Frontier, FrontierPoint
from metastop.curves import Curve
from metastop.evaluate.plotting import CurvePanel, curve_figure, curve_grid, frontier_figure, frontier_plot
from metastop.predict.prediction import Prediction

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve(i: int, direction: str = "maximize") -> Curve:
    tokens = np.linspace(1e6, 2e7, 20)
    values = 0.6 * (1 - np.exp(-tokens / 5e6)) + 0.01 * np.sin(i + tokens / 1e6)
    if direction == "minimize":
        values = 4.0 - values
    return Curve(f"run{i}/em", tokens=tokens, values=values, direction=direction, metric="em")


def _prediction(curve: Curve, seen: int) -> Prediction:
    prefix = curve.prefix(seen)
    horizons = curve.tokens[seen:]
    last = float(prefix.scores[-1])
    median = last + 0.05 * np.linspace(0, 1, len(horizons))
    scores = np.stack([median - 0.05, median, median + 0.05], axis=1)
    return Prediction(curve.curve_id, float(prefix.tokens[-1]), horizons, (0.1, 0.5, 0.9), scores)


def _labels(fig) -> set[str]:
    return {label for ax in fig.axes for label in ax.get_legend_handles_labels()[1]}


def test_curve_grid_writes_a_png(tmp_path):
    panels = [CurvePanel(c, _prediction(c, 8), stop_index=10, seen=8)
              for c in (_curve(0), _curve(1), _curve(2, "minimize"))]
    path = curve_grid(panels, tmp_path / "sub" / "grid.png", title="three curves")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_curve_panel_draws_band_stop_and_future():
    curve = _curve(0)
    fig = curve_figure([CurvePanel(curve, _prediction(curve, 8), stop_index=10, seen=8)])
    assert {"observed", "not yet seen", "80% interval", "predicted median", "stop"} <= _labels(fig)
    ax = fig.axes[0]
    median = next(line for line in ax.get_lines() if line.get_label() == "predicted median")
    assert median.get_xdata()[0] == pytest.approx(curve.tokens[7])   # starts at the last seen point


def test_minimize_curve_band_is_in_metric_units():
    curve = _curve(0, "minimize")
    fig = curve_figure([CurvePanel(curve, _prediction(curve, 8), seen=8)])
    median = next(l for l in fig.axes[0].get_lines() if l.get_label() == "predicted median")
    assert np.all(np.asarray(median.get_ydata()) > 3.0)   # loss near 3.4-4, not negative scores


def test_panel_without_prediction_or_stop():
    fig = curve_figure([CurvePanel(_curve(0))])
    assert _labels(fig) == {"observed"}


def test_frontier_plot(tmp_path):
    def front(name, pairs):
        return Frontier(name, tuple(FrontierPoint({"v": i}, s, l, l, 5) for i, (s, l) in enumerate(pairs)))
    frontiers = {"metastop": front("metastop", [(0.1, 0.0), (0.3, 0.002), (0.5, 0.01)]),
                 "patience": front("patience", [(0.2, 0.01), (0.4, 0.03)]),
                 "oracle": front("oracle", [(0.3, 0.0), (0.6, 0.002)])}
    points = {"improvement-probability": (0.35, 0.004), "oracle": (0.55, 0.001)}
    fig = frontier_figure(frontiers, points, title="t")
    assert {"metastop", "patience", "oracle", "improvement-probability"} <= _labels(fig)
    path = frontier_plot(frontiers, tmp_path / "frontier.png", points)
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000


def test_empty_grid_still_writes(tmp_path):
    path = curve_grid([], tmp_path / "empty.png")
    assert path.exists()


def test_losses_are_drawn_on_a_log_scale_and_accuracies_are_not():
    from metastop.evaluate.plotting import log_values

    tokens = np.linspace(1e9, 3e11, 12)
    loss = Curve("run/val_loss", tokens=tokens, values=4.0 * (tokens / 1e9) ** -0.2,
                 direction="minimize", metric="val_loss")
    ppl = Curve("run/ppl", tokens=tokens, values=np.linspace(300.0, 12.0, 12), direction="minimize",
                metric="ppl")
    assert log_values(loss) and log_values(ppl) and not log_values(_curve(0))
    fig = curve_figure([CurvePanel(loss), CurvePanel(_curve(0))])
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "linear"]


def test_long_curve_ids_wrap_onto_two_readable_lines():
    curve = Curve("pythia-v0/pythia-1.4b-deduped/five-shot/lambada_openai/acc",
                  tokens=np.linspace(1e9, 3e11, 5), values=np.linspace(0.2, 0.6, 5))
    title = curve_figure([CurvePanel(curve)]).axes[0].get_title()
    assert title == "pythia-v0/pythia-1.4b-deduped/five-shot/\nlambada_openai/acc"
