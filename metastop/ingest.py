"""Readers that map other layouts into the one curve table (see ``metastop.curves``).

``read_curves(path)`` detects the format from the file name and contents:

- long tables in Parquet, CSV and JSONL (one row per evaluation point);
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from .curves import CurveSet
from .errors import ReadError

LONG_TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


def read_curves(path: str | os.PathLike, *, on_error: str = "fail", **options: Any) -> CurveSet:
    """Read a curve file of any supported format into a ``CurveSet``.

    Args:
        path: the file.
        on_error: ``fail`` (default) raises on the first bad curve; ``skip`` drops it and
            lists why in ``CurveSet.dropped``.
        **options: format options, e.g. ``tokens_column`` for long tables.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"file {path}: does not exist")
    if path.suffix in LONG_TABLE_SUFFIXES:
        return read_long_table(path, on_error=on_error, **options)
    raise ReadError(f"file {path}: unknown format; expected one of {LONG_TABLE_SUFFIXES}")


def read_long_table(path: str | os.PathLike, *, on_error: str = "fail",
                    tokens_column: str | None = None, budget_column: str | None = None) -> CurveSet:
    """Read a long table. Without a ``tokens`` column, ``step`` is the cost axis and
    ``total_steps`` (if present) the budget."""
    path = Path(path)
    frame = _read_frame(path)
    if tokens_column is None:
        tokens_column = "tokens" if "tokens" in frame.columns or "step" not in frame.columns else "step"
    if budget_column is None:
        budget_column = "total_steps" if tokens_column == "step" and "total_steps" in frame.columns else "budget"
    return CurveSet.from_frame(frame, source=str(path), on_error=on_error,
                               tokens_column=tokens_column, budget_column=budget_column)


def _read_frame(path: Path) -> pd.DataFrame:
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
               ".jsonl": lambda p: pd.read_json(p, lines=True)}
    try:
        return readers[path.suffix](path)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ReadError(f"file {path}: cannot be read as {path.suffix[1:]} ({error})") from None
    except Exception as error:  # pyarrow raises its own hierarchy on truncated files
        if type(error).__module__.startswith("pyarrow"):
            raise ReadError(f"file {path}: cannot be read as {path.suffix[1:]} ({error})") from None
        raise
