"""Drive a ``metastop.adapt`` freezer from a transformers ``Trainer`` or a Lightning ``Trainer``.

Both callbacks call the freezer in its protocol: ``after_backward()`` once an optimizer step's
gradients are in (transformers: ``on_pre_optimizer_step``, after gradient clipping;
Lightning: ``on_before_optimizer_step``, before clipping), ``after_step(...)`` after
``optimizer.step()`` (transformers: ``on_optimizer_step``; Lightning: the next
``on_train_batch_end``) with the optimizer steps done, the training tokens and the share of
the planned steps done. The trainer's optimizer becomes the freezer's when it has none, so a
frozen block's optimizer state is dropped. Freezing sets ``requires_grad=False``; the
optimizer keeps the parameters but skips them (their gradient stays ``None``).

Tokens: ``tokens_per_example`` x the examples of each optimizer step when given; otherwise
counted from each training batch (the sum of its ``attention_mask``, else the size of its
``input_ids``, else of its first integer tensor), times the number of processes. Each step's
backward FLOPs, spent and saved, are summed in ``backward_flops`` / ``backward_flops_saved``.

Limits: under DistributedDataParallel a parameter that stops getting gradients mid-run needs
``find_unused_parameters=True`` (transformers: ``ddp_find_unused_parameters=True``). An
error inside a callback never stops training: it is logged as a warning once and freezing
stays off for the rest of the run.

Example:
    >>> from metastop.adapt import Freezer  # doctest: +SKIP
    >>> from metastop.integrations.freeze import hf_callback  # doctest: +SKIP
    >>> freezer = Freezer(model, log=log)  # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=data,
    ...                   callbacks=[hf_callback(freezer)])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .._checks import positive
from ..errors import ParameterError
from ._common import first_tensor, require, token_ids

logger = logging.getLogger(__name__)


def hf_callback(freezer: Any, *, tokens_per_example: float | None = None) -> Any:
    """A transformers ``TrainerCallback`` that drives ``freezer`` (see the module docstring).

    Raises:
        ImportError: transformers is not installed (with the pip command).
        ParameterError: ``freezer`` is not a freezer, or ``tokens_per_example`` is not > 0.

    Example:
        >>> callback = hf_callback(Freezer(model), tokens_per_example=512)  # doctest: +SKIP
        >>> Trainer(model, args, callbacks=[callback]).train()  # doctest: +SKIP
    """
    return _hf_class()(freezer, tokens_per_example=tokens_per_example)


def lightning_callback(freezer: Any, *, tokens_per_example: float | None = None) -> Any:
    """A Lightning ``Callback`` that drives ``freezer``; its state rides in checkpoints.

    Example:
        >>> lightning.Trainer(callbacks=[lightning_callback(Freezer(module))])  # doctest: +SKIP
    """
    return _lightning_class()(freezer, tokens_per_example=tokens_per_example)


class _Driver:
    """Framework-free: counts tokens and FLOPs, calls the freezer, never raises into training."""

    def __init__(self, freezer: Any, *, tokens_per_example: float | None = None):
        missing = [m for m in ("after_backward", "after_step", "backward_flops", "frozen")
                   if not hasattr(freezer, m)]
        if missing:
            raise ParameterError(f"freezer must be a metastop.adapt Freezer or "
                                 f"FreezeOutSchedule, got {type(freezer).__name__} (no {missing})")
        self.freezer = freezer
        self.tokens_per_example = (None if tokens_per_example is None
                                   else positive("tokens_per_example", tokens_per_example))
        self.tokens = 0.0  # training tokens so far
        self.backward_flops = 0.0
        self.backward_flops_saved = 0.0
        self._pending = 0.0  # tokens of the optimizer step under way
        self._failed = False

    def guarded(self, hook: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run ``hook``; an error is logged once and turns freezing off, training goes on."""
        if self._failed:
            return
        try:
            hook(*args, **kwargs)
        except Exception as error:  # a lever must never stop the training it serves
            self._failed = True
            logger.warning("metastop: the freezing callback failed (%s: %s); training goes "
                           "on without freezing", type(error).__name__, error, exc_info=True)

    def count(self, tokens: float) -> None:
        """Add ``tokens`` training tokens to the optimizer step under way."""
        self._pending += tokens

    def before_step(self, optimizer: Any) -> None:
        """The step's gradients are in: charge its backward FLOPs, let the freezer read them."""
        if getattr(self.freezer, "optimizer", False) is None and optimizer is not None:
            self.freezer.optimizer = optimizer
        spent, saved = self.freezer.backward_flops(self._pending)
        self.backward_flops += spent
        self.backward_flops_saved += saved
        self.tokens += self._pending
        self._pending = 0.0
        self.freezer.after_backward()

    def after_step(self, step: int, planned: float) -> None:
        """After ``optimizer.step()``: ``step`` steps done of ``planned`` (<= 0: unknown)."""
        progress = min(1.0, step / planned) if planned > 0 else None
        self.freezer.after_step(step=step, tokens=self.tokens, progress=progress)

    def summary(self) -> None:
        total = self.backward_flops + self.backward_flops_saved
        if total > 0:
            logger.info("metastop: frozen %s; freezing saved %.3g of %.3g backward FLOPs (%.1f%%)",
                        list(self.freezer.frozen), self.backward_flops_saved, total,
                        100 * self.backward_flops_saved / total)

    def state(self) -> dict[str, Any]:
        state = getattr(self.freezer, "state_dict", dict)()
        return {"freezer": state, "tokens": self.tokens, "backward_flops": self.backward_flops,
                "backward_flops_saved": self.backward_flops_saved}

    def load(self, state: Mapping[str, Any]) -> None:
        if state.get("freezer"):
            self.freezer.load_state_dict(state["freezer"])
        for key in ("tokens", "backward_flops", "backward_flops_saved"):
            if isinstance(state.get(key), (int, float)):
                setattr(self, key, float(state[key]))


def batch_tokens(batch: Any) -> int | None:
    """Tokens in a batch: the sum of its ``attention_mask``, else the size of ``input_ids``,
    else of its first integer tensor with two or more dimensions; ``None`` if none."""
    if isinstance(batch, Mapping):
        for key in ("attention_mask", "input_ids"):
            if getattr(batch.get(key), "ndim", 0) >= 1:
                value = batch[key]
                return int(value.sum()) if key == "attention_mask" else int(value.numel())
    return token_ids(batch)


class _Hooks:
    """What both frameworks' hooks share: the driver and its FLOP counts."""

    def __init__(self, freezer: Any, *, tokens_per_example: float | None = None):
        self.driver = _Driver(freezer, tokens_per_example=tokens_per_example)

    @property
    def backward_flops(self) -> float:
        return self.driver.backward_flops

    @property
    def backward_flops_saved(self) -> float:
        return self.driver.backward_flops_saved


class _HFHooks(_Hooks):
    """The transformers hooks (mixed into a ``TrainerCallback`` by ``_hf_class``)."""

    def __init__(self, freezer: Any, *, tokens_per_example: float | None = None):
        super().__init__(freezer, tokens_per_example=tokens_per_example)
        self._hook: Any = None
        self._world_size = 1

    def state(self) -> dict:
        """Plain data for ``trainer_state.json``: the freezer's state and the counts."""
        return {"args": {}, "attributes": {"driver": self.driver.state()}}

    def on_init_end(self, args, state, control, **kwargs):
        if args.restore_callback_states_from_checkpoint:
            raise ParameterError("the freezing callback restores its freezer itself on resume; "
                                 "set TrainingArguments(restore_callback_states_from_checkpoint="
                                 "False) (got True)")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.driver.guarded(self._begin, args, state, model)

    def _begin(self, args, state, model) -> None:
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(saved, dict):
            self.driver.load(saved.get("attributes", {}).get("driver") or {})
        self._world_size = getattr(args, "world_size", 1)
        if self.driver.tokens_per_example is None and model is not None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def _count(self, module, positional, keywords) -> None:
        if module.training and not self.driver._failed:
            tokens = batch_tokens(keywords) or batch_tokens(positional) or 0
            self.driver.count(tokens * self._world_size)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.driver.tokens_per_example is not None:
            examples = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                        * args.world_size)
            self.driver.count(self.driver.tokens_per_example * examples)
        self.driver.guarded(self.driver.before_step, optimizer)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.driver.guarded(self.driver.after_step, state.global_step + 1, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.driver.summary()


class _LightningHooks(_Hooks):
    """The Lightning hooks (mixed into a ``Callback`` by ``_lightning_class``)."""

    def __init__(self, freezer: Any, *, tokens_per_example: float | None = None):
        super().__init__(freezer, tokens_per_example=tokens_per_example)
        self._last_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last_step < 0:
            self._last_step = trainer.global_step
        per_example = self.driver.tokens_per_example
        if per_example is not None:
            size = batch_size(batch)
            self.driver.count(per_example * size * trainer.world_size if size else 0.0)
        else:
            self.driver.count((batch_tokens(batch) or 0) * trainer.world_size)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.driver.guarded(self.driver.before_step, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self._last_step:  # an optimizer step happened
            self._last_step = trainer.global_step
            planned = (trainer.max_steps if trainer.max_steps > 0
                       else trainer.estimated_stepping_batches)
            self.driver.guarded(self.driver.after_step, trainer.global_step, float(planned))

    def on_train_end(self, trainer, pl_module) -> None:
        self.driver.summary()

    def state_dict(self) -> dict[str, Any]:
        return self.driver.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.driver.guarded(self.driver.load, state_dict)


def batch_size(batch: Any) -> int | None:
    """Examples in a batch: the first dimension of its first tensor."""
    found = first_tensor(batch)
    return None if found is None else int(found.shape[0])


@functools.cache
def _hf_class() -> type:
    require("transformers", "hf")
    from transformers.trainer_callback import ExportableState, TrainerCallback

    return type("FreezerCallback", (_HFHooks, TrainerCallback, ExportableState),
                {"__doc__": "transformers callback driving a metastop freezer (hf_callback)."})


@functools.cache
def _lightning_class() -> type:
    pl = require("lightning.pytorch", "lightning")
    return type("FreezerCallback", (_LightningHooks, pl.Callback),
                {"__doc__": "Lightning callback driving a metastop freezer (lightning_callback)."})


__all__ = ["batch_size", "batch_tokens", "hf_callback", "lightning_callback"]
