"""Combinators: ``AnyOf`` / ``AllOf`` compose policies (Ray Tune's ``CombinedStopper``);
``Confirmed`` stops only after ``n`` stop verdicts in a row (for noisy metrics).

Each is itself a policy with one method, ``decide(curve) -> Decision``, so they nest.

Example:
    >>> from metastop.stop.rules import Patience, Threshold
    >>> AnyOf(Patience(5), Threshold(target=0.95)).name
    'any_of'
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from .decision import Decision, Reason
from .policies import StoppingPolicy, with_context


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

    def with_context(self, context: Any) -> StoppingPolicy:
        twin = copy.copy(self)
        twin.policies = tuple(with_context(p, context) for p in self.policies)
        return twin

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
        >>> from metastop.stop.rules import Patience, Threshold
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
        >>> from metastop.stop.rules import Patience, Threshold
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
        >>> from metastop.stop.rules import Patience
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

    def with_context(self, context: Any) -> StoppingPolicy:
        return Confirmed(with_context(self.policy, context), n=self.n)

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
