"""transformers ``Trainer`` callback: stop when metastop says the rest is not worth its tokens.

Example:
    >>> from metastop.integrations.hf import MetaStopCallback  # doctest: +SKIP
    >>> from metastop.stop.policies import Patience  # doctest: +SKIP
    >>> args = TrainingArguments("out", eval_strategy="steps", eval_steps=50,
    ...                          include_num_input_tokens_seen=True)  # doctest: +SKIP
    >>> trainer = Trainer(model, args, compute_metrics=em,  # returns {"exact_match": ...}
    ...                   callbacks=[MetaStopCallback(policy=Patience(3), budget=2e8)])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from ..errors import ParameterError
from .._checks import positive
from ..stop.controller import Reporting
from ._common import as_float, make_controller, missing_metric, require

require("transformers", "hf")
from transformers.trainer_callback import ExportableState, TrainerCallback  # noqa: E402

logger = logging.getLogger(__name__)


class MetaStopCallback(TrainerCallback, ExportableState):
    """Feeds each evaluation to a ``StopController`` and sets ``control.should_training_stop``.

    Tokens are ``state.num_input_tokens_seen`` (``include_num_input_tokens_seen=True``) when
    positive, else ``state.global_step * tokens_per_step``. The controller's state is saved in
    ``trainer_state.json`` (``stateful_callbacks``) with every checkpoint and restored by this
    callback itself when training resumes from one.

    Args:
        controller: the ``StopController`` to drive; or build one from ``policy`` and ``budget``.
        policy: a ``StoppingPolicy`` (``None``: the controller's default, cost-aware).
        budget: planned total tokens of the run.
        reporting: decision log and shadow mode of the controller built here.
        metric: key of the evaluation metrics to watch; ``eval_`` is prefixed if needed.
        tokens_per_step: tokens per optimizer step, used when no token count is tracked.
    """

    def __init__(self, controller: Any = None, *, policy: Any = None, budget: float | None = None,
                 reporting: Reporting | None = None,
                 metric: str = "eval_exact_match", tokens_per_step: float = 1.0):
        self.controller = make_controller(controller, policy, budget, curve_id="hf",
                                          reporting=reporting)
        self.metric = metric
        self.tokens_per_step = positive("tokens_per_step", tokens_per_step)

    def state(self) -> dict:
        """Plain data for ``trainer_state.json``: the controller's ``state_dict()``."""
        return {"args": {}, "attributes": {"controller": self.controller.state_dict()}}

    def on_init_end(self, args, state, control, **kwargs):
        if args.restore_callback_states_from_checkpoint:
            raise ParameterError(
                "MetaStopCallback restores its controller itself on resume; transformers' "
                "restore_callback_states_from_checkpoint=True would rebuild it without its "
                "controller, so set it to False (got True)")

    def on_train_begin(self, args, state, control, **kwargs):
        name = type(self).__name__
        saved = state.stateful_callbacks.get(name)
        controller = saved.get("attributes", {}).get("controller") if isinstance(saved, dict) else None
        if state.global_step > 0 and controller is not None:  # resuming from a checkpoint
            self.controller.load_state_dict(controller)
            logger.info("metastop: restored controller state (%d decisions) from the checkpoint",
                        len(self.controller.decisions))
        state.stateful_callbacks.setdefault(name, self.state())

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        key = next((k for k in (self.metric, f"eval_{self.metric}") if k in metrics), None)
        if key is None:
            warnings.warn(missing_metric(self.metric, metrics), RuntimeWarning, stacklevel=2)
            return
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        tokens = seen if seen > 0 else state.global_step * self.tokens_per_step
        decision = self.controller.observe(float(tokens), as_float(metrics[key]))
        if decision.stop:
            logger.info("metastop: stopping at step %d: %s", state.global_step, decision.message)
            control.should_training_stop = True
