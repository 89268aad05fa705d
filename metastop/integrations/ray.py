"""Ray Tune stopper: one metastop controller per trial, stopping trials not worth their tokens.

Example:
    >>> from ray import tune  # doctest: +SKIP
    >>> from metastop.integrations.ray import MetaStopStopper  # doctest: +SKIP
    >>> from metastop.stop.rules import Patience  # doctest: +SKIP
    >>> stopper = MetaStopStopper(budget=1e8, metric="em", tokens="tokens")  # doctest: +SKIP
    >>> tune.Tuner(train_fn, run_config=tune.RunConfig(stop=stopper)).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

from ..curves import DIRECTIONS
from ..errors import ParameterError
from ..stop.controller import Reporting, StopController, default_policy
from ..stop.decision import Reason
from ..stop.sweep import Study, StudyAware
from .._checks import positive
from ._common import as_float, missing_metric, require

_tune = require("ray.tune", "ray")


class MetaStopStopper(_tune.Stopper):
    """Feeds each trial's results to its own ``StopController``; never stops the whole experiment.

    Decisions are study-aware (``metastop.stop.sweep``): a trial is worth only what it may add
    over the best finished trial, the finished trials serve as context, and the trial that
    leads the study is never stopped. A trial has finished when it reaches the budget or Tune
    reports it ``done``. A result lacking ``metric`` or ``tokens`` is skipped with a warning
    (the trial continues). The controllers, keyed by trial id, are in ``controllers``.

    Args:
        policy: a ``StoppingPolicy`` shared by all trials (``None``: the default, cost-aware).
        budget: planned total tokens of one trial.
        metric: key of the result dict to watch.
        tokens: key of the result dict holding cumulative tokens (e.g. ``training_iteration``).
        direction: ``maximize`` or ``minimize``.
        n_startup_trials: finished trials needed before any trial is stopped.
        task: what the trials are scored on (named in the decision log and the curves);
            the curves carry ``metric`` as their metric name, from which the model reads
            the metric's kind (accuracy-like, loss, perplexity).
        reporting: decision log and shadow mode of every trial's controller.
    """

    def __init__(self, policy: Any = None, *, budget: float, metric: str = "exact_match",
                 tokens: str = "tokens", direction: str = "maximize", n_startup_trials: int = 1,
                 task: str | None = None, reporting: Reporting | None = None):
        self.policy = policy if policy is not None else default_policy()  # loaded once
        self.budget = positive("budget", budget)
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got {direction=}")
        self.metric, self.tokens, self.direction, self.task = metric, tokens, direction, task
        self.study = Study(direction=direction, n_startup=n_startup_trials)
        self.reporting = reporting
        self.controllers: dict[str, Any] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("done"):  # Tune repeats a finished trial's last result with done=True
            self._finish(trial_id)
            return False
        if self.metric not in result or self.tokens not in result:
            name = self.metric if self.metric not in result else self.tokens
            warnings.warn(missing_metric(name, result), RuntimeWarning, stacklevel=2)
            return False
        controller = self._controller(trial_id)
        decision = controller.observe(as_float(result[self.tokens]), as_float(result[self.metric]))
        if decision.reason is Reason.BUDGET_REACHED:
            self._finish(trial_id)
        return bool(decision.stop)

    def stop_all(self) -> bool:
        return False

    def _controller(self, trial_id: str) -> StopController:
        if trial_id not in self.controllers:
            self.controllers[trial_id] = StopController(
                StudyAware(self.policy, self.study), budget=self.budget,
                direction=self.direction, run_id=trial_id, curve_id=trial_id, task=self.task,
                metric=self.metric, reporting=self.reporting)
        return self.controllers[trial_id]

    def _finish(self, trial_id: str) -> None:
        controller = self.controllers.get(trial_id)
        stopped_early = controller is not None and any(d.early_stop for d in controller.decisions)
        if controller is not None and controller.curve is not None and not stopped_early:
            self.study.finish(controller.curve)
