"""``Prediction``: a predicted continuation of a curve, with quantiles at each horizon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError


@dataclass(frozen=True, eq=False)
class Prediction:
    """Predicted values of one curve at later horizons.

    Values are *scores* (higher is better; ``Curve.scores`` orientation), so policies never
    flip signs. ``Curve.to_metric`` maps them back to metric units for display.

    Attributes:
        curve_id: the curve predicted.
        tokens_now: tokens at the last observation used.
        horizons: tokens at which the curve is predicted, increasing, the last one the budget.
        quantiles: the quantile levels, increasing, e.g. ``(0.1, 0.5, 0.9)``.
        scores: array of shape ``(len(horizons), len(quantiles))``, monotone along quantiles.
        low_confidence: true when the prediction comes from the population prior (too few
            points) rather than from the curve itself.

    Example:
        >>> p = Prediction("c", 1.0, np.array([2.0, 4.0]), (0.1, 0.5, 0.9),
        ...                np.array([[0.1, 0.2, 0.3], [0.2, 0.3, 0.5]]))
        >>> float(p.final_median), p.quantile(0.9).tolist()
        (0.3, [0.3, 0.5])
    """

    curve_id: str
    tokens_now: float
    horizons: np.ndarray
    quantiles: tuple[float, ...]
    scores: np.ndarray
    low_confidence: bool = False

    def quantile(self, q: float) -> np.ndarray:
        """Scores at quantile level ``q`` in (0, 1) for every horizon.

        Linear between the stored levels; beyond the outer ones the quantile function goes
        on with the slope of its outermost segment (the linear tails that
        ``metastop.stop.policies.probability_above`` assumes), so a level such as 0.99 asks for
        more than the 0.9 quantile instead of being clamped to it.

        Example:
            >>> p = Prediction("c", 1.0, np.array([2.0]), (0.1, 0.5, 0.9),
            ...                np.array([[0.1, 0.2, 0.6]]))
            >>> [round(float(p.quantile(q)[0]), 3) for q in (0.05, 0.7, 0.9, 0.99)]
            [0.088, 0.4, 0.6, 0.69]
        """
        if not 0.0 < q < 1.0:
            raise ParameterError(f"quantile level q must be in (0, 1), got q={q!r}")
        if q in self.quantiles:
            return self.scores[:, self.quantiles.index(q)]
        levels = np.asarray(self.quantiles, dtype=np.float64)
        if len(levels) == 1:
            return self.scores[:, 0].copy()
        if q < levels[0]:
            slope = (self.scores[:, 1] - self.scores[:, 0]) / (levels[1] - levels[0])
            return self.scores[:, 0] - (levels[0] - q) * slope
        if q > levels[-1]:
            slope = (self.scores[:, -1] - self.scores[:, -2]) / (levels[-1] - levels[-2])
            return self.scores[:, -1] + (q - levels[-1]) * slope
        return np.array([np.interp(q, levels, row) for row in self.scores])

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    @property
    def low(self) -> np.ndarray:
        return self.scores[:, 0]

    @property
    def high(self) -> np.ndarray:
        return self.scores[:, -1]

    @property
    def final_median(self) -> float:
        return float(self.median[-1])

    @property
    def final_interval(self) -> tuple[float, float]:
        return float(self.low[-1]), float(self.high[-1])
