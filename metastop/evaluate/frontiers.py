"""Frontiers: sweep one parameter of a policy and list the (token savings, EM loss) pairs.

What a sweep can reach is bounded by the lower convex hull of its Pareto points: running one
setting on a random share of the runs and another on the rest reaches every point between
them. ``Frontier.loss_at`` reads the loss off that hull.

Example:
    >>> from metastop.evaluate.frontiers import frontier
    >>> f = frontier(curves, lambda p: Patience(p), [1, 3, 5, 10], name="patience")  # doctest: +SKIP
    >>> f.loss_at(0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..stop.prices import Price
from .common import ORACLE, Policy, Progress, json_float, plain, sub_progress
from .outcomes import PolicyReport, backtest, oracle


@dataclass(frozen=True)
class FrontierPoint:
    """One setting of a swept policy parameter and what it reached (losses in metric units).

    Example:
        >>> FrontierPoint({"patience": 5}, 0.3, 0.002, 0.01, 36).to_dict()["em_loss_mean"]
        0.002
    """

    params: Mapping[str, Any]
    token_savings_mean: float
    em_loss_mean: float
    em_loss_p95: float
    n_curves: int

    def to_dict(self) -> dict[str, Any]:
        return {"params": plain(self.params), "token_savings_mean": json_float(self.token_savings_mean),
                "em_loss_mean": json_float(self.em_loss_mean),
                "em_loss_p95": json_float(self.em_loss_p95), "n_curves": self.n_curves}


@dataclass(frozen=True)
class Frontier:
    """A policy's (savings, loss) pairs over a parameter sweep, in sweep order.

    Example:
        >>> f = Frontier("x", (FrontierPoint({}, 0.1, 0.0, 0.0, 9), FrontierPoint({}, 0.5, 0.04, 0.1, 9)))
        >>> round(f.loss_at(0.3), 3)
        0.02
    """

    name: str
    points: tuple[FrontierPoint, ...]
    reports: tuple[PolicyReport, ...] = field(default=(), repr=False, compare=False)

    def pareto(self) -> tuple[FrontierPoint, ...]:
        """The non-dominated points, by increasing savings (and so increasing loss)."""
        ordered = sorted(self.points, key=lambda p: (-p.token_savings_mean, p.em_loss_mean))
        kept: list[FrontierPoint] = []
        for point in ordered:
            if not kept or point.em_loss_mean < kept[-1].em_loss_mean:
                kept.append(point)
        return tuple(reversed(kept))

    def loss_at(self, savings: float) -> float:
        """The least mean loss reachable at ``savings`` or more; ``inf`` beyond the largest
        saving on the frontier.

        Running one setting on a random share of the runs and another on the rest reaches
        every point of the segment between them, so what is reachable is bounded by the
        lower convex hull of the Pareto points (as the ROC convex hull of Provost and
        Fawcett, 2001, "Robust classification for imprecise environments"); the loss is read
        off that hull.
        """
        _, xs, ys = self._hull()
        if len(xs) == 0 or savings > xs[-1] + 1e-12:
            return math.inf
        if savings <= xs[0]:
            return float(ys[0])
        return float(np.interp(savings, xs, ys))

    def segment_at(self, savings: float) -> tuple[int, int] | None:
        """Indices into ``points`` of the two hull settings whose mix reaches ``savings``
        (the first hull setting twice below its savings); ``None`` beyond the frontier."""
        hull, xs, _ = self._hull()
        if len(xs) == 0 or savings > xs[-1] + 1e-12:
            return None
        j = int(np.searchsorted(xs, savings))
        return (hull[0], hull[0]) if j == 0 else (hull[j - 1], hull[min(j, len(hull) - 1)])

    def _hull(self) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The lower convex hull of the Pareto points, by savings: indices into ``points``,
        savings and losses."""
        front = self.pareto()
        xs = np.array([p.token_savings_mean for p in front])
        ys = np.array([p.em_loss_mean for p in front])
        keep = _lower_hull(xs, ys)
        return [self.points.index(front[i]) for i in keep], xs[keep], ys[keep]

    def dominates(self, savings: float, loss: float, *, tol: float = 1e-9) -> bool:
        """True when the frontier reaches at least ``savings`` with at most ``loss``."""
        return self.loss_at(savings) <= loss + tol

    def to_list(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.points]


def _lower_hull(xs: np.ndarray, ys: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by ``xs`` (Andrew's monotone chain)."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (xs[b] - xs[a]) * (ys[i] - ys[a]) - (ys[b] - ys[a]) * (xs[i] - xs[a])
            if cross > 0:  # b lies below the chord a-i: keep it
                break
            hull.pop()
        hull.append(i)
    return hull


def frontier(curves: Sequence[Curve], make_policy: Callable[[Any], Policy], values: Iterable[Any],
             *, name: str | None = None, keep: str = "best",
             progress: Progress | None = None) -> Frontier:
    """Sweep one parameter: backtest ``make_policy(v)`` for each ``v`` in ``values``.

    Example:
        >>> f = frontier(curves, lambda p: Patience(p), [1, 3, 5, 10], name="patience")  # doctest: +SKIP
    """
    values = list(values)
    reports = [backtest(curves, make_policy(value), keep=keep,
                        progress=sub_progress(progress, i, len(values)))
               for i, value in enumerate(values)]
    return frontier_from_reports(name or (reports[0].name if reports else "policy"), reports)


def frontier_from_reports(name: str, reports: Iterable[PolicyReport]) -> Frontier:
    """A frontier from reports already computed (one per parameter setting)."""
    reports = tuple(reports)
    return Frontier(name, tuple(FrontierPoint(r.params, r.token_savings_mean, r.em_loss_mean,
                                              r.em_loss_p95, r.n_curves) for r in reports),
                    reports)


def oracle_frontier(curves: Sequence[Curve], prices: Iterable[Price], *,
                    keep: str = "best") -> Frontier:
    """The oracle's (savings, loss) pairs over a sweep of prices (each a ``Price``)."""
    return frontier_from_reports(ORACLE, [oracle(curves, p, keep=keep) for p in prices])
