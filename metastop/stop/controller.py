"""``StopController``: the runtime inside the training loop.

At every evaluation the loop calls ``observe(tokens, value)`` and gets a ``Decision``; when
``should_stop`` is true it stops. The controller never crashes a training run: bad input
(NaN, tokens going backwards, a value on the wrong scale) and failures of the predictor or
policy come back as decisions that keep training (fail-open), with a warning in the log.

Every decision is appended, and flushed, to an optional JSONL decision log. In shadow mode
the policy decides as usual and the log records its verdict, but the run is never stopped:
shadow runs measure what stopping would have cost.

Under ``torch.distributed`` rank 0 decides and broadcasts its decision, so every rank stops
at the same step. torch is imported only when it is already in use.

Example:
    >>> from metastop.stop.rules import Patience
    >>> ctl = StopController(policy=Patience(3), budget=1e9)
    >>> for tokens, em in [(1e8, 0.30), (2e8, 0.29), (3e8, 0.28), (4e8, 0.28)]:
    ...     decision = ctl.observe(tokens, em)
    >>> ctl.should_stop, decision.reason.value
    (True, 'patience_exhausted')
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .._checks import positive
from ..curves import DIRECTIONS, MAXIMIZE, Curve
from .decision import Decision, Reason
from ..errors import MetastopError, ParameterError
from .decisionlog import DecisionLog, LogContext
from .distributed import _dist_ready, _rank, sync_decision
from .guards import budget_reached, warming_up
from .policies import DEFAULT_RISK, CostAware, StoppingPolicy, with_context
from .multitask import MultiTask, TaskCurves
from .prices import DEFAULT_PRICE
from .state import STATE_VERSION, _as_float, _restored_state, _short

logger = logging.getLogger(__name__)

_SCALE_RATIO = 10.0  # a 0-100 value is at least this many times the 0-1 values before it
_MAX_OVERSHOOT = 10.0  # tokens beyond this many budgets are a bogus count, not progress


@dataclass(frozen=True)
class Reporting:
    """Where a controller's decisions go, and whether they act.

    Attributes:
        log_path: JSONL decision log, appended to; ``None`` for no log.
        shadow: decide and log, but never stop the run.
        distributed: ``None`` syncs through ``torch.distributed`` when it is initialized;
            ``True`` requires it; ``False`` never syncs.
        model_version: recorded on every log line (default: the policy's predictor's).
    """

    log_path: str | os.PathLike | None = None
    shadow: bool = False
    distributed: bool | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.distributed not in (None, True, False):
            raise ParameterError(f"distributed must be None, True or False, got "
                                 f"distributed={self.distributed!r}")
        if not isinstance(self.shadow, bool):
            raise ParameterError(f"shadow must be True or False, got shadow={self.shadow!r}")


class StopController:
    """Feeds a run's evaluations to a stopping policy and keeps the stop flag.

    The only way a Decision is made at run time: the budget and warm-up guards
    (``metastop.stop.guards``) come first, then the policy; every adapter drives one of these.

    Args:
        policy: any ``StoppingPolicy``; ``None`` means ``CostAware`` with ``DEFAULT_PRICE`` and
            ``DEFAULT_RISK`` on ``predictor`` (``None``: the shipped model).
        budget: the run's planned total tokens (> 0).
        direction: ``maximize`` (accuracy, EM) or ``minimize`` (loss).
        task: the task, recorded on the curve and in the log (its price applies).
        metric: the metric's name (e.g. ``exact_match``): sets its range and finds its siblings.
        run_id, curve_id: recorded on the curve and in every log line.
        history: the history store (a URL such as ``sqlite:///history.db`` or a
            ``HistoryStore``): the finished runs of the same task are read once, at the first
            decision, and every prediction uses them (task memory); ``record()`` adds this
            run when it is done. Unreadable: a warning, and predictions without context.
        min_tokens: never stop before this many tokens (the policy is not asked).
        reporting: the decision log, shadow mode and distributed sync (``Reporting``).
        predictor: the predictor of the default policy (an error together with ``policy``).

    Example:
        >>> ctl = StopController(budget=8e9, task="gsm8k",
        ...                      reporting=Reporting(log_path="decisions.jsonl"))  # doctest: +SKIP
        >>> if ctl.observe(tokens_seen, em).stop:  # doctest: +SKIP
        ...     break
    """

    def __init__(self, policy: StoppingPolicy | None = None, *, budget: float,
                 direction: str = MAXIMIZE, task: str | None = None, metric: str | None = None,
                 run_id: str | None = None, curve_id: str = "run", min_tokens: float = 0.0,
                 history: Any = None, reporting: Reporting | None = None, predictor: Any = None):
        self.budget = positive("budget", budget)
        self.min_tokens = positive("min_tokens", min_tokens, allow_zero=True)
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got direction={direction!r}")
        _check_policy(policy, predictor)
        self.reporting = reporting if reporting is not None else Reporting()
        if not isinstance(self.reporting, Reporting):
            raise ParameterError(f"reporting must be a Reporting, got reporting={reporting!r}")
        self.direction = direction
        self.curve_id, self.run_id, self.task = str(curve_id), _id(run_id), _id(task)
        self.metric, self.history = _id(metric), history
        self._with_context: StoppingPolicy | None = None
        self._siblings = _read_siblings(history, self.task, self.metric,
                                        self.run_id or self.curve_id, self.curve_id)
        self._tasks = TaskCurves(direction)
        self.policy = policy if policy is not None else default_policy(predictor)
        self.log = self._decision_log()
        self._tokens: list[float] = []
        self._values: list[float] = []
        self.decisions: list[Decision] = []
        self._stopped = False
        self._would_stop_at: float | None = None
        if self.reporting.distributed is True and not _dist_ready():
            raise ParameterError("distributed=True needs torch.distributed to be initialized "
                                 "(call torch.distributed.init_process_group first)")

    @property
    def shadow(self) -> bool:
        return self.reporting.shadow

    # --- the loop-facing API ------------------------------------------------------------
    def observe(self, tokens: float, value: float | Mapping[str, float]) -> Decision:
        """Record one evaluation and return the decision. Never raises, whatever the input.

        ``value`` is the metric's value, or for a run scored on several tasks a mapping
        task -> value (``metastop.stop.multitask``: the run is decided by its price-weighted
        score; a missing, new or non-finite task is named in the message, the others kept).
        """
        try:
            if isinstance(value, Mapping):
                return self._record(self._decide_tasks(tokens, value), values=value)
            repeated = self._repeated(tokens, value)
            if repeated is not None:
                return repeated
            local = self._decide(tokens, value)
            decision = sync_decision(local) if self._syncing() else local
            return self._record(decision)
        except Exception as error:  # the promise: never crash a training run
            logger.warning("metastop failed to decide, training continues: %s: %s",
                           type(error).__name__, error, exc_info=True)
            return _failed(tokens, value, error)

    @property
    def should_stop(self) -> bool:
        """True once a decision stopped the run (never in shadow mode)."""
        return self._stopped

    @property
    def best(self) -> float | None:
        """The best value observed so far (metric units), ``None`` before any."""
        return self._best_value() if self._tokens else None

    @property
    def curve(self) -> Curve | None:
        """The points observed so far, ``None`` before any."""
        return self._curve() if self._tokens else None

    @property
    def last_decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-safe state; ``load_state_dict`` of it resumes the run exactly."""
        return {"version": STATE_VERSION, "tokens": list(self._tokens), "values": list(self._values),
                "decisions": [d.to_dict() for d in self.decisions], "stopped": self._stopped,
                "would_stop_at": self._would_stop_at, "budget": self.budget,
                "curve_id": self.curve_id, "tasks": self._tasks.state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict`` output; missing keys keep their fresh-run values.

        Everything is validated before anything changes: a bad state raises
        ``ParameterError`` naming the key and leaves the controller as it was.
        """
        restored = _restored_state(state, self)
        tasks = TaskCurves.from_state(state.get("tasks", {}), self.direction)
        self._tokens, self._values, self.decisions, self._stopped, self._would_stop_at = restored
        self._tasks = tasks
        budget = state.get("budget")
        if isinstance(budget, (int, float)) and float(budget) != self.budget:
            logger.warning("resumed state was saved with budget %g, this controller has %g",
                           float(budget), self.budget)

    # --- deciding -----------------------------------------------------------------------
    def _decide(self, tokens: Any, value: Any) -> Decision:
        problem = self._check_input(tokens, value)
        if problem is not None:
            logger.warning("%s", problem.message)
            return problem
        self._tokens.append(_as_float(tokens))
        self._values.append(_as_float(value))
        curve = self._curve()
        if self._syncing() and _rank() != 0:
            return self._plain(curve, False, Reason.CONTINUE_WORTH_IT, "awaiting rank 0's decision")
        name = _policy_name(self.policy)
        guarded = (budget_reached(curve, policy=name)
                   or warming_up(curve, min_tokens=self.min_tokens, policy=name))
        return guarded if guarded is not None else self._ask_policy(curve)

    def _ask_policy(self, curve: Curve) -> Decision:
        try:
            decision = self._policy(curve).decide(curve)
            if not isinstance(decision, Decision):
                raise TypeError(f"policy returned {type(decision).__name__}, not a Decision")
            return _checked(decision)
        except Exception as error:  # fail-open: a broken model must not end a training run
            logger.warning("policy %s failed at %g tokens, training continues: %s: %s",
                           _policy_name(self.policy), curve.last_tokens, type(error).__name__,
                           error, exc_info=True)
            return self._plain(curve, False, Reason.PREDICTOR_ERROR,
                               f"continue: prediction failed ({type(error).__name__}: {error})")

    def _policy(self, curve: Curve) -> StoppingPolicy:
        """The policy, with the task's finished runs as context when a history is given (read
        when the controller was built; built into a context at the first decision)."""
        if self.history is None:
            return self.policy
        if self._with_context is None:
            siblings = self._siblings
            if siblings is None or curve.task != self.task:
                siblings = _read_siblings(self.history, curve.task, curve.metric,
                                          curve.run_id or curve.curve_id, curve.curve_id)
            self._with_context = with_context(self.policy, _context(curve, siblings))
            self._siblings = None
        return self._with_context

    def record(self, history: Any = None) -> int:
        """Add this run's curve to the history store (``history``, else the controller's),
        so that later runs of the task learn from it. Returns the curves added (0 or 1).

        Raises:
            ParameterError: no history store was given.
        """
        store = history if history is not None else self.history
        if store is None:
            raise ParameterError("record() needs a history store: pass history= here or to "
                                 "the StopController")
        if not self._tokens:
            return 0
        from ..curves.history import open_history

        opened = open_history(store)
        try:
            return opened.add([self._curve()], source="StopController.record")
        finally:
            if opened is not store:
                opened.close()

    def _repeated(self, tokens: Any, value: Any) -> Decision | None:
        """The last decision again when the same evaluation arrives twice (a resumed run
        re-evaluates its checkpoint): neither kept nor logged a second time."""
        if not self._tokens or not self.decisions:
            return None
        if _as_float(tokens) == self._tokens[-1] and _as_float(value) == self._values[-1]:
            return self.decisions[-1]
        return None

    def _decide_tasks(self, tokens: Any, values: Mapping[Any, Any]) -> Decision:
        """A multi-task evaluation: each task's value kept by ``TaskCurves``, the run decided
        by ``MultiTask`` (the policy itself, or the policy wrapped with equal prices)."""
        t = _as_float(tokens)
        problem = self._tokens_problem(t, tokens)
        if problem is not None:
            return self._bad(Reason.BAD_INPUT, problem, t, math.nan)
        notes = self._tasks.add(t, values)
        for note in notes:
            logger.warning("metastop: %s", note)
        curves = self._tasks.curves(self.budget, curve_id=self.curve_id, run_id=self.run_id)
        if not curves:
            return self._bad(Reason.NON_FINITE, "ignored: no task has a finite value yet", t, math.nan)
        try:
            decision = _run_policy(self.policy).decide_run(curves)
        except Exception as error:  # fail-open, as for one metric
            logger.warning("multi-task decision failed, training continues: %s: %s",
                           type(error).__name__, error, exc_info=True)
            decision = self._bad(Reason.PREDICTOR_ERROR, f"continue: prediction failed "
                                 f"({type(error).__name__}: {error})", t, math.nan)
        self._tokens.append(t)
        self._values.append(decision.value if math.isfinite(decision.value) else 0.0)
        return decision.replace(message="; ".join([decision.message, *notes]))

    def _bad(self, reason: Reason, message: str, t: float, v: float) -> Decision:
        return Decision(stop=False, reason=reason, message=message, tokens=t, value=v,
                        best=self._best_value(), policy=_policy_name(self.policy))

    def _tokens_problem(self, t: float, given: Any) -> str | None:
        if not math.isfinite(t) or t < 0:
            return f"ignored: tokens must be a finite number >= 0, got {_short(given)}"
        if self._tokens and t <= self._tokens[-1]:
            kind = "repeated" if t == self._tokens[-1] else "went backwards"
            return (f"ignored: tokens {kind} ({self._tokens[-1]:g} then {t:g}); pass cumulative "
                    f"training tokens")
        if t > _MAX_OVERSHOOT * self.budget:
            return (f"ignored: {t:g} tokens is more than {_MAX_OVERSHOOT:g} times the budget "
                    f"({self.budget:g}); a bogus count is not trusted")
        return None

    def _check_input(self, tokens: Any, value: Any) -> Decision | None:
        t, v = _as_float(tokens), _as_float(value)

        def bad(reason: Reason, message: str) -> Decision:
            return self._bad(reason, message, t, v)

        if not math.isfinite(t) or t < 0:
            return bad(Reason.BAD_INPUT, self._tokens_problem(t, tokens))
        if not math.isfinite(v):
            return bad(Reason.NON_FINITE, f"ignored: value is not finite "
                                          f"({_short(value)}) at {t:g} tokens; training "
                                          f"continues, the point is not kept")
        problem = self._tokens_problem(t, tokens)
        if problem is not None:
            return bad(Reason.BAD_INPUT, problem)
        if self._wrong_scale(v):
            return bad(Reason.BAD_INPUT, f"ignored: value {v:g} looks like a 0-100 score but the "
                                         f"earlier values are within 0-1; divide it by 100")
        return None

    def _wrong_scale(self, value: float) -> bool:
        if self.direction != MAXIMIZE or not self._values or value <= 1.0:
            return False
        earlier = np.asarray(self._values)
        if earlier.min() < 0 or earlier.max() > 1.0:
            return False
        return value >= _SCALE_RATIO * earlier.max()

    # --- after the decision -------------------------------------------------------------
    def _record(self, decision: Decision, values: Mapping[Any, Any] | None = None) -> Decision:
        verdict = decision
        if self.shadow and decision.stop and self._would_stop_at is None:
            self._would_stop_at = decision.tokens
        if self.shadow and self._would_stop_at is not None and decision.reason not in _IGNORED:
            verdict = decision.replace(stop=True)
            said = ("would stop" if decision.stop and decision.tokens == self._would_stop_at
                    else f"would have stopped at {self._would_stop_at:.1e} tokens")
            decision = decision.replace(stop=False, reason=Reason.SHADOW,
                                        message=f"shadow: {said} ({decision.message})")
        acted = decision.stop and not self.shadow
        self._stopped = self._stopped or acted
        self.decisions.append(decision)
        if self.log is not None and (not self._syncing() or _rank() == 0):
            self.log.write(verdict, acted=acted, values=_plain_values(values))
        return decision

    def _decision_log(self) -> DecisionLog | None:
        if self.reporting.log_path is None:
            return None
        version = self.reporting.model_version or _model_version(self.policy)
        context = LogContext(run_id=self.run_id, curve_id=self.curve_id, task=self.task,
                             direction=self.direction, budget=self.budget,
                             policy=_policy_name(self.policy),
                             params=getattr(self.policy, "params", {}), model_version=version,
                             shadow=self.shadow)
        return DecisionLog(self.reporting.log_path, context)

    # --- helpers ------------------------------------------------------------------------
    def _best_value(self) -> float:
        if not self._values:
            return math.nan
        return max(self._values) if self.direction == MAXIMIZE else min(self._values)

    def _curve(self) -> Curve:
        return Curve(self.curve_id, np.asarray(self._tokens), np.asarray(self._values),
                     direction=self.direction, budget=max(self.budget, self._tokens[-1]),
                     run_id=self.run_id, task=self.task, metric=self.metric)

    def _plain(self, curve: Curve, stop: bool, reason: Reason, message: str) -> Decision:
        return Decision(stop=stop, reason=reason, message=message, tokens=curve.last_tokens,
                        value=float(curve.values[-1]), best=curve.best,
                        policy=_policy_name(self.policy))

    def _syncing(self) -> bool:
        return self.reporting.distributed is not False and _dist_ready()

    def __repr__(self) -> str:
        return (f"StopController({_policy_name(self.policy)}, budget={self.budget:g}, "
                f"points={len(self._tokens)}, stopped={self._stopped}, shadow={self.shadow})")


# Decisions about ignored input: in shadow mode they stay what they are.
_IGNORED = (Reason.BAD_INPUT, Reason.NON_FINITE)


def default_policy(predictor: Any = None) -> CostAware:
    """The shipped default: ``CostAware`` with ``DEFAULT_PRICE`` and ``DEFAULT_RISK``;
    ``predictor=None`` loads the shipped default model (``Predictor.load()``)."""
    if predictor is None:
        from ..predict.model import Predictor

        predictor = Predictor.load()
    return CostAware(predictor, price=DEFAULT_PRICE, risk=DEFAULT_RISK)


def _policy_name(policy: Any) -> str:
    return getattr(policy, "name", type(policy).__name__)


def _run_policy(policy: Any) -> Any:
    """The policy that decides a multi-task run: ``policy`` if it decides runs, else a
    ``CostAware`` wrapped by ``MultiTask`` with equal prices."""
    if callable(getattr(policy, "decide_run", None)):
        return policy
    if isinstance(policy, CostAware):
        return MultiTask(policy)
    raise TypeError(f"policy {_policy_name(policy)} decides one curve, not a multi-task run: "
                    f"use MultiTask(CostAware(...), prices=...)")


def _plain_values(values: Mapping[Any, Any] | None) -> dict[str, float] | None:
    if values is None:
        return None
    return {str(k): v for k, v in ((k, _as_float(v)) for k, v in values.items())}


def _id(x: Any) -> str | None:
    return None if x is None else str(x)


def _check_policy(policy: Any, predictor: Any) -> None:
    if predictor is not None and policy is not None:
        raise ParameterError("pass either predictor (for the default CostAware policy) or "
                             "policy (which carries its own predictor), not both")
    if policy is not None and not callable(getattr(policy, "decide", None)):
        raise ParameterError(f"policy must have a decide(curve) method, got policy={policy!r}")


def _checked(decision: Decision) -> Decision:
    """A policy's decision with its fields made plain (bools and floats), or ``TypeError``."""
    if not isinstance(decision.reason, Reason):
        raise TypeError(f"policy returned a Decision whose reason is {decision.reason!r}, "
                        f"not a Reason")
    floats = {k: _as_float(getattr(decision, k)) for k in ("tokens", "value", "best")}
    return decision.replace(stop=bool(decision.stop), message=str(decision.message), **floats)


def _failed(tokens: Any, value: Any, error: BaseException) -> Decision:
    return Decision(stop=False, reason=Reason.PREDICTOR_ERROR,
                    message=f"continue: metastop failed ({type(error).__name__}: {error})",
                    tokens=_as_float(tokens), value=_as_float(value), best=math.nan)


def _read_siblings(history: Any, task: str | None, metric: str | None, exclude_run: str,
                   exclude_curve: str) -> Any:
    """The finished curves of ``task`` in the history store (``None`` without a store or a
    task, or, with a warning, if the store cannot be read: a training run never fails for
    want of its history)."""
    if history is None or task is None:
        return None
    from ..curves.history import open_history

    try:
        store = open_history(history)
        try:
            return store.siblings(task, metric, exclude_run=exclude_run,
                                  exclude_curve=exclude_curve)
        finally:
            if store is not history:
                store.close()
    except (MetastopError, OSError) as error:
        logger.warning("metastop: history %s cannot be read, predicting without context: %s",
                       history, error)
        return None


def _context(curve: Curve, siblings: Any) -> Any:
    """``curve``'s context from the siblings read, or ``None`` when there is none."""
    if not siblings:
        return None
    from ..predict.context import Context

    context = Context.of(curve, siblings)
    logger.info("metastop: %d finished run(s) of task %r as context", len(context), curve.task)
    return context if len(context) else None


def _model_version(policy: Any) -> str | None:
    version = getattr(getattr(policy, "predictor", None), "version", None)
    return version if isinstance(version, str) else None


