"""Callbacks that let a ``BatchSizeController`` set the gradient accumulation of a
transformers ``Trainer`` or a Lightning ``Trainer`` while it trains.

Both change the framework's own accumulation setting between optimizer steps
(``TrainingArguments.gradient_accumulation_steps``, which the Trainer re-reads every update
step; ``Trainer.accumulate_grad_batches``, which Lightning re-reads every batch) and scale
the learning rate by the controller's ``lr_factor`` for the duration of ``optimizer.step()``
only (a step pre-hook multiplies, a post-hook restores), so the scheduler, chained or
closed-form, never sees a scaled value and the logged learning rate is the scheduler's.

How each reads the two gradient norms before clipping:

- transformers: a ``register_post_accumulate_grad_hook`` on every trainable parameter, armed
  for the first and the last micro-batch of a step only (the Trainer clips before any
  callback sees the last micro-batch's gradients).
- Lightning: ``on_after_backward``, which comes before clipping.

Limits, by design of both Trainers: both count micro-batches from the start of the epoch,
so a new accumulation is applied at the first step boundary where the epoch's micro-batch
count is a multiple of it (at most ``new / gcd(old, new)`` steps later, or the next epoch).
One process only: with data parallelism the lever warns and stands still. transformers:
``gradient_accumulation_steps`` must equal ``min_accumulation`` and
``per_device_train_batch_size`` must equal ``micro_batch`` (the epochs planned from
``max_steps`` then hold the examples of ``max_steps`` smallest steps: larger batches end the
run in fewer steps, and an optimizer-step LR schedule is not finished then: prefer a
constant or warmup-stable schedule); DeepSpeed is not supported; on resume the lever starts
measuring afresh. Lightning: automatic optimization only, no ``GradientAccumulationScheduler``;
``max_steps`` counts optimizer steps (bound the data with ``max_epochs`` instead).

Tokens for the decision log: ``tokens_per_example`` x the examples trained on, else the
Trainer's count (transformers: ``include_num_input_tokens_seen``; Lightning: the integer
token-id tensor of each batch), else the examples, with a warning.

A failure inside the lever never stops training: it is reported once as a warning, and the
run goes on with the accumulation and learning-rate factor in force at that moment.

Example:
    >>> from metastop.adapt import BatchSizeController  # doctest: +SKIP
    >>> from metastop.integrations.batchsize import hf_callback  # doctest: +SKIP
    >>> control = BatchSizeController(micro_batch=8, min_accumulation=2, max_accumulation=32)  # doctest: +SKIP
    >>> args = TrainingArguments("out", per_device_train_batch_size=8,
    ...                          gradient_accumulation_steps=2)  # doctest: +SKIP
    >>> Trainer(model, args, train_dataset=data, callbacks=[hf_callback(control)]).train()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from .._checks import positive
from ..adapt.batchsize import BatchSizeController, lr_factor
from ..errors import ParameterError
from ._common import require, token_ids

logger = logging.getLogger(__name__)


def hf_callback(controller: BatchSizeController, *,
                tokens_per_example: float | None = None) -> Any:
    """A transformers ``TrainerCallback`` that drives ``controller``.

    Args:
        controller: the ``BatchSizeController``; its ``micro_batch`` must be the
            ``per_device_train_batch_size`` and its ``min_accumulation`` the
            ``gradient_accumulation_steps`` of the ``TrainingArguments``.
        tokens_per_example: tokens per training example, for the decision log.

    Raises:
        ImportError: transformers is not installed (with the pip command).
        ParameterError: bad arguments; at ``train()``, arguments that contradict the controller.
    """
    return _hf_class()(_Driver(controller, tokens_per_example))


def lightning_callback(controller: BatchSizeController, *,
                       tokens_per_example: float | None = None) -> Any:
    """A Lightning ``Callback`` that drives ``controller`` (automatic optimization).

    Args:
        controller: the ``BatchSizeController``; its ``micro_batch`` must be the training
            dataloader's batch size.
        tokens_per_example: tokens per training example, for the decision log.

    Raises:
        ImportError: Lightning is not installed (with the pip command).
        ParameterError: bad arguments; at ``fit()``, a setup the lever cannot drive.
    """
    return _lightning_class()(_Driver(controller, tokens_per_example))


def _guarded(method: Callable) -> Callable:
    """Run a driver method; on any error, report it and stop the lever, never the run."""

    @functools.wraps(method)
    def guarded(self: _Driver, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a lever must never stop training
            self.disable(f"{type(error).__name__}: {error}")
            return None

    return guarded


class _Driver:
    """What both callbacks share: micro-batch counting, pending changes, tokens, LR scaling."""

    def __init__(self, controller: BatchSizeController, tokens_per_example: float | None):
        if not isinstance(controller, BatchSizeController):
            raise ParameterError(f"controller must be a BatchSizeController, got "
                                 f"{type(controller).__name__}")
        if tokens_per_example is not None:
            tokens_per_example = positive("tokens_per_example", tokens_per_example)
        self.controller, self.tokens_per_example = controller, tokens_per_example
        self.applied = controller.accumulation  # what the framework runs now
        self.index = 0  # micro-batches done in this optimizer step
        self.position: int | None = 0  # micro-batches done in this epoch (None: unknown)
        self.examples = 0.0
        self.world = 1
        self.disabled = False
        self.probe: _NormProbe | None = None
        self._handles: list[Any] = []
        self._saved: list[Any] | None = None
        self._warned_tokens = False

    @property
    def measuring(self) -> bool:
        """Whether the framework runs the controller's accumulation (else a change waits)."""
        return not self.disabled and self.applied == self.controller.accumulation

    @property
    def lr_factor(self) -> float:
        """The learning-rate factor of the accumulation the framework runs."""
        c = self.controller
        return lr_factor(self.applied, c.min_accumulation, c.lr_scaling)

    @_guarded
    def begin(self, optimizers: Any, *, applied: int, world: int, parameters: Any = None) -> None:
        """Start: note the framework's accumulation, hook the optimizers (and a norm probe)."""
        self.applied, self.world, self.index = applied, world, 0
        if world > 1:
            self.disable(f"{world} processes: the per-process micro-batch norm and the "
                         f"all-reduced step norm mix batch sizes (one process only, for now)")
            return
        for optimizer in optimizers:
            inner = _innermost(optimizer)
            self._handles += [inner.register_step_pre_hook(self._scale_lr),
                              inner.register_step_post_hook(self._restore_lr)]
        if parameters is not None:
            self.probe = _NormProbe(parameters)

    @_guarded
    def step_begin(self) -> None:
        self.index = 0
        if self.probe is not None:
            self.probe.arm(self.measuring)

    @_guarded
    def backward_done(self, model: Any = None) -> None:
        """After micro-batch ``index``'s backward: feed the controller (from the probe when
        there is one, else from ``model``'s gradients)."""
        if self.measuring:
            if self.probe is not None:
                self.controller.record(self.probe.read(), index=self.index)
            else:
                self.controller.after_backward(model, self.index)
        self.index += 1
        self.examples += self.controller.micro_batch * self.world
        if self.position is not None:
            self.position += 1
        if self.probe is not None:
            self.probe.arm(self.measuring and self.index == self.applied - 1)

    @_guarded
    def step_done(self, *, step: int, counted: float | None) -> None:
        """After an optimizer step: let the controller decide (unless a change still waits)."""
        if self.measuring:
            self.controller.after_step(step=step, tokens=self.tokens(counted))
        self.index = 0

    @_guarded
    def apply(self, position: int | None) -> int | None:
        """The accumulation to switch to now, at a step boundary ``position`` micro-batches
        into the epoch (``None``: the controller's wish waits for an aligned boundary)."""
        wanted = self.controller.accumulation
        if wanted == self.applied or position is None or position % wanted:
            return None
        logger.info("metastop: gradient accumulation %d -> %d (learning-rate factor %.3g)",
                    self.applied, wanted, lr_factor(wanted, self.controller.min_accumulation,
                                                    self.controller.lr_scaling))
        self.applied = wanted
        return wanted

    def tokens(self, counted: float | None) -> float:
        if self.tokens_per_example is not None:
            return self.examples * self.tokens_per_example
        if counted:
            return float(counted)
        if not self._warned_tokens:
            self._warned_tokens = True
            logger.warning("metastop: batch size: no token count arrives, so the decision log "
                           "counts examples as tokens; pass tokens_per_example=... for tokens")
        return self.examples

    def disable(self, reason: str) -> None:
        """Stop measuring and deciding; the accumulation and LR factor in force stay."""
        self.disabled = True
        if self.probe is not None:
            self.probe.remove()
        logger.warning("metastop: the batch-size lever stopped (%s); training goes on with "
                       "gradient accumulation %d and learning-rate factor %.3g", reason,
                       self.applied, self.lr_factor)

    def close(self) -> None:
        """Remove every hook (end of training)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.probe is not None:
            self.probe.remove()
            self.probe = None

    def _scale_lr(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            factor = self.lr_factor
            self._saved = [group["lr"] for group in optimizer.param_groups]
            if factor != 1.0:
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] * factor
        except Exception as error:  # noqa: BLE001 - a lever must never stop training
            self._drop_lr_hooks(error)

    def _restore_lr(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            if self._saved is not None:
                for group, lr in zip(optimizer.param_groups, self._saved):
                    group["lr"] = lr
            self._saved = None
        except Exception as error:  # noqa: BLE001 - a lever must never stop training
            self._drop_lr_hooks(error)

    def _drop_lr_hooks(self, error: Exception) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        logger.warning("metastop: batch size: learning-rate scaling stopped (%s: %s); the "
                       "learning rate is the scheduler's from now on", type(error).__name__, error)


class _NormProbe:
    """Sums the squared norms of the gradients as each finishes accumulating in an armed
    backward pass (``Tensor.register_post_accumulate_grad_hook``): before any clipping."""

    def __init__(self, parameters: Any):
        self.armed = False
        self.total: Any = None
        self.failure: str | None = None
        self._handles = [p.register_post_accumulate_grad_hook(self._add)
                         for p in parameters if p.requires_grad]

    def arm(self, on: bool) -> None:
        self.armed, self.total = on, None

    def read(self) -> float | None:
        """The armed pass's squared norm (``None``: nothing measured); disarms."""
        if self.failure is not None:
            raise RuntimeError(f"the gradient-norm hook failed: {self.failure}")
        total = None if self.total is None else float(self.total)
        self.arm(False)
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _add(self, parameter: Any) -> None:
        if not self.armed or parameter.grad is None:
            return
        try:
            import torch

            square = torch.linalg.vector_norm(parameter.grad.detach(), dtype=torch.float32) ** 2
            self.total = square if self.total is None else self.total + square.to(self.total.device)
        except Exception as error:  # noqa: BLE001 - inside backward: report at the next read
            self.failure, self.armed = f"{type(error).__name__}: {error}", False


def _innermost(optimizer: Any) -> Any:
    """The torch optimizer inside framework wrappers (accelerate's ``AcceleratedOptimizer``)."""
    import torch

    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


# --- transformers ---------------------------------------------------------------------------
def _check_hf(args: Any, controller: BatchSizeController) -> None:
    """``ParameterError`` when the Trainer's arguments contradict the controller."""
    if args.gradient_accumulation_steps != controller.accumulation:
        raise ParameterError(
            f"TrainingArguments(gradient_accumulation_steps={args.gradient_accumulation_steps}) "
            f"must equal the controller's accumulation ({controller.accumulation}, its "
            f"min_accumulation at the start): the Trainer plans its epochs from it; set "
            f"gradient_accumulation_steps={controller.accumulation}")
    if args.per_device_train_batch_size != controller.micro_batch:
        raise ParameterError(
            f"TrainingArguments(per_device_train_batch_size={args.per_device_train_batch_size}) "
            f"must equal the controller's micro_batch={controller.micro_batch}")
    if getattr(args, "deepspeed", None):
        raise ParameterError("the batch-size lever does not support DeepSpeed (it accumulates "
                             "gradients itself); got TrainingArguments(deepspeed=...)")


@functools.cache
def _hf_class() -> type:
    require("transformers", "hf")
    from transformers.trainer_callback import TrainerCallback

    class BatchSizeCallback(TrainerCallback):
        """Drives a ``BatchSizeController`` inside a transformers ``Trainer``."""

        def __init__(self, driver: _Driver):
            self.driver = driver
            self._resumed = False

        @property
        def controller(self) -> BatchSizeController:
            return self.driver.controller

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            _check_hf(args, self.controller)
            self._resumed = state.global_step > 0
            self.driver.begin([optimizer], applied=args.gradient_accumulation_steps,
                              world=args.world_size, parameters=model.parameters())

        def on_epoch_begin(self, args, state, control, **kwargs):
            # a resumed epoch starts where the Trainer skipped to: its position is unknown
            self.driver.position, self._resumed = (None if self._resumed else 0), False
            self._set(args, self.driver.apply(self.driver.position))

        def on_step_begin(self, args, state, control, **kwargs):
            self.driver.step_begin()

        def on_substep_end(self, args, state, control, **kwargs):
            self.driver.backward_done()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.driver.backward_done()  # the last micro-batch, measured before clipping

        def on_step_end(self, args, state, control, **kwargs):
            self.driver.step_done(step=state.global_step,
                                  counted=getattr(state, "num_input_tokens_seen", 0) or None)
            self._set(args, self.driver.apply(self.driver.position))

        def on_train_end(self, args, state, control, **kwargs):
            self.driver.close()

        @staticmethod
        def _set(args, accumulation: int | None) -> None:
            if accumulation is not None:
                args.gradient_accumulation_steps = accumulation

    return BatchSizeCallback


# --- Lightning ------------------------------------------------------------------------------
def _check_lightning(trainer: Any, pl_module: Any) -> None:
    """``ParameterError`` for a setup whose accumulation the lever cannot drive."""
    if not pl_module.automatic_optimization:
        raise ParameterError("the batch-size lever drives Lightning's automatic optimization; "
                             "with automatic_optimization=False call BatchSizeController's "
                             "after_backward/after_step in your training_step instead")
    if trainer.strategy.handles_gradient_accumulation:
        raise ParameterError(f"the strategy {type(trainer.strategy).__name__} accumulates "
                             f"gradients itself; the batch-size lever cannot change it")
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    if any(isinstance(cb, GradientAccumulationScheduler) for cb in trainer.callbacks):
        raise ParameterError("remove the GradientAccumulationScheduler callback: it and the "
                             "batch-size lever would both set accumulate_grad_batches")


@functools.cache
def _lightning_class() -> type:
    pl = require("lightning.pytorch", "lightning")

    class BatchSizeCallback(pl.Callback):
        """Drives a ``BatchSizeController`` inside a Lightning ``Trainer``; its state (the
        controller's) rides in Lightning checkpoints."""

        def __init__(self, driver: _Driver):
            self.driver = driver
            self._steps = 0
            self._counted = 0.0

        @property
        def controller(self) -> BatchSizeController:
            return self.driver.controller

        def on_train_start(self, trainer, pl_module):
            _check_lightning(trainer, pl_module)
            self.driver.begin(trainer.optimizers, applied=trainer.accumulate_grad_batches,
                              world=trainer.world_size)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._steps = trainer.global_step
            if self.driver.index == 0:  # a step boundary: a waiting change may apply now
                ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
                wanted = self.driver.apply(ready - 1)
                if wanted is not None:
                    trainer.accumulate_grad_batches = wanted
                self.driver.step_begin()

        def on_after_backward(self, trainer, pl_module):
            self.driver.backward_done(pl_module)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            tokens = token_ids(batch)
            self._counted = None if tokens is None or self._counted is None else (
                self._counted + tokens * trainer.world_size)
            if trainer.global_step > self._steps:
                self.driver.step_done(step=trainer.global_step, counted=self._counted)

        def on_train_end(self, trainer, pl_module):
            self.driver.close()

        def state_dict(self) -> dict[str, Any]:
            return {"controller": self.controller.state_dict(), "examples": self.driver.examples,
                    "counted_tokens": self._counted}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.controller.load_state_dict(state_dict.get("controller") or {})
            examples, counted = state_dict.get("examples"), state_dict.get("counted_tokens")
            self.driver.examples = float(examples) if isinstance(examples, (int, float)) else 0.0
            self._counted = float(counted) if isinstance(counted, (int, float)) else None

    return BatchSizeCallback


__all__ = ["hf_callback", "lightning_callback"]
