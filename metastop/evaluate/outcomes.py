"""Replay finished curves through stopping policies and measure what stopping saved and lost.

The numbers every report uses (see DESIGN.md, "Backtest definitions"). For a curve with
observations ``(t_0..t_{n-1}, y_0..y_{n-1})`` a policy sees the points in order and stops
after point ``s`` (``s = n - 1`` if it never stops):

- token savings ``= 1 - t_s / t_{n-1}``;
- delivered value, keep-best (default, like restoring the best checkpoint): best of
  ``y_0..y_s`` against the best of ``y_0..y_{n-1}``; keep-last: ``y_s`` against ``y_{n-1}``;
- EM loss: how much worse delivered is than the reference, in the metric's units (computed on
  scores, so it is ``>= 0`` for keep-best whatever the metric's direction);
- utility at a ``Price``, in points: ``U = to_points(delivered) - k * t_s / t_{n-1}`` (on
  scores), where ``k = price.points_for(t_{n-1}, budget)`` is what the full run's tokens are
  worth in points; the hindsight oracle stops where ``U`` is largest.

A policy never sees the future: at step ``i`` it receives ``curve.prefix(i + 1)`` and nothing
else. Replay is step-synchronous across curves, so a model-based policy is asked about all
still-running curves at once (``decide_many``), which keeps the predictor's calls batched.

Example:
    >>> from metastop.evaluate.outcomes import backtest
    >>> report = backtest(curves, Patience(5))                      # doctest: +SKIP
    >>> report.token_savings_mean, report.em_loss_mean, report.em_loss_p95  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..stop.decision import Decision
from ..stop.prices import Price, check_price, to_points
from .common import (
    ORACLE,
    Policy,
    Progress,
    check_keep,
    decide_many,
    json_float,
    mean,
    p95,
    plain,
    policy_name,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveOutcome:
    """What one policy did on one curve.

    Attributes:
        curve_id, task: the curve.
        n_points: points in the curve.
        stop_index: the point ``s`` the policy stopped after (``n_points - 1``: never stopped).
        tokens_fraction: ``t_s / t_{n-1}``; token savings is ``1 - tokens_fraction``.
        delivered, reference: scores (higher is better) of the delivered model and of the
            reference (full run), under the report's keep rule, in metric units.
        reason: the stopping decision's reason value, or ``None`` if the curve ran to its end.
        tokens_final, budget: the curve's last tokens and its budget (for ``utility``).

    Example:
        >>> o = CurveOutcome("c", None, 4, 1, 0.5, 0.4, 0.5, tokens_final=100.0, budget=100.0)
        >>> o.token_savings, round(o.utility(Price.fraction_of_budget(0.05)), 6)
        (0.5, 30.0)
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

    def utility(self, price: Price) -> float:
        """``to_points(delivered) - k * t_s / t_{n-1}`` in points, where ``k`` is what the
        full run's tokens are worth at ``price`` (``Price.points_for``)."""
        k = check_price("price", price).points_for(self.tokens_final, self.budget)
        return to_points(self.delivered) - k * self.tokens_fraction

    def to_dict(self) -> dict[str, Any]:
        return {"curve_id": self.curve_id, "task": self.task, "n_points": self.n_points,
                "stop_index": self.stop_index, "stopped": self.stopped,
                "token_savings": self.token_savings, "em_loss": self.em_loss,
                "reason": self.reason}


@dataclass(frozen=True)
class PolicyReport:
    """One policy replayed over a set of curves, with its summary numbers.

    Build it with ``PolicyReport.from_outcomes`` (or ``backtest``); the summary fields are
    computed from ``outcomes``. Losses are in metric units, as in the JSON contract.

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
        return cls(name, dict(params), outcomes, keep, mean(savings), mean(losses),
                   p95(losses), mean(stopped), wall_s)

    @property
    def n_curves(self) -> int:
        return len(self.outcomes)

    def utility_mean(self, price: Price) -> float:
        """Mean utility over curves at ``price``, in points (``CurveOutcome.utility``)."""
        check_price("price", price)
        return mean(np.array([o.utility(price) for o in self.outcomes]))

    def by_task(self) -> dict[str, PolicyReport]:
        """The same report split by the curves' ``task`` (``"-"`` when unknown)."""
        groups: dict[str, list[CurveOutcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault(outcome.task or "-", []).append(outcome)
        return {task: PolicyReport.from_outcomes(self.name, self.params, group, keep=self.keep)
                for task, group in sorted(groups.items())}

    def summary(self) -> dict[str, Any]:
        """The contract's policy entry (DESIGN.md) plus a few extra keys."""
        return {"name": self.name, "params": plain(self.params),
                "token_savings_mean": json_float(self.token_savings_mean),
                "em_loss_mean": json_float(self.em_loss_mean),
                "em_loss_p95": json_float(self.em_loss_p95), "n_curves": self.n_curves,
                "stopped_share": json_float(self.stopped_share), "keep": self.keep,
                "wall_s": round(self.wall_s, 3)}


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
    fraction = tokens_fraction(curve)[stop_index]
    return CurveOutcome(curve.curve_id, curve.task, n, int(stop_index), float(fraction),
                        float(delivered), float(reference), reason, float(curve.tokens[-1]),
                        float(curve.budget))


def oracle_stop(curve: Curve, price: Price, *, keep: str = "best") -> int:
    """The stop index that maximizes the utility ``U`` at ``price`` in hindsight (the earliest
    one on ties).

    Example:
        >>> c = Curve("c", tokens=[1, 2, 3, 4], values=[0.1, 0.5, 0.3, 0.6])
        >>> oracle_stop(c, Price.fraction_of_budget(0.05)), oracle_stop(c, Price.fraction_of_budget(1.0))
        (1, 3)
    """
    check_keep(keep)
    k = check_price("price", price).points_for(float(curve.tokens[-1]), curve.budget)
    scores = curve.scores
    delivered = np.maximum.accumulate(scores) if keep == "best" else scores
    utility = to_points(delivered) - k * tokens_fraction(curve)
    return int(np.argmax(utility))


def tokens_fraction(curve: Curve) -> np.ndarray:
    """``t_i / t_{n-1}`` for every point (all ones when the last tokens are 0)."""
    last = curve.tokens[-1]
    return curve.tokens / last if last > 0 else np.ones(len(curve))


# --- replay --------------------------------------------------------------------------------
def replay(curves: Sequence[Curve], policy: Policy, *, contexts: Sequence[Any] | None = None,
           progress: Progress | None = None) -> list[tuple[int, Decision | None]]:
    """Replay every curve through ``policy``; return ``(stop_index, stopping decision)`` each.

    Step-synchronous: at step ``i`` the policy is asked, in one ``decide_many`` call when it
    has one, about ``curve.prefix(i + 1)`` of every curve still running. The last point needs
    no decision (the run ends there anyway), so a curve of ``n`` points costs ``n - 1`` calls.

    ``contexts``: per curve, its context (the finished runs of its task, see
    ``metastop.evaluate.contexts``; ``None`` for none); each curve is decided by
    ``policy.with_context(its context)``, one call per step for the curves sharing a context.
    (Curves that each have their own context batch better through a ``ContextPredictor``.)
    """
    curves = list(curves)
    deciders = _deciders(policy, curves, contexts)
    stops: list[tuple[int, Decision | None]] = [(len(c) - 1, None) for c in curves]
    running = [j for j, c in enumerate(curves) if len(c) > 1]
    total, done, step = sum(len(c) - 1 for c in curves), 0, 0
    while running:
        decisions = _decide_step(deciders, curves, running, step)
        still = []
        for j in running:
            decision = decisions[j]
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


def _deciders(policy: Policy, curves: list[Curve], contexts: Sequence[Any] | None) -> list[Policy]:
    """The policy deciding each curve: ``policy`` itself, or its twin with the curve's
    context (one twin per distinct context object)."""
    if contexts is None:
        return [policy] * len(curves)
    contexts = list(contexts)
    if len(contexts) != len(curves):
        raise ParameterError(f"contexts must hold one entry per curve, got {len(contexts)} "
                             f"for {len(curves)} curves")
    twins: dict[int, Policy] = {}
    out = []
    for context in contexts:
        if context is None:
            out.append(policy)
            continue
        if id(context) not in twins:
            twins[id(context)] = _with_context(policy, context)
        out.append(twins[id(context)])
    return out


def _with_context(policy: Policy, context: Any) -> Policy:
    method = getattr(policy, "with_context", None)
    return method(context) if method is not None else policy


def _decide_step(deciders: list[Policy], curves: list[Curve], running: list[int],
                 step: int) -> dict[int, Decision]:
    """The decisions after point ``step`` of the running curves, one batch per decider."""
    groups: dict[int, list[int]] = {}
    for j in running:
        groups.setdefault(id(deciders[j]), []).append(j)
    out: dict[int, Decision] = {}
    for members in groups.values():
        decided = decide_many(deciders[members[0]], [curves[j].prefix(step + 1) for j in members])
        out.update(zip(members, decided))
    return out


def backtest(curves: Sequence[Curve], policy: Policy, *, keep: str = "best",
             name: str | None = None, contexts: Sequence[Any] | None = None,
             progress: Progress | None = None) -> PolicyReport:
    """Replay ``curves`` through ``policy`` and summarize savings and EM loss.

    Args:
        curves: finished curves (a ``CurveSet`` or any sequence of ``Curve``).
        policy: anything with ``decide(curve) -> Decision`` (and optionally ``decide_many``).
        keep: ``best`` (restore the best checkpoint seen; default) or ``last``.
        name: the report's name (default: ``policy.name``).
        contexts: per curve, its context or ``None`` (see ``replay``).
        progress: called as ``progress(done, total)`` points while replaying.
    """
    check_keep(keep)
    curves = list(curves)
    start = time.perf_counter()
    stops = replay(curves, policy, contexts=contexts, progress=progress)
    outcomes = [outcome(c, s, keep=keep, reason=_reason(d)) for c, (s, d) in zip(curves, stops)]
    wall = time.perf_counter() - start
    logger.info("backtest %s: %d curves in %.1fs", policy_name(policy), len(outcomes), wall)
    return PolicyReport.from_outcomes(name or policy_name(policy), _params(policy), outcomes,
                                      keep=keep, wall_s=wall)


def oracle(curves: Sequence[Curve], price: Price, *, keep: str = "best") -> PolicyReport:
    """The hindsight oracle at ``price``: each curve stops where its utility is largest.

    Example:
        >>> oracle(curves, Price.fraction_of_budget(0.1)).token_savings_mean  # doctest: +SKIP
    """
    check_price("price", price)
    start = time.perf_counter()
    outcomes = [outcome(c, oracle_stop(c, price, keep=keep), keep=keep, reason=ORACLE)
                for c in curves]
    return PolicyReport.from_outcomes(ORACLE, {"price": plain(price)}, outcomes, keep=keep,
                                      wall_s=time.perf_counter() - start)


def never_stop(curves: Sequence[Curve], *, keep: str = "best") -> PolicyReport:
    """The baseline that always trains to the end (zero savings, zero keep-best loss)."""
    outcomes = [outcome(c, len(c) - 1, keep=keep) for c in curves]
    return PolicyReport.from_outcomes("never", {}, outcomes, keep=keep)


def _params(policy: Any) -> dict[str, Any]:
    params = getattr(policy, "params", {})
    return dict(params() if callable(params) else params)


def _reason(decision: Decision | None) -> str | None:
    if decision is None:
        return None
    reason = decision.reason
    return getattr(reason, "value", str(reason))
