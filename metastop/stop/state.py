"""Validating a controller's saved state before anything is restored from it."""

from __future__ import annotations

import math
from typing import Any, Mapping

from ..curves import Curve
from ..errors import MetastopError, ParameterError
from .decision import Decision

STATE_VERSION = 1


def _restored_state(state: Any, ctl: Any) -> tuple:
    """The validated parts of a ``state_dict``, or ``ParameterError`` naming the bad key."""
    if not isinstance(state, Mapping):
        raise ParameterError(f"state must be a mapping from state_dict(), got {type(state).__name__}")
    version = state.get("version", STATE_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= STATE_VERSION:
        raise ParameterError(f"state 'version' must be an integer from 1 to {STATE_VERSION} "
                             f"(this metastop's), got {_short(version)}")
    tokens, values = (_float_list(state.get(key, []), key) for key in ("tokens", "values"))
    if len(tokens) != len(values):
        raise ParameterError(f"state has {len(tokens)} tokens but {len(values)} values")
    if tokens:
        try:
            Curve(ctl.curve_id, tokens, values, direction=ctl.direction,
                  budget=max(ctl.budget, tokens[-1]))
        except MetastopError as error:
            raise ParameterError(f"state 'tokens'/'values' are not a valid curve: {error}") from None
    decisions = state.get("decisions", [])
    if not isinstance(decisions, list):
        raise ParameterError(f"state 'decisions' must be a list, got {type(decisions).__name__}")
    try:
        restored = [Decision.from_dict(d) for d in decisions]
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ParameterError(f"state 'decisions' holds a bad decision: {error}") from None
    stopped, would = state.get("stopped", False), state.get("would_stop_at")
    if not isinstance(stopped, bool):
        raise ParameterError(f"state 'stopped' must be true or false, got {_short(stopped)}")
    if would is not None and not math.isfinite(_as_float(would)):
        raise ParameterError(f"state 'would_stop_at' must be a number or null, got {_short(would)}")
    return tokens, values, restored, stopped, None if would is None else float(would)


def _float_list(items: Any, key: str) -> list[float]:
    if not isinstance(items, list):
        raise ParameterError(f"state {key!r} must be a list of numbers, got {type(items).__name__}")
    numbers = [_as_float(x) for x in items]
    if not all(math.isfinite(x) for x in numbers):
        raise ParameterError(f"state {key!r} must hold finite numbers only")
    return numbers


def _as_float(x: Any) -> float:
    """``float(x)``, or NaN for anything that is not a number (whatever its ``__float__`` does)."""
    if isinstance(x, (bool, str, bytes)):
        return math.nan
    try:
        return float(x)
    except Exception:  # an object's __float__ can raise anything (a meta tensor, 10**400)
        return math.nan


def _short(x: Any) -> str:
    try:
        text = repr(x)
    except Exception:  # a broken __repr__ must not break the message about it
        text = f"<{type(x).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."
