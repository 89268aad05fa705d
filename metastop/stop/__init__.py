"""The stopping stage: prices, policies, the ``Decision`` and the run-time controller.

A policy is one method, ``decide(curve) -> Decision``; ``CostAware`` stops when no later
evaluation is worth its tokens at the user's ``Price``. ``StopController`` is the only way a
Decision is made inside a training loop: it guards budget and warm-up, fails open, and writes
the decision log (``decisionlog``), which every later stage reads through one reader.

Example:
    >>> from metastop.stop import StopController  # doctest: +SKIP
    >>> StopController(budget=2e9).observe(1e8, 0.31).stop  # doctest: +SKIP
    False
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Decision": "decision", "Reason": "decision",
    "Price": "prices", "PriceBook": "prices", "POINT": "prices", "DEFAULT_PRICE": "prices",
    "to_points": "prices",
    "StoppingPolicy": "policies", "CostAware": "policies", "ImprovementProbability": "policies",
    "DEFAULT_RISK": "policies", "Patience": "rules", "Threshold": "rules",
    "AnyOf": "compose", "AllOf": "compose", "Confirmed": "compose",
    "StopController": "controller", "Reporting": "controller", "sync_decision": "distributed",
    "MultiTask": "multitask", "Study": "sweep", "StudyAware": "sweep",
    "DecisionLog": "decisionlog", "read_logs": "decisionlog",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
