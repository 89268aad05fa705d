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
    >>> from metastop.stop.policies import Patience
    >>> ctl = StopController(policy=Patience(3), budget=1e9)
    >>> for tokens, em in [(1e8, 0.30), (2e8, 0.29), (3e8, 0.28), (4e8, 0.28)]:
    ...     decision = ctl.observe(tokens, em)
    >>> ctl.should_stop, decision.reason.value
    (True, 'patience_exhausted')
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._checks import positive
from ..curves import DIRECTIONS, MAXIMIZE, Curve
from .decision import Decision, Reason
from ..errors import ParameterError
from .policies import DEFAULT_RISK, CostAware, StoppingPolicy
from .prices import DEFAULT_PRICE

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_SCALE_RATIO = 10.0  # a 0-100 value is at least this many times the 0-1 values before it


class StopController:
    """Feeds a run's evaluations to a stopping policy and keeps the stop flag.

    Args:
        predictor: the predictor for the default policy (``CostAware`` with ``DEFAULT_PRICE``
            and ``DEFAULT_RISK``); ``None`` loads the shipped default model. Ignored when
            ``policy`` is given (passing both is an error).
        policy: any ``StoppingPolicy``; ``None`` means the default policy above.
        budget: the run's planned total tokens (> 0).
        min_tokens: never stop before this many tokens (the policy is not asked).
        direction: ``maximize`` (accuracy, EM) or ``minimize`` (loss).
        curve_id, run_id, task: recorded on the curve and in every log line.
        log_path: JSONL decision log, appended to; ``None`` for no log.
        shadow: decide and log, but never stop the run.
        distributed: ``None`` (default) syncs through ``torch.distributed`` when it is
            initialized; ``True`` requires it; ``False`` never syncs.

    Example:
        >>> ctl = StopController(budget=8e9, task="gsm8k", log_path="decisions.jsonl")  # doctest: +SKIP
        >>> if ctl.observe(tokens_seen, em).stop:  # doctest: +SKIP
        ...     break
    """

    def __init__(self, predictor: Any = None, policy: StoppingPolicy | None = None, *,
                 budget: float, min_tokens: float = 0.0, direction: str = MAXIMIZE,
                 curve_id: str = "run", run_id: str | None = None, task: str | None = None,
                 log_path: str | os.PathLike | None = None, shadow: bool = False,
                 distributed: bool | None = None):
        self.budget = positive("budget", budget)
        self.min_tokens = positive("min_tokens", min_tokens, allow_zero=True)
        if direction not in DIRECTIONS:
            raise ParameterError(f"direction must be one of {DIRECTIONS}, got direction={direction!r}")
        if predictor is not None and policy is not None:
            raise ParameterError("pass either predictor (for the default CostAware policy) or "
                                 "policy (which carries its own predictor), not both")
        if policy is not None and not callable(getattr(policy, "decide", None)):
            raise ParameterError(f"policy must have a decide(curve) method, got policy={policy!r}")
        if distributed not in (None, True, False):
            raise ParameterError(f"distributed must be None, True or False, got distributed={distributed!r}")
        self.direction = direction
        self.curve_id, self.run_id, self.task = str(curve_id), run_id, task
        self.log_path = None if log_path is None else Path(log_path)
        self.shadow = bool(shadow)
        self.distributed = distributed
        self.policy = policy if policy is not None else default_policy(predictor)
        self._tokens: list[float] = []
        self._values: list[float] = []
        self.decisions: list[Decision] = []
        self._stopped = False
        self._would_stop_at: float | None = None
        if distributed is True and not _dist_ready():
            raise ParameterError("distributed=True needs torch.distributed to be initialized "
                                 "(call torch.distributed.init_process_group first)")

    # --- the loop-facing API ------------------------------------------------------------
    def observe(self, tokens: float, value: float) -> Decision:
        """Record one evaluation and return the decision. Never raises on bad input."""
        local = self._decide(tokens, value)
        decision = sync_decision(local) if self._syncing() else local
        return self._record(decision)

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
                "curve_id": self.curve_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict`` output; missing keys keep their fresh-run values."""
        tokens = [float(t) for t in state.get("tokens", [])]
        values = [float(v) for v in state.get("values", [])]
        if len(tokens) != len(values):
            raise ParameterError(f"state has {len(tokens)} tokens but {len(values)} values")
        if tokens:
            Curve(self.curve_id, tokens, values, direction=self.direction,
                  budget=max(self.budget, tokens[-1]))
        self._tokens, self._values = tokens, values
        self.decisions = [Decision.from_dict(d) for d in state.get("decisions", [])]
        self._stopped = bool(state.get("stopped", False))
        would = state.get("would_stop_at")
        self._would_stop_at = None if would is None else float(would)
        if "budget" in state and float(state["budget"]) != self.budget:
            logger.warning("resumed state was saved with budget %g, this controller has %g",
                           float(state["budget"]), self.budget)

    # --- deciding -----------------------------------------------------------------------
    def _decide(self, tokens: Any, value: Any) -> Decision:
        problem = self._check_input(tokens, value)
        if problem is not None:
            logger.warning("%s", problem.message)
            return problem
        self._tokens.append(float(tokens))
        self._values.append(float(value))
        curve = self._curve()
        if self._syncing() and _rank() != 0:
            return self._plain(curve, False, Reason.CONTINUE_WORTH_IT, "awaiting rank 0's decision")
        if curve.last_tokens >= self.budget:
            return self._plain(curve, True, Reason.BUDGET_REACHED,
                               f"stop: budget of {self.budget:.1e} tokens reached")
        if curve.last_tokens < self.min_tokens:
            return self._plain(curve, False, Reason.WARMUP,
                               f"warm-up: {curve.last_tokens:.1e} of {self.min_tokens:.1e} tokens")
        return self._ask_policy(curve)

    def _ask_policy(self, curve: Curve) -> Decision:
        try:
            decision = self.policy.decide(curve)
            if not isinstance(decision, Decision):
                raise TypeError(f"policy returned {type(decision).__name__}, not a Decision")
            return decision
        except Exception as error:  # fail-open: a broken model must not end a training run
            logger.warning("policy %s failed at %g tokens, training continues: %s: %s",
                           _policy_name(self.policy), curve.last_tokens, type(error).__name__,
                           error, exc_info=True)
            return self._plain(curve, False, Reason.PREDICTOR_ERROR,
                               f"continue: prediction failed ({type(error).__name__}: {error})")

    def _check_input(self, tokens: Any, value: Any) -> Decision | None:
        t, v = _as_float(tokens), _as_float(value)

        def bad(reason: Reason, message: str) -> Decision:
            return Decision(stop=False, reason=reason, message=message, tokens=t, value=v,
                            best=self._best_value(), policy=_policy_name(self.policy))

        if not math.isfinite(t) or t < 0:
            return bad(Reason.BAD_INPUT, f"ignored: tokens must be a finite number >= 0, got {tokens!r}")
        if not math.isfinite(v):
            return bad(Reason.NON_FINITE, f"ignored: value is not finite ({value!r}) at {t:g} "
                                          f"tokens; training continues, the point is not kept")
        if self._tokens and t <= self._tokens[-1]:
            kind = "repeated" if t == self._tokens[-1] else "went backwards"
            return bad(Reason.BAD_INPUT, f"ignored: tokens {kind} ({self._tokens[-1]:g} then {t:g}); "
                                         f"pass cumulative training tokens")
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
    def _record(self, decision: Decision) -> Decision:
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
        if self.log_path is not None and (not self._syncing() or _rank() == 0):
            self._log(verdict, acted)
        return decision

    def _log(self, verdict: Decision, acted: bool) -> None:
        record = {**verdict.to_dict(), "curve_id": self.curve_id, "run_id": self.run_id,
                  "task": self.task, "budget": self.budget, "shadow": self.shadow,
                  "acted": acted, "time": _dt.datetime.now(_dt.timezone.utc).isoformat()}
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as error:
            logger.warning("cannot write decision log %s: %s", self.log_path, error)

    # --- helpers ------------------------------------------------------------------------
    def _best_value(self) -> float:
        if not self._values:
            return math.nan
        return max(self._values) if self.direction == MAXIMIZE else min(self._values)

    def _curve(self) -> Curve:
        return Curve(self.curve_id, np.asarray(self._tokens), np.asarray(self._values),
                     direction=self.direction, budget=max(self.budget, self._tokens[-1]),
                     run_id=self.run_id, task=self.task)

    def _plain(self, curve: Curve, stop: bool, reason: Reason, message: str) -> Decision:
        return Decision(stop=stop, reason=reason, message=message, tokens=curve.last_tokens,
                        value=float(curve.values[-1]), best=curve.best,
                        policy=_policy_name(self.policy))

    def _syncing(self) -> bool:
        return self.distributed is not False and _dist_ready()

    def __repr__(self) -> str:
        return (f"StopController({_policy_name(self.policy)}, budget={self.budget:g}, "
                f"points={len(self._tokens)}, stopped={self._stopped}, shadow={self.shadow})")


# Decisions about ignored input: in shadow mode they stay what they are.
_IGNORED = (Reason.BAD_INPUT, Reason.NON_FINITE)


def default_policy(predictor: Any = None) -> CostAware:
    """The shipped default: ``CostAware`` with ``DEFAULT_PRICE`` and ``DEFAULT_RISK``.

    ``predictor=None`` loads the shipped default model (``Predictor.load()``).
    """
    if predictor is None:
        from ..predict.model import Predictor

        predictor = Predictor.load()
    return CostAware(predictor, price=DEFAULT_PRICE, risk=DEFAULT_RISK)


def sync_decision(decision: Decision) -> Decision:
    """Rank 0's decision on every rank when ``torch.distributed`` is initialized.

    The decision travels as JSON in a uint8 tensor (no pickle). Without an initialized
    process group the decision is returned unchanged. Every rank must call this at the
    same point, as with any collective.
    """
    if not _dist_ready():
        return decision
    import torch
    import torch.distributed as dist

    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    payload = json.dumps(decision.to_dict()).encode("utf-8") if dist.get_rank() == 0 else b""
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(buffer, src=0)
    return Decision.from_dict(json.loads(bytes(buffer.cpu().numpy().tobytes()).decode("utf-8")))


def _dist_ready() -> bool:
    """Whether torch.distributed is in use; never imports torch itself."""
    dist = sys.modules.get("torch.distributed")
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def _policy_name(policy: Any) -> str:
    return getattr(policy, "name", type(policy).__name__)


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan
