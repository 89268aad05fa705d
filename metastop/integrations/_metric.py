"""The metric a callback monitors: its direction and its scale, settled once per run.

Direction comes from ``mode=`` if given, else from the framework (the Trainer's
``greater_is_better``, a Lightning ``ModelCheckpoint``'s ``mode``), else from the metric's
name (losses and perplexities are minimized), else maximize. The scale of a bounded score
(exact match, accuracy, F1) is ``0-1`` or ``0-100``: ``scale="auto"`` reads it from the
values (a value above 1 is a 0-100 score) and the callback hands the controller 0-1 values.

Example:
    >>> em = Monitored("eval_exact_match")
    >>> em.settle_direction(None, "")
    'maximize'
    >>> em.read(40.0)  # a value above 1: the score is on 0-100
    (0.4, False)
    >>> Monitored("val_loss").settle_direction(None, "")
    'minimize'
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from ..curves import MAXIMIZE, MINIMIZE, is_bounded_metric
from ..errors import ParameterError

logger = logging.getLogger(__name__)

MODES = {"auto": None, "max": MAXIMIZE, "min": MINIMIZE}
SCALES = {"auto": None, "0-1": 1.0, "0-100": 100.0}
# The words of a loss-like name, as ``metastop.ingest.metric_direction`` reads them (not
# imported from there: importing the ingest stage loads pandas and every reader).
_MINIMIZED = frozenset({"loss", "perplexity", "ppl", "error", "wer", "cer", "mse", "mae", "rmse"})


def name_direction(name: str) -> str | None:
    """``minimize`` for a loss-like name (loss, perplexity, error rates), ``maximize`` for a
    bounded score (exact match, accuracy, F1), else ``None`` (the name does not say)."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    if words & _MINIMIZED or "loss" in name.lower():
        return MINIMIZE
    return MAXIMIZE if is_bounded_metric(name) else None


class Monitored:
    """One metric's direction, scale and best value (in the metric's own units).

    Args:
        name: the metric's key, as the framework logs it.
        mode: ``"auto"``, ``"max"`` or ``"min"``.
        scale: ``"auto"``, ``"0-1"`` or ``"0-100"`` (0-100 values are divided by 100).
    """

    def __init__(self, name: str, *, mode: str = "auto", scale: str = "auto"):
        if mode not in MODES:
            raise ParameterError(f"mode must be one of {sorted(MODES)}, got mode={mode!r}")
        if scale not in SCALES:
            raise ParameterError(f"scale must be one of {sorted(SCALES)}, got scale={scale!r}")
        self.name, self.mode, self.scale = name, mode, scale
        self.direction: str | None = None
        self.divisor: float | None = SCALES[scale]
        self.best: float | None = None
        self.best_step: int | None = None
        self.source = ""

    def settle_direction(self, framework: str | None, where: str) -> str:
        """The direction: ``mode=``, else ``framework`` (said by ``where``), else the name.

        Raises:
            ParameterError: ``mode=`` contradicts the framework's setting.
        """
        mine = MODES[self.mode]
        if mine is not None and framework is not None and mine != framework:
            raise ParameterError(f"mode={self.mode!r} contradicts {where}, which says {self.name} "
                                 f"is to be {framework}d; make them agree")
        choices = ((mine, f"mode={self.mode!r}"), (framework, where),
                   (name_direction(self.name), f"the name {self.name!r}"),
                   (MAXIMIZE, "the default (pass mode='min' for a loss)"))
        self.direction, self.source = next((d, s) for d, s in choices if d is not None)
        return self.direction

    @property
    def description(self) -> str:
        """``name: direction, from where it was read``, once the direction is settled."""
        return f"{self.name}: {self.direction}, from {self.source}"

    def read(self, value: float) -> tuple[float, bool]:
        """``value`` on the controller's scale, and whether the earlier values need dividing
        by 100 (a bounded score that was within 0-1 so far turned out to be on 0-100)."""
        rescale = False
        if self.divisor is None and math.isfinite(value):
            rescale = self._settle_scale(value)
        return (value if self.divisor is None else value / self.divisor), rescale

    def note(self, value: float, step: int) -> None:
        """Track the best value (metric units) and the step it was reached at."""
        if not math.isfinite(value):
            return
        better = (self.best is None or (value > self.best if self.direction != MINIMIZE
                                        else value < self.best))
        if better:
            self.best, self.best_step = value, int(step)

    def to_user(self, value: float) -> float:
        """A controller value back in the metric's own units."""
        return value * (self.divisor or 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"divisor": self.divisor, "best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scale == "auto" and state.get("divisor") in (1.0, 100.0):
            self.divisor = float(state["divisor"])
        if isinstance(state.get("best"), (int, float)) and isinstance(state.get("best_step"), int):
            self.best, self.best_step = float(state["best"]), state["best_step"]

    def _settle_scale(self, value: float) -> bool:
        if self.direction != MAXIMIZE or name_direction(self.name) != MAXIMIZE:
            self.divisor = 1.0
            logger.info("metastop: %s; values passed as logged (not a bounded score; pass "
                        "scale='0-100' for a 0-100 one)", self.description)
            return False
        if value <= 1.0:
            if self.best is None:
                logger.info("metastop: %s; a 0-1 score so far (first value %g); a value above 1 "
                            "would make it a 0-100 score, earlier values included", self.description, value)
            return False
        self.divisor = 100.0
        earlier = self.best is not None
        logger.info("metastop: %s; a 0-100 score (value %g > 1), divided by 100 for metastop%s",
                    self.description, value, "; the earlier values (all within 0-1) too" if earlier else "")
        return earlier
