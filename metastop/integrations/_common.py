"""Glue shared by the adapters; imports no training framework."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterable

from ..errors import ParameterError
from ..stop.controller import Reporting, StopController


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"this metastop integration needs {module}: "
                          f"pip install 'metastop[{extra}]' ({error})") from error


def make_controller(controller: Any, policy: Any, budget: float | None, curve_id: str,
                    reporting: Reporting | None = None) -> Any:
    """The controller given, or one built from ``policy``, ``budget`` and ``reporting``."""
    if controller is not None:
        if policy is not None or budget is not None or reporting is not None:
            raise ParameterError("give either controller or policy/budget/reporting, not both; "
                                 f"got controller={controller!r} with policy={policy!r}, "
                                 f"budget={budget!r}, reporting={reporting!r}")
        return controller
    if budget is None:
        raise ParameterError("budget (planned total tokens) is required when no controller is "
                             "given, got budget=None")
    return StopController(policy, budget=budget, curve_id=curve_id, reporting=reporting)


def missing_metric(name: str, present: Iterable[str]) -> str:
    """The warning for an evaluation that lacks the monitored metric."""
    return (f"metastop: metric {name!r} is not in this evaluation's metrics, so no stop decision "
            f"was made (training continues); metrics present: {sorted(present)}")


def as_float(value: Any) -> float:
    """``float(value)``, or NaN (which the controller reports as non-finite) if impossible."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return float("nan")
