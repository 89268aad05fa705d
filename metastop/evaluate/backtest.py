"""Replay finished curves through stopping policies and measure what stopping saved and lost.

The numbers every report uses (see DESIGN.md, "Backtest definitions"). For a curve with
observations ``(t_0..t_{n-1}, y_0..y_{n-1})`` a policy sees the points in order and stops
after point ``s`` (``s = n - 1`` if it never stops):

- token savings ``= 1 - t_s / t_{n-1}``;
- delivered value, keep-best (default, like restoring the best checkpoint): best of
  ``y_0..y_s`` against the best of ``y_0..y_{n-1}``; keep-last: ``y_s`` against ``y_{n-1}``;
- EM loss: how much worse delivered is than the reference, in the metric's units (computed on
  scores, so it is ``>= 0`` for keep-best whatever the metric's direction);
- utility with a full-budget price ``k`` (EM points): ``U = 100 * delivered - k * t_s / t_{n-1}``
  (on scores); the hindsight oracle stops where ``U`` is largest;
- frontier: sweep one parameter of a policy and list the (savings, loss) pairs.

A policy never sees the future: at step ``i`` it receives ``curve.prefix(i + 1)`` and nothing
else. Replay is step-synchronous across curves, so a model-based policy is asked about all
still-running curves at once (``decide_many``), which keeps the predictor's calls batched.

Example:
    >>> from metastop.evaluate.backtest import backtest
    >>> report = backtest(curves, Patience(5))                      # doctest: +SKIP
    >>> report.token_savings_mean, report.em_loss_mean, report.em_loss_p95  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from ..curves import Curve
from ..stop.decision import Decision
from ..errors import ParameterError

logger = logging.getLogger(__name__)

KEEP = ("best", "last")
ORACLE = "oracle"
MAE_FRACTIONS = (0.1, 0.25, 0.5)
Progress = Callable[[int, int], None]
"""``progress(done, total)``: points replayed so far out of all points to replay."""


class Policy(Protocol):
    """What the backtest needs from a stopping policy (see ``metastop.policies``)."""

    name: str

    def decide(self, curve: Curve) -> Decision: ...


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveOutcome:
    """What one policy did on one curve.

    Attributes:
        curve_id, task: the curve.
        n_points: points in the curve.
        stop_index: the point ``s`` the policy stopped after (``n_points - 1``: never stopped).
        tokens_fraction: ``t_s / t_{n-1}``; token savings is ``1 - tokens_fraction``.
        delivered, reference: scores (higher is better) of the delivered model and of the
            reference (full run), under the report's keep rule.
        reason: the stopping decision's reason value, or ``None`` if the curve ran to its end.
    """

    curve_id: str
    task: str | None
    n_points: int
    stop_index: int
    tokens_fraction: float
    delivered: float
    reference: float
    reason: str | None = None
    tokens_final: float = math.nan
    budget: float = math.nan

    @property
    def stopped(self) -> bool:
        return self.stop_index < self.n_points - 1

    @property
    def token_savings(self) -> float:
        return 1.0 - self.tokens_fraction

    @property
    def em_loss(self) -> float:
        """Reference minus delivered, in the metric's units (>= 0 for keep-best)."""
        return self.reference - self.delivered

    def utility(self, price: float | Any) -> float:
        """``100 * delivered - k * t_s / t_{n-1}``; ``price`` is ``k`` (EM points per full
        budget) or a ``metastop.prices.Price``."""
        k = full_budget_price(price, self.tokens_final, self.budget)
        return 100.0 * self.delivered - k * self.tokens_fraction

    def to_dict(self) -> dict[str, Any]:
        return {"curve_id": self.curve_id, "task": self.task, "n_points": self.n_points,
                "stop_index": self.stop_index, "stopped": self.stopped,
                "token_savings": self.token_savings, "em_loss": self.em_loss,
                "reason": self.reason}


@dataclass(frozen=True)
class PolicyReport:
    """One policy replayed over a set of curves, with its summary numbers.

    Build it with ``PolicyReport.from_outcomes`` (or ``backtest``); the summary fields are
    computed from ``outcomes``.

    Example:
        >>> r = PolicyReport.from_outcomes("p", {}, [CurveOutcome("c", None, 3, 1, 0.5, 0.4, 0.5)])
        >>> r.token_savings_mean, round(r.em_loss_mean, 3)
        (0.5, 0.1)
    """

    name: str
    params: Mapping[str, Any]
    outcomes: tuple[CurveOutcome, ...]
    keep: str = "best"
    token_savings_mean: float = math.nan
    em_loss_mean: float = math.nan
    em_loss_p95: float = math.nan
    stopped_share: float = math.nan
    wall_s: float = 0.0

    @classmethod
    def from_outcomes(cls, name: str, params: Mapping[str, Any],
                      outcomes: Iterable[CurveOutcome], *, keep: str = "best",
                      wall_s: float = 0.0) -> PolicyReport:
        outcomes = tuple(outcomes)
        savings = np.array([o.token_savings for o in outcomes])
        losses = np.array([o.em_loss for o in outcomes])
        stopped = np.array([o.stopped for o in outcomes], dtype=float)
        return cls(name, dict(params), outcomes, keep, _mean(savings), _mean(losses),
                   p95(losses), _mean(stopped), wall_s)

    @property
    def n_curves(self) -> int:
        return len(self.outcomes)

    def utility_mean(self, price: float) -> float:
        """Mean utility over curves at a full-budget price (EM points per budget)."""
        return _mean(np.array([o.utility(price) for o in self.outcomes]))

    def by_task(self) -> dict[str, PolicyReport]:
        """The same report split by the curves' ``task`` (``"-"`` when unknown)."""
        groups: dict[str, list[CurveOutcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault(outcome.task or "-", []).append(outcome)
        return {task: PolicyReport.from_outcomes(self.name, self.params, group, keep=self.keep)
                for task, group in sorted(groups.items())}

    def summary(self) -> dict[str, Any]:
        """The contract's policy entry (DESIGN.md) plus a few extra keys."""
        return {"name": self.name, "params": _plain(self.params),
                "token_savings_mean": _float(self.token_savings_mean),
                "em_loss_mean": _float(self.em_loss_mean),
                "em_loss_p95": _float(self.em_loss_p95), "n_curves": self.n_curves,
                "stopped_share": _float(self.stopped_share), "keep": self.keep,
                "wall_s": round(self.wall_s, 3)}


@dataclass(frozen=True)
class FrontierPoint:
    """One setting of a swept policy parameter and what it reached."""

    params: Mapping[str, Any]
    token_savings_mean: float
    em_loss_mean: float
    em_loss_p95: float
    n_curves: int

    def to_dict(self) -> dict[str, Any]:
        return {"params": _plain(self.params), "token_savings_mean": _float(self.token_savings_mean),
                "em_loss_mean": _float(self.em_loss_mean), "em_loss_p95": _float(self.em_loss_p95),
                "n_curves": self.n_curves}


@dataclass(frozen=True)
class Frontier:
    """A policy's (savings, loss) pairs over a parameter sweep, in sweep order."""

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


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of two policies on the same curves (an offline A/B test).

    Differences are ``a - b``, with percentile-bootstrap 95% intervals over curves.
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
                "token_savings_diff": _float(self.savings_diff),
                "token_savings_ci95": [_float(v) for v in self.savings_ci],
                "em_loss_diff": _float(self.loss_diff),
                "em_loss_ci95": [_float(v) for v in self.loss_ci],
                "n_boot": self.n_boot, "seed": self.seed}


@dataclass(frozen=True)
class PredictionReport:
    """How well a predictor forecast final values from the first part of each curve.

    ``mae_at[f]``: mean absolute error (metric units) of the predicted final value when the
    points with ``tokens <= f * budget`` have been seen; ``coverage_80``: share of final values
    inside the predicted 80% interval, over the same predictions.
    """

    mae_at: Mapping[float, float]
    n_at: Mapping[float, int]
    coverage_80: float

    def to_dict(self) -> dict[str, Any]:
        return {"mae_at": {_fraction_key(f): _float(v) for f, v in self.mae_at.items()},
                "coverage_80": _float(self.coverage_80),
                "n_at": {_fraction_key(f): n for f, n in self.n_at.items()}}


# --- arithmetic on one curve -----------------------------------------------------------------
def outcome(curve: Curve, stop_index: int, *, keep: str = "best",
            reason: str | None = None) -> CurveOutcome:
    """The outcome of stopping ``curve`` after point ``stop_index``.

    Example:
        >>> c = Curve("c", tokens=[1, 2, 3, 4], values=[0.1, 0.5, 0.3, 0.6])
        >>> o = outcome(c, 2)
        >>> o.token_savings, round(o.em_loss, 3)
        (0.25, 0.1)
    """
    check_keep(keep)
    n = len(curve)
    if not 0 <= stop_index < n:
        raise ParameterError(f"stop_index must be in [0, {n - 1}], got {stop_index=}")
    scores = curve.scores
    if keep == "best":
        delivered, reference = scores[: stop_index + 1].max(), scores.max()
    else:
        delivered, reference = scores[stop_index], scores[-1]
    fraction = _tokens_fraction(curve)[stop_index]
    return CurveOutcome(curve.curve_id, curve.task, n, int(stop_index), float(fraction),
                        float(delivered), float(reference), reason, float(curve.tokens[-1]),
                        float(curve.budget))


def oracle_stop(curve: Curve, price: float | Any, *, keep: str = "best") -> int:
    """The stop index that maximizes ``U = 100 * delivered - price * t_s / t_{n-1}`` in
    hindsight (the earliest one on ties).

    Example:
        >>> c = Curve("c", tokens=[1, 2, 3, 4], values=[0.1, 0.5, 0.3, 0.6])
        >>> oracle_stop(c, 20.0), oracle_stop(c, 1.0)
        (1, 3)
    """
    check_keep(keep)
    k = full_budget_price(price, float(curve.tokens[-1]), curve.budget)
    scores = curve.scores
    delivered = np.maximum.accumulate(scores) if keep == "best" else scores
    utility = 100.0 * delivered - k * _tokens_fraction(curve)
    return int(np.argmax(utility))


def _tokens_fraction(curve: Curve) -> np.ndarray:
    last = curve.tokens[-1]
    return curve.tokens / last if last > 0 else np.ones(len(curve))


# --- replay --------------------------------------------------------------------------------
def replay(curves: Sequence[Curve], policy: Policy, *,
           progress: Progress | None = None) -> list[tuple[int, Decision | None]]:
    """Replay every curve through ``policy``; return ``(stop_index, stopping decision)`` each.

    Step-synchronous: at step ``i`` the policy is asked, in one ``decide_many`` call when it
    has one, about ``curve.prefix(i + 1)`` of every curve still running. The last point needs
    no decision (the run ends there anyway), so a curve of ``n`` points costs ``n - 1`` calls.
    """
    curves = list(curves)
    stops: list[tuple[int, Decision | None]] = [(len(c) - 1, None) for c in curves]
    running = [j for j, c in enumerate(curves) if len(c) > 1]
    total, done, step = sum(len(c) - 1 for c in curves), 0, 0
    while running:
        prefixes = [curves[j].prefix(step + 1) for j in running]
        decisions = _decide_many(policy, prefixes)
        still = []
        for j, decision in zip(running, decisions):
            if decision.stop:
                stops[j] = (step, decision)
                done += len(curves[j]) - 1 - step  # this point and the ones never replayed
                continue
            done += 1
            if step + 1 < len(curves[j]) - 1:
                still.append(j)
        running, step = still, step + 1
        if progress is not None:
            progress(done, total)
    return stops


def _decide_many(policy: Policy, prefixes: list[Curve]) -> list[Decision]:
    batched = getattr(policy, "decide_many", None)
    decisions = list(batched(prefixes)) if batched is not None else [policy.decide(c) for c in prefixes]
    if len(decisions) != len(prefixes):
        raise ParameterError(f"policy {_name(policy)!r} returned {len(decisions)} decisions "
                             f"for {len(prefixes)} curves")
    return decisions


def backtest(curves: Sequence[Curve], policy: Policy, *, keep: str = "best",
             name: str | None = None, progress: Progress | None = None) -> PolicyReport:
    """Replay ``curves`` through ``policy`` and summarize savings and EM loss.

    Args:
        curves: finished curves (a ``CurveSet`` or any sequence of ``Curve``).
        policy: anything with ``decide(curve) -> Decision`` (and optionally ``decide_many``).
        keep: ``best`` (restore the best checkpoint seen; default) or ``last``.
        name: the report's name (default: ``policy.name``).
        progress: called as ``progress(done, total)`` points while replaying.
    """
    check_keep(keep)
    curves = list(curves)
    start = time.perf_counter()
    stops = replay(curves, policy, progress=progress)
    outcomes = [outcome(c, s, keep=keep, reason=_reason(d)) for c, (s, d) in zip(curves, stops)]
    wall = time.perf_counter() - start
    logger.info("backtest %s: %d curves in %.1fs", _name(policy), len(outcomes), wall)
    return PolicyReport.from_outcomes(name or _name(policy), _params(policy), outcomes,
                                      keep=keep, wall_s=wall)


def oracle(curves: Sequence[Curve], price: float | Any, *, keep: str = "best") -> PolicyReport:
    """The hindsight oracle at a full-budget ``price`` (EM points per budget, or a ``Price``)."""
    start = time.perf_counter()
    outcomes = [outcome(c, oracle_stop(c, price, keep=keep), keep=keep, reason=ORACLE)
                for c in curves]
    return PolicyReport.from_outcomes(ORACLE, {"price": _plain(price)}, outcomes, keep=keep,
                                      wall_s=time.perf_counter() - start)


def never_stop(curves: Sequence[Curve], *, keep: str = "best") -> PolicyReport:
    """The baseline that always trains to the end (zero savings, zero keep-best loss)."""
    outcomes = [outcome(c, len(c) - 1, keep=keep) for c in curves]
    return PolicyReport.from_outcomes("never", {}, outcomes, keep=keep)


def frontier(curves: Sequence[Curve], make_policy: Callable[[Any], Policy], values: Iterable[Any],
             *, name: str | None = None, keep: str = "best",
             progress: Progress | None = None) -> Frontier:
    """Sweep one parameter: backtest ``make_policy(v)`` for each ``v`` in ``values``.

    Example:
        >>> f = frontier(curves, lambda p: Patience(p), [1, 3, 5, 10], name="patience")  # doctest: +SKIP
    """
    values = list(values)
    reports = []
    for i, value in enumerate(values):
        report = backtest(curves, make_policy(value), keep=keep,
                          progress=_sub_progress(progress, i, len(values)))
        reports.append(report)
    return frontier_from_reports(name or (reports[0].name if reports else "policy"), reports)


def frontier_from_reports(name: str, reports: Iterable[PolicyReport]) -> Frontier:
    """A frontier from reports already computed (one per parameter setting)."""
    reports = tuple(reports)
    return Frontier(name, tuple(FrontierPoint(r.params, r.token_savings_mean, r.em_loss_mean,
                                              r.em_loss_p95, r.n_curves) for r in reports),
                    reports)


def oracle_frontier(curves: Sequence[Curve], prices: Iterable[float], *,
                    keep: str = "best") -> Frontier:
    """The oracle's (savings, loss) pairs over a sweep of prices."""
    return frontier_from_reports(ORACLE, [oracle(curves, p, keep=keep) for p in prices])


def _sub_progress(progress: Progress | None, index: int, count: int) -> Progress | None:
    """Map the progress of the ``index``-th of ``count`` runs onto one 0..1000*count scale."""
    if progress is None:
        return None
    def report(done: int, total: int) -> None:
        progress(index * 1000 + int(1000 * done / max(total, 1)), 1000 * count)
    return report


# --- comparing two policies ------------------------------------------------------------------
def compare(a: PolicyReport, b: PolicyReport, *, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Paired comparison of two reports on the same curves: mean differences ``a - b`` of
    token savings and of EM loss, with percentile-bootstrap 95% intervals (seeded).

    Example:
        >>> c = compare(backtest(curves, CostAware(pred)), backtest(curves, Patience(5)))  # doctest: +SKIP
        >>> c.loss_diff, c.loss_ci  # doctest: +SKIP
    """
    if n_boot < 1:
        raise ParameterError(f"n_boot must be >= 1, got {n_boot=}")
    ids_a = [o.curve_id for o in a.outcomes]
    if ids_a != [o.curve_id for o in b.outcomes]:
        raise ParameterError(f"reports {a.name!r} and {b.name!r} must cover the same curves "
                             f"in the same order to be compared")
    if not ids_a:
        raise ParameterError("cannot compare reports with no curves")
    savings = np.array([x.token_savings - y.token_savings for x, y in zip(a.outcomes, b.outcomes)])
    losses = np.array([x.em_loss - y.em_loss for x, y in zip(a.outcomes, b.outcomes)])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(ids_a), size=(n_boot, len(ids_a)))
    return Comparison(a.name, b.name, len(ids_a), float(savings.mean()),
                      _interval(savings[index].mean(axis=1)), float(losses.mean()),
                      _interval(losses[index].mean(axis=1)), n_boot, seed)


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
    if n_boot < 1:
        raise ParameterError(f"n_boot must be >= 1, got {n_boot=}")
    segment = front.segment_at(rival.token_savings_mean)
    if segment is None or not front.reports:
        return None
    reports = [front.reports[i] for i in segment] + [rival]
    if len({tuple(o.curve_id for o in r.outcomes) for r in reports}) != 1:
        raise ParameterError(f"frontier {front.name!r} and report {rival.name!r} must cover "
                             f"the same curves in the same order")
    savings = np.array([[o.token_savings for o in r.outcomes] for r in reports])
    losses = np.array([[o.em_loss for o in r.outcomes] for r in reports])

    def gap(rows: Any) -> np.ndarray:
        s, loss = savings[:, rows].mean(axis=-1), losses[:, rows].mean(axis=-1)
        span = s[1] - s[0]
        share = np.where(span > 0, np.clip((s[2] - s[0]) / np.where(span > 0, span, 1.0), 0, 1), 0)
        return (1 - share) * loss[0] + share * loss[1] - loss[2]

    index = np.random.default_rng(seed).integers(0, savings.shape[1], size=(n_boot, savings.shape[1]))
    return float(gap(slice(None))), _interval(gap(index))


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


# --- prediction quality ----------------------------------------------------------------------
def seen_at(curve: Curve, fraction: float) -> Curve | None:
    """The points seen when ``fraction`` of the budget is spent (``tokens <= f * budget``), or
    ``None`` when no point or every point is seen by then (nothing to predict)."""
    n = int(np.searchsorted(curve.tokens, fraction * curve.budget, side="right"))
    return curve.prefix(n) if 1 <= n < len(curve) else None


def prediction_report(curves: Sequence[Curve], predictor: Any, *,
                      fractions: Sequence[float] = MAE_FRACTIONS,
                      progress: Progress | None = None) -> PredictionReport:
    """MAE of the predicted final value from the first ``f`` of each curve's budget, and the
    80%-interval coverage of the final values, over all ``fractions``.

    The final value is the curve's last observation; the prediction is read at its tokens.
    A curve with no point at or below ``f * budget``, or whose last point is already in the
    prefix, gives no prediction at that fraction.
    """
    errors: dict[float, list[float]] = {f: [] for f in fractions}
    inside: list[bool] = []
    for i, f in enumerate(fractions):
        pairs = [(c, p) for c in curves if (p := seen_at(c, f)) is not None]
        predictions = _predict_at_end(predictor, pairs)
        for (curve, _), prediction in zip(pairs, predictions):
            final = float(curve.scores[-1])
            errors[f].append(abs(float(prediction.median[-1]) - final))
            low, high = prediction.quantile(0.1)[-1], prediction.quantile(0.9)[-1]
            inside.append(bool(low <= final <= high))
        if progress is not None:
            progress(i + 1, len(fractions))
    return PredictionReport({f: _mean(np.array(e)) for f, e in errors.items()},
                            {f: len(e) for f, e in errors.items()}, _mean(np.array(inside, float)))


def _predict_at_end(predictor: Any, pairs: list[tuple[Curve, Curve]]) -> list[Any]:
    """Predictions of each prefix at its full curve's last tokens, batched when possible."""
    if not pairs:
        return []
    prefixes = [p for _, p in pairs]
    horizons = [np.array([c.tokens[-1]]) for c, _ in pairs]
    many = getattr(predictor, "predict_many", None)
    if many is not None:
        try:
            return list(many(prefixes, horizons=horizons))
        except TypeError:  # a predict_many that takes one horizon grid for all curves
            pass
    return [predictor.predict(p, horizons=h) for p, h in zip(prefixes, horizons)]


# --- the JSON contract -----------------------------------------------------------------------
def report_json(*, n_curves: int, prediction: PredictionReport | None,
                policies: Sequence[PolicyReport], frontiers: Mapping[str, Frontier],
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backtest JSON of DESIGN.md: ``n_curves``, ``prediction``, ``policies``,
    ``frontier`` (extra keys may be added through ``extra``, never replacing these)."""
    empty = {"mae_at": {_fraction_key(f): None for f in MAE_FRACTIONS}, "coverage_80": None}
    data: dict[str, Any] = {
        "n_curves": int(n_curves),
        "prediction": prediction.to_dict() if prediction is not None else empty,
        "policies": [r.summary() for r in policies],
        "frontier": {name: f.to_list() for name, f in frontiers.items()},
    }
    for key, value in (extra or {}).items():
        if key in data:
            raise ParameterError(f"extra key {key!r} would replace a contract key")
        data[key] = value
    return data


CONTRACT_KEYS = {
    "top": ("n_curves", "prediction", "policies", "frontier"),
    "prediction": ("mae_at", "coverage_80"),
    "mae_at": ("0.1", "0.25", "0.5"),
    "policy": ("name", "params", "token_savings_mean", "em_loss_mean", "em_loss_p95", "n_curves"),
    "frontier_point": ("params", "token_savings_mean", "em_loss_mean"),
}


def contract_problems(data: Mapping[str, Any]) -> list[str]:
    """The keys of DESIGN.md's backtest JSON that ``data`` lacks (empty when it conforms)."""
    missing = [k for k in CONTRACT_KEYS["top"] if k not in data]
    prediction = data.get("prediction", {})
    missing += [f"prediction.{k}" for k in CONTRACT_KEYS["prediction"] if k not in prediction]
    missing += [f"prediction.mae_at.{k}" for k in CONTRACT_KEYS["mae_at"]
                if k not in prediction.get("mae_at", {})]
    for i, entry in enumerate(data.get("policies", [])):
        missing += [f"policies[{i}].{k}" for k in CONTRACT_KEYS["policy"] if k not in entry]
    for name, points in data.get("frontier", {}).items():
        for i, point in enumerate(points):
            missing += [f"frontier.{name}[{i}].{k}" for k in CONTRACT_KEYS["frontier_point"]
                        if k not in point]
    return missing


# --- the standard suite: named policies, sweeps, the oracle ----------------------------------
METASTOP = "metastop"
IMPROVEMENT_PROBABILITY = "improvement-probability"
STANDARD_POLICIES = (METASTOP, "patience-3", "patience-5", "patience-10",
                     IMPROVEMENT_PROBABILITY, ORACLE)
PRICE_SWEEP = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
"""Prices swept for the metastop frontier (at the shipped risk and min_fraction): one point
is worth this share of the budget."""
FRONTIER_ENDS = ((0.0005, 0.9, 0.02), (0.001, 0.9, 0.02),
                 (5.0, 0.95, 0.1), (20.0, 0.99, 0.1),
                 (100.0, 0.999, 0.3), (100.0, 0.999, 0.6), (100.0, 0.999, 0.85),
                 (100.0, 0.999, 1.0))
"""``(price, risk, min_fraction)`` settings that extend the metastop frontier past the ends
of ``PRICE_SWEEP``, where the price alone stops moving the policy: at the cheap end it may
stop from 2% of the budget on; at the cautious end (a point worth 5 to 100 budgets) it judges
the gain by a higher quantile and waits for a larger share of the budget, up to never
stopping before the budget (``min_fraction`` 1: no savings, no loss)."""
PATIENCE_SWEEP = (1, 2, 3, 4, 5, 7, 10, 15, 20)
PROBABILITY_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35)


class CachingPredictor:
    """Wraps a predictor and remembers its predictions per (curve, prefix length, horizons).

    A policy's predictions do not depend on its price, so a price sweep over the same curves
    asks the model only once per prefix. Curve ids must be unique among the curves seen.
    """

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self._cache: dict[tuple, Any] = {}
        self.hits = self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    @staticmethod
    def _key(curve: Curve, horizons: Any) -> tuple:
        h = None if horizons is None else np.asarray(horizons, dtype=np.float64).tobytes()
        return curve.curve_id, len(curve), float(curve.tokens[-1]), h

    def predict(self, curve: Curve, horizons: Any = None) -> Any:
        return self.predict_many([curve], horizons=None if horizons is None else [horizons])[0]

    def predict_many(self, curves: Sequence[Curve], horizons: Any = None) -> list[Any]:
        per_curve = _per_curve_horizons(horizons, len(curves))
        keys = [self._key(c, h) for c, h in zip(curves, per_curve)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = _predict_batch(self.predictor, [curves[i] for i in todo],
                                   [per_curve[i] for i in todo])
            for i, prediction in zip(todo, fresh):
                self._cache[keys[i]] = prediction
        return [self._cache[k] for k in keys]


def _per_curve_horizons(horizons: Any, n: int) -> list[Any]:
    """``None``, one grid for every curve, or one grid per curve -> one entry per curve."""
    if horizons is None:
        return [None] * n
    if isinstance(horizons, np.ndarray) and horizons.ndim == 1:
        return [horizons] * n
    horizons = list(horizons)
    if horizons and np.ndim(horizons[0]) == 0:
        return [np.asarray(horizons, dtype=np.float64)] * n
    if len(horizons) != n:
        raise ParameterError(f"horizons must give one grid per curve ({n}), got {len(horizons)}")
    return horizons


def _predict_batch(predictor: Any, curves: list[Curve], horizons: list[Any]) -> list[Any]:
    many = getattr(predictor, "predict_many", None)
    if many is None:
        return [predictor.predict(c, horizons=h) for c, h in zip(curves, horizons)]
    if all(h is None for h in horizons):
        return list(many(curves))
    return list(many(curves, horizons=horizons))


def make_policy(name: str, predictor: Any = None, *, price: Any = None, risk: float | None = None,
                min_fraction: float | None = None) -> Policy:
    """A policy by its report name: ``metastop`` (CostAware at the shipped defaults, or at
    ``price`` / ``risk`` / ``min_fraction``), ``metastop-confirmed-N`` (the same, stopping
    only after N stop verdicts in a row), ``patience-N``, ``improvement-probability``.

    Example:
        >>> make_policy("patience-5").params["patience"]
        5
    """
    from ..stop import policies

    if name.startswith("patience-"):
        patience = name.removeprefix("patience-")
        if not patience.isdigit():
            raise ParameterError(f"policy {name!r}: patience must be a whole number, e.g. patience-5")
        return policies.Patience(int(patience))
    if name == METASTOP:
        given = {"price": price, "risk": risk, "min_fraction": min_fraction}
        return policies.CostAware(predictor, **{k: v for k, v in given.items() if v is not None})
    if name.startswith(f"{METASTOP}-confirmed-"):
        n = name.removeprefix(f"{METASTOP}-confirmed-")
        if not n.isdigit():
            raise ParameterError(f"policy {name!r}: N must be a whole number, e.g. metastop-confirmed-2")
        return policies.Confirmed(make_policy(METASTOP, predictor, price=price, risk=risk,
                                              min_fraction=min_fraction), n=int(n))
    if name == IMPROVEMENT_PROBABILITY:
        return policies.ImprovementProbability(predictor)
    raise ParameterError(f"unknown policy {name!r}; known: {list(STANDARD_POLICIES)}, "
                         f"metastop-confirmed-N or patience-N for any N >= 1")


def metastop_sweep() -> list[tuple[float, float, float]]:
    """The metastop frontier's settings ``(price, risk, min_fraction)``, by increasing price:
    ``PRICE_SWEEP`` at the shipped risk and min_fraction, plus ``FRONTIER_ENDS``."""
    from ..stop.policies import DEFAULT_MIN_FRACTION, DEFAULT_RISK

    standard = [(price, DEFAULT_RISK, DEFAULT_MIN_FRACTION) for price in PRICE_SWEEP]
    return sorted(standard + list(FRONTIER_ENDS))


def as_price(price: Any) -> Any:
    """``None`` -> the shipped ``DEFAULT_PRICE``; a number -> ``Price.fraction_of_budget``."""
    from ..stop.prices import Price
    from ..stop.prices import DEFAULT_PRICE

    if price is None:
        return DEFAULT_PRICE
    return price if isinstance(price, Price) else Price.fraction_of_budget(price)


@dataclass(frozen=True)
class Suite:
    """The standard comparison on one set of curves: named policies, frontiers, the oracle,
    prediction quality. ``to_json()`` is DESIGN.md's backtest JSON."""

    n_curves: int
    price: Any
    keep: str
    reports: tuple[PolicyReport, ...]
    frontiers: Mapping[str, Frontier]
    prediction: PredictionReport | None
    never: PolicyReport
    oracle: PolicyReport

    def report(self, name: str) -> PolicyReport:
        for report in self.reports:
            if report.name == name:
                return report
        raise KeyError(f"no policy {name!r} in this suite; have {[r.name for r in self.reports]}")

    def utility(self) -> dict[str, Any]:
        """Mean utility of each policy at the suite's price, and its share of the oracle's
        gain over never stopping: ``(U - U_never) / (U_oracle - U_never)``."""
        oracle_u = self.oracle.utility_mean(self.price)
        never_u = self.never.utility_mean(self.price)
        out: dict[str, Any] = {"price": _plain(self.price), "never": _float(never_u),
                               "oracle": _float(oracle_u), "policies": {}}
        for report in self.reports:
            u = report.utility_mean(self.price)
            out["policies"][report.name] = {
                "utility_mean": _float(u),
                "share_of_oracle_gain": _float(_share(u, never_u, oracle_u)),
                "ratio_to_oracle": _float(u / oracle_u if oracle_u else math.nan)}
        return out

    def frontier_utility(self, name: str = METASTOP) -> list[dict[str, Any]]:
        """Each point of a price-swept frontier: its utility's share of the oracle's gain
        over never stopping, both at that point's own price."""
        front, best = self.frontiers.get(name), self.frontiers.get(ORACLE)
        if front is None or best is None or len(front.reports) != len(best.reports):
            return []
        from ..stop.prices import Price

        out = []
        for mine, theirs in zip(front.reports, best.reports):
            price = Price.from_dict(mine.params["price"])
            u, o, n = (r.utility_mean(price) for r in (mine, theirs, self.never))
            out.append({"params": _plain(mine.params), "utility_mean": _float(u),
                        "oracle_utility_mean": _float(o),
                        "share_of_oracle_gain": _float(_share(u, n, o))})
        return out

    def dominated(self, name: str = METASTOP, baseline: str = "patience") -> list[dict[str, Any]]:
        """The points of the ``baseline`` frontier (and the ``baseline-N`` policies) that the
        ``name`` frontier does not dominate (reach at least their savings with at most their
        mean loss, interpolating between its Pareto points), each with ``loss_gap_ci95``: the
        95% interval of how much more the frontier loses there (``hull_gap``); an interval
        holding 0 means the two cannot be told apart on these curves."""
        front = self.frontiers.get(name)
        if front is None:
            return []
        rivals = list(getattr(self.frontiers.get(baseline), "reports", ()))
        swept = [r.params for r in rivals]
        rivals += [r for r in self.reports
                   if r.name.startswith(f"{baseline}-") and r.params not in swept]
        out = []
        for r in rivals:
            if front.dominates(r.token_savings_mean, r.em_loss_mean):
                continue
            gap = hull_gap(front, r)
            out.append({"params": _plain(r.params), "token_savings_mean": _float(r.token_savings_mean),
                        "em_loss_mean": _float(r.em_loss_mean),
                        "metastop_loss_at_same_savings": _float(front.loss_at(r.token_savings_mean)),
                        "loss_gap_ci95": None if gap is None else [_float(x) for x in gap[1]]})
        return out

    def to_json(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        more = {"keep": self.keep, "price": _plain(self.price), "utility": self.utility(),
                **(extra or {})}
        if self.frontier_utility():
            more["utility"]["frontier"] = {METASTOP: self.frontier_utility()}
        return report_json(n_curves=self.n_curves, prediction=self.prediction,
                           policies=self.reports, frontiers=self.frontiers, extra=more)


def _share(u: float, never_u: float, oracle_u: float) -> float:
    gap = oracle_u - never_u
    return (u - never_u) / gap if gap > 1e-12 else math.nan


def run_suite(curves: Sequence[Curve], predictor: Any, *,
              policies: Sequence[str] = STANDARD_POLICIES, price: Any = None,
              keep: str = "best", sweeps: bool = True, predict: bool = True,
              progress: Progress | None = None) -> Suite:
    """Backtest the named policies (plus the hindsight oracle at ``price``), sweep the
    frontiers (metastop over ``metastop_sweep()``, patience over ``PATIENCE_SWEEP``,
    improvement-probability over ``PROBABILITY_SWEEP``, the oracle over the same prices as
    metastop) and measure prediction quality.

    Predictions are cached across policies (``CachingPredictor``), so the first model-based
    policy pays for the model and sweeps are cheap. ``price`` is a ``Price`` or the share of
    the budget one point is worth (default: the shipped ``DEFAULT_PRICE``).
    """
    check_keep(keep)
    price = as_price(price)
    curves = list(curves)
    cached = CachingPredictor(predictor) if predictor is not None else None
    jobs = _suite_jobs(curves, cached, policies, price, keep, sweeps, predict)
    results: dict[str, Any] = {}
    for i, (key, job) in enumerate(jobs):
        results[key] = job(_sub_progress(progress, i, len(jobs)))
    if progress is not None:
        progress(1000 * len(jobs), 1000 * len(jobs))
    reports = tuple(results[f"policy:{n}"] for n in policies)
    frontiers = {k.removeprefix("frontier:"): v for k, v in results.items()
                 if k.startswith("frontier:")}
    best = results.get(f"policy:{ORACLE}") or oracle(curves, price, keep=keep)
    return Suite(len(curves), price, keep, reports, frontiers, results.get("prediction"),
                 never_stop(curves, keep=keep), best)


def _suite_jobs(curves: list[Curve], predictor: Any, names: Sequence[str], price: Any,
                keep: str, sweeps: bool, predict: bool) -> list[tuple[str, Callable]]:
    """The suite's work as ``(key, job(progress))`` pairs, in the order they run."""
    from ..stop.prices import Price

    jobs: list[tuple[str, Callable]] = []
    for name in names:
        if name == ORACLE:
            jobs.append((f"policy:{name}", lambda p: oracle(curves, price, keep=keep)))
            continue
        policy = make_policy(name, predictor, price=price)
        jobs.append((f"policy:{name}", lambda p, pol=policy, n=name:
                     backtest(curves, pol, keep=keep, name=n, progress=p)))
    if sweeps and METASTOP in names:
        def metastop_at(setting: tuple[float, float, float]) -> Policy:
            price, risk, min_fraction = setting
            return make_policy(METASTOP, predictor, price=as_price(price), risk=risk,
                               min_fraction=min_fraction)

        jobs.append((f"frontier:{METASTOP}", lambda p: frontier(
            curves, metastop_at, metastop_sweep(), name=METASTOP, keep=keep, progress=p)))
    if sweeps and any(n.startswith("patience-") for n in names):
        jobs.append(("frontier:patience", lambda p: frontier(
            curves, lambda n: make_policy(f"patience-{n}"), PATIENCE_SWEEP, name="patience",
            keep=keep, progress=p)))
    if sweeps and IMPROVEMENT_PROBABILITY in names:
        from ..stop.policies import ImprovementProbability
        jobs.append((f"frontier:{IMPROVEMENT_PROBABILITY}", lambda p: frontier(
            curves, lambda q: ImprovementProbability(predictor, p=q), PROBABILITY_SWEEP,
            name=IMPROVEMENT_PROBABILITY, keep=keep, progress=p)))
    if sweeps and ORACLE in names:
        jobs.append((f"frontier:{ORACLE}", lambda p: oracle_frontier(
            curves, [Price.fraction_of_budget(price) for price, _, _ in metastop_sweep()],
            keep=keep)))
    if predict and predictor is not None:
        jobs.append(("prediction", lambda p: prediction_report(curves, predictor, progress=p)))
    return jobs


# --- per-curve analysis (what `metastop analyze`, `predict` and `plot` show) ----------------
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
                "fraction_seen": _float(c.fraction_seen), "best": _float(c.best),
                "predicted_from_points": self.seen,
                "predicted_from_tokens": _float(float(c.tokens[self.seen - 1])),
                "predicted_final": _float(self.predicted_final),
                "interval_80": None if self.interval is None else [_float(v) for v in self.interval],
                "true_final": _float(self.true_final),
                "stop_index": self.stop_index, "stop_tokens": _float(self.stop_tokens),
                "tokens_saved": _float(self.tokens_saved),
                "tokens_saved_fraction": _float(self.tokens_saved / c.budget if c.budget else 0.0),
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
    predictions = _predict_batch(predictor, [a.curve.prefix(a.seen) for a in out],
                                 [_band_horizons(a.curve.prefix(a.seen)) for a in out])
    return [CurveAnalysis(a.curve, a.stop_index, a.decision, a.seen, p)
            for a, p in zip(out, predictions)]


def _decide_unfinished(policy: Policy, curves: list[Curve],
                       stops: list[tuple[int, Decision | None]]) -> list[Decision | None]:
    """The decision after the last point of every running (unfinished, unstopped) curve."""
    todo = [i for i, (c, (_, d)) in enumerate(zip(curves, stops))
            if d is None and c.tokens[-1] < c.budget]
    out: list[Decision | None] = [None] * len(curves)
    for i, decision in zip(todo, _decide_many(policy, [curves[i] for i in todo]) if todo else []):
        out[i] = decision
    return out


def _prediction_point(curve: Curve, stop_index: int | None, at_fraction: float | None) -> int:
    if at_fraction is not None:
        return len(curve.upto(at_fraction * curve.budget))
    if stop_index is not None:
        return stop_index + 1
    finished = curve.tokens[-1] >= curve.budget
    return max(1, len(curve) - 1) if finished else len(curve)


def _band_horizons(prefix: Curve) -> np.ndarray:
    from ..stop.policies import evaluation_horizons

    return evaluation_horizons(prefix)


def forecast_at(curves: Sequence[Curve], predictor: Any, fraction: float) -> list[CurveAnalysis]:
    """Predict each curve's value at its budget from the first ``fraction`` of the budget
    (the points with ``tokens <= fraction * budget``; at least the first point)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ParameterError(f"fraction must be in (0, 1], got {fraction=}")
    curves = list(curves)
    seen = [len(c.upto(fraction * c.budget)) for c in curves]
    prefixes = [c.prefix(n) for c, n in zip(curves, seen)]
    predictions = _predict_batch(predictor, prefixes, [np.array([c.budget]) for c in curves])
    return [CurveAnalysis(c, None, None, n, p) for c, n, p in zip(curves, seen, predictions)]


def sample(curves: Sequence[Curve], limit: int | None, *, seed: int = 0) -> list[Curve]:
    """A seeded random sample of at most ``limit`` curves, in their original order."""
    curves = list(curves)
    if limit is None or limit >= len(curves):
        return curves
    keep = np.sort(np.random.default_rng(seed).choice(len(curves), size=limit, replace=False))
    return [curves[i] for i in keep]


# --- small helpers ---------------------------------------------------------------------------
def check_keep(keep: str) -> None:
    if keep not in KEEP:
        raise ParameterError(f"keep must be one of {KEEP}, got {keep=}")


def full_budget_price(price: float | Any, tokens_final: float, budget: float) -> float:
    """The price ``k`` of a curve's full run in EM points: ``price`` itself when it is a
    number, else ``tokens_final / price.tokens_per_point(budget)`` for a ``Price`` (so a price
    of one point per 5% of the budget is ``k = 20``).

    Example:
        >>> full_budget_price(20.0, 1e9, 1e9)
        20.0
    """
    per_point = getattr(price, "tokens_per_point", None)
    if per_point is not None:
        return float(tokens_final) / float(per_point(budget))
    if (isinstance(price, bool) or not isinstance(price, (int, float, np.floating))
            or not math.isfinite(price) or price < 0):
        raise ParameterError(f"price must be a Price or a finite number >= 0 (EM points per "
                             f"full budget), got {price=}")
    return float(price)


def p95(values: np.ndarray) -> float:
    """The 95th percentile (linear interpolation), ``nan`` for no values."""
    return float(np.percentile(values, 95)) if len(values) else math.nan


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _name(policy: Any) -> str:
    return str(getattr(policy, "name", type(policy).__name__))


def _params(policy: Any) -> dict[str, Any]:
    params = getattr(policy, "params", {})
    return dict(params() if callable(params) else params)


def _reason(decision: Decision | None) -> str | None:
    if decision is None:
        return None
    reason = decision.reason
    return getattr(reason, "value", str(reason))


def _fraction_key(f: float) -> str:
    return repr(float(f))


def _float(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """JSON-safe plain data: numpy scalars to Python, objects with ``to_dict``/``params`` to dicts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (int, str, bool)):
        return value
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    return str(value)
