"""Gathering finished curves for retraining: from curve files and from decision logs.

Curve files are any format ``metastop.ingest`` reads; decision logs (``*.jsonl`` written by
the controller) give one curve per finished run. Bad files and curves are skipped and listed
with the reason; curves are de-duplicated by ``curve_id`` and by identical points.

Example:
    >>> gathered = gather_curves(["extra.parquet"], runs_dir="runs/finished")  # doctest: +SKIP
    >>> len(gathered.curves), [str(s) for s in gathered.skipped]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..curves import Curve, CurveSet
from ..errors import CurveError, MetastopError, ParameterError, ReadError
from ..ingest import read_curves
from ..predict.manifest import sha256_file
from ..stop.decisionlog import RunLog, read_logs

CURVE_SUFFIXES = (".parquet", ".csv", ".jsonl")
MIN_POINTS = 3
"""Curves with fewer points are skipped (the predictor cannot learn from them)."""
FINISHED_SHARE = 0.98
"""A logged run counts as finished when its last tokens reach this share of its budget."""


@dataclass(frozen=True)
class Skipped:
    """An input left out of training: the file, the curve (if one), and why."""

    path: str
    reason: str
    curve: str | None = None

    def __str__(self) -> str:
        where = f"{self.path} (curve {self.curve!r})" if self.curve else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Gathered:
    """The curves gathered for retraining and what was left out."""

    curves: CurveSet
    sources: tuple[dict[str, Any], ...]
    skipped: tuple[Skipped, ...]
    duplicates: tuple[Skipped, ...]


def gather_curves(paths: Iterable[str | os.PathLike] = (), *,
                  runs_dir: str | os.PathLike | None = None,
                  min_points: int = MIN_POINTS) -> Gathered:
    """Read, validate and de-duplicate curves from files and a folder of finished runs.

    Args:
        paths: curve files (any format ``metastop.ingest`` reads) or folders of them.
        runs_dir: a folder of finished runs: curve files and decision logs (``*.jsonl``).
        min_points: curves with fewer points are skipped.

    Raises:
        ParameterError: nothing usable was found.
    """
    files = [f for p in paths for f in _expand(Path(p))]
    if runs_dir is not None:
        if not Path(runs_dir).is_dir():
            raise ReadError(f"file {runs_dir}: runs_dir must be a folder")
        files += _expand(Path(runs_dir))
    collector = _Collector(min_points)
    for file in files:
        collector.read(file)
    if not collector.curves:
        raise ParameterError(f"no usable curves in {[str(f) for f in files]}; skipped: "
                             f"{[str(s) for s in collector.skipped[:5]]}")
    return Gathered(CurveSet(collector.curves), tuple(collector.sources),
                    tuple(collector.skipped), tuple(collector.duplicates))


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in CURVE_SUFFIXES and p.is_file())
    return [path]


class _Collector:
    """Accumulates curves file by file, skipping bad ones and duplicates."""

    def __init__(self, min_points: int):
        self.min_points = min_points
        self.curves: list[Curve] = []
        self.sources: list[dict[str, Any]] = []
        self.skipped: list[Skipped] = []
        self.duplicates: list[Skipped] = []
        self._ids: set[str] = set()
        self._contents: dict[str, str] = {}

    def read(self, file: Path) -> None:
        try:
            curves, dropped = (_curves_from_log(file) if _is_decision_log(file)
                               else _curves_from_table(file))
        except (MetastopError, OSError, ValueError) as error:
            self.skipped.append(Skipped(str(file), f"{type(error).__name__}: {error}"))
            return
        self.skipped.extend(dropped)
        kept = sum(self._add(file, c) for c in curves)
        self.sources.append({"path": str(file), "sha256": sha256_file(file), "n_curves": kept})

    def _add(self, file: Path, curve: Curve) -> bool:
        if len(curve) < self.min_points:
            self.skipped.append(Skipped(str(file), f"only {len(curve)} points, need >= "
                                                   f"{self.min_points}", curve.curve_id))
            return False
        if curve.curve_id in self._ids:
            self.duplicates.append(Skipped(str(file), "duplicate curve_id (first one kept)",
                                           curve.curve_id))
            return False
        digest = _content_digest(curve)
        if digest in self._contents:
            self.duplicates.append(Skipped(str(file), f"same points as curve "
                                                      f"{self._contents[digest]!r}", curve.curve_id))
            return False
        self._ids.add(curve.curve_id)
        self._contents[digest] = curve.curve_id
        self.curves.append(curve)
        return True


def _content_digest(curve: Curve) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(curve.tokens).tobytes())
    digest.update(np.ascontiguousarray(curve.values).tobytes())
    digest.update(curve.direction.encode())
    return digest.hexdigest()


def _curves_from_table(file: Path) -> tuple[list[Curve], list[Skipped]]:
    curves = read_curves(file, on_error="skip")
    return list(curves), [Skipped(str(file), reason) for reason in curves.dropped]


def _is_decision_log(file: Path) -> bool:
    """A JSONL file whose first record has the decision fields ``stop`` and ``reason``."""
    if file.suffix != ".jsonl":
        return False
    with open(file, errors="replace") as handle:
        for line in handle:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(record, dict) and "stop" in record and "reason" in record
    return False


def _curves_from_log(file: Path) -> tuple[list[Curve], list[Skipped]]:
    """One curve per run of a decision log; unfinished or stopped runs are skipped."""
    read = read_logs(file)
    skipped = ([Skipped(str(file), f"{len(read.skipped)} line(s) not decision records "
                                   f"(truncated?), ignored")] if read.skipped else [])
    curves = []
    for run in read.runs.values():
        curve, problem = _log_curve(run)
        if problem is not None:
            skipped.append(Skipped(str(file), problem, run.run_id))
        else:
            curves.append(curve)
    return curves, skipped


def _log_curve(run: RunLog) -> tuple[Curve | None, str | None]:
    last = float(run.tokens[-1])
    if last < FINISHED_SHARE * run.budget:
        state = "stopped by the controller" if run.stopped else "unfinished: last point"
        return None, (f"{state} at {last:.4g} of a {run.budget:.4g}-token budget: "
                      f"the rest of the curve is unknown")
    try:
        return run.curve(), None
    except CurveError as error:
        return None, str(error)
