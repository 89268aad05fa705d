"""The pure checks behind ``Freezer``: a block's gradient statistic over a window, whether it
has plateaued (relative change between two windows, allowing for their noise) and whether it
has collapsed (window mean against the block's own peak window mean so far).

Example:
    >>> plateau_check(Window(2.0, 0.0), Window(1.9, 0.0), 0.1)
    Check(rate=0.05, bound=0.1)
    >>> collapse_check(4.0, 0.1, 0.05)
    Collapse(share=0.025, bound=0.05)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A block's gradient statistic over one window: its mean and that mean's standard error."""

    mean: float
    error: float


@dataclass(frozen=True)
class Check:
    """One plateau check of a block: the relative change of its mean between two windows and
    the bound it is held to (``threshold`` plus two standard errors of the change)."""

    rate: float
    bound: float

    @property
    def plateau(self) -> bool:
        """Whether the change is below the bound."""
        return self.rate < self.bound


@dataclass(frozen=True)
class Collapse:
    """One collapse check of a block: its window-mean gradient norm as a share of its peak
    window mean so far, and the share (``collapse``) it must fall to."""

    share: float
    bound: float

    @property
    def collapsed(self) -> bool:
        """Whether the norm has fallen to the bound or below."""
        return self.share <= self.bound


def plateau_check(previous: Window | None, current: Window, threshold: float) -> Check | None:
    """Compare two windows of a block: ``rate = |current - previous| / previous``, bound
    ``threshold + 2 sqrt(se_prev^2 + se_cur^2) / previous`` (a change the window noise
    explains is no change); ``None`` without a previous window or when its mean was 0.

    Example:
        >>> plateau_check(Window(2.0, 0.0), Window(1.9, 0.0), 0.1)
        Check(rate=0.05, bound=0.1)
    """
    if previous is None or not previous.mean > 0:
        return None
    noise = 2.0 * math.hypot(previous.error, current.error) / previous.mean
    return Check(round(abs(current.mean - previous.mean) / previous.mean, 12),
                 round(threshold + noise, 12))


def collapse_check(peak: float | None, current: float, collapse: float) -> Collapse | None:
    """Compare a block's window mean with its peak window mean so far (this window included):
    ``share = current / max(peak, current)``; ``None`` while both are 0.

    Example:
        >>> collapse_check(None, 3.0, 0.05)
        Collapse(share=1.0, bound=0.05)
        >>> collapse_check(4.0, 0.1, 0.05).collapsed
        True
    """
    top = max(peak if peak is not None else 0.0, current)
    if not top > 0:
        return None
    return Collapse(round(current / top, 12), collapse)


def add_to_window(windows: dict[str, list[float]], name: str, value: float) -> None:
    """Add ``value`` to the window ``[sum, sum of squares, steps]`` of ``name`` in ``windows``.

    Example:
        >>> windows = {}
        >>> add_to_window(windows, "blocks.0", 2.0); windows
        {'blocks.0': [2.0, 4.0, 1]}
    """
    window = windows.setdefault(name, [0.0, 0.0, 0])
    window[0] += value
    window[1] += value * value
    window[2] += 1


def window_stats(total: float, squares: float, steps: int) -> Window:
    """Mean and standard error of ``steps`` values with this sum and sum of squares.

    Example:
        >>> window_stats(4.0, 10.0, 2)  # the values 1 and 3
        Window(mean=2.0, error=1.0)
    """
    mean = total / steps
    variance = max(0.0, squares / steps - mean * mean) * steps / max(1, steps - 1)
    return Window(mean, math.sqrt(variance / steps))


__all__ = ["Check", "Collapse", "Window", "add_to_window", "collapse_check", "plateau_check",
           "window_stats"]
