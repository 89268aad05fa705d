"""Name the shape of a finished learning curve with one fixed, documented rule.

The rule works on ``Curve.scores`` (higher is better), with ``x = tokens / tokens[-1]``,
``lo``/``hi`` the curve's minimum/maximum and ``range = hi - lo``. Checked in this order:

1. ``never_learns``: ``hi < 0.1`` or ``range < 0.05`` (EM never reaches 10%, or never moves).
2. ``overfit_decline``: on the 3-point moving average ``m`` (robust to one noisy
   evaluation), the curve ends well below its best, ``max(m) - m[-1] >= max(0.05, 0.2 *
   range)``, and the best comes before ``x = 0.9``.
3. ``plateau_then_jump``: at some point ``s`` with ``x[s] >= 0.15``, the points over the
   preceding ``0.15`` of the tokens (at least 3 of them) lie within ``0.05`` of each other,
   and the score then rises by ``>= max(0.1, 0.3 * range)`` within the next two evaluations.
4. ``rising_at_end``: the last 20% of the tokens still add
   ``y[-1] - y(x=0.8) >= max(0.02, 0.1 * range)``.
5. ``saturating``: everything else (rises, then holds its level).

Example:
    >>> from metastop.curves import Curve
    >>> classify_shape(Curve("c", tokens=range(1, 21), values=[0.0] * 10 + [0.6] * 10))
    'plateau_then_jump'
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from ..curves import Curve

NEVER_LEARNS = "never_learns"
OVERFIT_DECLINE = "overfit_decline"
PLATEAU_THEN_JUMP = "plateau_then_jump"
RISING_AT_END = "rising_at_end"
SATURATING = "saturating"
SHAPES = (NEVER_LEARNS, OVERFIT_DECLINE, PLATEAU_THEN_JUMP, RISING_AT_END, SATURATING)

LEARNED = 0.1
FLOOR = 0.05
PLATEAU_SPAN = 0.15
PLATEAU_TOLERANCE = 0.05
JUMP_WINDOW = 2
SMOOTHING = 3
TAIL = 0.2


def _positions(curve: Curve) -> np.ndarray:
    tokens = curve.tokens.astype(np.float64)
    return tokens / tokens[-1] if tokens[-1] > 0 else np.linspace(0.0, 1.0, len(tokens))


def _declines(y: np.ndarray, x: np.ndarray, spread: float) -> bool:
    width = min(SMOOTHING, len(y))
    smooth = np.convolve(y, np.ones(width) / width, mode="valid")
    best = int(np.argmax(smooth))
    centre = best + width // 2
    return smooth[best] - smooth[-1] >= max(FLOOR, 0.2 * spread) and x[centre] < 0.9


def _jumps_after_plateau(y: np.ndarray, x: np.ndarray, spread: float) -> bool:
    needed = max(0.1, 0.3 * spread)
    for s in range(len(y) - 1):
        window = y[(x >= x[s] - PLATEAU_SPAN) & (x <= x[s])]
        if x[s] < PLATEAU_SPAN or len(window) < 3 or np.ptp(window) > PLATEAU_TOLERANCE:
            continue
        if y[s + 1:s + 1 + JUMP_WINDOW].max() - y[s] >= needed:
            return True
    return False


def _rising_at_end(y: np.ndarray, x: np.ndarray, spread: float) -> bool:
    last_before_tail = int(np.searchsorted(x, 1.0 - TAIL, side="right")) - 1
    before_tail = y[max(last_before_tail, 0)]
    return y[-1] - before_tail >= max(0.02, 0.1 * spread)


def classify_shape(curve: Curve) -> str:
    """Return one of :data:`SHAPES` for ``curve`` (see the module docstring for the rule).

    Example:
        >>> from metastop.curves import Curve
        >>> classify_shape(Curve("c", tokens=range(1, 9), values=[.1, .5, .8, .8, .6, .4, .4, .4]))
        'overfit_decline'
    """
    y, x = curve.scores, _positions(curve)
    spread = float(np.ptp(y))
    if y.max() < LEARNED or spread < FLOOR:
        return NEVER_LEARNS
    if _declines(y, x, spread):
        return OVERFIT_DECLINE
    if _jumps_after_plateau(y, x, spread):
        return PLATEAU_THEN_JUMP
    if _rising_at_end(y, x, spread):
        return RISING_AT_END
    return SATURATING


def shape_counts(curves: Iterable[Curve]) -> dict[str, int]:
    """How many curves have each shape, every shape listed (zero included)."""
    counts = Counter(classify_shape(c) for c in curves)
    return {shape: counts.get(shape, 0) for shape in SHAPES}
