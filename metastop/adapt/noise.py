"""The gradient noise scale, estimated from gradient norms at two batch sizes.

McCandlish, Kaplan, Amodei and the OpenAI Dota Team, "An Empirical Model of Large-Batch
Training" (2018, arXiv:1812.06162), Appendix A. The squared norm of a gradient averaged over
``B`` examples has expectation ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, where ``G`` is the true
gradient and ``Sigma`` the per-example gradient covariance. Two batch sizes
``B_small < B_big`` give unbiased estimates of both terms::

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

and the *simple noise scale* ``B_simple = tr(Sigma) / |G|^2`` (in examples) is the batch size
above which a larger batch stops buying proportionally faster progress. Each estimate is
very noisy, so, as the paper advises, the two are averaged separately (exponential moving
averages) and divided only then.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from .._checks import in_range
from ..errors import ParameterError

logger = logging.getLogger(__name__)


class NoiseScale:
    """Running estimate of the simple gradient noise scale ``B_simple`` (McCandlish et al. 2018).

    Feed it, once per measurement, the squared norms of one gradient averaged over a small
    batch and one averaged over a big batch (e.g. the first micro-batch and the whole
    accumulated step). ``value`` is ``EMA(tr Sigma) / EMA(|G|^2)`` in examples, or ``None``
    until the averaged ``|G|^2`` and ``tr(Sigma)`` are both positive.

    Args:
        smoothing: weight of the past in the moving averages, in ``[0, 1)`` (0: the last
            measurement alone; 0.98: about the last 100 count). The averages are
            bias-corrected like Adam's moments, which leaves their ratio unchanged.

    Example:
        >>> noise = NoiseScale(smoothing=0.0)
        >>> # |G|^2 = 1 and tr(Sigma) = 100: E|G_B|^2 = 1 + 100 / B
        >>> noise.update(small_sq_norm=1 + 100 / 4, small_batch=4, big_sq_norm=1 + 100 / 32,
        ...              big_batch=32)
        100.0
    """

    def __init__(self, *, smoothing: float = 0.98):
        self.smoothing = in_range("smoothing", smoothing, 0.0, 1.0)
        if self.smoothing == 1.0:
            raise ParameterError(f"smoothing must be < 1 (1 never updates the averages), got "
                                 f"smoothing={smoothing!r}")
        self._grad_sq = 0.0
        self._trace = 0.0
        self.count = 0

    @property
    def grad_sq(self) -> float | None:
        """The averaged estimate of ``|G|^2`` (``None`` before the first measurement)."""
        return self._corrected(self._grad_sq)

    @property
    def trace(self) -> float | None:
        """The averaged estimate of ``tr(Sigma)`` (``None`` before the first measurement)."""
        return self._corrected(self._trace)

    @property
    def value(self) -> float | None:
        """``B_simple`` in examples, or ``None`` while an average is not yet positive."""
        if self.count == 0 or self._grad_sq <= 0.0 or self._trace <= 0.0:
            return None
        return self._trace / self._grad_sq

    def update(self, *, small_sq_norm: float, small_batch: int, big_sq_norm: float,
               big_batch: int) -> float | None:
        """Add one measurement and return the new ``value``.

        Args:
            small_sq_norm: ``|G_small|^2``, the squared norm of the gradient averaged over
                ``small_batch`` examples.
            small_batch: examples behind ``small_sq_norm``.
            big_sq_norm: ``|G_big|^2`` over ``big_batch`` examples.
            big_batch: examples behind ``big_sq_norm``, more than ``small_batch``.

        A norm that is not a finite number >= 0 (an overflow, a NaN) is skipped with a
        warning: the averages stay as they were.

        Raises:
            ParameterError: the batch sizes are not integers with
                ``1 <= small_batch < big_batch``.
        """
        _check_batches(small_batch, big_batch)
        for name, norm in (("small_sq_norm", small_sq_norm), ("big_sq_norm", big_sq_norm)):
            if not _finite_non_negative(norm):
                logger.warning("metastop: noise scale: skipped a measurement whose %s=%r is not "
                               "a finite number >= 0; the estimate stays %s", name, norm,
                               self.value)
                return self.value
        grad_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
        trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch)
        keep = self.smoothing
        self._grad_sq = keep * self._grad_sq + (1.0 - keep) * grad_sq
        self._trace = keep * self._trace + (1.0 - keep) * trace
        self.count += 1
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """Plain data: the smoothing, the raw (uncorrected) averages and the count."""
        return {"smoothing": self.smoothing, "grad_sq_ema": self._grad_sq,
                "trace_ema": self._trace, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; it is checked whole before anything changes.

        Raises:
            ParameterError: ``state`` is not a mapping, or a value has the wrong type or range.
        """
        grad_sq, trace, count = check_state(state)
        self._grad_sq, self._trace, self.count = grad_sq, trace, count

    def _corrected(self, average: float) -> float | None:
        if self.count == 0:
            return None
        return average / (1.0 - self.smoothing ** self.count)


def check_state(state: Any) -> tuple[float, float, int]:
    """The ``(grad_sq_ema, trace_ema, count)`` of a ``NoiseScale`` state, checked.

    Raises:
        ParameterError: naming the key, the rule and the value found.
    """
    if not isinstance(state, Mapping):
        raise ParameterError(f"noise-scale state must be a mapping, got {type(state).__name__}")
    values = []
    for key in ("grad_sq_ema", "trace_ema"):
        value = state.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParameterError(f"noise-scale state: {key} must be a finite number, got "
                                 f"{key}={value!r}")
        values.append(float(value))
    count = state.get("count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ParameterError(f"noise-scale state: count must be an integer >= 0, got count={count!r}")
    return values[0], values[1], count


def _check_batches(small_batch: Any, big_batch: Any) -> None:
    for name, value in (("small_batch", small_batch), ("big_batch", big_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{name} must be an integer >= 1, got {name}={value!r}")
    if big_batch <= small_batch:
        raise ParameterError(f"big_batch must be larger than small_batch (two batch sizes are "
                             f"needed), got small_batch={small_batch}, big_batch={big_batch}")


def _finite_non_negative(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return False
    return math.isfinite(value) and value >= 0.0


__all__ = ["NoiseScale"]
