"""The batch-size and freezing rules a generated run trains under.

A batch rule says how many micro-batches the next optimizer step accumulates and by how much
to scale the learning rate; a freeze rule says which blocks are frozen and what the backward
pass costs. Each rule is a small object with the call protocol of ``metastop.adapt``
(``after_backward`` after each micro-batch, ``after_step`` after ``optimizer.step()``), so
the loop treats fixed, scheduled and adaptive rules alike.

Batch rules: ``fixed`` (``batch_size``), ``ramp`` (linear in training tokens from
``batch_size`` to ``max_batch_size``) and ``adaptive`` (``metastop.adapt.BatchSizeController``
from the gradient noise scale). Freeze rules: ``none``, ``freezeout`` (Brock et al. 2017,
``metastop.adapt.FreezeOutSchedule``), ``adaptive`` (``metastop.adapt.Freezer``) and
``collapse`` (``Freezer(collapse=0.05)``: a block's raw gradient norm at 5% of its peak).

Example:
    >>> rule = RampBatch(micro_batch=16, start=1, end=4, lr_scaling="sqrt")
    >>> rule.plan(0.0), rule.plan(0.5), rule.plan(1.0)
    (1, 2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapt.batchsize import lr_factor as scaled_lr

BATCH_RULES = ("fixed", "ramp", "adaptive")
FREEZE_RULES = ("none", "freezeout", "adaptive", "collapse")
LR_SCALING = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class LeverEvent:
    """One change of batch size or frozen blocks during a run.

    Attributes:
        kind: ``batch_size`` or ``freeze``.
        step: optimizer steps done when it happened.
        tokens: training tokens done when it happened.
        message: what changed and why.
    """

    kind: str
    step: int
    tokens: int
    message: str


class FixedBatch:
    """``accumulation`` micro-batches of ``micro_batch`` examples every step."""

    def __init__(self, *, micro_batch: int, accumulation: int):
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.lr_factor = 1.0

    def plan(self, progress: float) -> int:
        """Micro-batches in the next step, at ``progress`` (share of the token budget done)."""
        return self.accumulation

    def after_backward(self, model: torch.nn.Module, index: int) -> None:
        """Nothing to read."""

    def after_step(self, *, step: int, tokens: float) -> LeverEvent | None:
        """Nothing changes."""
        return None


class RampBatch(FixedBatch):
    """Accumulation grows linearly in training tokens from ``start`` to ``end`` micro-batches."""

    def __init__(self, *, micro_batch: int, start: int, end: int, lr_scaling: str):
        super().__init__(micro_batch=micro_batch, accumulation=start)
        self.start, self.end, self.lr_scaling = start, end, lr_scaling

    def plan(self, progress: float) -> int:
        """Micro-batches in the next step, at ``progress`` (share of the token budget done)."""
        accumulation = round(self.start + (self.end - self.start) * min(1.0, progress))
        self.accumulation = max(1, accumulation)
        self.lr_factor = scaled_lr(self.accumulation, self.start, self.lr_scaling)
        return self.accumulation


class AdaptiveBatch:
    """The noise-scale controller of ``metastop.adapt`` behind the batch-rule interface."""

    def __init__(self, controller, *, micro_batch: int):
        self.controller, self.micro_batch = controller, micro_batch

    @property
    def lr_factor(self) -> float:
        return self.controller.lr_factor

    def plan(self, progress: float) -> int:
        """Micro-batches in the next step: the controller's current accumulation."""
        return self.controller.accumulation

    def after_backward(self, model: torch.nn.Module, index: int) -> None:
        self.controller.after_backward(model, index)

    def after_step(self, *, step: int, tokens: float) -> LeverEvent | None:
        change = self.controller.after_step(step=step, tokens=tokens)
        if change is None:
            return None
        return LeverEvent("batch_size", step, int(tokens), change.message)


def batch_rule(config, *, log=None):
    """The batch rule of a run config (``batch_rule``, ``micro_batch``, ``max_batch_size``)."""
    micro = config.micro_batch or config.batch_size
    start = config.batch_size // micro
    end = (config.max_batch_size or config.batch_size) // micro
    if config.batch_rule == "ramp":
        return RampBatch(micro_batch=micro, start=start, end=end, lr_scaling=config.lr_scaling)
    if config.batch_rule == "adaptive":
        from ..adapt import BatchSizeController

        controller = BatchSizeController(micro_batch=micro, min_accumulation=start,
                                         max_accumulation=end, lr_scaling=config.lr_scaling,
                                         log=log)
        return AdaptiveBatch(controller, micro_batch=micro)
    return FixedBatch(micro_batch=micro, accumulation=start)


def backward_flops_per_token(model: torch.nn.Module) -> float:
    """Backward FLOPs per training token: 4 x the parameters outside embedding tables."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                 for p in m.parameters()}
    return 4.0 * sum(p.numel() for p in model.parameters() if id(p) not in embedding)


class NoFreeze:
    """Nothing is frozen; the whole backward pass is spent."""

    frozen: tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module):
        self.per_token = backward_flops_per_token(model)

    def after_backward(self) -> None:
        """Nothing to read."""

    def after_step(self, *, step: int, tokens: float, progress: float | None = None) -> tuple:
        """Nothing is frozen."""
        return ()

    def backward_flops(self, tokens: float) -> tuple[float, float]:
        """``(spent, saved)`` backward FLOPs for ``tokens`` training tokens."""
        return self.per_token * tokens, 0.0


def freeze_rule(config, model: torch.nn.Module, optimizer, *, log=None):
    """The freeze rule of a run config (``freeze_rule``) for ``model``."""
    if config.freeze_rule == "freezeout":
        from ..adapt import FreezeOutSchedule

        return FreezeOutSchedule(model, optimizer=optimizer, log=log)
    if config.freeze_rule == "adaptive":
        from ..adapt import Freezer

        return Freezer(model, optimizer=optimizer, log=log)
    if config.freeze_rule == "collapse":
        from ..adapt import Freezer

        return Freezer(model, collapse=0.05, optimizer=optimizer, log=log)
    return NoFreeze(model)
