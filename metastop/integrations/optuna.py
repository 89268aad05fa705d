"""Optuna pruner: prune a trial when a metastop policy would stop its curve.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> from metastop.integrations.optuna import MetaStopPruner  # doctest: +SKIP
    >>> from metastop.stop.policies import Patience  # doctest: +SKIP
    >>> study = optuna.create_study(direction="maximize",
    ...                             pruner=MetaStopPruner(Patience(3), budget=100))  # doctest: +SKIP
    >>> # in the objective: trial.report(em, step); if trial.should_prune(): raise optuna.TrialPruned()
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..curves import MAXIMIZE, MINIMIZE, Curve
from ..stop.decision import Reason
from ..stop.controller import default_policy
from .._checks import positive
from ._common import require

_optuna = require("optuna", "optuna")
logger = logging.getLogger(__name__)


class MetaStopPruner(_optuna.pruners.BasePruner):
    """Replays a trial's intermediate values through one shared policy and prunes on ``stop``.

    Policies are pure functions of the curve, so each call rebuilds the curve from
    ``trial.intermediate_values`` (step ``s`` costs ``s * tokens_per_step`` tokens; non-finite
    values are skipped). The direction is the study's. A trial that has reached ``budget`` is
    never pruned (it is finishing anyway), nor is one whose decision fails (fail-open, with a
    warning, as in ``StopController``). The last decision per trial number is in ``decisions``.

    Args:
        policy: a metastop ``StoppingPolicy`` (``None``: the default, cost-aware).
        budget: planned total tokens of a trial (the last step times ``tokens_per_step``).
        tokens_per_step: tokens per reported step.
    """

    def __init__(self, policy: Any = None, *, budget: float, tokens_per_step: float = 1.0):
        self.policy = policy if policy is not None else default_policy()
        self.budget = positive("budget", budget)
        self.tokens_per_step = positive("tokens_per_step", tokens_per_step)
        self.decisions: dict[int, Any] = {}

    def prune(self, study: "_optuna.study.Study", trial: "_optuna.trial.FrozenTrial") -> bool:
        points = sorted((s, v) for s, v in trial.intermediate_values.items() if math.isfinite(v))
        if not points:
            return False
        tokens = [s * self.tokens_per_step for s, _ in points]
        direction = MINIMIZE if study.direction == _optuna.study.StudyDirection.MINIMIZE else MAXIMIZE
        curve = Curve(f"trial-{trial.number}", tokens, [v for _, v in points], direction=direction,
                      budget=max(self.budget, tokens[-1]))
        try:
            decision = self.policy.decide(curve)
        except Exception as error:  # fail-open: a broken model must not end a trial
            logger.warning("metastop: policy failed on trial %d, not pruning: %s: %s",
                           trial.number, type(error).__name__, error)
            return False
        self.decisions[trial.number] = decision
        # A trial at its budget is finishing anyway: pruning it would discard a complete result.
        return bool(decision.stop) and decision.reason is not Reason.BUDGET_REACHED
