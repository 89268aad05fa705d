"""A decision as the metrics and text a framework's loggers show, and MLflow when a run is active.

Every adapter reports each decision under the ``metastop/`` prefix: ``stop`` (1 or 0),
``best``, ``predicted_final``, ``interval_low`` / ``interval_high`` (in the metric's own
units) and ``expected_gain`` (in points), plus ``reason`` and ``message`` as text. MLflow is
used only when the program already imported it and has an active run: metastop never imports
it and never starts a run.

Example:
    >>> from metastop.stop.decision import Decision, Reason
    >>> d = Decision(stop=True, reason=Reason.PATIENCE_EXHAUSTED, message="stop: no gain",
    ...              tokens=3e8, value=0.3, best=0.31)
    >>> decision_metrics(d)
    {'metastop/stop': 1.0, 'metastop/best': 0.31}
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Callable

from ..stop.decision import Decision

logger = logging.getLogger(__name__)

PREFIX = "metastop/"


def decision_metrics(decision: Decision, to_user: Callable[[float], float] = float) -> dict[str, float]:
    """The numbers of a decision, keyed ``metastop/...``; metric values through ``to_user``."""
    low, high = decision.interval if decision.interval is not None else (None, None)
    values = {"stop": float(decision.stop), "best": to_user(decision.best),
              "predicted_final": _maybe(to_user, decision.predicted_final),
              "interval_low": _maybe(to_user, low), "interval_high": _maybe(to_user, high),
              "expected_gain": decision.expected_gain}
    return {PREFIX + k: float(v) for k, v in values.items()
            if v is not None and math.isfinite(float(v))}


def decision_text(decision: Decision) -> dict[str, str]:
    """The reason of a decision (its code and its message), keyed ``metastop/...``."""
    return {PREFIX + "reason": decision.reason.value, PREFIX + "message": decision.message}


def log_to_mlflow(metrics: dict[str, float], text: dict[str, str], step: int) -> bool:
    """Log to the active MLflow run, if the program has one; ``True`` if it was logged.

    The text goes to the run's tags (``metastop.reason``, ``metastop.message``: the latest
    decision's). A failure to log is a warning: reporting never stops a training run.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or getattr(mlflow, "active_run", None) is None or mlflow.active_run() is None:
        return False
    try:
        mlflow.log_metrics(metrics, step=int(step))
        mlflow.set_tags({k.replace("/", "."): v[:5000] for k, v in text.items()})
    except Exception as error:  # a tracking server down must not end the training run
        logger.warning("metastop: could not log the decision to MLflow: %s: %s",
                       type(error).__name__, error)
        return False
    return True


def announce_stop(decision: Decision, *, step: int, fraction: float, name: str,
                  best: float | None, best_step: int | None) -> None:
    """The stop, at WARNING level: the step, the share of the budget, the reason and the best."""
    where = "" if best is None or best_step is None else (
        f"; this step's {name} {best:g} is the best" if best_step == step else
        f"; best {name} {best:g} at step {best_step}: restore that step's checkpoint")
    logger.warning("metastop: stopping at step %d (%.0f%% of the budget): %s%s", step,
                   100 * fraction, decision.message, where)


def _maybe(convert: Callable[[float], float], value: float | None) -> float | None:
    return None if value is None else convert(value)
