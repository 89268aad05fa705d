"""Lightning callback: stop ``trainer.fit`` when metastop says the rest is not worth its tokens.

Example:
    >>> from metastop.integrations.lightning import MetaStopCallback  # doctest: +SKIP
    >>> from metastop.stop.rules import Patience  # doctest: +SKIP
    >>> stop = MetaStopCallback(policy=Patience(3), budget=2e8, monitor="val_em",
    ...                         tokens_per_step=8 * 512)  # doctest: +SKIP
    >>> lightning.Trainer(max_steps=50_000, callbacks=[stop]).fit(model)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .._checks import positive
from ..stop.controller import Reporting
from ._common import as_float, make_controller, missing_metric, require

_pl = require("lightning.pytorch", "lightning")
from lightning.pytorch.utilities import rank_zero_warn  # noqa: E402 (after the install hint)

logger = logging.getLogger(__name__)


class MetaStopCallback(_pl.Callback):
    """Observes ``monitor`` at each validation end (not the sanity check); sets ``trainer.should_stop``.

    Tokens are ``tokens(trainer)`` if given, else ``trainer.global_step * tokens_per_step``.
    ``state_dict()`` holds the controller's state, so it rides in Lightning checkpoints.

    Args:
        controller: the ``StopController`` to drive; or build one from ``policy`` and ``budget``.
        policy: a ``StoppingPolicy`` (``None``: the controller's default, cost-aware).
        budget: planned total tokens of the run.
        reporting: decision log and shadow mode of the controller built here.
        monitor: key of ``trainer.callback_metrics`` to watch.
        tokens: function of the trainer returning the cumulative tokens seen.
        tokens_per_step: tokens per optimizer step, used when ``tokens`` is not given.
    """

    def __init__(self, controller: Any = None, *, policy: Any = None, budget: float | None = None,
                 reporting: Reporting | None = None,
                 monitor: str = "val_exact_match", tokens: Callable[[Any], float] | None = None,
                 tokens_per_step: float = 1.0):
        self.controller = make_controller(controller, policy, budget, curve_id="lightning",
                                          reporting=reporting)
        self.monitor = monitor
        self.tokens = tokens
        self.tokens_per_step = positive("tokens_per_step", tokens_per_step)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            rank_zero_warn(missing_metric(self.monitor, metrics), category=RuntimeWarning)
            return
        tokens = (self.tokens(trainer) if self.tokens is not None
                  else trainer.global_step * self.tokens_per_step)
        decision = self.controller.observe(float(tokens), as_float(metrics[self.monitor]))
        if decision.stop:
            logger.info("metastop: stopping at step %d: %s", trainer.global_step, decision.message)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "controller" in state_dict:
            self.controller.load_state_dict(state_dict["controller"])
