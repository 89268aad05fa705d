"""Glue shared by the adapters; imports no training framework."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Iterable, Mapping, Sequence

from .._checks import positive
from ..curves import is_bounded_metric
from ..errors import ParameterError
from ..stop.controller import Reporting, StopController
from ..stop.decisionlog import NOT_A_POINT


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``ImportError`` with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"this metastop integration needs {module}: "
                          f"pip install 'metastop[{extra}]' ({error})") from error


def make_controller(controller: Any, policy: Any, budget: float | None, curve_id: str,
                    reporting: Reporting | None = None, direction: str | None = None) -> Any:
    """The controller given, or one built from ``policy``, ``budget`` and ``reporting``.

    ``direction`` (``None``: maximize) is that of the controller built; a given controller
    whose direction differs is refused.
    """
    if controller is not None:
        _check_given(controller, policy, budget, reporting)
        if direction is not None:
            check_direction(controller, direction, "direction=")
        return controller
    if budget is None:
        raise ParameterError("budget (planned total tokens) is required when no controller is "
                             "given, got budget=None")
    return StopController(policy, budget=budget, curve_id=curve_id, reporting=reporting,
                          **({"direction": direction} if direction is not None else {}))


def check_direction(controller: Any, direction: str, where: str) -> None:
    """``ParameterError`` if ``controller`` decides for another direction than ``where`` says."""
    have = getattr(controller, "direction", None)
    if have is not None and have != direction:
        raise ParameterError(f"the controller given has direction={have!r} but {where} says "
                             f"{direction!r}; build the StopController with "
                             f"direction={direction!r} or change {where}")


class LazyController:
    """The controller a callback drives: the one given, or one built from ``policy``,
    ``budget`` and ``reporting`` once the run's direction (and, without a budget, the
    framework's planned steps) is known. State loaded before then waits for it.
    """

    def __init__(self, controller: Any, policy: Any, budget: float | None,
                 reporting: Reporting | None, curve_id: str):
        if controller is not None:
            _check_given(controller, policy, budget, reporting)
        self.controller = controller
        self.budget = None if budget is None else positive("budget", budget)
        self.policy, self.reporting, self.curve_id = policy, reporting, curve_id
        self._waiting: dict[str, Any] | None = None

    @property
    def needs_budget(self) -> bool:
        """Whether building the controller needs a budget from the framework."""
        return self.controller is None and self.budget is None and self._saved_budget() is None

    def get(self, direction: str, budget: float | None = None) -> Any:
        """The controller, built on first use with ``direction`` and the first budget known
        of ``budget=`` given at construction, the saved state's and ``budget`` here."""
        if self.controller is None:
            chosen = next((b for b in (self.budget, self._saved_budget(), budget) if b is not None),
                          None)
            if chosen is None:
                raise ParameterError("budget is unknown: pass budget= (planned total tokens)")
            self.controller = StopController(self.policy, budget=chosen, direction=direction,
                                             curve_id=self.curve_id, reporting=self.reporting)
            if self._waiting is not None:
                self.controller.load_state_dict(self._waiting)
                self._waiting = None
        return self.controller

    def state_dict(self) -> dict[str, Any] | None:
        return self.controller.state_dict() if self.controller is not None else self._waiting

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        if self.controller is not None:
            self.controller.load_state_dict(state)
        else:
            self._waiting = dict(state)

    def _saved_budget(self) -> float | None:
        budget = (self._waiting or {}).get("budget")
        return float(budget) if isinstance(budget, (int, float)) and budget > 0 else None


def _check_given(controller: Any, policy: Any, budget: Any, reporting: Any) -> None:
    if policy is not None or budget is not None or reporting is not None:
        raise ParameterError("give either controller or policy/budget/reporting, not both; "
                             f"got controller={controller!r} with policy={policy!r}, "
                             f"budget={budget!r}, reporting={reporting!r}")


def observe_monitored(slot: LazyController, monitored: Any, raw: float, tokens: float,
                      budget: float | None, step: int) -> Any:
    """One evaluation of a callback's monitored metric through its controller: the value read
    on the metric's settled scale (earlier points rescaled when a 0-100 score reveals itself),
    the decision made, and the point noted unless the controller ignored it."""
    value, earlier_on_100 = monitored.read(raw)
    controller = slot.get(monitored.direction, budget)
    if earlier_on_100:
        rescale(controller, 100.0)
    decision = controller.observe(tokens, value)
    if decision.reason not in NOT_A_POINT:
        monitored.note(raw, step)
    return decision


def rescale(controller: Any, divisor: float) -> None:
    """Divide the values a controller has kept by ``divisor`` (a score read as 0-1 that
    turned out to be on 0-100); its past decisions stay as they were made."""
    state = controller.state_dict()
    state["values"] = [v / divisor for v in state["values"]]
    controller.load_state_dict(state)


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


def task_values(metrics: Mapping[str, Any], names: Sequence[str], *, prefix: str = "") -> dict[str, float]:
    """The named metrics present in ``metrics`` (also under ``prefix + name``) as
    ``{name: value}``; a bounded score (EM, accuracy, F1) above 1 is read as 0-100."""
    values = {}
    for name in names:
        key = next((k for k in (name, prefix + name) if k in metrics), None)
        if key is not None:
            value = as_float(metrics[key])
            values[name] = value / 100.0 if value > 1.0 and is_bounded_metric(name) else value
    return values


def first_tensor(batch: Any, wanted: Any = None) -> Any:
    """The first tensor (breadth first through mappings, lists and tuples) of a batch for which
    ``wanted(tensor)`` holds (any tensor with ``wanted=None``); ``None`` if there is none."""
    queue = [batch]
    while queue:
        item = queue.pop(0)
        if isinstance(item, Mapping):
            queue.extend(item.values())
        elif isinstance(item, (list, tuple)):
            queue.extend(item)
        elif getattr(item, "ndim", 0) >= 1 and (wanted is None or wanted(item)):
            return item
    return None


def token_ids(batch: Any) -> int | None:
    """Tokens in a batch: the size of its first integer tensor of shape (batch, length, ...)."""
    found = first_tensor(batch, lambda t: t.ndim >= 2 and _is_integer(getattr(t, "dtype", None)))
    return None if found is None else int(found.numel())


def _is_integer(dtype: Any) -> bool:
    return (dtype is not None and not getattr(dtype, "is_floating_point", True)
            and not getattr(dtype, "is_complex", True) and str(dtype) != "torch.bool")
