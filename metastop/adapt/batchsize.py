"""Adaptive batch size: grow gradient accumulation while the gradient noise scale says so.

``BatchSizeController`` reads two squared gradient norms per optimizer step, after the first
micro-batch (a batch of ``micro_batch`` examples) and after the last one (the whole step),
turns them into the gradient noise scale (``metastop.adapt.noise``, McCandlish et al. 2018)
and, every ``check_every`` steps, sets the next steps' accumulation to about
``noise_fraction * noise_scale / micro_batch`` micro-batches, within user bounds. Batches
well below the noise scale make progress per example almost as fast as small ones while
needing fewer optimizer steps; the noise scale grows as the loss falls, so the batch grows
late in training. Each change is logged with its reason
(``DecisionLog.write_event("batch_size", ...)``).

Reading a norm costs one reduction over the gradients, twice a step; nothing is copied.
PyTorch is imported only when a norm is read.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .._checks import in_range
from ..errors import ParameterError
from ..stop.decisionlog import DecisionLog
from .noise import NoiseScale, check_state

logger = logging.getLogger(__name__)

LR_SCALING = ("none", "linear", "sqrt")
HYSTERESIS = 1.5
"""A new accumulation must differ from the current one by at least this factor (or the noise
scale must lie beyond a bound), so that a noisy estimate does not flip the batch size."""
STATE_VERSION = 1


@dataclass(frozen=True)
class BatchChange:
    """One change of the accumulation, as decided after an optimizer step.

    Attributes:
        step: the optimizer step after which it was decided.
        tokens: the training tokens seen by then.
        old, new: micro-batches per optimizer step before and after.
        noise_scale: the gradient noise scale (examples) that decided it.
        lr_factor: the learning-rate multiplier that goes with ``new``.
        message: the reason, in words.
    """

    step: int
    tokens: float
    old: int
    new: int
    noise_scale: float
    lr_factor: float
    message: str


def lr_factor(accumulation: int, base: int, rule: str) -> float:
    """The learning-rate multiplier of ``accumulation`` micro-batches relative to ``base``.

    ``linear``: ``accumulation / base`` (Goyal et al. 2017); ``sqrt``:
    ``sqrt(accumulation / base)`` (the rule for Adam-type optimizers); ``none``: 1.

    Example:
        >>> lr_factor(8, 2, "sqrt")
        2.0
    """
    if rule == "linear":
        return accumulation / base
    if rule == "sqrt":
        return math.sqrt(accumulation / base)
    return 1.0


class BatchSizeController:
    """Sets gradient accumulation from the gradient noise scale, within bounds.

    The protocol: after each micro-batch's ``loss.backward()`` (the loss divided by the
    current ``accumulation``, the usual convention) call ``after_backward(model, index)``;
    after ``optimizer.step()`` call ``after_step(step=, tokens=)``. The next step then
    accumulates ``accumulation`` micro-batches, and its learning rate is your scheduled one
    times ``lr_factor``. The norms are read from ``.grad`` before any clipping: call
    ``after_backward`` before ``clip_grad_norm_``.

    Every ``check_every`` optimizer steps after ``warmup_steps``, the target is
    ``round(noise_fraction * noise_scale / micro_batch)`` micro-batches clipped to
    ``[min_accumulation, max_accumulation]``; the accumulation moves to it when it differs by
    a factor of at least ``HYSTERESIS`` (1.5), or when the unclipped target lies beyond a
    bound. At ``noise_fraction=1`` the batch is the simple noise scale, McCandlish et al.'s
    estimate of the critical batch: there a step makes about half the progress of an
    infinitely large batch, and an example about half that of a tiny one. A smaller fraction
    spends the token budget more frugally (fewer examples per unit of progress) for fewer
    saved steps.

    A measurement with non-finite norms, or without gradients, is skipped with a warning;
    nothing here raises into a running training loop.

    Args:
        micro_batch: examples per micro-batch (per forward/backward pass).
        min_accumulation: the fewest micro-batches per step, >= 2 (the noise scale needs
            two batch sizes: one micro-batch and the whole step); the run starts here.
        max_accumulation: the most micro-batches per step.
        lr_scaling: ``none``, ``linear`` or ``sqrt``: how ``lr_factor`` grows with the
            accumulation, relative to ``min_accumulation`` (where it is 1).
        check_every: optimizer steps between two decisions.
        warmup_steps: optimizer steps before the first decision (measuring starts at once).
        smoothing: weight of the past in the noise scale's moving averages, in ``[0, 1)``
            (0.98: about the last 100 steps count; each measurement alone is very noisy).
        noise_fraction: the batch to aim at, as a fraction of the noise scale (> 0). The
            default, 0.25, suits a fixed token budget: it costs at most about 25% more
            examples per unit of progress than a tiny batch (``1 + B / B_noise``), against
            about 100% at the critical batch (1.0), which saves more steps
            (``scripts/bench_batchsize.py``: -1.7 pt EM for 32% fewer steps at 0.25,
            -5.7 pt for 60% fewer at 1.0).
        log: decision log that receives each change as a ``batch_size`` event.

    Example:
        A plain PyTorch loop (``batches`` yields micro-batches of ``micro_batch`` examples)::

            control = BatchSizeController(micro_batch=16, min_accumulation=2,
                                          max_accumulation=32, lr_scaling="sqrt")
            for step in range(1, steps + 1):
                optimizer.zero_grad()
                for index in range(control.accumulation):
                    x, y = next(batches)
                    (loss_fn(model(x), y) / control.accumulation).backward()
                    control.after_backward(model, index)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * schedule(step) * control.lr_factor
                optimizer.step()
                tokens += control.batch_size * tokens_per_example
                control.after_step(step=step, tokens=tokens)  # may change the accumulation

        >>> control = BatchSizeController(micro_batch=16, min_accumulation=2, max_accumulation=32)
        >>> control.accumulation, control.batch_size, control.lr_factor
        (2, 32, 1.0)
    """

    def __init__(self, *, micro_batch: int, min_accumulation: int = 2,
                 max_accumulation: int = 32, lr_scaling: str = "sqrt", check_every: int = 10,
                 warmup_steps: int = 20, smoothing: float = 0.98, noise_fraction: float = 0.25,
                 log: DecisionLog | None = None):
        self.micro_batch = _integer("micro_batch", micro_batch, 1)
        self.min_accumulation = _integer(
            "min_accumulation", min_accumulation, 2,
            why=" (the noise scale needs two batch sizes: one micro-batch and the whole step)")
        self.max_accumulation = _integer("max_accumulation", max_accumulation, 2)
        if self.max_accumulation < self.min_accumulation:
            raise ParameterError(f"max_accumulation must be >= min_accumulation, got "
                                 f"min_accumulation={min_accumulation}, "
                                 f"max_accumulation={max_accumulation}")
        if lr_scaling not in LR_SCALING:
            raise ParameterError(f"lr_scaling must be one of {LR_SCALING}, got "
                                 f"lr_scaling={lr_scaling!r}")
        self.lr_scaling = lr_scaling
        self.check_every = _integer("check_every", check_every, 1)
        self.warmup_steps = _integer("warmup_steps", warmup_steps, 0)
        self.noise_fraction = in_range("noise_fraction", noise_fraction, 0.0, math.inf,
                                       open_ends=True)
        self.noise = NoiseScale(smoothing=smoothing)
        self.log = log
        self.accumulation = self.min_accumulation
        self.skipped = 0
        self._changes: list[BatchChange] = []
        self._last_check: int | None = None
        self._small: float | None = None
        self._big: float | None = None

    @property
    def batch_size(self) -> int:
        """Examples per optimizer step: ``accumulation * micro_batch``."""
        return self.accumulation * self.micro_batch

    @property
    def lr_factor(self) -> float:
        """Multiply the scheduled learning rate by this (1.0 at ``min_accumulation``)."""
        return lr_factor(self.accumulation, self.min_accumulation, self.lr_scaling)

    @property
    def noise_scale(self) -> float | None:
        """The current noise-scale estimate in examples (``None`` until it is known)."""
        return self.noise.value

    @property
    def changes(self) -> tuple[BatchChange, ...]:
        """Every change so far, oldest first."""
        return tuple(self._changes)

    def after_backward(self, model_or_parameters: Any, index: int) -> None:
        """Read the squared gradient norm after micro-batch ``index`` (0-based) of this step.

        Only ``index`` 0 (one micro-batch) and ``accumulation - 1`` (the whole step) are read;
        other indices cost nothing. ``model_or_parameters`` is an ``nn.Module`` or an
        iterable of parameters.
        """
        if index != 0 and (index != self.accumulation - 1 or self._small is None):
            return  # not a measured micro-batch, or this step's first reading was dropped
        self.record(squared_grad_norm(model_or_parameters), index=index)

    def record(self, sq_norm: float | None, *, index: int) -> None:
        """Take a squared gradient norm measured elsewhere (e.g. by a framework hook before
        gradient clipping) as that of ``.grad`` after micro-batch ``index``.

        ``None`` (no gradients) or a non-finite norm drops this step's measurement.
        """
        if index not in (0, self.accumulation - 1):
            if not isinstance(index, int) or not 0 <= index < self.accumulation:
                logger.warning("metastop: batch size: micro-batch index %r is outside 0..%d; "
                               "ignored", index, self.accumulation - 1)
            return
        if not _usable(sq_norm, index, self):
            self._small = self._big = None
            return
        if index == 0:  # .grad holds g_1 / accumulation
            self._small, self._big = _number(sq_norm) * self.accumulation ** 2, None
        elif self._small is not None:
            self._big = _number(sq_norm)

    def after_step(self, *, step: int, tokens: float) -> BatchChange | None:
        """Close this step's measurement; maybe change the accumulation of the next steps.

        Args:
            step: optimizer steps done (including this one).
            tokens: training tokens seen so far (for the log).

        Returns:
            The change made, or ``None``.
        """
        if self._small is not None and self._big is not None:
            self.noise.update(small_sq_norm=self._small, small_batch=self.micro_batch,
                              big_sq_norm=self._big, big_batch=self.batch_size)
        self._small = self._big = None
        if step < self.warmup_steps or (
                self._last_check is not None and step - self._last_check < self.check_every):
            return None
        self._last_check = step
        noise = self.noise.value
        if noise is None:
            return None
        target = self._target(noise)
        if target is None:
            return None
        return self._change(target, noise, step=step, tokens=tokens)

    def _target(self, noise: float) -> int | None:
        """The accumulation the noise scale asks for, or ``None`` to keep the current one."""
        wanted = self.noise_fraction * noise / self.micro_batch
        target = min(self.max_accumulation, max(self.min_accumulation, round(wanted)))
        if target == self.accumulation:
            return None
        beyond = wanted >= self.max_accumulation or wanted <= self.min_accumulation
        ratio = max(target, self.accumulation) / min(target, self.accumulation)
        return target if beyond or ratio >= HYSTERESIS else None

    def _change(self, target: int, noise: float, *, step: int, tokens: float) -> BatchChange:
        old, old_factor, batch = self.accumulation, self.lr_factor, self.batch_size
        self.accumulation = target
        aim = (f"noise scale {noise:.0f} examples" if self.noise_fraction == 1.0 else
               f"noise scale {noise:.0f} examples x {self.noise_fraction:g} = "
               f"{noise * self.noise_fraction:.0f}")
        message = (f"{aim} {'>' if target > old else '<'} batch {batch}: "
                   f"accumulation {old} -> {target}")
        if target in (self.min_accumulation, self.max_accumulation):
            bound = "min" if target == self.min_accumulation else "max"
            message += f" ({bound}_accumulation)"
        change = BatchChange(step=int(step), tokens=float(tokens), old=old, new=target,
                             noise_scale=float(noise), lr_factor=self.lr_factor, message=message)
        self._changes.append(change)
        logger.info("metastop: step %d: %s", step, message)
        if self.log is not None:
            self.log.write_event(
                "batch_size", tokens=tokens, step=int(step), message=message,
                change={"accumulation": [old, target],
                        "batch_size": [batch, self.batch_size], "noise_scale": float(noise),
                        "lr_factor": [old_factor, self.lr_factor]})
        return change

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the accumulation, the noise-scale averages and the changes so far."""
        return {"version": STATE_VERSION, "micro_batch": self.micro_batch,
                "accumulation": self.accumulation, "last_check": self._last_check,
                "skipped": self.skipped, "noise": self.noise.state_dict(),
                "changes": [asdict(c) for c in self._changes]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; the whole state is checked before anything changes.
        Missing keys keep their current values.

        Raises:
            ParameterError: naming the key, the rule and the value found.
        """
        if not isinstance(state, Mapping):
            raise ParameterError(f"batch-size state must be a mapping, got {type(state).__name__}")
        micro = state.get("micro_batch", self.micro_batch)
        if micro != self.micro_batch:
            raise ParameterError(f"batch-size state was saved with micro_batch={micro!r}, but this "
                                 f"controller has micro_batch={self.micro_batch}")
        accumulation = state.get("accumulation", self.accumulation)
        if (isinstance(accumulation, bool) or not isinstance(accumulation, int)
                or not self.min_accumulation <= accumulation <= self.max_accumulation):
            raise ParameterError(
                f"batch-size state: accumulation must be an integer in [{self.min_accumulation}, "
                f"{self.max_accumulation}], got accumulation={accumulation!r}")
        last = state.get("last_check", self._last_check)
        skipped = state.get("skipped", self.skipped)
        for key, value in (("last_check", last), ("skipped", skipped)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ParameterError(f"batch-size state: {key} must be an integer >= 0, got "
                                     f"{key}={value!r}")
        noise = check_state(state.get("noise", self.noise.state_dict()))
        changes = _changes(state.get("changes", [asdict(c) for c in self._changes]))
        self.accumulation, self._last_check, self.skipped = accumulation, last, skipped or 0
        self.noise.load_state_dict(dict(zip(("grad_sq_ema", "trace_ema", "count"), noise)))
        self._changes = changes
        self._small = self._big = None


def squared_grad_norm(model_or_parameters: Any) -> float | None:
    """The squared L2 norm of all ``.grad`` of a module's (or an iterable's) parameters,
    accumulated in float32; ``None`` when no parameter has a gradient."""
    import torch

    parameters = (model_or_parameters.parameters() if hasattr(model_or_parameters, "parameters")
                  else model_or_parameters)
    grads = [p.grad.detach() for p in parameters if getattr(p, "grad", None) is not None]
    if not grads:
        return None
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32).to(device) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms)) ** 2)


def _usable(sq_norm: Any, index: int, controller: BatchSizeController) -> bool:
    """Whether a norm can be used; if not, count it and warn (sparingly)."""
    if sq_norm is None:
        reason = "no parameter has a gradient"
    elif _number(sq_norm) is not None and _number(sq_norm) >= 0:
        return True
    else:
        reason = f"the squared gradient norm is {sq_norm!r} (overflow or NaN in the gradients)"
    controller.skipped += 1
    if _power_of_ten(controller.skipped):
        logger.warning("metastop: batch size: skipped the measurement at micro-batch %d: %s; "
                       "the batch size stays %d (%d measurement(s) skipped so far)", index,
                       reason, controller.batch_size, controller.skipped)
    return False


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numpy and 0-d tensor scalars too), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number if math.isfinite(number) else None


def _power_of_ten(count: int) -> bool:
    return count >= 1 and 10 ** int(math.log10(count)) == count


def _integer(name: str, value: Any, low: int, *, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ParameterError(f"{name} must be an integer >= {low}{why}, got {name}={value!r}")
    return value


def _changes(records: Any) -> list[BatchChange]:
    """``BatchChange`` objects from their plain records, checked."""
    if not isinstance(records, list):
        raise ParameterError(f"batch-size state: changes must be a list, got "
                             f"{type(records).__name__}")
    kinds = {"step": int, "tokens": float, "old": int, "new": int, "noise_scale": float,
             "lr_factor": float, "message": str}
    changes = []
    for number, record in enumerate(records):
        if not isinstance(record, Mapping) or set(record) != set(kinds):
            raise ParameterError(f"batch-size state: changes[{number}] must be a mapping with "
                                 f"keys {sorted(kinds)}, got {record!r}")
        for key, kind in kinds.items():
            value = record[key]
            fits = (isinstance(value, str) if kind is str else
                    not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float)))
            if not fits:
                raise ParameterError(f"batch-size state: changes[{number}].{key} must be "
                                     f"{kind.__name__}, got {key}={value!r}")
        changes.append(BatchChange(**record))
    return changes


__all__ = ["BatchChange", "BatchSizeController", "HYSTERESIS", "LR_SCALING", "lr_factor",
           "squared_grad_norm"]
