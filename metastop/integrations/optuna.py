"""Optuna pruner: prune a trial when what it may still add to the study's best is not worth
its tokens.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> from metastop.integrations.optuna import MetaStopPruner  # doctest: +SKIP
    >>> study = optuna.create_study(direction="maximize",
    ...                             pruner=MetaStopPruner(n_startup_trials=2))  # doctest: +SKIP
    >>> # in the objective: trial.report(em, step); if trial.should_prune(): raise optuna.TrialPruned()
"""

from __future__ import annotations

from typing import Any

from .._checks import positive
from ..curves import MAXIMIZE, MINIMIZE, Curve
from ..errors import ParameterError
from ..stop.controller import Reporting, StopController, default_policy
from ..stop.sweep import Study, StudyAware
from ._common import require

_optuna = require("optuna", "optuna")
_COMPLETE = (_optuna.trial.TrialState.COMPLETE,)


class MetaStopPruner(_optuna.pruners.BasePruner):
    """Prunes a trial when its ``StopController`` says stop before the budget.

    Decisions are study-aware (``metastop.stop.sweep``): a trial is worth only what it may add
    over the best completed trial, the completed trials serve as context (the task's history),
    and the trial that leads the study is never pruned (Optuna leaves pruned trials out of
    ``best_value``). Each trial gets its own controller, fed the trial's new intermediate
    values: step ``s`` costs ``s * tokens_per_step`` tokens; the direction is the study's.

    Args:
        policy: the trials' policy (``None``: the default, cost-aware).
        budget: planned total tokens of a trial, or ``"auto"`` (as HyperbandPruner's
            ``max_resource="auto"``): the last step of the longest completed trial times
            ``tokens_per_step``; nothing is pruned before a trial has completed.
        tokens_per_step: tokens per reported step.
        n_startup_trials: completed trials needed before any pruning (as Optuna's pruners).
        n_warmup_steps: a trial is not pruned before this step (its values are still seen).
        task, metric: what the trials report (e.g. ``"qa"``, ``"exact_match"``): the model
            reads the metric's kind (accuracy-like, loss, perplexity) from its name, and the
            decision log names both; ``None``: inferred from the values, unnamed in the log.
        reporting: decision log and shadow mode of every trial's controller (run id
            ``trial-N``), so ``metastop report`` covers sweeps.
    """

    def __init__(self, policy: Any = None, *, budget: float | str = "auto",
                 tokens_per_step: float = 1.0, n_startup_trials: int = 1,
                 n_warmup_steps: int = 0, task: str | None = None, metric: str | None = None,
                 reporting: Reporting | None = None):
        self.budget = budget if budget == "auto" else positive("budget", budget)
        self.tokens_per_step = positive("tokens_per_step", tokens_per_step)
        if isinstance(n_warmup_steps, bool) or not isinstance(n_warmup_steps, int) or n_warmup_steps < 0:
            raise ParameterError(f"n_warmup_steps cannot be negative, but got {n_warmup_steps=}.")
        self.n_warmup_steps = n_warmup_steps
        self.n_startup_trials = n_startup_trials
        self.task, self.metric = task, metric
        self.policy = policy if policy is not None else default_policy()
        self.reporting = reporting
        self.controllers: dict[int, StopController] = {}
        self._study: Study | None = None

    @property
    def decisions(self) -> dict[int, Any]:
        """The last decision per trial number."""
        return {n: c.last_decision for n, c in self.controllers.items() if c.decisions}

    def prune(self, study: "_optuna.study.Study", trial: "_optuna.trial.FrozenTrial") -> bool:
        known = self._known(study)
        budget = self.budget if self.budget != "auto" else known.longest
        if budget is None or not trial.intermediate_values:
            return False
        controller = self._controller(trial, budget)
        seen = controller.decisions[-1].tokens if controller.decisions else -1.0
        decision = controller.last_decision
        for step, value in sorted(trial.intermediate_values.items()):
            if step * self.tokens_per_step > seen:
                decision = controller.observe(step * self.tokens_per_step, value)
        warm = max(trial.intermediate_values) >= self.n_warmup_steps
        return warm and decision is not None and decision.early_stop

    def _known(self, study: Any) -> Study:
        """The study's completed trials as curves (each converted once)."""
        if self._study is None:
            minimize = study.direction == _optuna.study.StudyDirection.MINIMIZE
            self._study = Study(direction=MINIMIZE if minimize else MAXIMIZE,
                                n_startup=self.n_startup_trials)
        for frozen in study.get_trials(deepcopy=False, states=_COMPLETE):
            name = f"trial-{frozen.number}"
            if name not in self._study.finished and frozen.intermediate_values:
                self._study.finish(self._curve(name, frozen.intermediate_values))
        return self._study

    def _curve(self, name: str, values: dict[int, float]) -> Curve:
        points = sorted((s * self.tokens_per_step, v) for s, v in values.items() if v == v)
        tokens = [t for t, _ in points]
        return Curve(name, tokens, [v for _, v in points], direction=self._study.direction,
                     run_id=name, task=self.task, metric=self.metric)

    def _controller(self, trial: Any, budget: float) -> StopController:
        if trial.number not in self.controllers:
            name = f"trial-{trial.number}"
            self.controllers[trial.number] = StopController(
                StudyAware(self.policy, self._study), budget=budget,
                direction=self._study.direction, run_id=name, curve_id=name, task=self.task,
                metric=self.metric, reporting=self.reporting)
        return self.controllers[trial.number]
