"""Offline A/B tests: paired comparisons of policies on the same curves, with seeded
percentile-bootstrap 95% intervals over curves.

The intervals come from ``scipy.stats.bootstrap`` (``method="percentile"``, paired, seeded).

Example:
    >>> from metastop.evaluate.ab import compare
    >>> c = compare(backtest(curves, CostAware(pred)), backtest(curves, Patience(5)))  # doctest: +SKIP
    >>> c.loss_diff, c.loss_ci  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ParameterError
from .common import json_float
from .frontiers import Frontier
from .outcomes import PolicyReport


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two policies on the same curves (an offline A/B test).

    Differences are ``a - b`` (savings as fractions, losses in metric units), with
    percentile-bootstrap 95% intervals over curves.

    Example:
        >>> Comparison("a", "b", 3, 0.1, (0.0, 0.2), 0.0, (0.0, 0.0), 2000, 0).to_dict()["em_loss_diff"]
        0.0
    """

    a: str
    b: str
    n_curves: int
    savings_diff: float
    savings_ci: tuple[float, float]
    loss_diff: float
    loss_ci: tuple[float, float]
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n_curves": self.n_curves,
                "token_savings_diff": json_float(self.savings_diff),
                "token_savings_ci95": [json_float(v) for v in self.savings_ci],
                "em_loss_diff": json_float(self.loss_diff),
                "em_loss_ci95": [json_float(v) for v in self.loss_ci],
                "n_boot": self.n_boot, "seed": self.seed}


def compare(a: PolicyReport, b: PolicyReport, *, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Paired comparison of two reports on the same curves: mean differences ``a - b`` of
    token savings and of EM loss, with percentile-bootstrap 95% intervals (seeded).

    Example:
        >>> c = compare(backtest(curves, CostAware(pred)), backtest(curves, Patience(5)))  # doctest: +SKIP
        >>> c.loss_diff, c.loss_ci  # doctest: +SKIP
    """
    _check_boot(n_boot)
    ids_a = [o.curve_id for o in a.outcomes]
    if ids_a != [o.curve_id for o in b.outcomes]:
        raise ParameterError(f"reports {a.name!r} and {b.name!r} must cover the same curves "
                             f"in the same order to be compared")
    if not ids_a:
        raise ParameterError("cannot compare reports with no curves")
    savings = np.array([x.token_savings - y.token_savings for x, y in zip(a.outcomes, b.outcomes)])
    losses = np.array([x.em_loss - y.em_loss for x, y in zip(a.outcomes, b.outcomes)])
    # Savings and losses are resampled together (paired): the same curves in each resample.
    low, high = _bootstrap((savings, losses), lambda s, loss, axis: np.stack(
        [s.mean(axis=axis), loss.mean(axis=axis)]), n_boot, seed)
    return Comparison(a.name, b.name, len(ids_a), float(savings.mean()),
                      (float(low[0]), float(high[0])), float(losses.mean()),
                      (float(low[1]), float(high[1])), n_boot, seed)


def hull_gap(front: Frontier, rival: PolicyReport, *, n_boot: int = 2000,
             seed: int = 0) -> tuple[float, tuple[float, float]] | None:
    """How much more mean loss ``front`` has than ``rival`` at the rival's savings, with a
    paired percentile-bootstrap 95% interval over curves (seeded).

    The frontier's loss there is that of the mix of its two hull settings around the rival's
    savings (``Frontier.segment_at``); each resample re-solves the mix for the resampled
    savings. A gap above 0 means the frontier loses more. ``None`` when the frontier does
    not reach the rival's savings or holds no per-curve reports.

    Example:
        >>> gap, (low, high) = hull_gap(suite.frontiers["metastop"],  # doctest: +SKIP
        ...                             suite.report("patience-5"))
    """
    _check_boot(n_boot)
    segment = front.segment_at(rival.token_savings_mean)
    if segment is None or not front.reports:
        return None
    reports = [front.reports[i] for i in segment] + [rival]
    if len({tuple(o.curve_id for o in r.outcomes) for r in reports}) != 1:
        raise ParameterError(f"frontier {front.name!r} and report {rival.name!r} must cover "
                             f"the same curves in the same order")
    savings = np.array([[o.token_savings for o in r.outcomes] for r in reports])
    losses = np.array([[o.em_loss for o in r.outcomes] for r in reports])
    # Resampling curve indices keeps the three reports paired (the same curves in each).
    low, high = _bootstrap((np.arange(savings.shape[1]),),
                           lambda rows, axis: _mix_gap(savings, losses, rows), n_boot, seed)
    return float(_mix_gap(savings, losses, slice(None))), (float(low), float(high))


def _mix_gap(savings: np.ndarray, losses: np.ndarray, rows: Any) -> np.ndarray:
    """The loss of the mix of settings 0 and 1 that saves what setting 2 saves, minus the
    loss of setting 2, on the curves ``rows`` (a slice, or one row of indices per resample)."""
    s, loss = savings[:, rows].mean(axis=-1), losses[:, rows].mean(axis=-1)
    span = s[1] - s[0]
    share = np.where(span > 0, np.clip((s[2] - s[0]) / np.where(span > 0, span, 1.0), 0, 1), 0)
    return (1 - share) * loss[0] + share * loss[1] - loss[2]


def _check_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ParameterError(f"n_boot must be >= 1, got {n_boot=}")


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Any, n_boot: int,
               seed: int) -> tuple[Any, Any]:
    """Seeded paired percentile-bootstrap 95% interval of ``statistic`` (vectorized over the
    last axis) through ``scipy.stats.bootstrap``."""
    from scipy.stats import bootstrap

    if len(data[0]) < 2:  # scipy refuses one observation; every resample is that one
        value = statistic(*(d[None, :] for d in data), axis=-1)
        value = np.asarray(value)[..., 0]
        return value, value
    result = bootstrap(data, statistic, n_resamples=n_boot, confidence_level=0.95,
                       method="percentile", paired=True, vectorized=True, axis=-1,
                       random_state=np.random.default_rng(seed))
    return result.confidence_interval.low, result.confidence_interval.high
