"""Runs scored on several tasks at each evaluation: decide for the run, as the user would.

A run delivers one checkpoint: the one with the best price-weighted score so far, where each
task weighs what one of its points is worth (its price in the price book, in tokens). The run
goes on while some later evaluation may raise that weighted score by more than the tokens it
costs. The possible gain is built from each task's own prediction (an upper quantile of each,
so the sum is an optimistic bound: a run stops later rather than sooner), never from a curve
of the mean, whose shape hides which task still moves.

``TaskCurves`` keeps a run's per-task points with the rules a training loop needs: a task
missing at one evaluation, a new task appearing mid-run, a NaN for one task: the others are
kept and the skipped task is named with the reason.

Example:
    >>> policy = MultiTask(CostAware(Predictor.load()), prices=PriceBook(Price.fraction_of_budget(0.1),
    ...                    tasks={"gsm8k": Price.fraction_of_budget(0.3)}))  # doctest: +SKIP
    >>> controller = StopController(policy, budget=2e9)  # doctest: +SKIP
    >>> controller.observe(1e8, {"gsm8k": 0.41, "squad": 0.63}).message  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..curves import MAXIMIZE, Curve
from ..errors import ParameterError
from .decision import Decision, Reason
from .guards import budget_reached, warming_up
from .policies import CostAware, StoppingPolicy, evaluation_horizons
from .prices import Price, PriceBook, to_points


@dataclass
class TaskCurves:
    """One run's points per task (metric units), validated one evaluation at a time."""

    direction: str = MAXIMIZE
    points: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def add(self, tokens: float, values: Mapping[Any, Any]) -> list[str]:
        """Keep each task's value at ``tokens``; returns one note per task skipped (and why)."""
        notes = []
        for task, value in values.items():
            name = str(task)
            number = _finite(value)
            if number is None:
                notes.append(f"task {name!r} skipped at {tokens:g} tokens: value {value!r} is "
                             f"not a finite number")
                continue
            seen_tokens, seen_values = self.points.setdefault(name, ([], []))
            seen_tokens.append(float(tokens))
            seen_values.append(number)
        missing = sorted(set(self.points) - {str(t) for t in values})
        notes += [f"task {t!r} missing at {tokens:g} tokens (its curve keeps its earlier points)"
                  for t in missing]
        return notes

    def curves(self, budget: float, **ids: Any) -> dict[str, Curve]:
        """Each task's curve so far (tasks without a point yet are left out)."""
        return {task: Curve(f"{ids.get('curve_id', 'run')}/{task}", t, v, direction=self.direction,
                            budget=max(budget, t[-1]), run_id=ids.get("run_id"), task=task)
                for task, (t, v) in self.points.items() if t}

    def state(self) -> dict[str, list[list[float]]]:
        return {task: [list(t), list(v)] for task, (t, v) in self.points.items()}

    @classmethod
    def from_state(cls, state: Any, direction: str) -> TaskCurves:
        if not isinstance(state, Mapping):
            raise ParameterError(f"state 'tasks' must map task -> [tokens, values], got "
                                 f"{type(state).__name__}")
        points = {}
        for task, pair in state.items():
            if (not isinstance(pair, list) or len(pair) != 2
                    or len(pair[0]) != len(pair[1])):
                raise ParameterError(f"state 'tasks'[{task!r}] must be [tokens, values] of equal length")
            points[str(task)] = ([float(x) for x in pair[0]], [float(x) for x in pair[1]])
        return cls(direction, points)


class MultiTask(StoppingPolicy):
    """Decides a multi-task run from each task's prediction and the tasks' prices.

    ``decide_run(curves)`` judges the run; ``decide(curve)`` (one metric observed) is the
    wrapped policy's decision.

    Args:
        policy: the ``CostAware`` policy whose predictor, risk and warm-up apply to every task.
        prices: task -> price (a ``PriceBook``, whose default covers unnamed tasks, or a
            mapping); default: ``policy.price`` for every task (equal weights). A task weighs
            its price; a point of the weighted score is worth the tasks' mean price.
        correlation: how far the tasks' prediction errors move together, in [0, 1]: 1 sums
            each task's upper quantile (the most cautious), 0 treats them as independent.
    """

    name = "multi_task"

    def __init__(self, policy: CostAware, *, prices: PriceBook | Mapping[str, Price] | None = None,
                 correlation: float = 0.5):
        if not isinstance(policy, CostAware):
            raise ParameterError(f"policy must be a CostAware (its predictor judges each task), "
                                 f"got policy={policy!r}")
        if prices is not None and not isinstance(prices, (PriceBook, Mapping)):
            raise ParameterError(f"prices must be a PriceBook or a mapping task -> Price, got "
                                 f"prices={prices!r}")
        if not 0.0 <= correlation <= 1.0:
            raise ParameterError(f"correlation must be in [0, 1], but got {correlation=}")
        self.policy, self.prices, self.correlation = policy, prices, float(correlation)

    @property
    def params(self) -> dict[str, Any]:
        return {"policy": {"name": self.policy.name, "params": self.policy.params},
                "correlation": self.correlation}

    def decide(self, curve: Curve) -> Decision:
        return self.policy.decide(curve)

    def with_context(self, context: Any) -> MultiTask:
        return MultiTask(self.policy.with_context(context), prices=self.prices,
                         correlation=self.correlation)

    def price(self, task: str) -> Price:
        if isinstance(self.prices, PriceBook):
            return self.prices.price_for(task=task)
        if isinstance(self.prices, Mapping) and task in self.prices:
            return self.prices[task]
        return self.policy.price

    def decide_run(self, curves: Mapping[str, Curve]) -> Decision:
        """The run's decision from every task's curve so far."""
        lead = max(curves.values(), key=lambda c: (c.last_tokens, len(c)))
        guard = (budget_reached(lead, policy=self.name)
                 or warming_up(lead, min_fraction=self.policy.min_fraction, min_points=2,
                               policy=self.name))
        if guard is not None:
            return guard.replace(value=self._weighted_now(curves), best=self._best(curves)[1])
        return self._judge(curves, lead)

    # --- the weighted score ------------------------------------------------------------
    def _weights(self, curves: Mapping[str, Curve]) -> dict[str, float]:
        """Tokens one point of each task is worth."""
        return {t: self.price(t).tokens_per_point(c.budget) for t, c in curves.items()}

    def _best(self, curves: Mapping[str, Curve]) -> tuple[float, float]:
        """The best worth (tokens) of a past checkpoint where every task was evaluated, and its
        weighted score (metric units); per-task bests where no checkpoint has them all."""
        w = self._weights(curves)
        common = set.intersection(*(set(c.tokens.tolist()) for c in curves.values()))
        if common:
            worth = {t: sum(w[k] * to_points(_score_at(c, t)) for k, c in curves.items())
                     for t in common}
            best = max(worth.values())
        else:
            best = sum(w[k] * to_points(float(c.scores.max())) for k, c in curves.items())
        return best, self._as_score(best, w, next(iter(curves.values())))

    def _weighted_now(self, curves: Mapping[str, Curve]) -> float:
        w = self._weights(curves)
        worth = sum(w[k] * to_points(float(c.scores[-1])) for k, c in curves.items())
        return self._as_score(worth, w, next(iter(curves.values())))

    @staticmethod
    def _as_score(worth: float, w: Mapping[str, float], curve: Curve) -> float:
        """A worth in tokens as the weighted mean score in metric units."""
        return float(curve.to_metric(worth / sum(w.values()) / to_points(1.0)))

    # --- the decision ------------------------------------------------------------------
    def _judge(self, curves: Mapping[str, Curve], lead: Curve) -> Decision:
        horizons = evaluation_horizons(lead)
        tasks = list(curves)
        predictions = self.policy.predictor.predict_many([curves[t] for t in tasks],
                                                         horizons=[horizons] * len(tasks))
        w = self._weights(curves)
        best, best_score = self._best(curves)
        upper = self._upper(tasks, predictions, w)
        per_point = sum(w.values()) / len(w)  # tokens one point of the weighted score is worth
        gain = np.maximum(0.0, upper - best / sum(w.values())) * per_point  # tokens of worth
        cost = horizons - lead.last_tokens
        i = int(np.argmax(gain - cost))
        stop = bool(np.all(gain < cost))
        movers = _movers(curves, predictions, self.policy.risk, i)
        message = (f"stop: the weighted score may gain worth {gain[i]:.3g} tokens by "
                   f"{horizons[i]:.1e} < {cost[i]:.3g} to spend" if stop else
                   f"continue: {movers} may add worth {gain[i]:.3g} tokens by {horizons[i]:.1e} "
                   f">= {cost[i]:.3g} to spend")
        median = sum(w[t] * to_points(p.final_median) for t, p in zip(tasks, predictions))
        return Decision(stop=stop, reason=Reason.GAIN_BELOW_COST if stop else Reason.CONTINUE_WORTH_IT,
                        message=message, tokens=lead.last_tokens,
                        value=self._weighted_now(curves), best=best_score,
                        predicted_final=self._as_score(median, w, lead),
                        expected_gain=float(gain[i] / per_point),
                        projected_cost=float(cost[i]), policy=self.name)

    def _upper(self, tasks: list[str], predictions: list, w: Mapping[str, float]) -> np.ndarray:
        """The ``risk`` quantile of the weighted mean score (points) at each horizon.

        Each task's median plus its spread up to the ``risk`` quantile, combined as the
        weighted mean of the medians plus a spread between the independent-errors bound
        (root of summed squares) and the fully correlated one (the weighted mean of the
        spreads), mixed by ``correlation``: tasks scored on one checkpoint share its errors.
        """
        weights = np.array([w[t] for t in tasks]) / sum(w.values())
        medians = np.stack([to_points(p.quantile(0.5)) for p in predictions])
        spreads = np.stack([to_points(p.quantile(self.policy.risk)) for p in predictions]) - medians
        spreads = np.maximum(spreads, 0.0)
        together = weights @ spreads
        independent = np.sqrt((weights ** 2) @ (spreads ** 2))
        return weights @ medians + self.correlation * together + (1 - self.correlation) * independent

def _movers(curves: Mapping[str, Curve], predictions: list, risk: float, i: int) -> str:
    """The tasks whose possible gain at horizon ``i`` is largest, in points."""
    gains = {t: to_points(max(0.0, float(p.quantile(risk)[i]) - float(curves[t].scores.max())))
             for t, p in zip(curves, predictions)}
    top = sorted(gains.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{t} (+{g:.1f} pt)" for t, g in top if g > 0) or "no task"


def _score_at(curve: Curve, tokens: float) -> float:
    return float(curve.scores[int(np.searchsorted(curve.tokens, tokens))])


def _finite(value: Any) -> float | None:
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        number = float(value)
    except Exception:  # a value's __float__ may raise anything; the task is skipped, not the run
        return None
    return number if math.isfinite(number) else None
