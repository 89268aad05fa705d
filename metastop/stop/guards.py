"""The two guards every decision passes first: the budget and the warm-up.

They are decided here once, for the run-time controller and for the policies alike (a policy
replayed offline has no controller around it): a curve at its budget stops, a curve still
warming up continues, and only then is a policy asked.

Example:
    >>> from metastop.curves import Curve
    >>> budget_reached(Curve("c", [5.0, 10.0], [0.1, 0.2], budget=10.0)).reason.value
    'budget_reached'
    >>> warming_up(Curve("c", [1.0], [0.1], budget=10.0), min_fraction=0.2).reason.value
    'warmup'
"""

from __future__ import annotations

from ..curves import Curve
from .decision import Decision, Reason


def budget_reached(curve: Curve, *, policy: str | None = None) -> Decision | None:
    """``BUDGET_REACHED`` (stop) once the last point is at or past the curve's budget."""
    if curve.last_tokens < curve.budget:
        return None
    return _decision(curve, True, Reason.BUDGET_REACHED,
                     f"stop: budget of {curve.budget:.1e} tokens reached", policy)


def warming_up(curve: Curve, *, min_fraction: float = 0.0, min_points: int = 1,
               min_tokens: float = 0.0, policy: str | None = None) -> Decision | None:
    """``WARMUP`` (continue) while fewer than ``min_points`` points, ``min_fraction`` of the
    budget or ``min_tokens`` tokens have been seen."""
    if curve.last_tokens < min_tokens:
        return _decision(curve, False, Reason.WARMUP,
                         f"warm-up: {curve.last_tokens:.1e} of {min_tokens:.1e} tokens", policy)
    if len(curve) < min_points or curve.fraction_seen < min_fraction:
        return _decision(curve, False, Reason.WARMUP,
                         f"warm-up: {len(curve)} points, {curve.fraction_seen:.0%} of the budget "
                         f"seen (decides from {min_fraction:.0%} and {min_points} points)", policy)
    return None


def _decision(curve: Curve, stop: bool, reason: Reason, message: str,
              policy: str | None) -> Decision:
    return Decision(stop=stop, reason=reason, message=message, tokens=curve.last_tokens,
                    value=float(curve.values[-1]), best=curve.best, policy=policy)
