"""Format detection, option routing and many sources: the entry points of the readers.

``read_curves(path)`` detects the format from the file name and contents and hands the
file to the reader of that format (one module each):

- ``long``: long tables in Parquet, CSV and JSONL (one row per evaluation point, a
  ``curve_id`` column);
- ``trainer_state``: Hugging Face ``Trainer`` state files (``trainer_state.json``, or any
  JSON file holding a ``log_history`` list, or a directory holding one);
- ``tensorboard``: TensorBoard event files (``events.out.tfevents.*``, or a directory
  holding them);
- ``wide``: wide exports (W&B, MLflow): one step column and one column per metric, no
  ``curve_id``.

Every reader builds a long table and validates it with ``CurveSet.from_frame``, so bad
input gets a ``CurveError`` naming the file, the curve, the row *of the file* and the rule;
a file that cannot be read at all gets a ``ReadError``. No other exception escapes.

Example:
    >>> curves = read_curves("out/trainer_state.json", metric="exact_match")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..curves import CurveSet
from ..errors import CurveError, ParameterError, ReadError
from ._common import STEP_COLUMNS, _read_frame, _step_column
from .long import long_table_curves, read_long_table
from .tensorboard import EVENTS_PREFIX, _event_files, read_tensorboard
from .trainer_state import read_trainer_state
from .wide import _wide_frame, read_wide_table, wide_table_curves

log = logging.getLogger(__name__)

LONG = "long"
TRAINER_STATE = "trainer_state"
TENSORBOARD = "tensorboard"
WIDE = "wide"
FORMATS = (LONG, TRAINER_STATE, TENSORBOARD, WIDE)
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


# --- dispatch --------------------------------------------------------------------------
def detect_format(path: str | os.PathLike) -> str:
    """Name the format of ``path``: ``long``, ``trainer_state``, ``tensorboard`` or ``wide``.

    Tables are told apart by content (a ``curve_id`` column means long; otherwise a step
    column means wide, as in W&B exports and MLflow's one-metric ``step, value, timestamp``
    files); a ``.json`` file is read as a Trainer state,
    which must hold a ``log_history`` list; ``events.out.tfevents.*`` names are TensorBoard.
    """
    path = Path(path)
    if path.is_dir():
        return _detect_directory(path)
    if not path.exists():
        raise ReadError(f"file {path}: does not exist")
    if path.name.startswith(EVENTS_PREFIX):
        return TENSORBOARD
    if path.suffix == ".json":
        return TRAINER_STATE
    if path.suffix in TABLE_SUFFIXES:
        return _detect_table(_read_frame(path), path)
    raise ReadError(f"file {path}: unknown format; expected a table ({', '.join(TABLE_SUFFIXES)}), "
                    f"a trainer_state.json, or TensorBoard {EVENTS_PREFIX}.* files")


def _detect_directory(path: Path) -> str:
    if (path / "trainer_state.json").is_file():
        return TRAINER_STATE
    if _event_files(path):
        return TENSORBOARD
    raise ReadError(f"file {path}: a directory without trainer_state.json or "
                    f"{EVENTS_PREFIX}.* files")


def _detect_table(frame: pd.DataFrame, path: Path) -> str:
    if "curve_id" in frame.columns:
        return LONG
    if _step_column(frame) is not None:
        return WIDE
    if "value" in frame.columns:
        return LONG
    raise CurveError(f"missing column: a long table needs curve_id, tokens, value; a wide "
                     f"export needs a step column ({', '.join(STEP_COLUMNS)}); columns "
                     f"present: {list(map(str, frame.columns))}", source=str(path))


def read_curves(path: str | os.PathLike, *, on_error: str = "fail", format: str | None = None,
                **options: Any) -> CurveSet:
    """Read a curve file of any supported format into a ``CurveSet``.

    Args:
        path: the file (or a directory of TensorBoard logs / a Trainer output directory).
        on_error: ``fail`` (default) raises on the first bad curve; ``skip`` drops it and
            lists why in ``CurveSet.dropped``.
        format: one of ``FORMATS`` to skip detection.
        **options: format options: ``metric``, ``tokens_per_step``, ``scale``, ``run_id``
            (Trainer, TensorBoard, wide), ``tokens_tag`` (TensorBoard), ``tokens_column``
            and ``budget_column`` (long tables).

    Example:
        >>> read_curves("data/sample_curves.parquet")  # doctest: +SKIP
        CurveSet(36 curves, 610 points)
    """
    return _read(Path(path), on_error=on_error, format=format, options=options)[1]


def _read(path: Path, *, on_error: str, format: str | None,
          options: Mapping[str, Any]) -> tuple[str, CurveSet]:
    """``(format, curves)``; a table is read from disk once, for detection and reading."""
    if format is not None and format not in FORMATS:
        raise ParameterError(f"format must be one of {FORMATS}, got format={format!r}")
    if format in (None, LONG, WIDE) and path.suffix in TABLE_SUFFIXES and path.is_file():
        frame = _read_frame(path)
        kind = format or _detect_table(frame, path)
        chosen = _applicable(kind, options)
        if kind == LONG:
            return kind, long_table_curves(frame, source=str(path), on_error=on_error, **chosen)
        chosen["run_id"] = chosen.get("run_id") or path.stem
        named, cells = _wide_frame(frame, chosen.get("metric"), path)
        return kind, wide_table_curves(named, source=str(path), on_error=on_error,
                                       no_number_cells=cells, **chosen)
    kind = format or detect_format(path)
    readers = {LONG: read_long_table, TRAINER_STATE: read_trainer_state,
               TENSORBOARD: read_tensorboard, WIDE: read_wide_table}
    return kind, readers[kind](path, on_error=on_error, **_applicable(kind, options))


_OPTIONS = {
    LONG: {"tokens_column", "budget_column"},
    TRAINER_STATE: {"metric", "tokens_per_step", "scale", "run_id"},
    TENSORBOARD: {"metric", "tokens_per_step", "scale", "run_id", "tokens_tag"},
    WIDE: {"metric", "tokens_per_step", "scale", "run_id"},
}


def _applicable(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that apply to this format; others are ignored (logged), unknown rejected."""
    known = set().union(*_OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ParameterError(f"unknown reader option(s) {unknown}; known: {sorted(known)}")
    unused = sorted(k for k, v in options.items() if k not in _OPTIONS[kind] and v is not None)
    if unused:
        log.info("options %s do not apply to %s files; ignored", unused, kind)
    return {k: v for k, v in options.items() if k in _OPTIONS[kind]}


# --- many sources (the ``ingest`` command) ----------------------------------------------
@dataclass(frozen=True)
class SourceSummary:
    """What one source file gave: its format, counts, (with skip) what was dropped, and
    what the reader skipped or changed (``warnings``: NaN cells, a damaged event file,
    metadata stored as text)."""

    path: str
    format: str | None
    curves: int
    points: int
    metrics: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class IngestResult:
    """The curves read from several sources, and a summary per source.

    Example:
        >>> result = read_sources(["a/trainer_state.json", "b.csv"])  # doctest: +SKIP
        >>> result.curves.write("curves.parquet")  # doctest: +SKIP
    """

    curves: CurveSet
    sources: tuple[SourceSummary, ...] = field(default_factory=tuple)

    @property
    def dropped(self) -> list[str]:
        return [reason for s in self.sources for reason in s.dropped]

    @property
    def warnings(self) -> list[str]:
        return [note for s in self.sources for note in s.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {"n_curves": len(self.curves), "n_points": self.curves.n_points,
                "sources": [vars(s) | {"metrics": list(s.metrics), "dropped": list(s.dropped),
                                       "warnings": list(s.warnings)} for s in self.sources],
                "dropped": self.dropped, "warnings": self.warnings}


def read_sources(paths: Iterable[str | os.PathLike], *, on_error: str = "fail",
                 **options: Any) -> IngestResult:
    """Read several sources into one curve set.

    With ``on_error="skip"`` a source that cannot be read at all, or whose curves all
    break the schema, is dropped with its reason, as are curves whose ``curve_id`` an
    earlier source already gave; with ``fail`` the first problem is raised.
    """
    curves, summaries, seen = [], [], set()
    for path in paths:
        try:
            kind, got = _read(Path(path), on_error=on_error, format=None, options=options)
        except (CurveError, ReadError) as error:  # a bad parameter (ParameterError) still fails
            if on_error != "skip":
                raise
            summaries.append(SourceSummary(str(path), None, 0, 0, dropped=(str(error),)))
            continue
        kept, dropped = _unique(got, seen, path, on_error)
        curves += kept
        summaries.append(SourceSummary(
            str(path), kind, len(kept), sum(len(c) for c in kept),
            tuple(sorted({c.metric or "" for c in kept})), tuple(got.dropped) + dropped,
            tuple(got.warnings)))
    if not curves:
        raise CurveError(f"no valid curve in {len(summaries)} source(s); first problem: "
                         f"{next((d for s in summaries for d in s.dropped), 'none')}")
    notes = [note for s in summaries for note in s.warnings]
    return IngestResult(CurveSet(curves, warnings=notes), tuple(summaries))


def _unique(got: CurveSet, seen: set[str], path: Any, on_error: str) -> tuple[list, tuple]:
    kept, dropped = [], []
    for curve in got:
        if curve.curve_id in seen:
            error = CurveError("curve_id must be unique across sources; an earlier source "
                               "already gave it", source=str(path), curve=curve.curve_id)
            if on_error != "skip":
                raise error
            dropped.append(str(error))
            continue
        seen.add(curve.curve_id)
        kept.append(curve)
    return kept, tuple(dropped)
