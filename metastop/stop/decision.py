"""What a stopping policy says at one evaluation: the frozen ``Decision`` and its ``Reason``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Reason(str, Enum):
    """Why a policy stopped or continued. The value is what the decision log records."""

    WARMUP = "warmup"
    CONTINUE_WORTH_IT = "continue_worth_it"
    GAIN_BELOW_COST = "gain_below_cost"
    BUDGET_REACHED = "budget_reached"
    PREDICTOR_ERROR = "predictor_error"
    NON_FINITE = "non_finite"
    PATIENCE_EXHAUSTED = "patience_exhausted"
    IMPROVING = "improving"
    IMPROVEMENT_UNLIKELY = "improvement_unlikely"
    IMPROVEMENT_LIKELY = "improvement_likely"
    TARGET_REACHED = "target_reached"
    DIVERGED = "diverged"
    WITHIN_LIMITS = "within_limits"
    SHADOW = "shadow"
    CONFIRMING = "confirming"
    BAD_INPUT = "bad_input"


@dataclass(frozen=True)
class Decision:
    """One stop-or-continue verdict with everything that led to it, in metric units.

    Example:
        >>> d = Decision(stop=False, reason=Reason.WARMUP, message="warm-up: 1e6 of 5e6 tokens",
        ...              tokens=1e6, value=0.2, best=0.2)
        >>> d.to_dict()["reason"]
        'warmup'
    """

    stop: bool
    reason: Reason
    message: str
    tokens: float
    value: float
    best: float
    predicted_final: float | None = None
    interval: tuple[float, float] | None = None
    expected_gain: float | None = None
    projected_cost: float | None = None
    policy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe data (non-finite floats become ``None``)."""
        data = asdict(self)
        data["reason"] = self.reason.value
        data["interval"] = list(self.interval) if self.interval is not None else None
        return {k: _json_safe(v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        fields = dict(data)
        fields["reason"] = Reason(fields["reason"])
        if fields.get("interval") is not None:
            fields["interval"] = tuple(fields["interval"])
        known = cls.__dataclass_fields__
        return cls(**{k: (math.nan if v is None and k in _NAN_IF_MISSING else v)
                      for k, v in fields.items() if k in known})

    @property
    def early_stop(self) -> bool:
        """A stop before the budget ran out: what a pruner acts on and what stopping saves.

        ``BUDGET_REACHED`` also says stop, but the run is finishing anyway; pruning it would
        throw away a complete result.
        """
        return self.stop and self.reason is not Reason.BUDGET_REACHED

    def replace(self, **changes: Any) -> Decision:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_NAN_IF_MISSING = ("tokens", "value", "best")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
