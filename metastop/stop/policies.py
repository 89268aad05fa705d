"""Stopping policies: pure functions from the curve seen so far to a ``Decision``.

A policy has one method, ``decide(curve) -> Decision``. It sees every point observed so far
and the run's budget, and nothing else, so replaying a curve (backtests), resuming a run and
running it live all give the same decisions. ``decide_many`` decides for many curves at once;
the model-based policies batch their predictions through ``predictor.predict_many``.

Policies:
    - ``CostAware``: stop when no later evaluation point is worth its tokens (the default).
    - ``Patience``: Keras / Lightning early stopping on the scores.
    - ``ImprovementProbability``: stop when beating the best so far is unlikely
      (Domhan et al. 2015; LC-PFN, Adriaensen et al. 2023).
    - ``Threshold``: stop at a target or on divergence.
    - ``AnyOf`` / ``AllOf``: compose policies; ``Confirmed``: stop only after n stop
      verdicts in a row (for noisy metrics).

Example:
    >>> from metastop.curves import Curve
    >>> curve = Curve("c", tokens=[1, 2, 3, 4], values=[0.5, 0.4, 0.4, 0.3], budget=10)
    >>> Patience(2).decide(curve).reason.value
    'patience_exhausted'
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from .._checks import in_range, number
from ..curves import Curve
from .decision import Decision, Reason
from ..errors import ParameterError
from ..predict.prediction import Prediction
from .prices import DEFAULT_PRICE, POINT, Price

logger = logging.getLogger(__name__)

DEFAULT_RISK = 0.9
"""The shipped default quantile used to judge a gain (an upper quantile, see DESIGN.md)."""
DEFAULT_MIN_FRACTION = 0.1
"""Model-based policies never stop before this share of the budget has been seen."""
MAX_HORIZONS = 12
"""At most this many later evaluation points are weighed by ``CostAware``."""


def _check_predictor(predictor: Any) -> Any:
    if not (callable(getattr(predictor, "predict", None))):
        raise ParameterError(f"predictor must have a predict(curve, horizons=None) method, "
                             f"got predictor={predictor!r}")
    return predictor


def _tok(x: float) -> str:
    return f"{x:.1e}"


class StoppingPolicy(ABC):
    """Decides, from the curve seen so far, whether a run should stop.

    Subclasses implement ``decide``; ``decide_many`` loops unless a subclass batches.
    ``name`` and ``params`` describe the policy in reports and decision logs.
    """

    name: str = "policy"

    @abstractmethod
    def decide(self, curve: Curve) -> Decision:
        """The decision after the last point of ``curve``."""

    def decide_many(self, curves: Sequence[Curve]) -> list[Decision]:
        """One decision per curve, in order (same results as calling ``decide`` on each)."""
        return [self.decide(curve) for curve in curves]

    @property
    def params(self) -> dict[str, Any]:
        """The policy's settings as plain data."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _decision(self, curve: Curve, stop: bool, reason: Reason, message: str,
                  **extra: Any) -> Decision:
        return Decision(stop=stop, reason=reason, message=message, tokens=curve.last_tokens,
                        value=float(curve.values[-1]), best=curve.best, policy=self.name, **extra)


class _PredictivePolicy(StoppingPolicy):
    """A policy that asks a predictor about the rest of the curve once warm-up is over."""

    predictor: Any
    min_fraction: float

    def decide(self, curve: Curve) -> Decision:
        early = self._guard(curve)
        if early is not None:
            return early
        return self._judge(curve, self.predictor.predict(curve, horizons=self._horizons(curve)))

    def decide_many(self, curves: Sequence[Curve]) -> list[Decision]:
        decisions: list[Decision | None] = [self._guard(c) for c in curves]
        todo = [i for i, d in enumerate(decisions) if d is None]
        if todo:
            batch = [curves[i] for i in todo]
            logger.debug("%s: predicting %d of %d curves in one batch", self.name, len(batch), len(curves))
            predictions = _predict_many(self.predictor, batch, [self._horizons(c) for c in batch])
            for i, prediction in zip(todo, predictions):
                decisions[i] = self._judge(curves[i], prediction)
        return decisions  # type: ignore[return-value]

    def _guard(self, curve: Curve) -> Decision | None:
        if curve.last_tokens >= curve.budget:
            return self._decision(curve, True, Reason.BUDGET_REACHED,
                                  f"stop: budget of {_tok(curve.budget)} tokens reached")
        if len(curve) < 2 or curve.fraction_seen < self.min_fraction:
            return self._decision(curve, False, Reason.WARMUP,
                                  f"warm-up: {len(curve)} points, {curve.fraction_seen:.0%} of the "
                                  f"budget seen (decides from {self.min_fraction:.0%} and 2 points)")
        return None

    @abstractmethod
    def _horizons(self, curve: Curve) -> np.ndarray:
        """The tokens at which the curve must be predicted."""

    @abstractmethod
    def _judge(self, curve: Curve, prediction: Prediction) -> Decision:
        """The decision, given the prediction."""

    def _final_fields(self, curve: Curve, prediction: Prediction) -> dict[str, Any]:
        low, high = prediction.final_interval
        ends = sorted(float(curve.to_metric(s)) for s in (low, high))
        return {"predicted_final": float(curve.to_metric(prediction.final_median)),
                "interval": (ends[0], ends[1])}


def _predict_many(predictor: Any, curves: list[Curve], horizons: list[np.ndarray]) -> list[Prediction]:
    """Predict a batch; falls back to one call per curve for predictors without a batch method."""
    batched = getattr(predictor, "predict_many", None)
    if batched is None:
        return [predictor.predict(c, horizons=h) for c, h in zip(curves, horizons)]
    predictions = list(batched(curves, horizons=horizons))
    if len(predictions) != len(curves):
        raise ValueError(f"predictor returned {len(predictions)} predictions for {len(curves)} curves")
    return predictions


def evaluation_horizons(curve: Curve, *, limit: int = MAX_HORIZONS) -> np.ndarray:
    """The later evaluation points of a curve: its recent spacing continued to the budget.

    The spacing is the median gap between the last five points. The budget is always the
    last horizon; when more than ``limit`` points would be needed, the next point is kept and
    the rest are spread evenly up to the budget.
    """
    now, budget = curve.last_tokens, curve.budget
    if budget <= now:
        return np.array([budget])
    gaps = np.diff(curve.tokens[-5:])
    spacing = min(float(np.median(gaps)) if len(gaps) else budget - now, budget - now)
    if (budget - now) / spacing <= limit:
        steps = int(math.ceil((budget - now) / spacing - 1e-9))
        grid = now + spacing * np.arange(1, steps + 1, dtype=np.float64)
    else:
        grid = np.r_[now + spacing, np.linspace(now + spacing, budget, limit)[1:]]
    grid = grid[grid < budget - 1e-9 * budget]
    return np.r_[grid, budget]


class CostAware(_PredictivePolicy):
    """Stop when no later evaluation point is worth the tokens it costs.

    For each later evaluation point ``h`` up to the budget, the expected gain is
    ``max(0, q_risk(h) - best)`` in points, where ``q_risk`` is the predicted quantile ``risk``
    (an upper quantile by default: judge by what the curve could still do, not by its median).
    The run stops when, for every ``h``, ``gain_points(h) x tokens_per_point < tokens(h) - now``.

    Args:
        predictor: anything with ``predict(curve, horizons)`` returning a ``Prediction``.
        price: what one point is worth (``metastop.prices.Price``).
        risk: the quantile of the predicted score that counts as the possible gain, in (0, 1).
        min_fraction: never stop before this share of the budget has been seen.

    Example:
        >>> policy = CostAware(Predictor.load(), price=Price.fraction_of_budget(0.05))  # doctest: +SKIP
        >>> policy.decide(curve).message  # doctest: +SKIP
        'stop: best possible gain 0.3 pt by 8.0e+09 tokens is worth 1.5e+08 tokens < 4.0e+09 to spend'
    """

    name = "cost_aware"

    def __init__(self, predictor: Any, *, price: Price = DEFAULT_PRICE, risk: float = DEFAULT_RISK,
                 min_fraction: float = DEFAULT_MIN_FRACTION):
        self.predictor = _check_predictor(predictor)
        if not isinstance(price, Price):
            raise ParameterError(f"price must be a metastop.prices.Price, got price={price!r}")
        self.price = price
        self.risk = in_range("risk", risk, 0.0, 1.0, open_ends=True)
        self.min_fraction = in_range("min_fraction", min_fraction, 0.0, 1.0)

    @property
    def params(self) -> dict[str, Any]:
        return {"price": self.price.to_dict(), "risk": self.risk, "min_fraction": self.min_fraction}

    def _horizons(self, curve: Curve) -> np.ndarray:
        return evaluation_horizons(curve)

    def _judge(self, curve: Curve, prediction: Prediction) -> Decision:
        best_score = float(curve.scores.max())
        gain = np.maximum(0.0, prediction.quantile(self.risk) - best_score) / POINT
        worth = gain * self.price.tokens_per_point(curve.budget)
        cost = np.asarray(prediction.horizons, dtype=np.float64) - curve.last_tokens
        i = int(np.argmax(worth - cost))
        stop = bool(np.all(worth < cost))
        verdict = (f"stop: best possible gain {gain[i]:.1f} pt by {_tok(prediction.horizons[i])} "
                   f"tokens is worth {_tok(worth[i])} tokens < {_tok(cost[i])} to spend") if stop else (
                   f"continue: possible gain {gain[i]:.1f} pt by {_tok(prediction.horizons[i])} "
                   f"tokens is worth {_tok(worth[i])} tokens >= {_tok(cost[i])} to spend")
        return self._decision(curve, stop, Reason.GAIN_BELOW_COST if stop else Reason.CONTINUE_WORTH_IT,
                              verdict, expected_gain=float(gain[i]), projected_cost=float(cost[i]),
                              **self._final_fields(curve, prediction))


def probability_above(x: float, levels: Sequence[float], values: Sequence[float]) -> float:
    """P(X > x) for a distribution known by its quantiles ``values`` at ``levels``.

    The CDF is linear between the given quantiles. Beyond the outer quantiles it continues
    with the slope of the outermost segment until it reaches 0 or 1 (linear tails); a
    zero-width outer segment means no mass beyond it (clamped tail).
    """
    levels = np.asarray(levels, dtype=np.float64)
    values = np.maximum.accumulate(np.asarray(values, dtype=np.float64))
    if len(levels) == 1:
        return float(x < values[0])
    if x < values[0]:
        width = values[1] - values[0]
        cdf = 0.0 if width <= 0 else levels[0] - (values[0] - x) * (levels[1] - levels[0]) / width
    elif x > values[-1]:
        width = values[-1] - values[-2]
        cdf = 1.0 if width <= 0 else levels[-1] + (x - values[-1]) * (levels[-1] - levels[-2]) / width
    else:
        cdf = float(np.interp(x, values, levels))
    return float(1.0 - min(1.0, max(0.0, cdf)))


class ImprovementProbability(_PredictivePolicy):
    """Stop when the final score is unlikely to beat the best so far by ``delta``.

    P(final > best + delta) is read from the predicted quantiles at the budget (see
    ``probability_above`` for how the CDF is interpolated and extrapolated); the run stops
    when it falls below ``p``. This is the rule of Domhan et al. (2015) and LC-PFN
    (Adriaensen et al., 2023).

    Args:
        predictor: anything with ``predict(curve, horizons)`` returning a ``Prediction``.
        delta: the improvement that counts, in metric units (>= 0).
        p: stop when the probability of that improvement is below ``p``, in (0, 1).
        min_fraction: never stop before this share of the budget has been seen.

    Example:
        >>> ImprovementProbability(Predictor.load(), delta=0.005, p=0.05).decide(curve)  # doctest: +SKIP
    """

    name = "improvement_probability"

    def __init__(self, predictor: Any, *, delta: float = 0.0, p: float = 0.05,
                 min_fraction: float = DEFAULT_MIN_FRACTION):
        self.predictor = _check_predictor(predictor)
        self.delta = number("delta", delta)
        if self.delta < 0:
            raise ParameterError(f"delta must be >= 0, got delta={delta!r}")
        self.p = in_range("p", p, 0.0, 1.0, open_ends=True)
        self.min_fraction = in_range("min_fraction", min_fraction, 0.0, 1.0)

    @property
    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "p": self.p, "min_fraction": self.min_fraction}

    def _horizons(self, curve: Curve) -> np.ndarray:
        return np.array([curve.budget])

    def _judge(self, curve: Curve, prediction: Prediction) -> Decision:
        target = float(curve.scores.max()) + self.delta
        chance = probability_above(target, prediction.quantiles, prediction.scores[-1])
        stop = chance < self.p
        gain = max(0.0, prediction.final_median - float(curve.scores.max())) / POINT
        word = "stop" if stop else "continue"
        relation = "<" if stop else ">="
        message = (f"{word}: P(final > best {curve.best:.4g} + {self.delta:g}) = {chance:.3f} "
                   f"{relation} {self.p:g}")
        return self._decision(curve, stop, Reason.IMPROVEMENT_UNLIKELY if stop else Reason.IMPROVEMENT_LIKELY,
                              message, expected_gain=gain,
                              projected_cost=curve.budget - curve.last_tokens,
                              **self._final_fields(curve, prediction))


class Patience(StoppingPolicy):
    """Stop when the score has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Keras / Lightning ``EarlyStopping`` semantics on ``Curve.scores`` (higher is better): an
    evaluation improves when ``score > best + min_delta``; the first ``warmup`` evaluations are
    not monitored (Keras ``start_from_epoch``).

    Args:
        patience: evaluations without improvement before stopping (>= 1).
        min_delta: the smallest change that counts as an improvement, metric units (>= 0).
        warmup: evaluations ignored at the start (>= 0).

    Example:
        >>> from metastop.curves import Curve
        >>> Patience(3).decide(Curve("c", [1, 2, 3, 4], [0.5, 0.4, 0.4, 0.3])).stop
        True
    """

    name = "patience"

    def __init__(self, patience: int = 5, *, min_delta: float = 0.0, warmup: int = 0):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ParameterError(f"patience must be an integer >= 1, got patience={patience!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ParameterError(f"warmup must be an integer >= 0, got warmup={warmup!r}")
        self.patience = int(patience)
        self.min_delta = number("min_delta", min_delta)
        if self.min_delta < 0:
            raise ParameterError(f"min_delta must be >= 0, got min_delta={min_delta!r}")
        self.warmup = int(warmup)

    @property
    def params(self) -> dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "warmup": self.warmup}

    def decide(self, curve: Curve) -> Decision:
        if len(curve) <= self.warmup:
            return self._decision(curve, False, Reason.WARMUP,
                                  f"warm-up: {len(curve)} of {self.warmup} evaluations")
        wait = _evaluations_since_improvement(curve.scores[self.warmup:], self.min_delta)
        if wait >= self.patience:
            return self._decision(curve, True, Reason.PATIENCE_EXHAUSTED,
                                  f"stop: no improvement > {self.min_delta:g} in {wait} evaluations "
                                  f"(best {curve.best:.4g})")
        return self._decision(curve, False, Reason.IMPROVING,
                              f"continue: {wait} of {self.patience} evaluations without improvement")


def _evaluations_since_improvement(scores: np.ndarray, min_delta: float) -> int:
    best, wait = -math.inf, 0
    for score in scores:
        if score > best + min_delta:
            best, wait = score, 0
        else:
            wait += 1
    return wait


class Threshold(StoppingPolicy):
    """Stop when the best value reaches ``target`` or the last value leaves a safe band.

    All bounds are in the metric's own units. ``target`` respects the curve's direction (for a
    loss, reaching it means going at or below it); ``diverge_below`` / ``diverge_above`` stop a
    run whose last value falls below / rises above them, whatever the direction. NaN and inf
    values never reach a policy: the ``StopController`` reports them as ``NON_FINITE``.

    Example:
        >>> from metastop.curves import Curve
        >>> Threshold(target=0.9).decide(Curve("c", [1, 2], [0.5, 0.92])).reason.value
        'target_reached'
    """

    name = "threshold"

    def __init__(self, *, target: float | None = None, diverge_below: float | None = None,
                 diverge_above: float | None = None):
        if target is None and diverge_below is None and diverge_above is None:
            raise ParameterError("Threshold needs at least one of target, diverge_below, "
                                 "diverge_above; got none")
        self.target = None if target is None else number("target", target)
        self.diverge_below = None if diverge_below is None else number("diverge_below", diverge_below)
        self.diverge_above = None if diverge_above is None else number("diverge_above", diverge_above)
        if (self.diverge_below is not None and self.diverge_above is not None
                and self.diverge_below >= self.diverge_above):
            raise ParameterError(f"diverge_below must be < diverge_above, got diverge_below="
                                 f"{diverge_below!r}, diverge_above={diverge_above!r}")

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "diverge_below": self.diverge_below,
                "diverge_above": self.diverge_above}

    def decide(self, curve: Curve) -> Decision:
        last = float(curve.values[-1])
        if self.target is not None and curve.scores.max() >= curve.sign * self.target:
            return self._decision(curve, True, Reason.TARGET_REACHED,
                                  f"stop: best {curve.best:.4g} reached target {self.target:g}")
        if self.diverge_below is not None and last < self.diverge_below:
            return self._decision(curve, True, Reason.DIVERGED,
                                  f"stop: {last:.4g} fell below {self.diverge_below:g}")
        if self.diverge_above is not None and last > self.diverge_above:
            return self._decision(curve, True, Reason.DIVERGED,
                                  f"stop: {last:.4g} rose above {self.diverge_above:g}")
        return self._decision(curve, False, Reason.WITHIN_LIMITS,
                              f"continue: {last:.4g} within limits")


class _Composite(StoppingPolicy):
    def __init__(self, *policies: StoppingPolicy):
        if not policies:
            raise ParameterError(f"{type(self).__name__} needs at least one policy, got none")
        for i, policy in enumerate(policies):
            if not callable(getattr(policy, "decide", None)):
                raise ParameterError(f"policies[{i}] must have a decide(curve) method, got {policy!r}")
        self.policies = tuple(policies)

    @property
    def params(self) -> dict[str, Any]:
        return {"policies": [{"name": getattr(p, "name", type(p).__name__),
                              "params": getattr(p, "params", {})} for p in self.policies]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.policies))})"

    def decide(self, curve: Curve) -> Decision:
        return self._combine([p.decide(curve) for p in self.policies])

    def decide_many(self, curves: Sequence[Curve]) -> list[Decision]:
        per_policy = [_decide_many(p, curves) for p in self.policies]
        return [self._combine(list(row)) for row in zip(*per_policy)]

    @abstractmethod
    def _combine(self, decisions: list[Decision]) -> Decision:
        """One decision from the members' decisions (in policy order)."""


def _decide_many(policy: Any, curves: Sequence[Curve]) -> list[Decision]:
    batched = getattr(policy, "decide_many", None)
    return list(batched(curves)) if batched is not None else [policy.decide(c) for c in curves]


class AnyOf(_Composite):
    """Stop as soon as any member policy stops (Ray Tune's ``CombinedStopper``).

    Returns the first stopping member's decision; otherwise the first member's.

    Example:
        >>> policy = AnyOf(Patience(5), Threshold(target=0.95))
    """

    name = "any_of"

    def _combine(self, decisions: list[Decision]) -> Decision:
        return next((d for d in decisions if d.stop), decisions[0])


class AllOf(_Composite):
    """Stop only when every member policy stops.

    Returns the first member's decision, with the members' messages joined when all stop;
    otherwise the first member that wants to continue.

    Example:
        >>> policy = AllOf(Patience(5), Threshold(diverge_below=0.1))
    """

    name = "all_of"

    def _combine(self, decisions: list[Decision]) -> Decision:
        waiting = next((d for d in decisions if not d.stop), None)
        if waiting is not None:
            return waiting
        return decisions[0].replace(message="; ".join(d.message for d in decisions))


class Confirmed(StoppingPolicy):
    """Stop only when ``policy`` has said stop at each of the last ``n`` evaluations.

    A wrapper for noisy metrics (small eval sets, EM measured on a few hundred examples): one
    unlucky evaluation no longer ends a run. Like every policy it is a pure function of the
    curve: it asks ``policy`` about the last ``n`` prefixes. A member's ``BUDGET_REACHED``
    stops at once.

    Args:
        policy: the policy to confirm.
        n: consecutive stop verdicts required (>= 1; 1 is ``policy`` itself).

    Example:
        >>> from metastop.curves import Curve
        >>> curve = Curve("c", [1, 2, 3, 4, 5], [0.3, 0.2, 0.2, 0.2, 0.2], budget=10)
        >>> Patience(2).decide(curve.prefix(3)).stop, Confirmed(Patience(2), n=2).decide(curve.prefix(3)).stop
        (True, False)
    """

    name = "confirmed"

    def __init__(self, policy: StoppingPolicy, *, n: int = 2):
        if not callable(getattr(policy, "decide", None)):
            raise ParameterError(f"policy must have a decide(curve) method, got policy={policy!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ParameterError(f"n must be an integer >= 1, got n={n!r}")
        self.policy, self.n = policy, int(n)

    @property
    def params(self) -> dict[str, Any]:
        return {"n": self.n, "policy": {"name": getattr(self.policy, "name", type(self.policy).__name__),
                                        "params": getattr(self.policy, "params", {})}}

    def decide(self, curve: Curve) -> Decision:
        return self.decide_many([curve])[0]

    def decide_many(self, curves: Sequence[Curve]) -> list[Decision]:
        depth = [min(self.n, len(c)) for c in curves]
        prefixes = [c.prefix(len(c) - k) for c, d in zip(curves, depth) for k in range(d)]
        verdicts = iter(_decide_many(self.policy, prefixes))
        return [self._confirm(c, [next(verdicts) for _ in range(d)]) for c, d in zip(curves, depth)]

    def _confirm(self, curve: Curve, verdicts: list[Decision]) -> Decision:
        latest = verdicts[0]
        if not latest.stop or latest.reason is Reason.BUDGET_REACHED:
            return latest
        agreeing = next((i for i, d in enumerate(verdicts) if not d.stop), len(verdicts))
        if agreeing >= self.n:
            return latest.replace(message=f"{latest.message} (confirmed {self.n} evaluations in a row)")
        return latest.replace(stop=False, reason=Reason.CONFIRMING, message=f"wait: {agreeing} of {self.n} stop verdicts "
                                                   f"in a row ({latest.message})")
