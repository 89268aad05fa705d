"""Per-curve analysis: what ``metastop analyze``, ``predict`` and ``plot`` show.

``analyze_curves`` replays each curve through a policy to find where it stops and predicts
the rest of the curve from there; ``forecast_at`` predicts each curve's value at its budget
from the first fraction of the budget; ``sample`` draws a seeded subset of curves.

Example:
    >>> from metastop.evaluate.analysis import analyze_curves
    >>> [a.stop_index for a in analyze_curves(curves, Predictor.load())]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..stop.decision import Decision
from ..stop.policies import evaluation_horizons
from .common import Policy, Progress, decide_many, json_float, predict_batch
from .outcomes import replay
from .suite import METASTOP, make_policy


@dataclass(frozen=True, eq=False)
class CurveAnalysis:
    """One curve as the default policy sees it: its prediction and where it would stop.

    Attributes:
        curve: the curve.
        stop_index: the point the policy stops after when the curve is replayed (a decision
            after the last point counts for an unfinished curve), else ``None``.
        decision: the stopping decision, or the decision after the last point seen.
        seen: the points the prediction was made from: up to the stop point, else all points
            of an unfinished curve, else all but the last (the last decision made).
        prediction: the prediction from ``curve.prefix(seen)`` (scores), or ``None``.

    Example:
        >>> a = CurveAnalysis(Curve("c", [1, 2, 3], [0.1, 0.2, 0.3], budget=10), 1, None, 2)
        >>> a.stop_tokens, a.tokens_saved
        (2.0, 8.0)
    """

    curve: Curve
    stop_index: int | None
    decision: Decision | None
    seen: int
    prediction: Any = None

    @property
    def stop_tokens(self) -> float | None:
        return None if self.stop_index is None else float(self.curve.tokens[self.stop_index])

    @property
    def tokens_saved(self) -> float:
        """Tokens of the budget not spent when stopping at the stop point (0 if no stop)."""
        return 0.0 if self.stop_index is None else self.curve.budget - self.stop_tokens

    @property
    def predicted_final(self) -> float | None:
        """Median predicted value at the budget, in metric units."""
        if self.prediction is None:
            return None
        return float(self.curve.to_metric(self.prediction.final_median))

    @property
    def interval(self) -> tuple[float, float] | None:
        """The predicted 80% interval of the value at the budget, in metric units."""
        if self.prediction is None:
            return None
        ends = sorted(float(self.curve.to_metric(s)) for s in
                      (self.prediction.quantile(0.1)[-1], self.prediction.quantile(0.9)[-1]))
        return ends[0], ends[1]

    @property
    def true_final(self) -> float | None:
        """The value at the budget, when the curve reached it."""
        c = self.curve
        return float(c.values[-1]) if c.tokens[-1] >= c.budget else None

    def to_dict(self) -> dict[str, Any]:
        c = self.curve
        return {"curve_id": c.curve_id, "task": c.task, "metric": c.metric,
                "direction": c.direction, "n_points": len(c), "budget": c.budget,
                "fraction_seen": json_float(c.fraction_seen), "best": json_float(c.best),
                "predicted_from_points": self.seen,
                "predicted_from_tokens": json_float(float(c.tokens[self.seen - 1])),
                "predicted_final": json_float(self.predicted_final),
                "interval_80": None if self.interval is None else [json_float(v) for v in self.interval],
                "true_final": json_float(self.true_final),
                "stop_index": self.stop_index, "stop_tokens": json_float(self.stop_tokens),
                "tokens_saved": json_float(self.tokens_saved),
                "tokens_saved_fraction": json_float(self.tokens_saved / c.budget if c.budget else 0.0),
                "decision": None if self.decision is None else self.decision.to_dict()}


def analyze_curves(curves: Sequence[Curve], predictor: Any, *, policy: Policy | None = None,
                   at_fraction: float | None = None,
                   progress: Progress | None = None) -> list[CurveAnalysis]:
    """Replay each curve through ``policy`` (default: metastop at the shipped price) to find
    where it stops, and predict the rest of the curve from that point.

    Args:
        curves: the curves (finished or still running).
        predictor: the model (``Predictor``).
        policy: the stopping policy; default ``make_policy("metastop", predictor)``.
        at_fraction: predict from the points with ``tokens <= at_fraction * budget`` instead
            of from the stop point.
        progress: ``progress(done, total)`` while replaying.
    """
    curves = list(curves)
    policy = policy if policy is not None else make_policy(METASTOP, predictor)
    stops = replay(curves, policy, progress=progress)
    last = _decide_unfinished(policy, curves, stops)
    out = []
    for curve, (s, decision), now in zip(curves, stops, last):
        stopped = decision is not None or (now is not None and now.stop)
        stop_index = s if decision is not None else (len(curve) - 1 if stopped else None)
        seen = _prediction_point(curve, stop_index, at_fraction)
        out.append(CurveAnalysis(curve, stop_index, decision or now, seen))
    prefixes = [a.curve.prefix(a.seen) for a in out]
    predictions = predict_batch(predictor, prefixes, [evaluation_horizons(p) for p in prefixes])
    return [CurveAnalysis(a.curve, a.stop_index, a.decision, a.seen, p)
            for a, p in zip(out, predictions)]


def _decide_unfinished(policy: Policy, curves: list[Curve],
                       stops: list[tuple[int, Decision | None]]) -> list[Decision | None]:
    """The decision after the last point of every running (unfinished, unstopped) curve."""
    todo = [i for i, (c, (_, d)) in enumerate(zip(curves, stops))
            if d is None and c.tokens[-1] < c.budget]
    out: list[Decision | None] = [None] * len(curves)
    for i, decision in zip(todo, decide_many(policy, [curves[i] for i in todo]) if todo else []):
        out[i] = decision
    return out


def _prediction_point(curve: Curve, stop_index: int | None, at_fraction: float | None) -> int:
    if at_fraction is not None:
        return len(curve.upto(at_fraction * curve.budget))
    if stop_index is not None:
        return stop_index + 1
    finished = curve.tokens[-1] >= curve.budget
    return max(1, len(curve) - 1) if finished else len(curve)


def forecast_at(curves: Sequence[Curve], predictor: Any, fraction: float) -> list[CurveAnalysis]:
    """Predict each curve's value at its budget from the first ``fraction`` of the budget
    (the points with ``tokens <= fraction * budget``; at least the first point)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ParameterError(f"fraction must be in (0, 1], got {fraction=}")
    curves = list(curves)
    seen = [len(c.upto(fraction * c.budget)) for c in curves]
    prefixes = [c.prefix(n) for c, n in zip(curves, seen)]
    predictions = predict_batch(predictor, prefixes, [np.array([c.budget]) for c in curves])
    return [CurveAnalysis(c, None, None, n, p) for c, n, p in zip(curves, seen, predictions)]


def sample(curves: Sequence[Curve], limit: int | None, *, seed: int = 0) -> list[Curve]:
    """A seeded random sample of at most ``limit`` curves, in their original order."""
    curves = list(curves)
    if limit is None or limit >= len(curves):
        return curves
    keep = np.sort(np.random.default_rng(seed).choice(len(curves), size=limit, replace=False))
    return [curves[i] for i in keep]
