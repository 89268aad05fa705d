"""transformers ``Trainer`` callback: stop when metastop says the rest is not worth its tokens.

What it takes from the Trainer's arguments, unless given: the metric and its direction
(``metric_for_best_model`` / ``greater_is_better``), the budget (``max_steps``, or the
epochs' steps, times the tokens per step) and the tokens (``include_num_input_tokens_seen``,
else estimated from the batch shape, with a warning). Each decision goes to
``state.log_history`` (through ``trainer.log`` and so to TensorBoard, W&B and every other
reporter once ``bind(trainer)`` is called) and to MLflow when a run is active.

Example:
    >>> from metastop.integrations.hf import MetaStopCallback  # doctest: +SKIP
    >>> args = TrainingArguments("out", eval_strategy="steps", eval_steps=50, save_steps=50,
    ...                          load_best_model_at_end=True, metric_for_best_model="exact_match",
    ...                          include_num_input_tokens_seen=True)  # doctest: +SKIP
    >>> stop = MetaStopCallback()  # EM on 0-1 or 0-100, direction and budget from args  # doctest: +SKIP
    >>> trainer = Trainer(model, args, compute_metrics=em, callbacks=[stop])  # doctest: +SKIP
    >>> stop.bind(trainer).controller  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._checks import positive
from ..curves import MAXIMIZE, MINIMIZE
from ..errors import ParameterError
from ..stop.controller import Reporting
from ._common import (LazyController, as_float, check_direction, missing_metric,
                      observe_monitored, require, task_values)
from ._metric import MODES, Monitored
from ._report import announce_stop, decision_metrics, decision_text, log_to_mlflow

require("transformers", "hf")
from transformers.trainer_callback import ExportableState, TrainerCallback  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_METRIC = "eval_exact_match"


class MetaStopCallback(TrainerCallback, ExportableState):
    """Feeds each evaluation to a ``StopController`` and sets ``control.should_training_stop``.

    Tokens are ``state.num_input_tokens_seen`` when the Trainer counts them, else
    ``global_step * tokens_per_step`` (estimated from the first training example's length and
    the batch size when not given). The controller's state rides in ``trainer_state.json``
    with every checkpoint and is restored by this callback when training resumes.

    Args:
        controller: the ``StopController`` to drive; or build one from ``policy`` and ``budget``.
        policy: a ``StoppingPolicy`` (``None``: the controller's default, cost-aware).
        budget: planned total tokens (``None``: ``max_steps`` x the tokens per step).
        reporting: decision log and shadow mode of the controller built here.
        metric: key of the evaluation metrics (``eval_`` is prefixed if needed); ``None``:
            ``metric_for_best_model``, else ``eval_exact_match``.
        mode: ``"auto"`` (the Trainer's ``greater_is_better``, else the name), ``"max"``, ``"min"``.
        scale: ``"auto"`` (a bounded score above 1 is on 0-100), ``"0-1"`` or ``"0-100"``.
        tokens_per_step: tokens per optimizer step, used when the Trainer counts no tokens.
        metrics: several metric keys at once (a multi-task run): each evaluation's values go
            to the controller as ``{key: value}`` (bounded scores above 1 read as 0-100) and
            the run is decided by its price-weighted score (``metastop.stop.multitask``).
    """

    def __init__(self, controller: Any = None, *, policy: Any = None, budget: float | None = None,
                 reporting: Reporting | None = None, metric: str | None = None,
                 mode: str = "auto", scale: str = "auto", tokens_per_step: float | None = None,
                 metrics: Sequence[str] | None = None):
        self._slot = LazyController(controller, policy, budget, reporting, curve_id="hf")
        self.monitor = Monitored(metric or DEFAULT_METRIC, mode=mode, scale=scale)
        if controller is not None and MODES[mode] is not None:
            check_direction(controller, MODES[mode], f"mode={mode!r}")
        self.metric, self.tokens_per_step = metric, tokens_per_step
        self.metrics = tuple(metrics) if metrics is not None else None
        if self.metrics is not None and not self.metrics:
            raise ParameterError("metrics must name at least one metric, got metrics=[]")
        if tokens_per_step is not None:
            self.tokens_per_step = positive("tokens_per_step", tokens_per_step)
        self._trainer: Any = None
        self._estimate: tuple[float, str] | None = None
        self._stopped_at: int | None = None
        self._warned_tokens = False
        self._training = False

    @property
    def controller(self) -> Any:
        """The ``StopController`` (built at the first evaluation when none was given)."""
        return self._slot.controller

    def bind(self, trainer: Any) -> MetaStopCallback:
        """Send decisions through ``trainer.log``, so that every reporter (TensorBoard, W&B,
        MLflow, ...) shows them, not ``state.log_history`` alone. Returns ``self``."""
        self._trainer = trainer
        return self

    def state(self) -> dict:
        """Plain data for ``trainer_state.json``: the controller's and the metric's state."""
        return {"args": {}, "attributes": {"controller": self._slot.state_dict(),
                                           "monitor": self.monitor.state_dict()}}

    def on_init_end(self, args, state, control, **kwargs):
        if args.restore_callback_states_from_checkpoint:
            raise ParameterError(
                "MetaStopCallback restores its controller itself on resume; transformers' "
                "restore_callback_states_from_checkpoint=True would rebuild it without its "
                "controller, so set it to False (got True)")

    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        name = self.metric or _eval_key(args.metric_for_best_model or DEFAULT_METRIC)
        if name != self.monitor.name:
            self.monitor = Monitored(name, mode=self.monitor.mode, scale=self.monitor.scale)
        direction = self.monitor.settle_direction(*_trainer_direction(args, name))
        if self.controller is not None:
            check_direction(self.controller, direction, self.monitor.source)
        _advise_best_checkpoint(args, name, direction)
        saved = state.stateful_callbacks.get(type(self).__name__)
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        if state.global_step > 0 and attributes.get("controller") is not None:  # resuming
            self._slot.load_state_dict(attributes["controller"])
            self.monitor.load_state_dict(attributes.get("monitor") or {})
            logger.info("metastop: restored the controller's state from the checkpoint")
        if self.tokens_per_step is None:
            self._estimate = _estimate_tokens_per_step(args, kwargs.get("train_dataloader"),
                                                       kwargs.get("model"))
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training:  # trainer.evaluate() outside train(): nothing to decide
            return
        metrics = metrics or {}
        if self.metrics is not None:
            return self._observe_tasks(args, state, control, metrics)
        key = next((k for k in (self.monitor.name, _eval_key(self.monitor.name)) if k in metrics), None)
        if key is None:
            warnings.warn(missing_metric(self.monitor.name, metrics), RuntimeWarning, stacklevel=2)
            return
        tokens = self._tokens(args, state)
        budget = self._budget(state, tokens)
        if self._slot.needs_budget and budget is None:  # eval_on_start: no tokens per step yet
            logger.info("metastop: no decision at step %d: the budget needs a step's tokens",
                        state.global_step)
            return
        decision = observe_monitored(self._slot, self.monitor, as_float(metrics[key]), tokens,
                                     budget, state.global_step)
        self._report(args, state, decision)
        if decision.stop:
            control.should_training_stop = True
        if decision.early_stop:
            announce_stop(decision, step=state.global_step, fraction=tokens / self.controller.budget,
                          name=key, best=self.monitor.best, best_step=self.monitor.best_step)
            self._stopped_at = state.global_step

    def _observe_tasks(self, args, state, control, metrics: Mapping[str, Any]) -> None:
        """A multi-task evaluation: every named metric at once, one decision for the run."""
        values = task_values(metrics, self.metrics, prefix="eval_")
        if not values:
            warnings.warn(missing_metric(self.metrics[0], metrics), RuntimeWarning, stacklevel=3)
            return
        tokens = self._tokens(args, state)
        budget = self._budget(state, tokens)
        if self._slot.needs_budget and budget is None:
            return
        decision = self._slot.get(MAXIMIZE, budget).observe(tokens, values)
        self._report(args, state, decision)
        if decision.stop:
            control.should_training_stop = True
        if decision.early_stop:
            logger.warning("metastop: stopping the run at step %d: %s", state.global_step,
                           decision.message)
            self._stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        if self._stopped_at in (None, self.monitor.best_step) or self.monitor.best_step is None:
            return
        if args.load_best_model_at_end and state.best_model_checkpoint:
            logger.warning("metastop: the Trainer restored the best checkpoint %s (%s %s at step %s)",
                           state.best_model_checkpoint, args.metric_for_best_model,
                           state.best_metric, state.best_global_step)
            return
        kept = Path(args.output_dir) / f"checkpoint-{self.monitor.best_step}"
        logger.warning("metastop: the model holds the weights of step %d, not those of the best "
                       "evaluation (%s %g at step %d)%s", self._stopped_at, self.monitor.name,
                       self.monitor.best, self.monitor.best_step,
                       f"; they are in {kept}" if kept.is_dir() else
                       "; no checkpoint holds them: see the warning at the start of training")

    # --- helpers ------------------------------------------------------------------------
    def _tokens(self, args, state) -> float:
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        if seen > 0 or state.global_step <= 0:
            return float(seen)
        per_step = self.tokens_per_step or (self._estimate[0] if self._estimate else 1.0)
        if self.tokens_per_step is None and not self._warned_tokens:
            self._warned_tokens = True
            how = (f"estimates {per_step:g} tokens per optimizer step ({self._estimate[1]})"
                   if self._estimate else "counts optimizer steps (the batch shape is unknown)")
            logger.warning("metastop: the Trainer counts no tokens, so metastop %s; set "
                           "TrainingArguments(include_num_input_tokens_seen=True) or pass "
                           "MetaStopCallback(tokens_per_step=...) for the exact count", how)
        return float(state.global_step * per_step)

    def _budget(self, state, tokens: float) -> float | None:
        if not self._slot.needs_budget or state.global_step <= 0 or state.max_steps <= 0:
            return None
        budget = state.max_steps * tokens / state.global_step
        logger.info("metastop: budget %g tokens (max_steps %d x %g tokens per step)", budget,
                    state.max_steps, tokens / state.global_step)
        return budget

    def _report(self, args, state, decision) -> None:
        numbers, text = decision_metrics(decision, self.monitor.to_user), decision_text(decision)
        logger.info("metastop: step %d: %s", state.global_step, decision.message)
        if self._trainer is not None:
            self._trainer.log(dict(numbers))  # appends to log_history and calls every reporter
            state.log_history[-1].update(text)
        else:
            state.log_history.append({**numbers, **text, "step": state.global_step})
        if self._trainer is None or "mlflow" not in (args.report_to or ()):
            log_to_mlflow(numbers, text, state.global_step)


def _eval_key(name: str) -> str:
    return name if name.startswith("eval_") else f"eval_{name}"


def _trainer_direction(args, name: str) -> tuple[str | None, str]:
    """The direction the Trainer's arguments give ``name``, and where they say it."""
    best = args.metric_for_best_model
    if best is None or _eval_key(best) != _eval_key(name) or args.greater_is_better is None:
        return None, ""
    return (MAXIMIZE if args.greater_is_better else MINIMIZE,
            f"TrainingArguments(metric_for_best_model={best!r}, "
            f"greater_is_better={args.greater_is_better})")


def _advise_best_checkpoint(args, name: str, direction: str) -> None:
    """Warn, with the settings to use, when the Trainer will not restore the best checkpoint
    (or, with ``eval_strategy="no"``, when there is nothing to decide on)."""
    strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
    if strategy == "no":
        logger.warning("metastop: eval_strategy='no': the Trainer never evaluates, so metastop "
                       "never decides; set TrainingArguments(eval_strategy='steps', eval_steps=...)")
        return
    best = args.metric_for_best_model
    if args.load_best_model_at_end and best is not None and _eval_key(best) == _eval_key(name):
        return
    steps = f", save_steps={args.eval_steps}" if strategy == "steps" else ""
    logger.warning(
        "metastop: a stop leaves the weights of the last step, not those of the best "
        "evaluation; to restore the best, set TrainingArguments(load_best_model_at_end=True, "
        "metric_for_best_model=%r, greater_is_better=%s, save_strategy=%r%s)",
        name, direction == MAXIMIZE, strategy, steps)


def _estimate_tokens_per_step(args, dataloader: Any, model: Any) -> tuple[float, str] | None:
    """Tokens per optimizer step from the first training example's length, or ``None``."""
    key = getattr(model, "main_input_name", "input_ids")
    try:
        first = dataloader.dataset[0]
        length = len(first[key]) if isinstance(first, Mapping) else None
    # An iterable dataset has no item 0: torch's ``Dataset.__getitem__`` raises
    # NotImplementedError there, which here only means "no estimate from the first example".
    except (AttributeError, TypeError, KeyError, IndexError, NotImplementedError):
        return None
    if not length:
        return None
    batch, accumulate, world = (args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                args.world_size)
    return (float(batch * accumulate * world * length),
            f"{batch} sequences x {length} tokens x {accumulate} accumulation steps x {world} "
            f"processes, from the first example")
