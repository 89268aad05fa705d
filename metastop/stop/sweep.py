"""Deciding one trial of a sweep as the user decides: by what it may add to the study's best.

In a hyperparameter sweep only the study's best result counts. A trial whose optimistic final
value cannot beat the best finished trial is worth nothing, however much it still climbs; a
plateaued trial that leads the study may still be the winner, and a pruned trial's result is
lost (Optuna leaves pruned trials out of ``best_value``). So ``StudyAware`` wraps a policy for
one trial:

- the trial that leads the study (its best beats every finished trial's) is never stopped;
- otherwise the policy judges the gain over the study's best (``with_incumbent``), with the
  finished trials as context (``with_context``: they are the task's history);
- before ``n_startup`` trials have finished, nothing is stopped, nor before a trial has seen
  ``min_fraction`` of its budget (0.25 by default, later than a lone run's 0.1: a pruned
  trial loses its whole result, and the winners of a sweep are often late risers).

``Study`` is what the adapter knows of the study, updated before each decision. The Optuna
pruner and the Ray Tune stopper both use these.

Example:
    >>> study = Study(direction="maximize")
    >>> policy = StudyAware(CostAware(Predictor.load()), study)  # doctest: +SKIP
    >>> study.finish(trial_curve)  # a trial completed  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from ..curves import DIRECTIONS, MAXIMIZE, Curve
from ..errors import ParameterError
from ..predict.context import Context
from .decision import Decision, Reason
from .guards import warming_up
from .policies import StoppingPolicy, with_context


SWEEP_MIN_FRACTION = 0.25
"""A sweep's trials are not stopped before a quarter of their budget (see the module text)."""


class Study:
    """The finished trials of a sweep, as curves, and its best value so far.

    Args:
        direction: ``maximize`` or ``minimize`` (the study's).
        n_startup: finished trials needed before any trial is stopped.
        min_fraction: share of its budget a trial sees before it may be stopped.
    """

    def __init__(self, *, direction: str = MAXIMIZE, n_startup: int = 1,
                 min_fraction: float = SWEEP_MIN_FRACTION):
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got {direction=}")
        if isinstance(n_startup, bool) or not isinstance(n_startup, int) or n_startup < 0:
            raise ParameterError(f"n_startup must be an integer >= 0, but got {n_startup=}")
        if not 0.0 <= min_fraction <= 1.0:
            raise ParameterError(f"min_fraction must be in [0, 1], but got {min_fraction=}")
        self.direction, self.n_startup, self.min_fraction = direction, n_startup, min_fraction
        self.finished: dict[str, Curve] = {}

    def finish(self, curve: Curve) -> None:
        """Record a finished trial (again: replaced)."""
        self.finished[curve.curve_id] = curve

    @property
    def incumbent(self) -> float | None:
        """The best value of the finished trials (metric units), ``None`` before any."""
        if not self.finished:
            return None
        bests = [c.best for c in self.finished.values()]
        return max(bests) if self.direction == MAXIMIZE else min(bests)

    @property
    def longest(self) -> float | None:
        """The last tokens of the longest finished trial (``budget="auto"``)."""
        return max((c.last_tokens for c in self.finished.values()), default=None)

    def leads(self, curve: Curve) -> bool:
        """Whether ``curve``'s best beats (or ties) every finished trial's."""
        incumbent = self.incumbent
        return incumbent is None or curve.sign * curve.best >= curve.sign * incumbent

    def context(self, curve: Curve) -> list[Curve]:
        """The finished trials other than ``curve``'s own."""
        return [c for c in self.finished.values() if c.curve_id != curve.curve_id]


class StudyAware(StoppingPolicy):
    """A trial's policy in a sweep: judged by the gain over the study's best.

    Args:
        policy: the trial's policy; model-based policies (``CostAware``) take the study's best
            and finished trials into account, others decide as they would alone.
        study: the ``Study`` the trial belongs to (shared by all its trials).
    """

    name = "study_aware"

    def __init__(self, policy: StoppingPolicy, study: Study):
        if not callable(getattr(policy, "decide", None)):
            raise ParameterError(f"policy must have a decide(curve) method, got policy={policy!r}")
        self.policy, self.study = policy, study
        self._cached: tuple[int, Any] | None = None

    @property
    def params(self) -> dict[str, Any]:
        return {"policy": {"name": getattr(self.policy, "name", type(self.policy).__name__),
                           "params": getattr(self.policy, "params", {})},
                "n_startup": self.study.n_startup}

    def decide(self, curve: Curve) -> Decision:
        if len(self.study.finished) < self.study.n_startup:
            return self._continue(curve, f"startup: {len(self.study.finished)} of "
                                         f"{self.study.n_startup} trials finished")
        early = warming_up(curve, min_fraction=self.study.min_fraction, policy=self.name)
        if early is not None:
            return early
        if self.study.leads(curve):
            return self._continue(curve, f"continue: best {curve.best:.4g} leads the study "
                                         f"(finished trials' best {self.study.incumbent})")
        return self._for(curve).decide(curve)

    def _for(self, curve: Curve) -> StoppingPolicy:
        """The policy with the study's context and incumbent (the context is rebuilt only when
        another trial has finished)."""
        if self._cached is None or self._cached[0] != len(self.study.finished):
            context = Context.of(curve, self.study.context(curve))
            policy = with_context(self.policy, context) if len(context) else self.policy
            self._cached = (len(self.study.finished), policy)
        policy = self._cached[1]
        with_incumbent = getattr(policy, "with_incumbent", None)
        return with_incumbent(self.study.incumbent) if with_incumbent is not None else policy

    def _continue(self, curve: Curve, message: str) -> Decision:
        return self._decision(curve, False, Reason.CONTINUE_WORTH_IT, message)
