"""Freeze a model's finished blocks, front to back, while it trains.

``Freezer`` follows AutoFreeze (Liu, Agarwal & Venkataraman 2021, "AutoFreeze: Automatically
Freezing Model Blocks to Accelerate Fine-tuning"): it reads each block's gradient norm after
every backward pass, averages it over windows of ``check_every`` optimizer steps, and calls a
block finished when the relative change of that mean between two windows stays small for
``patience`` checks in a row. Blocks freeze front to back only (a block once all blocks in
front of it are frozen; by the plateau one per check), never the head, and not before
``min_progress`` of the run. ``FreezeOutSchedule`` is the fixed-schedule baseline (Brock et al.
2017, "FreezeOut: Accelerate Training by Progressively Freezing Layers").

Two departures from AutoFreeze, both from tiny transformers trained from scratch
(``metastop.generate``): (1) each block's norm is divided by the head's (the parameters outside
the blocks) at the same step: once a task is learned all gradients shrink with the loss, by half
or more per window, and a raw norm never looks flat; (2) "small" is below ``threshold`` plus two
standard errors of the change, as noise alone moves a 20-step mean by 5-20%. (AutoFreeze ranks
layers by a percentile of their change instead.) With ``collapse``, a block is finished once its
raw norm falls to that share of its own peak: a task that learns in stages looks flat between.

Freezing sets ``requires_grad=False`` on the block's parameters, clears their gradients and
drops their optimizer state (memory back; an optimizer skips parameters without a gradient).
A frozen prefix then costs no backward FLOPs (``metastop.adapt.flops`` states the rule).
Every change is written with its reason to the decision log (``kind="freeze"``) and to the
``metastop.adapt.freeze`` logger; nothing is frozen or unfrozen silently. At run time nothing
raises into training: a check that saw a non-finite gradient norm is skipped with a warning.

Example:
    >>> freezer = Freezer(model, optimizer=optimizer, log=log)  # doctest: +SKIP
    >>> for step, batch in enumerate(batches, 1):  # doctest: +SKIP
    ...     loss(model, batch).backward()
    ...     freezer.after_backward()
    ...     optimizer.step(); optimizer.zero_grad()
    ...     freezer.after_step(step=step, tokens=step * 4096, progress=step / len(batches))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._checks import in_range, positive
from ..errors import ParameterError
from .flops import BackwardFlops, backward_flops, block_parameters, find_blocks
from .plateau import (
    Check,
    Collapse,
    Window,
    add_to_window,
    collapse_check,
    plateau_check,
    window_stats,
)

logger = logging.getLogger(__name__)

STATE_VERSION = 1


class _PrefixFreezer:
    """What both freezers share: the blocks, the frozen prefix, freeze/unfreeze with a logged
    reason, the backward-FLOP count and plain-data state."""

    def __init__(self, model: Any, blocks: Sequence[tuple[str, Any]] | None, optimizer: Any,
                 log: Any):
        if optimizer is not None and not hasattr(optimizer, "state"):
            raise ParameterError(f"optimizer must be a torch optimizer (with .state), got "
                                 f"optimizer={type(optimizer).__name__}")
        if log is not None and not hasattr(log, "write_event"):
            raise ParameterError(f"log must be a DecisionLog (with .write_event), got "
                                 f"log={type(log).__name__}")
        self.optimizer, self.log = optimizer, log
        self.layout = find_blocks(model, blocks)
        self._modules = dict(self.layout.blocks)
        self._params = block_parameters(self.layout.blocks)
        self._count = 0  # the frozen prefix: blocks[:_count]
        self._held: dict[str, list[Any]] = {}  # block -> the parameters freezing switched off

    @property
    def blocks(self) -> tuple[str, ...]:
        """The freezable blocks, front to back."""
        return tuple(self._modules)

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen blocks (always a prefix of ``blocks``)."""
        return self.blocks[:self._count]

    def freeze(self, name: str, *, reason: str, step: int | None = None,
               tokens: float | None = None) -> None:
        """Freeze block ``name`` (the first unfrozen one) and log ``reason``.

        Raises:
            ParameterError: ``name`` is not the next block of the prefix.
        """
        following = self.blocks[self._count] if self._count < len(self.blocks) else None
        if name != following:
            raise ParameterError(f"blocks freeze front to back: the next block is "
                                 f"{following!r}, got name={name!r}")
        self._set(name, frozen=True)
        self._count += 1
        self._write(name, "freeze", f"block {name!r}: {reason}", step, tokens)

    def unfreeze(self, name: str, *, reason: str, step: int | None = None,
                 tokens: float | None = None) -> None:
        """Train block ``name`` (the last frozen one) again and log ``reason``; its optimizer
        state starts afresh.

        Raises:
            ParameterError: ``name`` is not the last frozen block.
        """
        last = self.frozen[-1] if self._count else None
        if name != last:
            raise ParameterError(f"blocks unfreeze back to front: the last frozen block is "
                                 f"{last!r}, got name={name!r}")
        self._set(name, frozen=False)
        self._count -= 1
        self._write(name, "unfreeze", f"unfroze block {name!r}: {reason}", step, tokens)

    def backward_flops(self, tokens: float) -> BackwardFlops:
        """Backward FLOPs of ``tokens`` tokens trained now: ``(spent, saved)``."""
        needs = any(p.requires_grad for p in self.layout.inputs)
        return backward_flops(tokens, list(self._params.values()), frozen=self._count,
                              head_params=self.layout.head_params, input_grad=needs)

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the blocks and the frozen prefix (subclasses add their own)."""
        return {"version": STATE_VERSION, "kind": type(self).__name__,
                "blocks": list(self.blocks), "frozen": list(self.frozen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state`` and re-apply its frozen blocks to the model; ``state`` is checked
        in full before anything changes.

        Raises:
            ParameterError: ``state`` is not a state of this freezer over the same blocks.
        """
        count = self._check_state(state)
        self._load_extra(state)
        for i, name in enumerate(self.blocks):
            if i < count and name not in self._held:
                self._set(name, frozen=True)
            elif i >= count and name in self._held:
                self._set(name, frozen=False)
        self._count = count
        logger.info("metastop: restored frozen blocks %s", list(self.frozen))

    # --- helpers ------------------------------------------------------------------------
    def _check_state(self, state: Any) -> int:
        if not isinstance(state, Mapping):
            raise ParameterError(f"state must be a mapping, got {type(state).__name__}")
        if state.get("version") != STATE_VERSION or state.get("kind") != type(self).__name__:
            raise ParameterError(f"state must be a {type(self).__name__} state of version "
                                 f"{STATE_VERSION}, got version={state.get('version')!r}, "
                                 f"kind={state.get('kind')!r}")
        if state.get("blocks") != list(self.blocks):
            raise ParameterError(f"state blocks must match this model's {list(self.blocks)}, "
                                 f"got {state.get('blocks')!r}")
        frozen = state.get("frozen")
        if not isinstance(frozen, list) or frozen != list(self.blocks[:len(frozen)]):
            raise ParameterError(f"state frozen must be a front prefix of {list(self.blocks)}, "
                                 f"got frozen={frozen!r}")
        self._check_extra(state)
        return len(frozen)

    def _check_extra(self, state: Mapping[str, Any]) -> None:
        """Subclasses: raise ``ParameterError`` if their part of ``state`` is malformed."""

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        """Subclasses: take their part of an already checked ``state``."""

    def _set(self, name: str, *, frozen: bool) -> None:
        """Switch off the block's trainable parameters, or back on only those it switched off
        (parameters frozen by someone else, e.g. an adapter's base weights, stay frozen)."""
        if not frozen:
            for p in self._held.pop(name, []):
                p.requires_grad_(True)
            return
        state = getattr(self.optimizer, "state", None)
        self._held[name] = [p for p in self._modules[name].parameters() if p.requires_grad]
        for p in self._held[name]:
            p.requires_grad_(False)
            p.grad = None
            if state is not None:
                state.pop(p, None)  # frees the optimizer's memory for it

    def _write(self, name: str, action: str, message: str, step: int | None,
               tokens: float | None) -> None:
        logger.info("metastop: %s", message)
        if self.log is None:
            return
        change = {"block": name, "action": action, "frozen": list(self.frozen),
                  "params": sum(p.numel() for p in self._modules[name].parameters())}
        self.log.write_event("freeze", tokens=tokens if tokens is not None else math.nan,
                             step=step, message=message, change=change)


class Freezer(_PrefixFreezer):
    """Freezes blocks whose gradient-norm change has plateaued (after AutoFreeze, Liu et al. 2021).

    Call ``after_backward()`` once the gradients of an optimizer step are in (before
    ``optimizer.step()``), and ``after_step(...)`` after it. Every ``check_every`` steps the mean
    gradient norm of each unfrozen block (relative to the head's) over the window is compared
    with the previous window's (``plateau_check``); the first unfrozen block freezes once that
    change stayed below its bound for
    ``patience`` checks in a row and the run is ``min_progress`` along (when ``progress`` is
    given). At most one block freezes per check, so the prefix grows one window at a time. A
    block that gets no gradient in a window keeps its count.

    With ``collapse`` set, the plateau is not asked: a block freezes once its raw gradient norm
    (the window mean, not relative to the head) has been at most ``collapse`` times its own
    peak window mean so far for ``patience`` checks in a row (``collapse_check``), and all
    collapsed blocks at the front freeze at once. A learned block's gradient collapses to a
    few percent of its peak; one still learning, even on a flat stretch of the metric, does not.

    Args:
        model: the model; its blocks are found by ``find_blocks``.
        blocks: the blocks, ``[(name, module), ...]`` front to back, instead of finding them.
        check_every: optimizer steps per window (>= 1).
        threshold: a relative change below this (plus the noise) is a plateau (> 0).
        patience: plateau checks in a row before a block freezes (>= 1).
        min_progress: share of the run before which nothing freezes, in [0, 1].
        collapse: freeze on the collapse of the raw gradient norm to this share of its peak,
            in (0, 1), instead of on a plateau; ``None``: the plateau rule.
        optimizer: the optimizer whose state a frozen block's parameters leave (the
            framework callbacks set the trainer's when ``None``).
        log: a ``DecisionLog`` that gets every change as a ``freeze`` event.

    Example:
        >>> freezer = Freezer(model, check_every=20, threshold=0.05, patience=2)  # doctest: +SKIP
        >>> freezer.blocks  # doctest: +SKIP
        ('embed', 'position', 'blocks.0', 'blocks.1')
        >>> Freezer(model, collapse=0.05)  # freeze at 5% of the peak norm  # doctest: +SKIP
    """

    def __init__(self, model: Any = None, *, blocks: Sequence[tuple[str, Any]] | None = None,
                 check_every: int = 20, threshold: float = 0.05, patience: int = 2,
                 min_progress: float = 0.25, collapse: float | None = None,
                 optimizer: Any = None, log: Any = None):
        self.check_every = _count("check_every", check_every)
        self.threshold = positive("threshold", threshold)
        self.patience = _count("patience", patience)
        self.min_progress = in_range("min_progress", min_progress, 0.0, 1.0)
        self.collapse = (None if collapse is None
                         else in_range("collapse", collapse, 0.0, 1.0, open_ends=True))
        super().__init__(model, blocks, optimizer, log)
        self._steps = 0
        self._window: dict[str, list[float]] = {}  # name -> [sum, sum of squares, steps]
        self._bad: str | None = None  # why this window's check is skipped
        self._previous: dict[str, Window] = {}
        self._checks: dict[str, Check] = {}
        self._streaks: dict[str, int] = {}
        self._raw: dict[str, list[float]] = {}  # with collapse: the window of raw norms
        self._peaks: dict[str, float] = {}  # name -> its peak raw window mean
        self._drops: dict[str, Collapse] = {}
        self._lows: dict[str, int] = {}  # name -> collapsed checks in a row

    def after_backward(self) -> None:
        """Add each unfrozen block's gradient norm, relative to the head's (and raw, with
        ``collapse``), to the window (a non-finite norm: this window's check is skipped)."""
        norms = self._grad_norms()
        head = norms.pop(None, None)
        for name, raw in norms.items():
            value = raw / head if head is not None and head > 0 else raw
            if not math.isfinite(value):
                self._bad = self._bad or f"block {name!r} had a non-finite gradient norm ({value})"
                continue
            add_to_window(self._window, name, value)
            if self.collapse is not None:
                add_to_window(self._raw, name, raw)

    def after_step(self, *, step: int, tokens: float,
                   progress: float | None = None) -> tuple[str, ...]:
        """Count an optimizer step; at the end of a window, check and maybe freeze the next block.

        Returns:
            The blocks frozen now: at most one per check, or with ``collapse`` every collapsed
            block at the front.
        """
        self._steps += 1
        if self._steps % self.check_every:
            return ()
        if not self._close_window(step):
            return ()
        if progress is not None and not progress >= self.min_progress:  # NaN: not yet
            return ()
        newly: list[str] = []
        while self._count < len(self.blocks) and (not newly or self.collapse is not None):
            name = self.blocks[self._count]
            reason = self._reason(name)
            if reason is None:
                break
            self.freeze(name, reason=reason, step=step, tokens=tokens)
            newly.append(name)
        return tuple(newly)

    def unfreeze(self, name: str, *, reason: str, step: int | None = None,
                 tokens: float | None = None) -> None:
        super().unfreeze(name, reason=reason, step=step, tokens=tokens)
        for table in (self._previous, self._streaks, self._checks, self._peaks, self._drops,
                      self._lows):
            table.pop(name, None)  # its statistics start afresh

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the prefix, the step count, the open window and each block's history."""
        return {**super().state_dict(), "steps": self._steps,
                "window": {k: list(v) for k, v in self._window.items()}, "bad": self._bad,
                "previous": {k: [v.mean, v.error] for k, v in self._previous.items()},
                "checks": {k: [v.rate, v.bound] for k, v in self._checks.items()},
                "streaks": dict(self._streaks),
                "raw": {k: list(v) for k, v in self._raw.items()}, "peaks": dict(self._peaks),
                "drops": {k: [v.share, v.bound] for k, v in self._drops.items()},
                "lows": dict(self._lows)}

    # --- helpers ------------------------------------------------------------------------
    def _reason(self, name: str) -> str | None:
        """Why block ``name`` freezes now, or ``None`` while it does not."""
        if self.collapse is not None:
            if self._lows.get(name, 0) < self.patience:
                return None
            return (f"grad norm {self._drops[name].share:.1%} of its peak <= "
                    f"{100 * self.collapse:.3g}% for {self._lows[name]} checks")
        if self._streaks.get(name, 0) < self.patience:
            return None
        check = self._checks[name]
        noise = check.bound - self.threshold
        return (f"grad-norm change {check.rate:.1%} < {100 * self.threshold:.3g}%"
                + (f" + noise {noise:.1%}" if noise > 0 else "")
                + f" for {self._streaks[name]} checks")

    def _close_window(self, step: int) -> bool:
        """Update each block's streak from the window just ended; ``False`` if it is skipped."""
        window, raw, bad = self._window, self._raw, self._bad
        self._window, self._raw, self._bad = {}, {}, None
        if bad is not None:
            logger.warning("metastop: freeze check at step %s skipped: %s", step, bad)
            return False
        for name, sums in window.items():
            current = window_stats(*sums)
            check = plateau_check(self._previous.get(name), current, self.threshold)
            self._previous[name] = current
            if check is not None:
                self._checks[name] = check
                self._streaks[name] = self._streaks.get(name, 0) + 1 if check.plateau else 0
        for name, sums in raw.items():
            mean = window_stats(*sums).mean
            drop = collapse_check(self._peaks.get(name), mean, self.collapse)
            if drop is not None:
                self._peaks[name] = max(self._peaks.get(name, 0.0), mean)
                self._drops[name] = drop
                self._lows[name] = self._lows.get(name, 0) + 1 if drop.collapsed else 0
        return True

    def _grad_norms(self) -> dict[str | None, float]:
        """The gradient norm of each unfrozen block with gradients, and (key ``None``) of the
        parameters outside the blocks; one device sync for all."""
        import torch

        groups = [(name, self._modules[name].parameters()) for name in self.blocks[self._count:]]
        names, norms = [], []
        for name, params in groups + [(None, self.layout.outside)]:
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                parts = [torch.linalg.vector_norm(g.coalesce().values() if g.is_sparse else g)
                         for g in grads]
                names.append(name)
                norms.append(torch.linalg.vector_norm(torch.stack(
                    [part.float().to(parts[0].device) for part in parts])))
        if not norms:
            return {}
        device = norms[0].device
        return dict(zip(names, torch.stack([n.to(device) for n in norms]).tolist()))

    def _check_extra(self, state: Mapping[str, Any]) -> None:
        steps = state.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ParameterError(f"state steps must be an integer >= 0, got steps={steps!r}")
        for key, ok in (("window", _is_window), ("previous", _is_pair), ("checks", _is_pair),
                        ("streaks", _is_streak), ("raw", _is_window), ("peaks", _is_norm),
                        ("drops", _is_pair), ("lows", _is_streak)):
            table = state.get(key, {})
            if not isinstance(table, Mapping) or not all(
                    k in self._modules and ok(v) for k, v in table.items()):
                raise ParameterError(f"state {key} must map this model's blocks to valid "
                                     f"values, got {key}={table!r}")
        if state.get("bad") is not None and not isinstance(state.get("bad"), str):
            raise ParameterError(f"state bad must be a string or None, got {state.get('bad')!r}")

    def _load_extra(self, state: Mapping[str, Any]) -> None:
        self._steps = state.get("steps", 0)
        self._window, self._raw = ({k: [float(v[0]), float(v[1]), int(v[2])] for k, v in
                                    state.get(key, {}).items()} for key in ("window", "raw"))
        self._bad = state.get("bad")
        self._previous = {k: Window(*map(float, v)) for k, v in state.get("previous", {}).items()}
        self._checks = {k: Check(*map(float, v)) for k, v in state.get("checks", {}).items()}
        self._streaks = dict(state.get("streaks", {}))
        self._peaks = {k: float(v) for k, v in state.get("peaks", {}).items()}
        self._drops = {k: Collapse(*map(float, v)) for k, v in state.get("drops", {}).items()}
        self._lows = dict(state.get("lows", {}))


def freezeout_times(n_blocks: int, *, t0: float = 0.5, cubic: bool = False) -> tuple[float, ...]:
    """FreezeOut's freezing point (share of the run) of each of ``n_blocks`` blocks.

    Block ``i`` freezes at ``t_i = t0 + (1 - t0) * i / n`` (linear), or at ``t_i**3`` of that
    (``cubic``; then ``t0`` is given pre-cubed, as in the paper's code: ``t0=0.8`` freezes the
    first block at 0.512). The head counts as layer ``n`` and trains to the end, as in the paper
    where the output layer shares the last index; so every block freezes before the end.

    Example:
        >>> freezeout_times(2, t0=0.5)
        (0.5, 0.75)
    """
    n = _count("n_blocks", n_blocks)
    linear = [t0 + (1.0 - t0) * i / n for i in range(n)]
    return tuple(t ** 3 if cubic else t for t in linear)


class FreezeOutSchedule(_PrefixFreezer):
    """Freezes block ``i`` at the share ``t_i`` of the run given by FreezeOut (Brock et al.
    2017, ``freezeout_times``): the fixed-schedule baseline to ``Freezer``.

    The paper also anneals each layer's learning rate to zero by ``t_i`` (cosine, optionally
    scaled by ``1 / t_i``); this baseline is the schedule alone: blocks train at the run's own
    learning rate until they freeze. ``after_step`` needs ``progress``; without it nothing
    freezes (with a warning, once).

    Args:
        model, blocks, optimizer, log: as for ``Freezer``.
        t0: the share of the run at which the first block freezes (pre-cubed with ``cubic``).
        cubic: use the paper's cubic schedule.

    Example:
        >>> schedule = FreezeOutSchedule(model, t0=0.5)  # doctest: +SKIP
        >>> schedule.after_step(step=300, tokens=1e6, progress=0.5)  # doctest: +SKIP
        ('embed',)
    """

    def __init__(self, model: Any = None, *, blocks: Sequence[tuple[str, Any]] | None = None,
                 t0: float = 0.5, cubic: bool = False, optimizer: Any = None, log: Any = None):
        self.t0 = in_range("t0", t0, 0.0, 1.0)
        if self.t0 == 0:
            raise ParameterError("t0 must be in (0, 1], got t0=0")
        if not isinstance(cubic, bool):
            raise ParameterError(f"cubic must be True or False, got cubic={cubic!r}")
        self.cubic = cubic
        super().__init__(model, blocks, optimizer, log)
        self.times = freezeout_times(len(self.blocks), t0=self.t0, cubic=cubic)
        self._warned = False

    def after_backward(self) -> None:
        """Nothing to read."""

    def after_step(self, *, step: int, tokens: float,
                   progress: float | None = None) -> tuple[str, ...]:
        """Freeze every block whose time has come; returns those frozen now."""
        if progress is None or not math.isfinite(progress):
            if not self._warned:
                self._warned = True
                logger.warning("metastop: FreezeOutSchedule.after_step needs progress (the share "
                               "of the run done), got progress=%r: nothing freezes", progress)
            return ()
        newly = []
        while self._count < len(self.blocks) and progress >= self.times[self._count]:
            i, name = self._count, self.blocks[self._count]
            kind = "cubic" if self.cubic else "linear"
            self.freeze(name, reason=f"FreezeOut {kind} schedule: progress {progress:.3f} >= "
                                     f"t_{i} = {self.times[i]:.3f}", step=step, tokens=tokens)
            newly.append(name)
        return tuple(newly)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {name}={value!r}")
    return value


def _is_norm(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and value >= 0)


def _is_streak(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 0


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_is_norm, value))


def _is_window(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 3 and _is_norm(value[0])
            and _is_norm(value[1]) and _is_streak(value[2]) and value[2] > 0)


__all__ = ["Check", "FreezeOutSchedule", "Freezer", "Window", "find_blocks", "freezeout_times",
           "plateau_check"]
