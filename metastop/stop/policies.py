"""Stopping policies: pure functions from the curve seen so far to a ``Decision``.

A policy has one method, ``decide(curve) -> Decision``. It sees every point observed so far
and the run's budget, and nothing else, so replaying a curve (backtests), resuming a run and
running it live all give the same decisions. ``decide_many`` decides for many curves at once;
the model-based policies batch their predictions through ``predictor.predict_many``.

This module holds the base class and the model-based policies:
    - ``CostAware``: stop when no later evaluation point is worth its tokens (the default).
    - ``ImprovementProbability``: stop when beating the best so far is unlikely
      (Domhan et al. 2015; LC-PFN, Adriaensen et al. 2023).

The model-free rules (``Patience``, ``Threshold``) live in ``metastop.stop.rules``; the
combinators (``AnyOf``, ``AllOf``, ``Confirmed``) in ``metastop.stop.compose``.

Example:
    >>> policy = CostAware(Predictor.load(), price=Price.fraction_of_budget(0.05))  # doctest: +SKIP
    >>> policy.decide(curve).stop  # doctest: +SKIP
    False
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from .._checks import in_range, number
from ..curves import Curve
from ..errors import ParameterError
from ..predict.prediction import Prediction
from .decision import Decision, Reason
from .guards import budget_reached, warming_up
from .prices import DEFAULT_PRICE, Price, check_price, to_points

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

    def with_context(self, context: Any) -> StoppingPolicy:
        """This policy predicting with ``context`` (the finished runs of the curve's task,
        ``metastop.predict.context``); a policy that predicts nothing returns itself."""
        return self

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
    context: Any = None

    def with_context(self, context: Any) -> StoppingPolicy:
        twin = copy.copy(self)
        twin.context = context
        return twin

    def decide(self, curve: Curve) -> Decision:
        early = self._guard(curve)
        if early is not None:
            return early
        extra = {"context": self.context} if self.context is not None else {}
        return self._judge(curve, self.predictor.predict(curve, horizons=self._horizons(curve),
                                                         **extra))

    def decide_many(self, curves: Sequence[Curve]) -> list[Decision]:
        decisions: list[Decision | None] = [self._guard(c) for c in curves]
        todo = [i for i, d in enumerate(decisions) if d is None]
        if todo:
            batch = [curves[i] for i in todo]
            logger.debug("%s: predicting %d of %d curves in one batch", self.name, len(batch), len(curves))
            predictions = _predict_many(self.predictor, batch, [self._horizons(c) for c in batch],
                                        self.context)
            for i, prediction in zip(todo, predictions):
                decisions[i] = self._judge(curves[i], prediction)
        return decisions  # type: ignore[return-value]

    def _guard(self, curve: Curve) -> Decision | None:
        return (budget_reached(curve, policy=self.name)
                or warming_up(curve, min_fraction=self.min_fraction, min_points=2,
                              policy=self.name))

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


def with_context(policy: Any, context: Any) -> Any:
    """``policy.with_context(context)``, or ``policy`` itself for a duck-typed policy without
    that method (it predicts nothing, or decides without task memory)."""
    method = getattr(policy, "with_context", None)
    return method(context) if method is not None else policy


def _predict_many(predictor: Any, curves: list[Curve], horizons: list[np.ndarray],
                  context: Any = None) -> list[Prediction]:
    """Predict a batch (every curve with the same ``context``, if one); falls back to one call
    per curve for predictors without a batch method."""
    batched = getattr(predictor, "predict_many", None)
    one = {"context": context} if context is not None else {}
    if batched is None:
        return [predictor.predict(c, horizons=h, **one) for c, h in zip(curves, horizons)]
    many = {"contexts": [context] * len(curves)} if context is not None else {}
    predictions = list(batched(curves, horizons=horizons, **many))
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
        price: what one point is worth (a ``metastop.stop.prices.Price``).
        risk: the quantile of the predicted score that counts as the possible gain, in (0, 1).
        min_fraction: never stop before this share of the budget has been seen.

    Example:
        >>> policy = CostAware(Predictor.load(), price=Price.fraction_of_budget(0.05))  # doctest: +SKIP
        >>> policy.decide(curve).message  # doctest: +SKIP
        'stop: best possible gain 0.3 pt by 8.0e+09 tokens is worth 1.5e+08 tokens < 4.0e+09 to spend'
    """

    name = "cost_aware"

    incumbent: float | None = None

    def __init__(self, predictor: Any, *, price: Price = DEFAULT_PRICE, risk: float = DEFAULT_RISK,
                 min_fraction: float = DEFAULT_MIN_FRACTION):
        self.predictor = _check_predictor(predictor)
        self.price = check_price("price", price)
        self.risk = in_range("risk", risk, 0.0, 1.0, open_ends=True)
        self.min_fraction = in_range("min_fraction", min_fraction, 0.0, 1.0)

    def with_incumbent(self, incumbent: float | None) -> CostAware:
        """This policy judging gains over ``incumbent`` (metric units: the best value of a
        sweep's finished trials) where it beats the curve's own best: in a sweep a trial is
        worth only what it may add to the study's best."""
        twin = copy.copy(self)
        twin.incumbent = None if incumbent is None else float(incumbent)
        return twin

    @property
    def params(self) -> dict[str, Any]:
        return {"price": self.price.to_dict(), "risk": self.risk, "min_fraction": self.min_fraction}

    def _horizons(self, curve: Curve) -> np.ndarray:
        return evaluation_horizons(curve)

    def _judge(self, curve: Curve, prediction: Prediction) -> Decision:
        best_score = float(curve.scores.max())
        if self.incumbent is not None:
            best_score = max(best_score, float(curve.sign * self.incumbent))
        gain = to_points(np.maximum(0.0, prediction.quantile(self.risk) - best_score))
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
        gain = to_points(max(0.0, prediction.final_median - float(curve.scores.max())))
        word = "stop" if stop else "continue"
        relation = "<" if stop else ">="
        message = (f"{word}: P(final > best {curve.best:.4g} + {self.delta:g}) = {chance:.3f} "
                   f"{relation} {self.p:g}")
        return self._decision(curve, stop, Reason.IMPROVEMENT_UNLIKELY if stop else Reason.IMPROVEMENT_LIKELY,
                              message, expected_gain=gain,
                              projected_cost=curve.budget - curve.last_tokens,
                              **self._final_fields(curve, prediction))
