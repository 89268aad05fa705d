"""Lightning callback: stop ``trainer.fit`` when metastop says the rest is not worth its tokens.

What it takes from the Trainer, unless given: the direction (the ``mode`` of a
``ModelCheckpoint`` or ``EarlyStopping`` on the same metric), the budget (``max_steps`` or
``estimated_stepping_batches`` times the tokens per step) and the tokens (the integer
token-id tensor of each training batch, else optimizer steps, with a warning). Each decision
goes to every logger (``log_metrics``: TensorBoard, CSV, W&B, MLflow, ...) and to MLflow
when a run is active; a stop is announced at WARNING level with the best checkpoint.

Example:
    >>> from lightning.pytorch.callbacks import ModelCheckpoint  # doctest: +SKIP
    >>> from metastop.integrations.lightning import MetaStopCallback  # doctest: +SKIP
    >>> best = ModelCheckpoint(monitor="val_loss", mode="min")  # keeps the best weights  # doctest: +SKIP
    >>> stop = MetaStopCallback(monitor="val_loss")  # minimize, read from the checkpoint  # doctest: +SKIP
    >>> lightning.Trainer(max_steps=50_000, callbacks=[best, stop]).fit(model)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from .._checks import positive
from ..curves import MAXIMIZE, MINIMIZE
from ..errors import ParameterError
from ..stop.controller import Reporting
from ._common import (LazyController, as_float, check_direction, missing_metric,
                      observe_monitored, require, token_ids)
from ._metric import MODES, Monitored
from ._report import announce_stop, decision_metrics, decision_text, log_to_mlflow

_pl = require("lightning.pytorch", "lightning")
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402
from lightning.pytorch.utilities import rank_zero_warn  # noqa: E402 (after the install hint)

logger = logging.getLogger(__name__)



class MetaStopCallback(_pl.Callback):
    """Observes ``monitor`` at each validation end (not the sanity check); sets ``trainer.should_stop``.

    Tokens are ``tokens(trainer)`` if given, else ``trainer.global_step * tokens_per_step``,
    else the token ids counted in the training batches (times the world size), else the
    optimizer steps. ``state_dict()`` holds the controller's state, so it rides in Lightning
    checkpoints.

    Args:
        controller: the ``StopController`` to drive; or build one from ``policy`` and ``budget``.
        policy: a ``StoppingPolicy`` (``None``: the controller's default, cost-aware).
        budget: planned total tokens (``None``: the planned optimizer steps x tokens per step).
        reporting: decision log and shadow mode of the controller built here.
        monitor: key of ``trainer.callback_metrics`` to watch.
        mode: ``"auto"`` (a ``ModelCheckpoint``/``EarlyStopping`` on ``monitor``, else the
            name), ``"max"`` or ``"min"``.
        scale: ``"auto"`` (a bounded score above 1 is on 0-100), ``"0-1"`` or ``"0-100"``.
        tokens: function of the trainer returning the cumulative tokens seen.
        tokens_per_step: tokens per optimizer step, used when ``tokens`` is not given.
    """

    def __init__(self, controller: Any = None, *, policy: Any = None, budget: float | None = None,
                 reporting: Reporting | None = None, monitor: str = "val_exact_match",
                 mode: str = "auto", scale: str = "auto",
                 tokens: Callable[[Any], float] | None = None, tokens_per_step: float | None = None):
        self._slot = LazyController(controller, policy, budget, reporting, curve_id="lightning")
        self.metric = Monitored(monitor, mode=mode, scale=scale)
        if controller is not None and MODES[mode] is not None:
            check_direction(controller, MODES[mode], f"mode={mode!r}")
        self.monitor, self.tokens, self.tokens_per_step = monitor, tokens, tokens_per_step
        if tokens_per_step is not None:
            self.tokens_per_step = positive("tokens_per_step", tokens_per_step)
        self._counted = 0.0  # token ids seen in the training batches
        self._uncounted = False  # a training batch held no token ids
        self._stopped_at: int | None = None
        self._warned_tokens = False

    @property
    def controller(self) -> Any:
        """The ``StopController`` (built at the first validation when none was given)."""
        return self._slot.controller

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def on_fit_start(self, trainer, pl_module) -> None:
        direction = self.metric.settle_direction(*_checkpoint_direction(trainer, self.monitor))
        if self.controller is not None:
            check_direction(self.controller, direction, self.metric.source)
        if self._slot.needs_budget and not 0 < _planned_steps(trainer) < float("inf"):
            raise ParameterError("budget=None takes the budget from the planned optimizer steps, "
                                 "but this Trainer has no end: set max_steps or max_epochs, or "
                                 "pass budget=")
        if not any(cb.monitor == self.monitor for cb in trainer.checkpoint_callbacks
                   if isinstance(cb, ModelCheckpoint)):
            logger.warning("metastop: no ModelCheckpoint monitors %s, so a stop leaves the weights "
                           "of the last step, not those of the best validation; add "
                           "ModelCheckpoint(monitor=%r, mode=%r) and restore with ckpt_path='best'",
                           self.monitor, self.monitor, "max" if direction == MAXIMIZE else "min")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.tokens is not None or self.tokens_per_step is not None:
            return
        counted = token_ids(batch)
        if counted is None:
            self._uncounted = True
        else:
            self._counted += counted * trainer.world_size

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step <= 0:
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            rank_zero_warn(missing_metric(self.monitor, metrics), category=RuntimeWarning)
            return
        tokens = self._tokens(trainer)
        budget = _planned_steps(trainer) * tokens / trainer.global_step if self._slot.needs_budget else None
        decision = observe_monitored(self._slot, self.metric, as_float(metrics[self.monitor]),
                                     tokens, budget, trainer.global_step)
        self._report(trainer, decision)
        if decision.stop:
            trainer.should_stop = True
        if decision.early_stop:
            announce_stop(decision, step=trainer.global_step, fraction=tokens / self.controller.budget,
                          name=self.monitor, best=self.metric.best, best_step=self.metric.best_step)
            self._stopped_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self._stopped_at is None:
            return
        kept = next((cb for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.monitor == self.monitor), None)
        if kept is not None and kept.best_model_path:
            logger.warning("metastop: the best checkpoint is %s (%s %g); restore it with "
                           "ckpt_path='best' or %s.load_from_checkpoint(...)", kept.best_model_path,
                           self.monitor, as_float(kept.best_model_score), type(pl_module).__name__)
        elif self.metric.best_step not in (None, self._stopped_at):
            logger.warning("metastop: the model holds the weights of step %d, not those of the best "
                           "validation (%s %g at step %d); no ModelCheckpoint kept them",
                           self._stopped_at, self.monitor, self.metric.best, self.metric.best_step)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self._slot.state_dict(), "metric": self.metric.state_dict(),
                "counted_tokens": self._counted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._slot.load_state_dict(state_dict.get("controller"))
        self.metric.load_state_dict(state_dict.get("metric") or {})
        counted = state_dict.get("counted_tokens")
        self._counted = float(counted) if isinstance(counted, (int, float)) else 0.0

    # --- helpers ------------------------------------------------------------------------
    def _tokens(self, trainer) -> float:
        if self.tokens is not None:
            return float(self.tokens(trainer))
        if self.tokens_per_step is not None:
            return trainer.global_step * self.tokens_per_step
        if self._counted > 0 and not self._uncounted:
            return self._counted
        if not self._warned_tokens:
            self._warned_tokens = True
            logger.warning("metastop: no token count arrives (the training batches hold no "
                           "integer token-id tensor), so metastop counts optimizer steps; pass "
                           "MetaStopCallback(tokens_per_step=...) or tokens=<function of the "
                           "trainer> to count tokens")
        return float(trainer.global_step)

    def _report(self, trainer, decision) -> None:
        numbers, text = decision_metrics(decision, self.metric.to_user), decision_text(decision)
        logger.info("metastop: step %d: %s", trainer.global_step, decision.message)
        for each in trainer.loggers:
            each.log_metrics(numbers, step=trainer.global_step)
        log_to_mlflow(numbers, text, trainer.global_step)


def _checkpoint_direction(trainer, name: str) -> tuple[str | None, str]:
    """The direction a ``ModelCheckpoint``/``EarlyStopping`` on ``name`` gives, and which one."""
    for cb in trainer.callbacks:
        if isinstance(cb, (ModelCheckpoint, EarlyStopping)) and cb.monitor == name:
            return (MINIMIZE if cb.mode == "min" else MAXIMIZE,
                    f"{type(cb).__name__}(monitor={name!r}, mode={cb.mode!r})")
    return None, ""


def _planned_steps(trainer) -> float:
    return float(trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches)
