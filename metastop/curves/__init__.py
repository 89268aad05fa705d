"""The bottom stage: the curve schema and everything every other stage stands on.

A curve is an eval metric against cumulative training tokens (``Curve``); a ``CurveSet``
reads as and writes the one long table (one row per evaluation point). Here too: direction
(the only place signs flip), metric ranges, the fixed held-out split, atomic file writes,
where the project's files live, and the history store of finished runs (``history``, a
database of curves; imported on use, as it loads SQLAlchemy). Nothing here imports another
metastop stage.

Example:
    >>> from metastop.curves import Curve
    >>> Curve("run1/em", tokens=[1e6, 2e6], values=[0.1, 0.3], budget=4e6).fraction_seen
    0.5
"""

from __future__ import annotations

from .atomic import atomic_path
from .curveset import CurveSet
from .schema import (CURVE_COLUMNS, DIRECTIONS, MAXIMIZE, MINIMIZE, ON_ERROR, POINT_COLUMNS,
                     REQUIRED_COLUMNS, Curve, check_points, first_broken_rule,
                     is_bounded_metric, metric_floor, metric_range)

__all__ = ["CURVE_COLUMNS", "DIRECTIONS", "MAXIMIZE", "MINIMIZE", "ON_ERROR", "POINT_COLUMNS",
           "REQUIRED_COLUMNS", "Curve", "CurveSet", "atomic_path", "check_points",
           "first_broken_rule", "is_bounded_metric", "metric_floor", "metric_range"]
