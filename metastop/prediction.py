"""``Prediction``: a predicted continuation of a curve, with quantiles at each horizon."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        """Scores at quantile level ``q`` for every horizon (linear between stored levels)."""
        levels = np.asarray(self.quantiles)
        if q in self.quantiles:
            return self.scores[:, self.quantiles.index(q)]
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
