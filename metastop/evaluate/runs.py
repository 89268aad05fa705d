"""Replaying whole multi-task runs: one stop per run, one delivered checkpoint.

A run's curves (one per task, grouped by ``run_id``) are observed together at each of the
run's evaluations, as a training loop scored on several tasks would see them. The run
delivers the checkpoint with the best price-weighted score so far (equal prices: the mean
score); DESIGN.md defines the rest:

- run-level token savings = ``1 - t_stop / t_last``;
- weighted loss = best weighted score of the whole run minus that of the delivered
  checkpoint (metric units; reported in points);
- each task's loss is read at the delivered checkpoint: the task's value at the whole run's
  best weighted checkpoint minus its value at the delivered one.

A policy here is anything with ``decide_run(curves: {task: Curve}) -> Decision``; ``mean_curve``
and ``PerTask`` adapt single-curve policies (a curve of the mean score; a verdict per task,
combined).

Example:
    >>> runs = group_runs(curves)  # doctest: +SKIP
    >>> report = replay_runs(runs, MultiTask(CostAware(Predictor.load())))  # doctest: +SKIP
    >>> report.token_savings_mean, report.weighted_loss_mean  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..stop.decision import Decision
from .common import p95

Run = Mapping[str, Curve]


def group_runs(curves: Sequence[Curve], *, min_tasks: int = 2) -> dict[str, dict[str, Curve]]:
    """Curves grouped by ``run_id`` (``task`` -> curve; the curve id where a task repeats),
    keeping runs with at least ``min_tasks`` curves that share their evaluation grid's end."""
    runs: dict[str, dict[str, Curve]] = {}
    for curve in curves:
        if curve.run_id is not None:
            runs.setdefault(curve.run_id, {})[curve.task or curve.curve_id] = curve
    return {r: tasks for r, tasks in runs.items() if len(tasks) >= min_tasks}


def checkpoints(run: Run) -> np.ndarray:
    """The run's evaluation tokens: every token at which all of its tasks were evaluated."""
    common = set.intersection(*(set(c.tokens.tolist()) for c in run.values()))
    return np.array(sorted(common))


def weighted_scores(run: Run, tokens: np.ndarray) -> np.ndarray:
    """The mean score (equal prices; higher is better) of the run at each checkpoint."""
    return np.mean([c.scores[np.searchsorted(c.tokens, tokens)] for c in run.values()], axis=0)


@dataclass(frozen=True)
class RunOutcome:
    """What one policy did to one run (losses in metric units, >= 0 for the weighted one)."""

    run_id: str
    stop_index: int
    token_savings: float
    weighted_loss: float
    task_loss_mean: float


@dataclass(frozen=True)
class RunReport:
    """A policy's outcomes over runs, as the ``by_run`` section of the backtest JSON."""

    name: str
    params: Mapping[str, Any]
    outcomes: tuple[RunOutcome, ...]

    @property
    def token_savings_mean(self) -> float:
        return float(np.mean([o.token_savings for o in self.outcomes]))

    @property
    def weighted_loss_mean(self) -> float:
        return float(np.mean([o.weighted_loss for o in self.outcomes]))

    def to_dict(self) -> dict[str, Any]:
        losses = np.array([o.weighted_loss for o in self.outcomes])
        return {"name": self.name, "params": dict(self.params), "n_runs": len(self.outcomes),
                "token_savings_mean": self.token_savings_mean,
                "weighted_loss_mean": float(losses.mean()), "weighted_loss_p95": p95(losses),
                "task_loss_mean": float(np.mean([o.task_loss_mean for o in self.outcomes]))}


def run_outcome(run_id: str, run: Run, stop_index: int) -> RunOutcome:
    """Savings and losses of stopping ``run`` after checkpoint ``stop_index`` (keep-best)."""
    tokens = checkpoints(run)
    score = weighted_scores(run, tokens)
    delivered = int(np.argmax(score[:stop_index + 1]))
    best = int(np.argmax(score))
    task_losses = [float(c.scores[np.searchsorted(c.tokens, tokens[best])]
                         - c.scores[np.searchsorted(c.tokens, tokens[delivered])])
                   for c in run.values()]
    return RunOutcome(run_id, stop_index, float(1.0 - tokens[stop_index] / tokens[-1]),
                      float(score[best] - score[delivered]), float(np.mean(task_losses)))


def replay_runs(runs: Mapping[str, Run], policy: Any, *, name: str | None = None,
                params: Mapping[str, Any] | None = None) -> RunReport:
    """Each run observed checkpoint by checkpoint through ``policy.decide_run``; it stops at
    the first stop verdict before the run's last checkpoint."""
    outcomes = [run_outcome(run_id, run, _stop_index(policy, run)) for run_id, run in runs.items()]
    return RunReport(name or getattr(policy, "name", type(policy).__name__),
                     dict(params if params is not None else getattr(policy, "params", {})),
                     tuple(outcomes))


def _stop_index(policy: Any, run: Run) -> int:
    tokens = checkpoints(run)
    for i, now in enumerate(tokens[:-1]):
        if policy.decide_run({t: c.upto(now) for t, c in run.items()}).early_stop:
            return i
    return len(tokens) - 1


class MeanCurve:
    """A single-curve policy judging a curve of the run's mean score (one budget, no task)."""

    def __init__(self, policy: Any):
        self.policy, self.name = policy, f"mean_curve:{getattr(policy, 'name', 'policy')}"
        self.params = getattr(policy, "params", {})

    def decide_run(self, run: Run) -> Decision:
        tokens = checkpoints(run)
        first = next(iter(run.values()))
        curve = Curve("mean", tokens, weighted_scores(run, tokens) * first.sign,
                      direction=first.direction, budget=first.budget)
        return self.policy.decide(curve)


class PerTask:
    """Single-curve policies asked per task, their verdicts combined by ``combine`` (``all``:
    the run stops when every task's policy would stop it)."""

    def __init__(self, policy: Any, combine: Callable[[list[bool]], bool] = all):
        self.policy, self.combine = policy, combine
        self.name = f"per_task_{combine.__name__}:{getattr(policy, 'name', 'policy')}"
        self.params = getattr(policy, "params", {})

    def decide_run(self, run: Run) -> Decision:
        decisions = self.policy.decide_many(list(run.values()))
        stop = self.combine([d.early_stop for d in decisions])
        return decisions[0].replace(stop=stop, message=f"{sum(d.early_stop for d in decisions)} "
                                                      f"of {len(decisions)} tasks would stop")
