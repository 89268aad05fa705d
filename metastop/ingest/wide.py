"""Wide exports (W&B, MLflow): one step column and one column per metric, no ``curve_id``.

Example:
    >>> curves = read_wide_table("wandb_export.csv", tokens_per_step=4096)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..curves import CurveSet
from ..curves.curveset import cell_rule, numeric_cells
from ..errors import CurveError
from ._common import (STEP_COLUMNS, _check_tokens_per_step, _curve_frame, _each, _metric_name,
                      _read_frame, _rescale, _step_column, _tokens_from_steps, _validated,
                      explicit_missing)

log = logging.getLogger(__name__)

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
    ``metric`` or the file's stem. Empty cells (metrics logged at different steps) are skipped;
    so are cells holding ``NaN``, ``None``, ``N/A`` (a logged non-number), which are counted
    in ``CurveSet.warnings`` (file, column, count, first row). Bookkeeping columns
    (``_timestamp``, ``_runtime``, ``epoch``, ``__MIN``/``__MAX``) are not metrics.

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
    frame, cells = _wide_frame(_read_frame(path), metric, path)
    return wide_table_curves(frame, source=str(path), on_error=on_error,
                             metric=metric, tokens_per_step=tokens_per_step, scale=scale,
                             run_id=run_id or path.stem, no_number_cells=cells)


def _wide_frame(frame: pd.DataFrame, metric: str | None,
                path: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The table with MLflow's ``value`` column named (``_name_mlflow_metric``), and the
    rows of each column whose cell held a no-number token (``explicit_missing``)."""
    cells = explicit_missing(frame, path)
    named = _name_mlflow_metric(frame, metric, path)
    renamed = dict(zip(frame.columns, named.columns))
    return named, {renamed[c]: rows for c, rows in cells.items()}


def _name_mlflow_metric(frame: pd.DataFrame, metric: str | None, path: Path) -> pd.DataFrame:
    """MLflow's one-metric export has a ``value`` column: name it after ``metric`` or the file."""
    if "value" not in frame.columns:
        return frame
    return frame.rename(columns={"value": metric or path.stem})


def wide_table_curves(frame: pd.DataFrame, *, source: str, on_error: str = "fail",
                      metric: str | None = None, tokens_per_step: float | None = None,
                      scale: float | None = None, run_id: str = "run",
                      no_number_cells: Mapping[str, np.ndarray] | None = None) -> CurveSet:
    """Melt an in-memory wide table into curves (see ``read_wide_table``);
    ``no_number_cells`` lists, per column, the rows that held a no-number token."""
    _check_tokens_per_step(tokens_per_step)
    step_column = _step_column(frame)
    if step_column is None:
        raise CurveError(f"missing step column; a wide export needs one of {STEP_COLUMNS}; "
                         f"columns present: {list(map(str, frame.columns))}", source=source)
    steps = _numeric_column(frame, step_column, source)
    tokens = _wide_tokens(frame, steps, tokens_per_step, source)
    columns = _metric_columns(frame, step_column, metric, source)
    parts = _each(lambda column: _wide_curve(frame, column, steps, tokens, scale=scale,
                                             source=source, run_id=run_id),
                  columns, on_error)
    curves = _validated(parts, source=source, on_error=on_error)
    curves.warnings.extend(_skipped_cells(columns, no_number_cells or {}, source))
    return curves


def _skipped_cells(columns: list[str], cells: Mapping[str, np.ndarray],
                   source: str) -> list[str]:
    """One warning per metric column that had cells holding NaN/None/N/A, which were skipped."""
    notes = []
    for column in columns:
        rows = cells.get(column, np.array([], dtype=np.int64))
        if len(rows):
            notes.append(f"file {source}: column {column!r}: skipped {len(rows)} cell(s) "
                         f"holding NaN/None/N/A instead of a number (first at row "
                         f"{int(rows[0])})")
            log.warning("%s", notes[-1])
    return notes


def _numeric_column(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    raw = frame[column]
    numbers, bad = numeric_cells(raw)
    if bad.any():
        row = int(np.argmax(bad))
        raise CurveError(cell_rule(column, raw.iloc[row]), source=source, row=row)
    return numbers


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
    values, bad = numeric_cells(raw.iloc[rows])
    bad |= np.isnan(values)
    if bad.any():
        first = int(rows[np.argmax(bad)])
        raise CurveError(cell_rule("value", raw.iloc[first]), source=source,
                         curve=curve_id, row=first)
    values, original = _rescale(values, name, scale, source=source, curve=curve_id, rows=rows)
    part = _curve_frame(curve_id=curve_id, run_id=run, metric_key=name, tokens=tokens[rows],
                        values=values, steps=steps[rows], scale=original)
    return part, rows
