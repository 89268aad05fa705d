"""Helpers shared by the readers: tables from disk, metric names and scales, token axes.

Every log reader builds the long-table rows of its curves with ``_curve_frame`` and
validates them together with ``_validated``, so errors name the file, the curve and the row
*of the file*; ``metric_direction`` and ``_rescale`` decide direction and 0-100 scores once
for every format.

Example:
    >>> metric_direction("eval_loss")
    'minimize'
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..curves import MAXIMIZE, MINIMIZE, CurveSet, is_bounded_metric
from ..curves.schema import bounded_rule
from ..errors import CurveError, ParameterError, ReadError

STEP_COLUMNS = ("step", "_step", "Step", "global_step", "trainer/global_step")
_MINIMIZE_HINTS = ("loss", "perplexity", "ppl", "error", "wer", "cer", "mse", "mae", "rmse")
_FORMAT_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                  RecursionError, UnicodeDecodeError, pd.errors.ParserError)


def _read_frame(path: Path) -> pd.DataFrame:
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".jsonl": _read_jsonl}
    if path.suffix not in readers:
        raise ReadError(f"file {path}: tables must end in one of {sorted(readers)}")
    try:
        frame = readers[path.suffix](path)
    except _FORMAT_ERRORS as error:
        raise ReadError(f"file {path}: cannot be read as {path.suffix[1:]} "
                        f"({type(error).__name__}: {_short(error)})") from None
    except Exception as error:  # pyarrow raises its own hierarchy on truncated files
        if not type(error).__module__.startswith("pyarrow"):
            raise
        raise ReadError(f"file {path}: cannot be read as {path.suffix[1:]} "
                        f"({type(error).__name__}: {_short(error)})") from None
    if not isinstance(frame, pd.DataFrame):
        raise ReadError(f"file {path}: holds no table")
    frame.columns = [str(c) for c in frame.columns]
    _check_text(frame, path)
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON lines as pandas reads them, except that ``true``/``false`` among numbers stay
    true/false (pandas would make them 1 and 0), so that readers can refuse them."""
    frame = pd.read_json(path, lines=True)
    if not re.search(rb"\b(?:true|false)\b", path.read_bytes()):
        return frame
    raw = pd.read_json(path, lines=True, dtype=False)
    for column in frame.columns:
        if column in raw.columns and frame[column].dtype != object and \
                raw[column].map(lambda v: isinstance(v, bool)).any() and \
                not pd.api.types.is_bool_dtype(frame[column].dtype):
            frame[column] = raw[column].astype(object)
    return frame


def _check_text(frame: pd.DataFrame, path: Path) -> None:
    """Text columns backed by Arrow (Parquet) must be valid UTF-8: Arrow checks it only when
    a value is used, which would fail far from the file."""
    for column in frame.columns:
        array = frame[column].array
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            array = frame[column].cat.categories.array
        if not hasattr(array, "__arrow_array__"):
            continue
        try:
            array.__arrow_array__().validate(full=True)
        except Exception as error:  # pyarrow's own hierarchy (ArrowInvalid)
            if not type(error).__module__.startswith("pyarrow"):
                raise
            raise ReadError(f"file {path}: column {column!r} holds text that is not valid "
                            f"UTF-8 ({_short(error)})") from None


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def explicit_missing(frame: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    """Per column, the rows whose cell held a no-number token rather than nothing: text that
    pandas reads as missing (``NaN``, ``None``, ``N/A``, ``null``...) in a CSV, a NaN (not a
    null) in Parquet or JSONL. Wide readers skip such cells and say how many."""
    readers = {".csv": _csv_tokens, ".jsonl": _jsonl_nans, ".parquet": _parquet_nans}
    if path.suffix not in readers or not frame.isna().to_numpy().any():
        return {}
    try:
        marked = readers[path.suffix](frame, path)
    except (OSError, ValueError, RecursionError):  # it read once already: a race, not data
        return {}
    return {c: np.flatnonzero(rows) for c, rows in marked.items() if rows.any()}


def _csv_tokens(frame: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    raw = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if raw.shape != frame.shape:
        return {}
    return {name: (raw.iloc[:, i].str.strip() != "").to_numpy(dtype=bool)
            & frame.iloc[:, i].isna().to_numpy(dtype=bool) for i, name in enumerate(frame.columns)}


def _jsonl_nans(frame: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != len(frame) or not all(isinstance(line, dict) for line in lines):
        return {}
    return {name: np.array([isinstance(line.get(name), float) and math.isnan(line[name])
                            for line in lines], dtype=bool) for name in frame.columns}


def _parquet_nans(frame: pd.DataFrame, path: Path) -> dict[str, np.ndarray]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as pt

    table = pq.read_table(path)
    return {name: pc.fill_null(pc.is_nan(table.column(name)), False).to_numpy(
                zero_copy_only=False).astype(bool)
            for name in table.column_names
            if name in frame.columns and pt.is_floating(table.column(name).type)
            and len(table) == len(frame)}


# --- shared by the log readers ----------------------------------------------------------
def metric_direction(name: str) -> str:
    """``minimize`` for loss-like metric names (loss, perplexity, error rates), else ``maximize``."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    return MINIMIZE if words & set(_MINIMIZE_HINTS) or "loss" in name.lower() else MAXIMIZE


def _metric_name(key: str) -> str:
    """``eval_exact_match`` / ``eval/exact_match`` -> ``exact_match``."""
    return re.sub(r"^(eval|test|validation|val)[_/]", "", key.rsplit(" - ", 1)[-1])


def _rescale(values: np.ndarray, metric: str, scale: float | None, *, source: str,
             curve: str, rows: Sequence[int]) -> tuple[np.ndarray, float | None]:
    """Bring a bounded metric logged on 0-100 to 0-1. Returns (values, original scale or None).

    ``scale=None`` detects it: a bounded metric with a value above 1 was logged on 0-100
    (as the Hugging Face SQuAD metric does). Pass ``scale=1`` or ``scale=100`` when a
    curve on 0-100 never rises above 1.
    """
    if scale is not None and scale not in (1, 100):
        raise ParameterError(f"scale must be 1, 100 or None (detect), got scale={scale!r}")
    if not is_bounded_metric(metric):
        return values, None
    found = _scale_rule(values, scale)
    if found is not None:
        raise CurveError(f"metric {metric!r}: {found[1]}", source=source, curve=curve,
                         row=int(rows[found[0]]))
    if scale == 1 or (scale is None and not (np.nan_to_num(values) > 1.0).any()):
        return values, None
    return values / 100.0, 100.0


def _scale_rule(values: np.ndarray, scale: float | None) -> tuple[int, str] | None:
    """``(index, rule)`` of the first value a share of examples cannot take on ``scale``
    (``None``: either scale, one per curve, see ``bounded_rule``), else None."""
    if scale is None:
        return bounded_rule(values)
    finite = np.where(np.isfinite(values), values, 0.0)
    bad = (finite < 0) | (finite > scale)
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, f"value must be in [0, {scale:g}] on the stated scale={scale:g}, got {float(values[i])!r}"


def _tokens_from_steps(steps: np.ndarray, tokens_per_step: float | None, *, source: str,
                       where: str) -> np.ndarray:
    if tokens_per_step is None:
        raise CurveError(f"{where} has steps but no token counts: pass tokens_per_step= "
                         f"(--tokens-per-step) so that tokens = step x tokens_per_step",
                         source=source)
    _check_tokens_per_step(tokens_per_step)
    with np.errstate(over="ignore"):  # an overflow gives inf, which the schema then refuses
        return steps * float(tokens_per_step)


def _check_tokens_per_step(tokens_per_step: float | None) -> None:
    if tokens_per_step is None:
        return
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, (int, float)) \
            or not np.isfinite(tokens_per_step) or tokens_per_step <= 0:
        raise ParameterError(f"tokens_per_step must be a finite number > 0, "
                             f"got tokens_per_step={tokens_per_step!r}")


def _curve_frame(*, curve_id: str, run_id: str, metric_key: str, tokens: np.ndarray,
                 values: np.ndarray, steps: np.ndarray, scale: float | None,
                 budget: float | None = None) -> pd.DataFrame:
    """The long-table rows of one curve read from a log."""
    frame = pd.DataFrame({"curve_id": curve_id, "run_id": run_id,
                          "metric": _metric_name(metric_key),
                          "direction": metric_direction(metric_key),
                          "tokens": tokens, "value": values, "step": steps,
                          "source_metric": metric_key})
    if budget is not None:
        frame["budget"] = budget
    if scale is not None:
        frame["scale_original"] = scale
    return frame


def _as_float(value: Any) -> float:
    """A logged number as float; NaN for anything that is not a real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _run_name(path: Path) -> str:
    """The run a log belongs to: its directory, skipping ``checkpoint-*`` folders."""
    parent = path if path.is_dir() else path.parent
    while parent.name.startswith("checkpoint-") and parent.parent != parent:
        parent = parent.parent
    return parent.resolve().name or "run"


def _each(read_one: Any, items: Iterable[Any], on_error: str) -> list:
    """``read_one(item)`` for each item; with ``skip`` a ``CurveError`` drops that item and
    its message is kept (as a ``str``) in the returned list instead of a result."""
    results: list = []
    for item in items:
        try:
            results.append(read_one(item))
        except CurveError as error:
            if on_error != "skip":
                raise
            results.append(str(error))
    return results


def _validated(parts: list, *, source: str, on_error: str) -> CurveSet:
    """Validate the ``(frame, rows)`` parts of one file together; keep the skipped reasons."""
    problems = [p for p in parts if isinstance(p, str)]
    parts = [p for p in parts if not isinstance(p, str)]
    if not parts:
        raise CurveError(f"no valid curve left after skipping {len(problems)} bad ones; "
                         f"first problem: {problems[0] if problems else 'none'}", source=source)
    frame = pd.concat([f for f, _ in parts], ignore_index=True)
    rows = np.concatenate([r for _, r in parts])
    curves = CurveSet.from_frame(frame, source=source, on_error=on_error, rows=rows)
    curves.dropped.extend(problems)
    return curves


def _step_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in STEP_COLUMNS if c in frame.columns), None)
