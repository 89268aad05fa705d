"""How well a predictor forecasts final values from the first part of each curve.

``prediction_report`` gives the mean absolute error of the predicted final value once the
first fraction ``f`` of the budget has been seen (the ``mae_at`` of DESIGN.md's backtest
JSON), and the coverage of the predicted 80% interval.

Example:
    >>> from metastop.evaluate.quality import prediction_report
    >>> prediction_report(curves, Predictor.load()).mae_at[0.25]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from .common import Progress, fraction_key, json_float, mean

MAE_FRACTIONS = (0.1, 0.25, 0.5)
"""The budget fractions at which the backtest JSON reports the prediction error."""


@dataclass(frozen=True)
class PredictionReport:
    """How well a predictor forecast final values from the first part of each curve.

    ``mae_at[f]``: mean absolute error (metric units) of the predicted final value when the
    points with ``tokens <= f * budget`` have been seen; ``coverage_80``: share of final values
    inside the predicted 80% interval, over the same predictions.

    Example:
        >>> PredictionReport({0.1: 0.05}, {0.1: 30}, 0.8).to_dict()["mae_at"]
        {'0.1': 0.05}
    """

    mae_at: Mapping[float, float]
    n_at: Mapping[float, int]
    coverage_80: float

    def to_dict(self) -> dict[str, Any]:
        return {"mae_at": {fraction_key(f): json_float(v) for f, v in self.mae_at.items()},
                "coverage_80": json_float(self.coverage_80),
                "n_at": {fraction_key(f): n for f, n in self.n_at.items()}}


def seen_at(curve: Curve, fraction: float) -> Curve | None:
    """The points seen when ``fraction`` of the budget is spent (``tokens <= f * budget``), or
    ``None`` when no point or every point is seen by then (nothing to predict)."""
    n = int(np.searchsorted(curve.tokens, fraction * curve.budget, side="right"))
    return curve.prefix(n) if 1 <= n < len(curve) else None


def prediction_report(curves: Sequence[Curve], predictor: Any, *,
                      fractions: Sequence[float] = MAE_FRACTIONS,
                      contexts: Sequence[Any] | None = None,
                      progress: Progress | None = None) -> PredictionReport:
    """MAE of the predicted final value from the first ``f`` of each curve's budget, and the
    80%-interval coverage of the final values, over all ``fractions``.

    The final value is the curve's last observation; the prediction is read at its tokens.
    A curve with no point at or below ``f * budget``, or whose last point is already in the
    prefix, gives no prediction at that fraction. ``contexts``: per curve, the context its
    prefixes are predicted with (``None``: none), passed to ``predict_many``.
    """
    curves = list(curves)
    contexts = _aligned(contexts, len(curves))
    errors: dict[float, list[float]] = {f: [] for f in fractions}
    inside: list[bool] = []
    for i, f in enumerate(fractions):
        pairs = [(c, p, x) for c, x in zip(curves, contexts) if (p := seen_at(c, f)) is not None]
        for (curve, _, _), prediction in zip(pairs, _predict_at_end(predictor, pairs)):
            final = float(curve.scores[-1])
            errors[f].append(abs(float(prediction.median[-1]) - final))
            low, high = prediction.quantile(0.1)[-1], prediction.quantile(0.9)[-1]
            inside.append(bool(low <= final <= high))
        if progress is not None:
            progress(i + 1, len(fractions))
    return PredictionReport({f: mean(np.array(e)) for f, e in errors.items()},
                            {f: len(e) for f, e in errors.items()}, mean(np.array(inside, float)))


def _aligned(contexts: Sequence[Any] | None, n: int) -> list[Any]:
    if contexts is None:
        return [None] * n
    contexts = list(contexts)
    if len(contexts) != n:
        raise ParameterError(f"contexts must hold one entry per curve, got {len(contexts)} "
                             f"for {n} curves")
    return contexts


def _predict_at_end(predictor: Any, pairs: list[tuple[Curve, Curve, Any]]) -> list[Any]:
    """Predictions of each prefix at its full curve's last tokens (with its context, if
    any), batched when possible."""
    if not pairs:
        return []
    prefixes = [p for _, p, _ in pairs]
    horizons = [np.array([c.tokens[-1]]) for c, _, _ in pairs]
    contexts = [x for _, _, x in pairs]
    given = any(x is not None for x in contexts)
    many = getattr(predictor, "predict_many", None)
    if many is not None:
        try:
            if given:
                return list(many(prefixes, horizons=horizons, contexts=contexts))
            return list(many(prefixes, horizons=horizons))
        except TypeError:  # a predict_many that takes one horizon grid for all curves
            pass
    if given:
        return [predictor.predict(p, horizons=h, context=x)
                for p, h, x in zip(prefixes, horizons, contexts)]
    return [predictor.predict(p, horizons=h) for p, h in zip(prefixes, horizons)]
