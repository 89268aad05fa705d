"""Wide exports (W&B, MLflow): one step column and one column per metric, no ``curve_id``.

Example:
    >>> curves = read_wide_table("wandb_export.csv", tokens_per_step=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..curves import CurveSet
from ..errors import CurveError
from ._common import (STEP_COLUMNS, _check_tokens_per_step, _curve_frame, _each, _metric_name,
                      _read_frame, _rescale, _step_column, _tokens_from_steps, _validated)

TOKEN_COLUMNS = ("tokens", "num_input_tokens_seen", "train/num_input_tokens_seen")
# Columns of wide exports that are bookkeeping, not metrics.
_NOT_METRICS = re.compile(r"(^_|timestamp|runtime|wall ?time|^time$|epoch|__MIN$|__MAX$|"
                          r"_per_second$|total_flos|num_input_tokens_seen)", re.IGNORECASE)


def read_wide_table(path: str | os.PathLike, *, on_error: str = "fail",
                    metric: str | None = None, tokens_per_step: float | None = None,
                    scale: float | None = None, run_id: str | None = None) -> CurveSet:
    """Read a wide export: one step column and one column per metric (W&B, MLflow CSV).

    Each metric column becomes a curve ``<run>/<column>``; a W&B column ``"<run> - <metric>"``
    names its own run; MLflow's one-metric file (``step, value, timestamp``) is named by
    ``metric`` or the file's stem. Empty cells (metrics logged at different steps) are skipped.
    Bookkeeping columns (``_timestamp``, ``_runtime``, ``epoch``, ``__MIN``/``__MAX``) are
    not metrics.

    Args:
        path: CSV, Parquet or JSONL.
        on_error: ``fail`` or ``skip`` (see ``read_curves``).
        metric: read only this column (or the one whose last part is ``metric``).
        tokens_per_step: tokens = step x tokens_per_step; required unless the table has a
            tokens column (``tokens``, ``num_input_tokens_seen``).
        scale: 1 or 100 to state the metrics' scale; default: detect per column.
        run_id: the run's name (default: the file's stem).
    """
    path = Path(path)
    frame = _name_mlflow_metric(_read_frame(path), metric, path)
    return wide_table_curves(frame, source=str(path), on_error=on_error,
                             metric=metric, tokens_per_step=tokens_per_step, scale=scale,
                             run_id=run_id or path.stem)


def _name_mlflow_metric(frame: pd.DataFrame, metric: str | None, path: Path) -> pd.DataFrame:
    """MLflow's one-metric export has a ``value`` column: name it after ``metric`` or the file."""
    if "value" not in frame.columns:
        return frame
    return frame.rename(columns={"value": metric or path.stem})


def wide_table_curves(frame: pd.DataFrame, *, source: str, on_error: str = "fail",
                      metric: str | None = None, tokens_per_step: float | None = None,
                      scale: float | None = None, run_id: str = "run") -> CurveSet:
    """Melt an in-memory wide table into curves (see ``read_wide_table``)."""
    _check_tokens_per_step(tokens_per_step)
    step_column = _step_column(frame)
    if step_column is None:
        raise CurveError(f"missing step column; a wide export needs one of {STEP_COLUMNS}; "
                         f"columns present: {list(map(str, frame.columns))}", source=source)
    steps = _numeric_column(frame, step_column, source)
    tokens = _wide_tokens(frame, steps, tokens_per_step, source)
    parts = _each(lambda column: _wide_curve(frame, column, steps, tokens, scale=scale,
                                             source=source, run_id=run_id),
                  _metric_columns(frame, step_column, metric, source), on_error)
    return _validated(parts, source=source, on_error=on_error)


def _numeric_column(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    raw = frame[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = (numbers.isna() & raw.notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise CurveError(f"{column} must be a number, got {raw.iloc[row]!r}", source=source,
                         row=row)
    return numbers.to_numpy(dtype=np.float64, na_value=np.nan)


def _wide_tokens(frame, steps, tokens_per_step, source) -> np.ndarray:
    column = next((c for c in TOKEN_COLUMNS if c in frame.columns), None)
    if column is not None and tokens_per_step is None:
        return _numeric_column(frame, column, source)
    return _tokens_from_steps(steps, tokens_per_step, source=source, where="the wide export")


def _metric_columns(frame: pd.DataFrame, step_column: str, metric: str | None,
                    source: str) -> list[str]:
    candidates = [c for c in frame.columns
                  if c != step_column and c not in TOKEN_COLUMNS and not _NOT_METRICS.search(c)]
    if metric is not None:
        chosen = [c for c in candidates if c == metric] or \
            [c for c in candidates if _metric_name(c) == metric or c.rsplit("/", 1)[-1] == metric
             or c.rsplit(" - ", 1)[-1] == metric]
        if not chosen:
            raise CurveError(f"no metric column {metric!r}; metric columns present: {candidates}",
                             source=source)
        return chosen
    if not candidates:
        raise CurveError(f"no metric column besides {step_column!r}; columns present: "
                         f"{list(map(str, frame.columns))}", source=source)
    return candidates


def _wide_curve(frame, column, steps, tokens, *, scale, source, run_id):
    """One metric column as long-table rows, skipping empty cells; rows are the file's rows."""
    raw = frame[column]
    present = raw.notna().to_numpy() & ~(raw.astype(str).str.strip() == "").to_numpy()
    rows = np.flatnonzero(present)
    run, _, name = column.rpartition(" - ")
    run = run or run_id
    curve_id = f"{run}/{name}"
    if len(rows) == 0:
        raise CurveError(f"an empty curve: every cell of column {column!r} is empty",
                         source=source, curve=curve_id)
    values = pd.to_numeric(raw.iloc[rows], errors="coerce").to_numpy(dtype=np.float64,
                                                                     na_value=np.nan)
    bad = np.isnan(values)
    if bad.any():
        first = int(rows[np.argmax(bad)])
        raise CurveError(f"value must be a number, got {raw.iloc[first]!r}", source=source,
                         curve=curve_id, row=first)
    values, original = _rescale(values, name, scale, source=source, curve=curve_id, rows=rows)
    part = _curve_frame(curve_id=curve_id, run_id=run, metric_key=name, tokens=tokens[rows],
                        values=values, steps=steps[rows], scale=original)
    return part, rows
