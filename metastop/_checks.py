"""Parameter checks shared by constructors: each error names the parameter, rule and value."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ParameterError


def number(name: str, value: Any) -> float:
    """``value`` as a finite float, else ``ParameterError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number, got {name}={value!r}")
    if not math.isfinite(value):
        raise ParameterError(f"{name} must be finite, got {name}={value!r}")
    return float(value)


def positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(f"{name} must be a number, got {name}={value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"{name} must be finite and {rule}, got {name}={value!r}")
    return float(value)


def in_range(name: str, value: Any, low: float, high: float, *, open_ends: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high)`` with ``open_ends``)."""
    value = number(name, value)
    inside = low < value < high if open_ends else low <= value <= high
    if not inside:
        bounds = f"({low}, {high})" if open_ends else f"[{low}, {high}]"
        raise ParameterError(f"{name} must be in {bounds}, got {name}={value!r}")
    return value
