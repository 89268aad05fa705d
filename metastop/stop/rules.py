"""Model-free stopping rules: ``Patience`` (Keras / Lightning early stopping) and
``Threshold`` (a target or a divergence band).

They need no predictor, so they are the baselines every backtest compares against and the
safety rules one composes with ``CostAware`` (``metastop.stop.compose.AnyOf``).

Example:
    >>> from metastop.curves import Curve
    >>> curve = Curve("c", tokens=[1, 2, 3, 4], values=[0.5, 0.4, 0.4, 0.3], budget=10)
    >>> Patience(2).decide(curve).reason.value
    'patience_exhausted'
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._checks import number
from ..curves import Curve
from ..errors import ParameterError
from .decision import Decision, Reason
from .policies import StoppingPolicy


class Patience(StoppingPolicy):
    """Stop when the score has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Keras / Lightning ``EarlyStopping`` semantics on ``Curve.scores`` (higher is better): an
    evaluation improves when ``score > best + min_delta``; the first ``warmup`` evaluations are
    not monitored (Keras ``start_from_epoch``).

    Args:
        patience: evaluations without improvement before stopping (>= 1).
        min_delta: the smallest change that counts as an improvement, metric units (>= 0).
        warmup: evaluations ignored at the start (>= 0).

    Example:
        >>> from metastop.curves import Curve
        >>> Patience(3).decide(Curve("c", [1, 2, 3, 4], [0.5, 0.4, 0.4, 0.3])).stop
        True
    """

    name = "patience"

    def __init__(self, patience: int = 5, *, min_delta: float = 0.0, warmup: int = 0):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ParameterError(f"patience must be an integer >= 1, got patience={patience!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
            raise ParameterError(f"warmup must be an integer >= 0, got warmup={warmup!r}")
        self.patience = int(patience)
        self.min_delta = number("min_delta", min_delta)
        if self.min_delta < 0:
            raise ParameterError(f"min_delta must be >= 0, got min_delta={min_delta!r}")
        self.warmup = int(warmup)

    @property
    def params(self) -> dict[str, Any]:
        return {"patience": self.patience, "min_delta": self.min_delta, "warmup": self.warmup}

    def decide(self, curve: Curve) -> Decision:
        if len(curve) <= self.warmup:
            return self._decision(curve, False, Reason.WARMUP,
                                  f"warm-up: {len(curve)} of {self.warmup} evaluations")
        wait = _evaluations_since_improvement(curve.scores[self.warmup:], self.min_delta)
        if wait >= self.patience:
            return self._decision(curve, True, Reason.PATIENCE_EXHAUSTED,
                                  f"stop: no improvement > {self.min_delta:g} in {wait} evaluations "
                                  f"(best {curve.best:.4g})")
        return self._decision(curve, False, Reason.IMPROVING,
                              f"continue: {wait} of {self.patience} evaluations without improvement")


def _evaluations_since_improvement(scores: np.ndarray, min_delta: float) -> int:
    best, wait = -math.inf, 0
    for score in scores:
        if score > best + min_delta:
            best, wait = score, 0
        else:
            wait += 1
    return wait


class Threshold(StoppingPolicy):
    """Stop when the best value reaches ``target`` or the last value leaves a safe band.

    All bounds are in the metric's own units. ``target`` respects the curve's direction (for a
    loss, reaching it means going at or below it); ``diverge_below`` / ``diverge_above`` stop a
    run whose last value falls below / rises above them, whatever the direction. NaN and inf
    values never reach a policy: the ``StopController`` reports them as ``NON_FINITE``.

    Example:
        >>> from metastop.curves import Curve
        >>> Threshold(target=0.9).decide(Curve("c", [1, 2], [0.5, 0.92])).reason.value
        'target_reached'
    """

    name = "threshold"

    def __init__(self, *, target: float | None = None, diverge_below: float | None = None,
                 diverge_above: float | None = None):
        if target is None and diverge_below is None and diverge_above is None:
            raise ParameterError("Threshold needs at least one of target, diverge_below, "
                                 "diverge_above; got none")
        self.target = None if target is None else number("target", target)
        self.diverge_below = None if diverge_below is None else number("diverge_below", diverge_below)
        self.diverge_above = None if diverge_above is None else number("diverge_above", diverge_above)
        if (self.diverge_below is not None and self.diverge_above is not None
                and self.diverge_below >= self.diverge_above):
            raise ParameterError(f"diverge_below must be < diverge_above, got diverge_below="
                                 f"{diverge_below!r}, diverge_above={diverge_above!r}")

    @property
    def params(self) -> dict[str, Any]:
        return {"target": self.target, "diverge_below": self.diverge_below,
                "diverge_above": self.diverge_above}

    def decide(self, curve: Curve) -> Decision:
        last = float(curve.values[-1])
        if self.target is not None and curve.scores.max() >= curve.sign * self.target:
            return self._decision(curve, True, Reason.TARGET_REACHED,
                                  f"stop: best {curve.best:.4g} reached target {self.target:g}")
        if self.diverge_below is not None and last < self.diverge_below:
            return self._decision(curve, True, Reason.DIVERGED,
                                  f"stop: {last:.4g} fell below {self.diverge_below:g}")
        if self.diverge_above is not None and last > self.diverge_above:
            return self._decision(curve, True, Reason.DIVERGED,
                                  f"stop: {last:.4g} rose above {self.diverge_above:g}")
        return self._decision(curve, False, Reason.WITHIN_LIMITS,
                              f"continue: {last:.4g} within limits")
