"""Ray Tune stopper: one metastop controller per trial, stopping trials not worth their tokens.

Example:
    >>> from ray import tune  # doctest: +SKIP
    >>> from metastop.integrations.ray import MetaStopStopper  # doctest: +SKIP
    >>> from metastop.stop.rules import Patience  # doctest: +SKIP
    >>> stopper = MetaStopStopper(Patience(3), budget=1e8, metric="em", tokens="tokens")  # doctest: +SKIP
    >>> tune.Tuner(train_fn, run_config=tune.RunConfig(stop=stopper)).fit()  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

from ..curves import DIRECTIONS
from ..errors import ParameterError
from ..stop.controller import Reporting, StopController, default_policy
from .._checks import positive
from ._common import as_float, missing_metric, require

_tune = require("ray.tune", "ray")


class MetaStopStopper(_tune.Stopper):
    """Feeds each trial's results to its own ``StopController``; never stops the whole experiment.

    A result lacking ``metric`` or ``tokens`` is skipped with a warning (the trial continues),
    and so is the copy of a trial's last result that Tune sends again with ``done=True``. The
    controllers, keyed by trial id, are in ``controllers``.

    Args:
        policy: a ``StoppingPolicy`` shared by all trials (``None``: the default, cost-aware).
        budget: planned total tokens of one trial.
        metric: key of the result dict to watch.
        tokens: key of the result dict holding cumulative tokens (e.g. ``training_iteration``).
        direction: ``maximize`` or ``minimize``.
        reporting: decision log and shadow mode of every trial's controller.
    """

    def __init__(self, policy: Any = None, *, budget: float, metric: str = "exact_match",
                 tokens: str = "tokens", direction: str = "maximize",
                 reporting: Reporting | None = None):
        self.policy = policy if policy is not None else default_policy()  # loaded once
        self.budget = positive("budget", budget)
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got {direction=}")
        self.metric, self.tokens, self.direction = metric, tokens, direction
        self.reporting = reporting
        self.controllers: dict[str, Any] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("done"):  # Tune repeats a finished trial's last result with done=True
            return False
        if self.metric not in result or self.tokens not in result:
            name = self.metric if self.metric not in result else self.tokens
            warnings.warn(missing_metric(name, result), RuntimeWarning, stacklevel=2)
            return False
        if trial_id not in self.controllers:
            self.controllers[trial_id] = StopController(
                self.policy, budget=self.budget, direction=self.direction, run_id=trial_id,
                curve_id=trial_id, reporting=self.reporting)
        decision = self.controllers[trial_id].observe(as_float(result[self.tokens]),
                                                      as_float(result[self.metric]))
        return bool(decision.stop)

    def stop_all(self) -> bool:
        return False
