"""Readers that map other layouts into the one curve table (see ``metastop.curves``).

``read_curves(path)`` detects the format from the file name and contents:

- long tables in Parquet, CSV and JSONL (one row per evaluation point, a ``curve_id``
  column);
- Hugging Face ``Trainer`` state files (``trainer_state.json``, or any JSON file holding a
  ``log_history`` list, or a directory holding one);
- TensorBoard event files (``events.out.tfevents.*``, or a directory holding them);
- wide exports (W&B, MLflow): one step column and one column per metric, no ``curve_id``.

Every reader builds a long table and validates it with ``CurveSet.from_frame``, so bad
input gets a ``CurveError`` naming the file, the curve, the row *of the file* and the rule;
a file that cannot be read at all gets a ``ReadError``. No other exception escapes.

Example:
    >>> curves = read_curves("out/trainer_state.json", metric="exact_match")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..curves import MAXIMIZE, MINIMIZE, CurveSet, is_bounded_metric
from ..errors import CurveError, ParameterError, ReadError

log = logging.getLogger(__name__)

LONG = "long"
TRAINER_STATE = "trainer_state"
TENSORBOARD = "tensorboard"
WIDE = "wide"
FORMATS = (LONG, TRAINER_STATE, TENSORBOARD, WIDE)
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
LONG_TABLE_SUFFIXES = TABLE_SUFFIXES
EVENTS_PREFIX = "events.out.tfevents"
EXACT_MATCH_KEYS = ("eval_exact_match", "eval_em")
EXACT_MATCH_TAGS = ("eval/exact_match", "eval/em", "eval_exact_match", "eval_em")
STEP_COLUMNS = ("step", "_step", "Step", "global_step", "trainer/global_step")
TOKEN_COLUMNS = ("tokens", "num_input_tokens_seen", "train/num_input_tokens_seen")
# Columns of wide exports that are bookkeeping, not metrics.
_NOT_METRICS = re.compile(r"(^_|timestamp|runtime|wall ?time|^time$|epoch|__MIN$|__MAX$|"
                          r"_per_second$|total_flos|num_input_tokens_seen)", re.IGNORECASE)
_MINIMIZE_HINTS = ("loss", "perplexity", "ppl", "error", "wer", "cer", "mse", "mae", "rmse")
_FORMAT_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
                  RecursionError, UnicodeDecodeError, pd.errors.ParserError)


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
        return kind, wide_table_curves(_name_mlflow_metric(frame, chosen.get("metric"), path),
                                       source=str(path), on_error=on_error, **chosen)
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
    """What one source file gave: its format, counts, and (with skip) what was dropped."""

    path: str
    format: str | None
    curves: int
    points: int
    metrics: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


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

    def to_dict(self) -> dict[str, Any]:
        return {"n_curves": len(self.curves), "n_points": self.curves.n_points,
                "sources": [vars(s) | {"metrics": list(s.metrics), "dropped": list(s.dropped)}
                            for s in self.sources],
                "dropped": self.dropped}


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
            tuple(sorted({c.metric or "" for c in kept})), tuple(got.dropped) + dropped))
    if not curves:
        raise CurveError(f"no valid curve in {len(summaries)} source(s); first problem: "
                         f"{next((d for s in summaries for d in s.dropped), 'none')}")
    return IngestResult(CurveSet(curves), tuple(summaries))


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


# --- long tables -------------------------------------------------------------------------
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


def _read_frame(path: Path) -> pd.DataFrame:
    readers = {".parquet": pd.read_parquet, ".csv": pd.read_csv,
               ".jsonl": lambda p: pd.read_json(p, lines=True)}
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
    return frame


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


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
    if not is_bounded_metric(metric) or scale == 1:
        return values, None
    finite = np.where(np.isfinite(values), values, 0.0)
    if scale is None and not (finite > 1.0).any():
        return values, None
    over = np.flatnonzero(np.abs(finite) > 100.0 + 1e-9)
    if over.size:
        raise CurveError(f"{metric} looks like a 0-100 score but "
                         f"{float(values[over[0]])!r} is above 100",
                         source=source, curve=curve, row=int(rows[over[0]]))
    return values / 100.0, 100.0


def _tokens_from_steps(steps: np.ndarray, tokens_per_step: float | None, *, source: str,
                       where: str) -> np.ndarray:
    if tokens_per_step is None:
        raise CurveError(f"{where} has steps but no token counts: pass tokens_per_step= "
                         f"(--tokens-per-step) so that tokens = step x tokens_per_step",
                         source=source)
    _check_tokens_per_step(tokens_per_step)
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


# --- Hugging Face Trainer ----------------------------------------------------------------
def read_trainer_state(path: str | os.PathLike, *, on_error: str = "fail",
                       metric: str | None = None, tokens_per_step: float | None = None,
                       scale: float | None = None, run_id: str | None = None) -> CurveSet:
    """Read the eval curve of a Hugging Face ``Trainer`` run from its ``trainer_state.json``.

    Args:
        path: ``trainer_state.json`` (or the directory holding it).
        on_error: ``fail`` or ``skip`` (see ``read_curves``).
        metric: the ``log_history`` key, with or without ``eval_`` (``exact_match``,
            ``eval_loss``, ``eval_squad_f1``...). Default: ``eval_exact_match``, else
            ``eval_em``.
        tokens_per_step: tokens per optimizer step. Required when the run did not log
            ``num_input_tokens_seen`` (``include_num_input_tokens_seen``); also gives the
            budget as ``max_steps x tokens_per_step``.
        scale: 1 or 100 to state the metric's scale; default: detect (see ``_rescale``).
        run_id: the run's name; default: the output directory's name.

    Returns:
        One curve, ``<run_id>/<metric key>``, with EM on 0-1 (``scale_original`` = 100 in
        its metadata when it was logged on 0-100) and loss-like metrics minimized.

    Example:
        >>> read_trainer_state("out/trainer_state.json", metric="exact_match")  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / "trainer_state.json"
    _check_tokens_per_step(tokens_per_step)
    state = _load_trainer_state(path)
    key = _pick_log_key(state["log_history"], metric, source=str(path))
    rows, steps, values, tokens = _eval_points(state["log_history"], key, source=str(path))
    run = run_id or _run_name(path)
    curve_id = f"{run}/{key}"
    if tokens is None:
        tokens = _tokens_from_steps(steps, tokens_per_step, source=str(path),
                                    where=f"log_history ({key})")
    values, original = _rescale(values, key, scale, source=str(path), curve=curve_id, rows=rows)
    budget = _trainer_budget(state, tokens, tokens_per_step)
    frame = _curve_frame(curve_id=curve_id, run_id=run, metric_key=key, tokens=tokens,
                         values=values, steps=steps, scale=original, budget=budget)
    return CurveSet.from_frame(frame, source=str(path), on_error=on_error, rows=rows)


def _load_trainer_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ReadError(f"file {path}: malformed JSON ({type(error).__name__}: "
                        f"{_short(error)})") from None
    except OSError as error:
        raise ReadError(f"file {path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise CurveError("a trainer_state.json must be a JSON object with a 'log_history' "
                         "list (as Trainer.save_state writes it)", source=str(path))
    return state


def _pick_log_key(history: list, metric: str | None, *, source: str) -> str:
    keys = sorted({k for entry in history if isinstance(entry, dict) for k in entry
                   if isinstance(k, str) and k.startswith("eval_")
                   and not k.endswith(("_runtime", "_per_second"))})
    wanted = EXACT_MATCH_KEYS if metric is None else (metric, f"eval_{metric}")
    for key in wanted:
        if key in keys:
            return key
    asked = "an exact-match metric (eval_exact_match, eval_em)" if metric is None else repr(metric)
    raise CurveError(f"log_history has no {asked}; eval metrics present: {keys or 'none'}"
                     f"{'; pick one with metric=' if keys else ''}", source=source)


def _eval_points(history: list, key: str, *, source: str):
    """Rows, steps, values and (if every row logged them) tokens of one metric."""
    rows = [i for i, entry in enumerate(history) if isinstance(entry, dict) and key in entry]
    entries = [history[i] for i in rows]
    steps = np.array([_as_float(e.get("step")) for e in entries])
    bad = np.flatnonzero(~np.isfinite(steps))
    if bad.size:
        raise CurveError(f"step must be a number, got {entries[bad[0]].get('step')!r}",
                         source=source, curve=key, row=rows[bad[0]])
    values = np.array([_as_float(e[key]) for e in entries])
    rows, steps, values, entries = _collapse_repeats(rows, steps, values, entries)
    logged = [e.get("num_input_tokens_seen") for e in entries]
    if all(t is not None for t in logged):
        return rows, steps, values, np.array([_as_float(t) for t in logged])
    if any(t is not None for t in logged):
        log.warning("%s: num_input_tokens_seen is missing in some %s entries; using steps",
                    source, key)
    return rows, steps, values, None


def _collapse_repeats(rows, steps, values, entries):
    """Drop an eval logged twice at the same step with the same value (``trainer.evaluate()``
    after training repeats the last one); different values at one step stay an error."""
    keep = np.r_[True, ~((np.diff(steps) == 0) & (np.diff(values) == 0))] if len(steps) else []
    if len(steps) and not np.all(keep):
        log.info("dropped %d repeated eval entries", int((~keep).sum()))
    pick = np.flatnonzero(keep)
    return [rows[i] for i in pick], steps[pick], values[pick], [entries[i] for i in pick]


def _trainer_budget(state: dict, tokens: np.ndarray, tokens_per_step: float | None) -> float | None:
    """``max_steps x tokens_per_step``; without tokens_per_step, the observed tokens per step
    (``num_input_tokens_seen / global_step``) stands in. Never below the last tokens."""
    max_steps = _as_float(state.get("max_steps"))
    if not np.isfinite(max_steps) or max_steps <= 0 or len(tokens) == 0:
        return None
    rate = tokens_per_step
    if rate is None:
        seen = _as_float(state.get("num_input_tokens_seen"))
        step = _as_float(state.get("global_step"))
        rate = seen / step if np.isfinite(seen) and np.isfinite(step) and step > 0 else None
    if rate is None or not np.isfinite(max_steps * rate):
        return None
    last = tokens[np.isfinite(tokens)].max(initial=0.0)
    return float(max(max_steps * rate, last))


# --- TensorBoard ----------------------------------------------------------------------------
def read_tensorboard(path: str | os.PathLike, *, on_error: str = "fail",
                     metric: str | None = None, tokens_per_step: float | None = None,
                     tokens_tag: str | None = None, scale: float | None = None,
                     run_id: str | None = None) -> CurveSet:
    """Read scalar curves from TensorBoard event files.

    Args:
        path: an ``events.out.tfevents.*`` file, or a directory searched recursively; each
            directory holding event files is one run.
        on_error: ``fail`` or ``skip`` (see ``read_curves``).
        metric: the scalar tag (``eval/exact_match``) or its last part (``exact_match``).
            Default: an exact-match tag (``eval/exact_match``, ``eval/em``...).
        tokens_per_step: tokens = step x tokens_per_step.
        tokens_tag: a scalar tag holding cumulative tokens at the same steps (e.g.
            ``eval/num_input_tokens_seen``, which the Hugging Face TensorBoard callback
            logs); used without tokens_per_step. Default: ``<prefix>/num_input_tokens_seen``
            when it exists.
        scale: 1 or 100 to state the metric's scale; default: detect.
        run_id: the run's name (default: the directory's name).

    Example:
        >>> read_tensorboard("runs/", metric="eval/exact_match", tokens_per_step=4096)  # doctest: +SKIP
    """
    path = Path(path)
    _check_tokens_per_step(tokens_per_step)
    files = [path] if path.is_file() else _event_files(path)
    if not files:
        raise ReadError(f"file {path}: no {EVENTS_PREFIX}.* files")
    runs: dict[Path, list[Path]] = {}
    for file in files:
        runs.setdefault(file.parent, []).append(file)
    parts = _each(lambda run: _tensorboard_run(
        run[0], run[1], metric=metric, tokens_per_step=tokens_per_step, tokens_tag=tokens_tag,
        scale=scale, run_id=run_id if len(runs) == 1 else None,
        base=path if path.is_dir() else path.parent), sorted(runs.items()), on_error)
    return _validated(parts, source=str(path), on_error=on_error)


def _event_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.rglob(f"{EVENTS_PREFIX}*") if p.is_file())
    except OSError as error:
        raise ReadError(f"file {directory}: cannot be listed ({error})") from None


def _tensorboard_run(directory: Path, files: list[Path], *, metric, tokens_per_step, tokens_tag,
                     scale, run_id, base: Path) -> tuple[pd.DataFrame, np.ndarray]:
    scalars = _load_scalars(files)
    source = str(files[0] if len(files) == 1 else directory)
    tag = _pick_tag(scalars, metric, source=source)
    steps, values = scalars[tag]
    rows = np.arange(len(steps))
    run = run_id or (str(directory.relative_to(base)) if directory != base else None) \
        or _run_name(directory)
    curve_id = f"{run}/{tag}"
    tokens = _tensorboard_tokens(scalars, tag, steps, tokens_per_step, tokens_tag, source)
    values, original = _rescale(values, tag, scale, source=source, curve=curve_id, rows=rows)
    frame = _curve_frame(curve_id=curve_id, run_id=run, metric_key=tag, tokens=tokens,
                         values=values, steps=steps, scale=original)
    return frame, rows


def _load_scalars(files: list[Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``tag -> (steps, values)`` of every scalar in the files, in file and step order."""
    from google.protobuf.message import DecodeError
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.compat.tensorflow_stub.errors import OpError

    found: dict[str, list[tuple[float, float]]] = {}
    for file in files:
        try:
            accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0, "tensors": 0})
            accumulator.Reload()
        except (OSError, ValueError, DecodeError, OpError) as error:  # corrupt records
            raise ReadError(f"file {file}: cannot be read as TensorBoard events "
                            f"({type(error).__name__}: {_short(error)})") from None
        for tag, points in _accumulator_scalars(accumulator).items():
            found.setdefault(tag, []).extend(points)
    return {tag: (np.array([p[0] for p in pts], dtype=np.float64),
                  np.array([p[1] for p in pts], dtype=np.float64)) for tag, pts in found.items()}


def _accumulator_scalars(accumulator) -> dict[str, list[tuple[float, float]]]:
    tags = accumulator.Tags()
    out = {tag: [(float(e.step), float(e.value)) for e in accumulator.Scalars(tag)]
           for tag in tags.get("scalars", [])}
    for tag in tags.get("tensors", []):  # summary v2 writes scalars as 0-d tensors
        points = []
        for event in accumulator.Tensors(tag):
            array = _tensor_value(event.tensor_proto)
            if array is None:
                break
            points.append((float(event.step), array))
        else:
            if points:
                out.setdefault(tag, points)
    return out


def _tensor_value(proto) -> float | None:
    from tensorboard.util import tensor_util

    try:
        array = tensor_util.make_ndarray(proto)
    except (ValueError, TypeError):
        return None
    return float(array) if array.size == 1 and np.issubdtype(array.dtype, np.number) else None


def _pick_tag(scalars: Mapping[str, Any], metric: str | None, *, source: str) -> str:
    tags = sorted(scalars)
    if metric is None:
        candidates = [t for t in EXACT_MATCH_TAGS if t in scalars]
    else:
        candidates = [t for t in tags if t == metric] or \
            [t for t in tags if re.split(r"[/_]", t, maxsplit=1)[-1] == metric
             or t.rsplit("/", 1)[-1] == metric]
    if len(candidates) >= 1 and (metric is None or len(candidates) == 1):
        return candidates[0]
    asked = ("an exact-match tag (eval/exact_match, eval/em)" if metric is None
             else f"tag {metric!r}")
    problem = (f"{len(candidates)} tags match {metric!r}: {candidates}" if candidates
               else f"no {asked}")
    raise CurveError(f"{problem}; scalar tags present: {tags or 'none'}; pick one with metric=",
                     source=source)


def _default_tokens_tag(scalars: Mapping[str, Any], tag: str) -> str | None:
    """``num_input_tokens_seen`` beside the metric, else under ``train/`` (where the Hugging
    Face TensorBoard callback puts it, eval logs included), else at top level."""
    prefix = tag.rsplit("/", 1)[0] + "/" if "/" in tag else ""
    names = (f"{prefix}num_input_tokens_seen", "train/num_input_tokens_seen",
             "num_input_tokens_seen")
    return next((n for n in names if n in scalars), None)


def _tensorboard_tokens(scalars, tag, steps, tokens_per_step, tokens_tag, source) -> np.ndarray:
    if tokens_per_step is not None:
        return _tokens_from_steps(steps, tokens_per_step, source=source, where=f"tag {tag!r}")
    name = tokens_tag or _default_tokens_tag(scalars, tag)
    if name is None:
        return _tokens_from_steps(steps, None, source=source, where=f"tag {tag!r}")
    if name not in scalars:
        raise CurveError(f"tokens_tag {tokens_tag!r} is not a scalar tag; tags present: "
                         f"{sorted(scalars)}", source=source)
    lookup = dict(zip(*scalars[name]))
    missing = [s for s in steps if s not in lookup]
    if missing:
        raise CurveError(f"tokens tag {name!r} has no value at step {missing[0]:g} of {tag!r}",
                         source=source, curve=tag)
    return np.array([lookup[s] for s in steps], dtype=np.float64)


# --- wide exports (W&B, MLflow) ----------------------------------------------------------
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


# --- LCDB 1.0 (Mohr, van Rijn et al., ECML PKDD 2022) ---------------------------------------
LCDB_COLUMNS = ("openmlid", "learner", "size_train", "outer_seed", "inner_seed", "score_valid")


def lcdb_frame(raw: pd.DataFrame, *, names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Map LCDB's ``database-accuracy.csv`` table into the curve table.

    One curve per ``openmlid x learner x outer_seed x inner_seed``; the cost axis
    (``tokens``) is the number of training examples (``size_train``) and ``value`` is the
    validation accuracy (``score_valid``). ``run_id`` is the dataset (``lcdb/<openmlid>``) so
    that grouped cross-validation holds out whole datasets.

    Args:
        raw: the LCDB table (at least the columns in ``LCDB_COLUMNS``).
        names: OpenML dataset names by id, used as ``task``; unknown ids get
            ``openml-<id>``.

    Returns:
        The long table, sorted by curve and ``tokens``, with metadata columns ``dataset``,
        ``learner``, ``outer_seed`` and ``inner_seed``.

    Example:
        >>> raw = pd.DataFrame({"openmlid": [3, 3], "learner": ["SVC_rbf"] * 2,
        ...     "size_train": [16, 23], "outer_seed": [0, 0], "inner_seed": [0, 0],
        ...     "score_valid": [0.5, 0.6]})
        >>> lcdb_frame(raw)["curve_id"].iloc[0]
        'lcdb/3/SVC_rbf/0/0'
    """
    missing = [c for c in LCDB_COLUMNS if c not in raw.columns]
    if missing:
        raise CurveError(f"missing LCDB column(s) {missing}; columns present: "
                         f"{list(map(str, raw.columns))}")
    dataset = pd.to_numeric(raw["openmlid"], errors="raise").astype("int64")
    learner = raw["learner"].astype("category")
    short = learner.cat.rename_categories(
        [str(c).rsplit(".", 1)[-1] for c in learner.cat.categories])
    outer = raw["outer_seed"].astype("int64")
    inner = raw["inner_seed"].astype("int64")
    tokens = pd.to_numeric(raw["size_train"]).astype("float64")
    order = np.lexsort((tokens.to_numpy(), inner.to_numpy(), outer.to_numpy(),
                        learner.cat.codes.to_numpy(), dataset.to_numpy()))
    curve_id = _labels(lambda d, l, o, i: f"lcdb/{d}/{l}/{o}/{i}", dataset, short, outer, inner)
    frame = pd.DataFrame({
        "curve_id": curve_id, "run_id": _labels(lambda d: f"lcdb/{d}", dataset),
        "task": _labels(lambda d: (names or {}).get(int(d), f"openml-{d}"), dataset),
        "metric": "accuracy", "direction": "maximize", "tokens": tokens,
        "value": pd.to_numeric(raw["score_valid"]).astype("float64"),
        "dataset": dataset, "learner": learner, "outer_seed": outer, "inner_seed": inner,
    })
    if (np.diff(order) == 1).all():  # LCDB ships sorted; skip the copy
        return frame.reset_index(drop=True)
    return frame.take(order).reset_index(drop=True)


def _labels(label: Any, *keys: pd.Series) -> pd.Categorical:
    """``label(*key)`` per row, computed once per distinct key (fast on millions of rows)."""
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    levels = []
    for key in keys:  # one integer per row: mixed-radix code of the keys' own codes
        codes, uniques = pd.factorize(key, sort=False)
        combined = combined * len(uniques) + codes
        levels.append(np.asarray(uniques, dtype=object))
    codes, firsts = pd.factorize(combined, sort=False)
    texts = []
    for code in firsts:
        parts = []
        for level in reversed(levels):
            code, at = divmod(int(code), len(level))
            parts.append(level[at])
        texts.append(label(*reversed(parts)))
    text_codes, categories = pd.factorize(pd.Index(texts, dtype=object))  # labels may repeat
    return pd.Categorical.from_codes(text_codes[codes], categories=categories)
