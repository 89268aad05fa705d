"""Long tables (CSV, Parquet, JSONL): one row per evaluation point, a ``curve_id`` column.

Example:
    >>> curves = read_long_table("data/sample_curves.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..curves import CurveSet
from ._common import _read_frame


def read_long_table(path: str | os.PathLike, *, on_error: str = "fail",
                    tokens_column: str | None = None, budget_column: str | None = None) -> CurveSet:
    """Read a long table (CSV, Parquet, JSONL; one row per point, a ``curve_id`` column).

    Without a ``tokens`` column, ``step`` is the cost axis and ``total_steps`` (if present)
    the budget.
    """
    path = Path(path)
    return long_table_curves(_read_frame(path), source=str(path), on_error=on_error,
                             tokens_column=tokens_column, budget_column=budget_column)


def long_table_curves(frame: pd.DataFrame, *, source: str | None = None, on_error: str = "fail",
                      tokens_column: str | None = None,
                      budget_column: str | None = None) -> CurveSet:
    """Validate an in-memory long table (see ``read_long_table``)."""
    if tokens_column is None:
        use_step = "tokens" not in frame.columns and "step" in frame.columns
        tokens_column = "step" if use_step else "tokens"
    if budget_column is None:
        budget_column = ("total_steps" if tokens_column == "step" and "total_steps" in frame.columns
                         else "budget")
    return CurveSet.from_frame(frame, source=source, on_error=on_error,
                               tokens_column=tokens_column, budget_column=budget_column)
