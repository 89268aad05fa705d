"""The decision log: one JSONL line per decision, one writer, one reader.

Every line (format ``LOG_VERSION``) carries what a later reader needs without guessing: the
time, the run, curve and task ids, the direction, the budget, the observation, the Decision's
fields, the policy and its params, the model version, whether the run is a shadow run and
whether the decision acted. ``DecisionLog`` writes it (the controller and every adapter go
through it); ``read_logs`` reads it back grouped by run, for the governor, the fleet report
and retraining alike. Lines of the first format (no ``version``, no ``direction``) still read:
their direction is inferred once, here, from the logged best-so-far.

The levers beyond stopping (``metastop.adapt``: batch size, freezing) write their changes to
the same file as *event* lines: ``{"kind": "batch_size" | "freeze", "tokens", "step",
"message", "change": {...}}`` with the run's ids. Readers keep them apart from decisions
(``LogRead.events``), so a log with events reads as the same curve as one without.

Example:
    >>> log = DecisionLog("decisions.jsonl", LogContext(run_id="r1", budget=1e9))  # doctest: +SKIP
    >>> log.write(decision, acted=False)  # doctest: +SKIP
    >>> read_logs("decisions.jsonl").runs["r1"].curve()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..curves import DIRECTIONS, MAXIMIZE, MINIMIZE, Curve
from ..errors import CurveError, ParameterError, ReadError
from .decision import Decision, Reason

logger = logging.getLogger(__name__)

LOG_VERSION = 2
EVENT_KINDS = ("batch_size", "freeze")
"""The ``kind`` of event lines: lever changes that are not stop decisions."""
NOT_A_POINT = (Reason.BAD_INPUT, Reason.NON_FINITE)
"""Decisions about input the controller ignored: they are logged but are not curve points."""
MAX_LINE = 1 << 20
"""Lines longer than this many characters are skipped unread (nobody writes them)."""


@dataclass(frozen=True)
class LogContext:
    """What is the same on every line a run writes.

    Attributes:
        run_id: the run (``None``: the curve id stands for it).
        curve_id: the curve within the run.
        task: the task, whose price applies.
        direction: ``maximize`` or ``minimize``.
        budget: the run's planned total tokens.
        policy: the policy's name; params: its settings as plain data.
        model_version: the predictor the policy asks, if any.
        shadow: whether the run is a shadow run (decides and logs, never stops).
    """

    run_id: str | None = None
    curve_id: str = "run"
    task: str | None = None
    direction: str = MAXIMIZE
    budget: float | None = None
    policy: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    shadow: bool = False


class DecisionLog:
    """Appends one line per decision to a JSONL file, flushed at once.

    Writing never raises into a training run: an unwritable file is reported once per
    failure as a warning and the decision stands.

    Args:
        path: the JSONL file (its folder is created).
        context: the run's fixed fields.
    """

    def __init__(self, path: str | os.PathLike, context: LogContext):
        self.path = Path(path)
        self.context = context

    def write(self, decision: Decision, *, acted: bool,
              values: Mapping[str, float] | None = None) -> None:
        """Append ``decision``; ``acted`` says whether it stopped the run; ``values`` are the
        per-task values of a multi-task observation."""
        self._append(line_record(self.context, decision, acted=acted, values=values))

    def write_event(self, kind: str, *, tokens: float, step: int | None, message: str,
                    change: Mapping[str, Any]) -> None:
        """Append one lever change (``kind`` in ``EVENT_KINDS``) with its reason in ``message``."""
        self._append(event_record(self.context, kind, tokens=tokens, step=step,
                                  message=message, change=change))

    def _append(self, record: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str, allow_nan=False) + "\n")
                handle.flush()
        except (OSError, ValueError) as error:
            logger.warning("cannot write decision log %s: %s", self.path, error)


def line_record(context: LogContext, decision: Decision, *, acted: bool,
                values: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The JSON-safe record of one decision, as ``DecisionLog`` writes it."""
    ids = {"run_id": context.run_id, "curve_id": context.curve_id, "task": context.task}
    record = {"version": LOG_VERSION,
              "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
              **{k: None if v is None else str(v) for k, v in ids.items()},
              "direction": context.direction, "budget": _number(context.budget),
              **decision.to_dict(), "params": _plain(context.params),
              "model_version": context.model_version, "shadow": bool(context.shadow),
              "acted": bool(acted)}
    if values is not None:
        record["values"] = {str(k): _number(v) for k, v in values.items()}
    if context.policy is not None:
        record["policy"] = context.policy
    return record


def event_record(context: LogContext, kind: str, *, tokens: float, step: int | None,
                 message: str, change: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe record of one lever change, as ``DecisionLog.write_event`` writes it.

    Raises:
        ParameterError: ``kind`` is not one of ``EVENT_KINDS``.
    """
    if kind not in EVENT_KINDS:
        raise ParameterError(f"event kind must be one of {EVENT_KINDS}, got {kind!r}")
    return {"version": LOG_VERSION, "kind": kind,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "run_id": None if context.run_id is None else str(context.run_id),
            "curve_id": str(context.curve_id),
            "task": None if context.task is None else str(context.task),
            "tokens": _number(tokens), "step": None if step is None else int(step),
            "message": str(message), "change": _plain(change),
            "shadow": bool(context.shadow)}


@dataclass(frozen=True)
class LogEvent:
    """One lever change read back from a log (see ``EVENT_KINDS``).

    Attributes:
        kind: ``batch_size`` or ``freeze``.
        run_id: the run key, resolved as for decisions.
        tokens, step: where in the run it happened (``step``: optimizer steps, if logged).
        message: the reason, in words.
        change: what changed, as logged (e.g. ``{"accumulation": [4, 8]}``).
        where: ``file:line``.
    """

    kind: str
    run_id: str
    tokens: float | None
    step: int | None
    message: str
    change: Mapping[str, Any]
    where: str


# --- reading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogEntry:
    """One decision read back from a log, with the run's fields resolved.

    Attributes:
        decision: the Decision as logged (its ``stop`` is the policy's verdict, even in shadow).
        run_id: the run key: ``run_id``, else ``curve_id``, else the file name.
        curve_id, task: as logged.
        direction: as logged (first-format lines: ``None``, resolved per run).
        budget: as logged, if it was a positive number.
        shadow, acted: as logged.
        time: Unix seconds, if the line says.
        values: per-task values of a multi-task observation, if any.
        version: the line's format version (1 for lines without one).
        where: ``file:line``.
    """

    decision: Decision
    run_id: str
    curve_id: str | None
    task: str | None
    direction: str | None
    budget: float | None
    shadow: bool
    acted: bool
    time: float | None
    values: Mapping[str, float] | None
    version: int
    where: str

    @property
    def tokens(self) -> float:
        return self.decision.tokens

    @property
    def is_point(self) -> bool:
        """Whether this line is a kept point of the curve (not ignored input)."""
        return self.decision.reason not in NOT_A_POINT and math.isfinite(self.decision.tokens)


@dataclass(frozen=True)
class RunLog:
    """All lines of one run, in file order, and what they say together.

    Attributes:
        run_id: the run key.
        entries: every line read for the run.
        points: the lines that are curve points: ignored input and lines whose tokens do not
            increase (a resumed run's repeated evaluation) are left out.
        direction: as logged, else inferred from the best-so-far (first-format logs).
        budget: the run's budget: the last logged one, never below the last tokens.
    """

    run_id: str
    entries: tuple[LogEntry, ...]
    points: tuple[LogEntry, ...]
    direction: str
    budget: float

    @property
    def task(self) -> str | None:
        return next((e.task for e in self.entries if e.task), None)

    @property
    def shadow(self) -> bool:
        return any(e.shadow for e in self.entries)

    @property
    def stopped(self) -> bool:
        """Whether a decision stopped the run before its budget."""
        return any(e.acted and e.decision.early_stop for e in self.points)

    @property
    def would_stop_index(self) -> int | None:
        """The index in ``points`` of the policy's first early stop verdict, if any."""
        return next((i for i, e in enumerate(self.points) if e.decision.early_stop), None)

    @property
    def tokens(self) -> np.ndarray:
        return np.array([e.tokens for e in self.points], dtype=np.float64)

    @property
    def values(self) -> np.ndarray:
        return np.array([e.decision.value for e in self.points], dtype=np.float64)

    def best_so_far(self) -> np.ndarray:
        """The best value up to each point (metric units, direction-aware)."""
        sign = -1.0 if self.direction == MINIMIZE else 1.0
        scores = np.where(np.isfinite(self.values), self.values * sign, -np.inf)
        return np.maximum.accumulate(scores) * sign

    def curve(self) -> Curve:
        """The run's curve from its points.

        Raises:
            CurveError: no point with a finite value, or points that break the schema.
        """
        keep = np.isfinite(self.values)
        if not keep.any():
            raise CurveError("the decision log holds no finite value", curve=self.run_id)
        first = self.points[0]
        return Curve(first.curve_id or self.run_id, self.tokens[keep], self.values[keep],
                     direction=self.direction, budget=self.budget, run_id=self.run_id,
                     task=self.task, meta={"source": "decision_log"})


@dataclass(frozen=True)
class LogRead:
    """What ``read_logs`` found: the runs by key, one ``file:line: reason`` per skipped line,
    and the lever changes (event lines) in file order."""

    runs: dict[str, RunLog]
    skipped: tuple[str, ...]
    events: tuple[LogEvent, ...] = ()


def read_logs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> LogRead:
    """Read decision logs (JSONL files, or folders of ``*.jsonl``), grouped by run.

    Lines that are not decision records (torn last lines, garbage) are skipped and counted.

    Raises:
        ReadError: a named path does not exist.
    """
    grouped: dict[str, list[LogEntry]] = {}
    skipped: list[str] = []
    events: list[LogEvent] = []
    for file in log_files(paths):
        for number, line in enumerate(_lines(file), 1):
            entry, problem = parse_line(line, f"{file}:{number}", file.stem)
            if isinstance(entry, LogEvent):
                events.append(entry)
            elif problem is not None:
                if line.strip():
                    skipped.append(f"{file}:{number}: {problem}")
            else:
                grouped.setdefault(entry.run_id, []).append(entry)
    if skipped:
        logger.warning("skipped %d decision-log line(s) that are not decision records",
                       len(skipped))
    runs = {key: run_log(key, entries) for key, entries in grouped.items()}
    return LogRead({k: r for k, r in runs.items() if r is not None}, tuple(skipped),
                   tuple(events))


def run_log(run_id: str, entries: list[LogEntry]) -> RunLog | None:
    """One run's ``RunLog``; ``None`` when none of its lines is a curve point."""
    points: list[LogEntry] = []
    for entry in entries:
        if entry.is_point and (not points or entry.tokens > points[-1].tokens):
            points.append(entry)
    if not points:
        return None
    budgets = [e.budget for e in entries if e.budget is not None]
    budget = max(budgets[-1] if budgets else 0.0, points[-1].tokens) or 1.0
    return RunLog(run_id, tuple(entries), tuple(points), _direction(points), float(budget))


def run_from_records(records: Iterable[Mapping[str, Any]], *, where: str = "records") -> RunLog:
    """A ``RunLog`` from records already parsed (e.g. lines kept elsewhere), in order.

    Raises:
        ParameterError: a record is not a decision record, or none is a curve point.
    """
    entries = []
    for number, record in enumerate(records, 1):
        entry, problem = parse_line(json.dumps(record, default=str), f"{where}:{number}", where)
        if problem is not None:
            raise ParameterError(f"{where}, record {number}: {problem}")
        if isinstance(entry, LogEntry):
            entries.append(entry)
    run = run_log(entries[0].run_id, entries) if entries else None
    if run is None:
        raise ParameterError(f"{where}: no record is a curve point (got {len(entries)} records)")
    return run


def log_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, with each folder replaced by its ``*.jsonl`` files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.rglob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise ReadError(f"file {path}: does not exist")
    return files


def parse_line(line: str, where: str,
               fallback_run: str) -> tuple[LogEntry | LogEvent | None, str | None]:
    """One line as a ``LogEntry`` (or a ``LogEvent``), or the reason it is neither."""
    if not line.strip():
        return None, "empty line"
    if len(line) > MAX_LINE:
        return None, f"line longer than {MAX_LINE} characters"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as error:
        return None, f"not JSON ({getattr(error, 'msg', 'nested too deep')}); truncated line?"
    if not isinstance(record, dict):
        return None, f"not a JSON object, got {type(record).__name__}"
    try:
        if "kind" in record:
            return _event(record, where, fallback_run), None
        return _entry(record, where, fallback_run), None
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        return None, f"not a decision record ({error})"


def log_time(value: Any) -> float | None:
    """A log line's ``time`` as Unix seconds (accepts numbers and ISO 8601 text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _entry(record: dict[str, Any], where: str, fallback_run: str) -> LogEntry:
    tokens = _number(record.get("tokens"))
    if tokens is None:
        raise ValueError(f"tokens must be a finite number, got {_short(record.get('tokens'))}")
    if not isinstance(record.get("reason"), str):
        raise ValueError(f"reason must be text, got {_short(record.get('reason'))}")
    decision = Decision(stop=record.get("stop") is True, reason=Reason(record["reason"]),
                        message=_text(record.get("message")) or "", tokens=tokens,
                        value=_number(record.get("value"), math.nan),
                        best=_number(record.get("best"), math.nan),
                        policy=_text(record.get("policy")))
    run = _text(record.get("run_id")) or _text(record.get("curve_id")) or fallback_run
    direction = record.get("direction")
    budget = _number(record.get("budget"))
    return LogEntry(decision=decision, run_id=run, curve_id=_text(record.get("curve_id")),
                    task=_text(record.get("task")),
                    direction=direction if direction in DIRECTIONS else None,
                    budget=budget if budget is not None and budget > 0 else None,
                    shadow=record.get("shadow") is True, acted=record.get("acted") is True,
                    time=log_time(record.get("time")), values=_values(record.get("values")),
                    version=int(_number(record.get("version"), 1)), where=where)


def _event(record: dict[str, Any], where: str, fallback_run: str) -> LogEvent:
    kind = record.get("kind")
    if kind not in EVENT_KINDS:
        raise ValueError(f"kind must be one of {EVENT_KINDS}, got {_short(kind)}")
    change = record.get("change")
    step = record.get("step")
    return LogEvent(kind=kind,
                    run_id=_text(record.get("run_id")) or _text(record.get("curve_id"))
                    or fallback_run,
                    tokens=_number(record.get("tokens")),
                    step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                    message=_text(record.get("message")) or "",
                    change=change if isinstance(change, dict) else {}, where=where)


def _direction(points: list[LogEntry]) -> str:
    """As logged; for first-format lines, ``minimize`` when the logged best-so-far follows the
    running minimum of the values and not their running maximum."""
    logged = next((e.direction for e in points if e.direction is not None), None)
    if logged is not None:
        return logged
    values = np.array([e.decision.value for e in points])
    best = np.array([e.decision.best for e in points])
    if (np.isfinite(best).all() and np.isfinite(values).all()
            and np.allclose(best, np.minimum.accumulate(values))
            and not np.allclose(best, np.maximum.accumulate(values))):
        return MINIMIZE
    return MAXIMIZE


def _lines(file: Path) -> Iterable[str]:
    with open(file, encoding="utf-8", errors="replace") as handle:
        yield from handle


def _number(value: Any, default: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _values(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): v for k, v in ((k, _number(v, math.nan)) for k, v in value.items())}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as JSON-safe plain data (anything else becomes its text)."""
    return json.loads(json.dumps(dict(params), default=str)) if params else {}


__all__ = ["EVENT_KINDS", "LOG_VERSION", "DecisionLog", "LogContext", "LogEntry", "LogEvent",
           "LogRead", "RunLog", "event_record", "line_record", "log_files", "log_time",
           "parse_line", "read_logs", "run_from_records", "run_log"]
