"""Optuna pruner: prune a trial when a metastop policy would stop its curve.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> from metastop.integrations.optuna import MetaStopPruner  # doctest: +SKIP
    >>> from metastop.stop.rules import Patience  # doctest: +SKIP
    >>> study = optuna.create_study(direction="maximize",
    ...                             pruner=MetaStopPruner(Patience(3), budget=100))  # doctest: +SKIP
    >>> # in the objective: trial.report(em, step); if trial.should_prune(): raise optuna.TrialPruned()
"""

from __future__ import annotations

from typing import Any

from .._checks import positive
from ..curves import MAXIMIZE, MINIMIZE
from ..stop.controller import Reporting, StopController, default_policy
from ._common import require

_optuna = require("optuna", "optuna")


class MetaStopPruner(_optuna.pruners.BasePruner):
    """Prunes a trial when its ``StopController`` says stop before the budget.

    Each trial gets its own controller (the policy is shared), fed the trial's new
    intermediate values at every ``prune`` call: step ``s`` costs ``s * tokens_per_step``
    tokens and the direction is the study's. The controller makes every decision: non-finite
    values are reported and skipped, a failing policy keeps the trial running, and a trial that
    reached its budget is never pruned (``Decision.early_stop``: it is finishing anyway).

    Args:
        policy: a metastop ``StoppingPolicy`` (``None``: the default, cost-aware).
        budget: planned total tokens of a trial (the last step times ``tokens_per_step``).
        tokens_per_step: tokens per reported step.
        reporting: decision log and shadow mode for every trial's controller (a trial's
            run id is ``trial-N``).
    """

    def __init__(self, policy: Any = None, *, budget: float, tokens_per_step: float = 1.0,
                 reporting: Reporting | None = None):
        self.policy = policy if policy is not None else default_policy()
        self.budget = positive("budget", budget)
        self.tokens_per_step = positive("tokens_per_step", tokens_per_step)
        self.reporting = reporting
        self.controllers: dict[int, StopController] = {}

    @property
    def decisions(self) -> dict[int, Any]:
        """The last decision per trial number."""
        return {n: c.last_decision for n, c in self.controllers.items() if c.decisions}

    def prune(self, study: "_optuna.study.Study", trial: "_optuna.trial.FrozenTrial") -> bool:
        controller = self._controller(study, trial)
        seen = controller.decisions[-1].tokens if controller.decisions else -1.0
        decision = controller.last_decision
        for step, value in sorted(trial.intermediate_values.items()):
            if step * self.tokens_per_step > seen:
                decision = controller.observe(step * self.tokens_per_step, value)
        return decision is not None and decision.early_stop

    def _controller(self, study: Any, trial: Any) -> StopController:
        if trial.number not in self.controllers:
            minimize = study.direction == _optuna.study.StudyDirection.MINIMIZE
            self.controllers[trial.number] = StopController(
                self.policy, budget=self.budget, direction=MINIMIZE if minimize else MAXIMIZE,
                run_id=f"trial-{trial.number}", curve_id=f"trial-{trial.number}",
                reporting=self.reporting)
        return self.controllers[trial.number]
