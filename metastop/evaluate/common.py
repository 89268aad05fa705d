"""Small helpers shared by the evaluation modules: keep rules, summaries, JSON-safe values,
progress scaling and batched calls to policies and predictors.

Example:
    >>> p95(np.arange(21.0)), json_float(float("nan")), plain({"a": np.float64(0.5)})
    (19.0, None, {'a': 0.5})
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..stop.decision import Decision

KEEP = ("best", "last")
"""Which checkpoint a stopped run delivers: the best one seen, or the last one."""
ORACLE = "oracle"
"""The report name of the hindsight oracle."""
Progress = Callable[[int, int], None]
"""``progress(done, total)``: points replayed so far out of all points to replay."""


class Policy(Protocol):
    """What the backtest needs from a stopping policy (see ``metastop.stop.policies``)."""

    name: str

    def decide(self, curve: Curve) -> Decision: ...


def check_keep(keep: str) -> None:
    """Refuse a keep rule other than ``best`` or ``last``."""
    if keep not in KEEP:
        raise ParameterError(f"keep must be one of {KEEP}, got {keep=}")


def p95(values: np.ndarray) -> float:
    """The 95th percentile (linear interpolation), ``nan`` for no values."""
    return float(np.percentile(values, 95)) if len(values) else math.nan


def mean(values: np.ndarray) -> float:
    """The mean, ``nan`` for no values."""
    return float(values.mean()) if len(values) else math.nan


def json_float(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or not finite (JSON has no nan)."""
    return float(value) if value is not None and math.isfinite(value) else None


def fraction_key(f: float) -> str:
    """The JSON key of a budget fraction: ``0.1 -> "0.1"``."""
    return repr(float(f))


def plain(value: Any) -> Any:
    """JSON-safe plain data: numpy scalars to Python, objects with ``to_dict`` to dicts."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (int, str, bool)):
        return value
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    return str(value)


def sub_progress(progress: Progress | None, index: int, count: int) -> Progress | None:
    """Map the progress of the ``index``-th of ``count`` runs onto one 0..1000*count scale."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(index * 1000 + int(1000 * done / max(total, 1)), 1000 * count)

    return report


def policy_name(policy: Any) -> str:
    """A policy's report name: its ``name``, else its class name."""
    return str(getattr(policy, "name", type(policy).__name__))


def decide_many(policy: Policy, prefixes: list[Curve]) -> list[Decision]:
    """One decision per prefix, batched through ``decide_many`` when the policy has it."""
    batched = getattr(policy, "decide_many", None)
    decisions = list(batched(prefixes)) if batched is not None else [policy.decide(c) for c in prefixes]
    if len(decisions) != len(prefixes):
        raise ParameterError(f"policy {policy_name(policy)!r} returned {len(decisions)} decisions "
                             f"for {len(prefixes)} curves")
    return decisions


def predict_batch(predictor: Any, curves: list[Curve], horizons: list[Any]) -> list[Any]:
    """One prediction per curve at its horizons, batched through ``predict_many`` when the
    predictor has it."""
    many = getattr(predictor, "predict_many", None)
    if many is None:
        return [predictor.predict(c, horizons=h) for c, h in zip(curves, horizons)]
    if all(h is None for h in horizons):
        return list(many(curves))
    return list(many(curves, horizons=horizons))
