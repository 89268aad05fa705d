"""``CurveSet``: an ordered collection of curves; builds and writes the long curve table.

``CurveSet.from_frame`` is the one gate every reader passes: it names the file, curve and row
of the first cell that breaks a rule (a number that is not a number: text, true/false, a
date; an empty ``curve_id``; a direction that changes within a curve; a share of examples out
of its range, ``bounded_rule``) and keeps per-curve metadata writable: a column whose values
mix kinds (a number in one curve, text in another) or nest (objects, lists) is stored as
text, which ``CurveSet.warnings`` says.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import CurveError, ParameterError
from .atomic import atomic_path
from .schema import (BOUNDED, CURVE_COLUMNS, DIRECTIONS, MAXIMIZE, ON_ERROR, POINT_COLUMNS,
                     REQUIRED_COLUMNS, Curve, bounded_breaks, bounded_message,
                     declared_unbounded, is_bounded_metric)

log = logging.getLogger(__name__)

_TIMES = (datetime.date, datetime.time, datetime.timedelta, np.datetime64, np.timedelta64)
_NOT_NUMBERS = (bool, np.bool_, complex, np.complexfloating, bytes, *_TIMES)
_CONTAINERS = (dict, list, tuple, set, np.ndarray)


def numeric_cells(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(numbers, bad)``: the cells as float64 (NaN where missing or bad) and where a cell
    holds something that is not a number: text, true/false, a date or duration, a complex
    number (none of which ``pd.to_numeric`` should turn into a count)."""
    dtype = raw.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype) or \
            pd.api.types.is_timedelta64_dtype(dtype) or pd.api.types.is_complex_dtype(dtype):
        return np.full(len(raw), np.nan), np.array(raw.notna(), dtype=bool)
    odd = np.zeros(len(raw), dtype=bool)
    if dtype == object:
        odd = raw.map(lambda v: isinstance(v, _NOT_NUMBERS + _CONTAINERS)).to_numpy(dtype=bool)
        raw_numbers = raw.where(~odd) if odd.any() else raw
    else:
        raw_numbers = raw
    numbers = pd.to_numeric(raw_numbers, errors="coerce")
    bad = odd | np.array(numbers.isna() & raw.notna(), dtype=bool)
    return np.array(numbers, dtype=np.float64), bad


def cell_rule(column: str, value: Any) -> str:
    """The rule a non-number cell of ``column`` breaks, saying what it holds instead."""
    value = value.item() if isinstance(value, np.generic) else value
    kind = ("true/false is not a measurement" if isinstance(value, (bool, np.bool_)) else
            "a date or duration is not a count" if isinstance(value, _TIMES) else
            "a complex number" if isinstance(value, (complex, np.complexfloating)) else None)
    return f"{column} must be a number, got {value!r}" + (f" ({kind})" if kind else "")


class CurveSet(Sequence[Curve]):
    """An ordered collection of curves with unique ids; reads and writes the curve table.

    Example:
        >>> cs = read_curves("data/sample_curves.parquet")  # doctest: +SKIP
        >>> len(cs), cs[0].curve_id  # doctest: +SKIP
    """

    def __init__(self, curves: Iterable[Curve] = (), *, dropped: Sequence[str] = (),
                 warnings: Sequence[str] = ()):
        self._curves = list(curves)
        self._index: dict[str, int] | None = None
        self.dropped = list(dropped)
        self.warnings = list(warnings)  # what a reader changed or left out, in words
        ids = [c.curve_id for c in self._curves]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            duplicate = next(i for i in ids if i in seen or seen.add(i))
            raise CurveError("curve_id must be unique within a curve set", curve=duplicate)

    def __len__(self) -> int:
        return len(self._curves)

    def __iter__(self) -> Iterator[Curve]:
        return iter(self._curves)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            if self._index is None:
                self._index = {c.curve_id: i for i, c in enumerate(self._curves)}
            if key not in self._index:
                raise KeyError(f"no curve {key!r} in this set of {len(self)} curves")
            return self._curves[self._index[key]]
        if isinstance(key, slice):
            return CurveSet(self._curves[key])
        return self._curves[key]

    def __repr__(self) -> str:
        return f"CurveSet({len(self)} curves, {self.n_points} points)"

    @property
    def ids(self) -> list[str]:
        return [c.curve_id for c in self._curves]

    @property
    def n_points(self) -> int:
        return sum(len(c) for c in self._curves)

    def filter(self, keep: Callable[[Curve], bool]) -> CurveSet:
        return CurveSet(c for c in self._curves if keep(c))

    def group_key(self, curve: Curve) -> str:
        """The CV group of a curve: its run, else its task, else itself."""
        return curve.run_id or curve.task or curve.curve_id

    def groups(self, by: str = "run_id") -> dict[str, CurveSet]:
        """Split into curve sets by ``run_id`` (default), ``task`` or ``metric``."""
        if by not in CURVE_COLUMNS:
            raise ParameterError(f"by must be one of {CURVE_COLUMNS}, got by={by!r}")
        out: dict[str, list[Curve]] = {}
        for c in self._curves:
            key = getattr(c, by) or (self.group_key(c) if by == "run_id" else "")
            out.setdefault(str(key), []).append(c)
        return {k: CurveSet(v) for k, v in out.items()}

    @staticmethod
    def concat(sets: Iterable[CurveSet]) -> CurveSet:
        return CurveSet(c for s in sets for c in s)

    # --- the table ---------------------------------------------------------------------
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, source: str | None = None,
                   on_error: str = "fail", tokens_column: str = "tokens",
                   budget_column: str = "budget", rows: Sequence[int] | None = None) -> CurveSet:
        """Validate a long table (one row per point) and build the curves.

        Args:
            frame: the table, rows of one curve in observation order.
            source: file name used in error messages.
            on_error: ``fail`` raises on the first bad curve; ``skip`` drops bad curves and
                lists why in ``CurveSet.dropped``.
            tokens_column: the cost column (e.g. ``step`` for logs without token counts).
            budget_column: the planned-total column (e.g. ``total_steps``).
            rows: the row number to report in errors for each row of ``frame`` (readers
                that reshape a file pass the file's own row numbers); default: positions.
        """
        return _TableBuilder(frame, source, on_error, tokens_column, budget_column,
                             rows).build()

    def to_frame(self) -> pd.DataFrame:
        """The long table: one row per point, curve attributes repeated, metadata as columns."""
        lengths = np.fromiter((len(c) for c in self._curves), dtype=np.int64, count=len(self))
        rows = np.repeat(np.arange(len(self)), lengths)

        def repeat(values: list, name: str = "") -> pd.Series:
            # Tidy the per-curve values once, then repeat them per point (fast on big sets).
            tidy = _tidy_object_column(pd.Series(values, dtype=object, name=name))
            return tidy.take(rows).reset_index(drop=True)

        columns: dict[str, Any] = {
            "curve_id": repeat(self.ids),
            "tokens": np.concatenate([c.tokens for c in self._curves]) if len(self) else [],
            "value": np.concatenate([c.values for c in self._curves]) if len(self) else [],
        }
        for name in ("run_id", "task", "metric", "direction"):
            columns[name] = repeat([getattr(c, name) for c in self._curves])
        columns["budget"] = np.repeat([c.budget for c in self._curves], lengths).astype(float)
        meta_keys = sorted({k for c in self._curves for k in c.meta})
        for key in meta_keys:
            columns[key] = repeat([c.meta.get(key) for c in self._curves], key)
        return pd.DataFrame(columns)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the long table to Parquet, CSV or JSONL (by suffix), atomically."""
        path = Path(path)
        frame = self.to_frame()
        writers = {".parquet": lambda f, p: f.to_parquet(p, index=False),
                   ".csv": lambda f, p: f.to_csv(p, index=False),
                   ".jsonl": lambda f, p: f.to_json(p, orient="records", lines=True)}
        if path.suffix not in writers:
            raise ParameterError(f"path must end in one of {sorted(writers)}, got {str(path)!r}")
        with atomic_path(path) as tmp:
            writers[path.suffix](frame, tmp)
        return path


def _tidy_object_column(column: pd.Series) -> pd.Series:
    """Keep metadata columns typed and writable: numbers as numbers, text as text; values
    of mixed kinds or nested ones (objects, lists) as text (``_as_text``)."""
    kinds = _kinds(column)
    if "nested" not in kinds:
        converted = pd.to_numeric(column, errors="coerce")
        if converted.notna().sum() == column.notna().sum() and column.notna().any():
            return converted
    if len(kinds) > 1 or "nested" in kinds:
        log.warning("metadata column %r holds %s values; written as text", column.name,
                    " and ".join(sorted(kinds)))
        return _as_texts(column).astype("string")
    return column.astype("string") if column.map(lambda v: v is None or isinstance(v, str)).all() else column


_ONE_KIND = {"string": "text", "integer": "number", "floating": "number",
             "mixed-integer-float": "number", "boolean": "true/false", "empty": None}


def _kinds(column: pd.Series) -> set[str]:
    """The kinds of the present values of an object column: number, text, true/false,
    nested (objects, lists) or a type name."""
    inferred = pd.api.types.infer_dtype(column, skipna=True)
    if inferred in _ONE_KIND:  # pandas tells a one-kind column apart quickly
        return {_ONE_KIND[inferred]} - {None}

    def kind(value: Any) -> str:
        return ("true/false" if isinstance(value, (bool, np.bool_)) else
                "number" if isinstance(value, (int, float, np.number)) else
                "text" if isinstance(value, str) else
                "nested" if isinstance(value, _CONTAINERS) else type(value).__name__)
    return {kind(v) for v in column[_present(column)]}


def _present(column: pd.Series) -> np.ndarray:
    return column.map(lambda v: isinstance(v, _CONTAINERS) or not pd.isna(v)).to_numpy(dtype=bool)


def _as_texts(column: pd.Series) -> pd.Series:
    """Each present value as text: nested values as JSON (sorted keys), others by ``str``;
    ``CurveError`` if a value nests deeper than Python can write."""
    def text(value: Any) -> str:
        if not isinstance(value, _CONTAINERS):
            return str(value)
        try:
            try:
                return json.dumps(value, sort_keys=True, default=str)
            except TypeError:  # keys of mixed types cannot be sorted
                return json.dumps(value, default=str)
        except (RecursionError, ValueError):
            raise CurveError(f"metadata column {column.name!r} nests too deep to keep "
                             f"(even as text); flatten it") from None
    present = _present(column)
    return pd.Series([text(v) if p else None for v, p in zip(column, present)],
                     index=column.index, dtype=object, name=column.name)


class _TableBuilder:
    """Vectorised validation of a long table and construction of its curves."""

    def __init__(self, frame: pd.DataFrame, source: str | None, on_error: str,
                 tokens_column: str, budget_column: str, rows: Sequence[int] | None = None):
        if on_error not in ON_ERROR:
            raise ParameterError(f"on_error must be one of {ON_ERROR}, got on_error={on_error!r}")
        self.source, self.on_error = source, on_error
        self.frame = frame.reset_index(drop=True)
        self.tokens_column, self.budget_column = tokens_column, budget_column
        self.problems: dict[int, tuple[int, str]] = {}  # curve code -> (row, rule)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.warnings: list[str] = []

    def fail(self, rule: str, *, curve: str | None = None, row: int | None = None) -> CurveError:
        if row is not None and self.rows is not None:
            row = int(self.rows[row])
        return CurveError(rule, source=self.source, curve=curve, row=row)

    def build(self) -> CurveSet:
        frame = self.frame
        required = ("curve_id", self.tokens_column, "value")
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise self.fail(f"missing required column(s) {missing}; columns present: "
                            f"{list(map(str, frame.columns))}")
        if len(frame) == 0:
            raise self.fail("the table has no rows (an empty curve table)")
        ids = frame["curve_id"]
        if ids.isna().any():
            row = int(np.argmax(ids.isna().to_numpy()))
            raise self.fail("curve_id must not be empty", row=row)
        if isinstance(ids.dtype, pd.CategoricalDtype):  # factorize the codes, not 1 string a row
            self.codes, names = pd.factorize(ids, sort=False)
            names = [str(n) for n in names]
        else:
            self.codes, names = pd.factorize(ids.astype(str), sort=False)
        self.names = np.asarray(names, dtype=object)  # indexing an Index per curve is slow
        blank = [code for code, name in enumerate(self.names) if not str(name).strip()]
        if blank:
            row = int(np.argmax(self.codes == blank[0]))
            raise self.fail(f"curve_id must not be empty, got {self.names[blank[0]]!r}", row=row)
        self.order = np.argsort(self.codes, kind="stable")
        self.sorted_codes = self.codes[self.order]
        self.tokens = self._numeric(self.tokens_column)[self.order]
        self.values = self._numeric("value")[self.order]
        self.starts = np.flatnonzero(np.r_[True, np.diff(self.sorted_codes) != 0])
        self.unbounded = self._declared_unbounded()
        self._check_points()
        attrs = self._curve_attributes()
        return self._assemble(attrs)

    def _numeric(self, column: str) -> np.ndarray:
        raw = self.frame[column]
        numbers, bad = numeric_cells(raw)
        rows = np.flatnonzero(bad)
        for row in rows[:1] if self.on_error == "fail" else rows:
            self._record(self.codes[row], int(row), cell_rule(column, raw.iloc[row]))
        return numbers

    def _declared_unbounded(self) -> np.ndarray:
        """Per curve: whether its ``bounded`` column declares its metric unbounded."""
        if BOUNDED not in self.frame.columns:
            return np.zeros(len(self.starts), dtype=bool)
        return np.array([declared_unbounded({BOUNDED: v}) for v in self._first_rows(BOUNDED)],
                        dtype=bool)

    def _record(self, code: int, row: int, rule: str) -> None:
        if self.on_error == "fail":
            raise self.fail(rule, curve=str(self.names[code]), row=int(row))
        if code not in self.problems or row < self.problems[code][0]:
            self.problems[code] = (int(row), rule)

    def _flag(self, bad_sorted: np.ndarray, rule: Callable[[int], str]) -> None:
        """Record a rule broken at the sorted positions where ``bad_sorted`` is true."""
        if not bad_sorted.any():
            return
        positions = np.flatnonzero(bad_sorted)
        rows = self.order[positions]
        first = positions[np.argsort(rows, kind="stable")]
        if self.on_error == "fail":
            first = first[:1]
        for pos in first:
            self._record(int(self.sorted_codes[pos]), int(self.order[pos]), rule(int(pos)))

    def _check_points(self) -> None:
        t, v = self.tokens, self.values
        col = self.tokens_column
        self._flag(~np.isfinite(t), lambda p: f"{col} must be finite, got {float(t[p])!r}")
        self._flag(t < 0, lambda p: f"{col} must be >= 0, got {float(t[p])!r}")
        self._flag(~np.isfinite(v), lambda p: f"value must be finite (got {float(v[p])!r})")
        same_curve = np.r_[False, self.sorted_codes[1:] == self.sorted_codes[:-1]]
        with np.errstate(invalid="ignore"):
            step = np.r_[np.inf, np.diff(t)]
        self._flag(same_curve & (step == 0),
                   lambda p: f"duplicate point: {col} {float(t[p])!r} appears twice in the curve")
        self._flag(same_curve & (step < 0),
                   lambda p: f"{col} must strictly increase within a curve, got {float(t[p - 1])!r} then {float(t[p])!r}")

    def _first_rows(self, column: str) -> np.ndarray:
        return self.frame[column].iloc[self.order[self.starts]].to_numpy()

    def _curve_attributes(self) -> dict[str, np.ndarray]:
        n = len(self.starts)
        attrs: dict[str, np.ndarray] = {}
        for name in ("run_id", "task", "metric"):
            attrs[name] = (self._first_rows(name) if name in self.frame.columns
                           else np.full(n, None, dtype=object))
        if "direction" in self.frame.columns:
            direction = self._directions()
            for code in np.flatnonzero(~direction.isin(DIRECTIONS).to_numpy()):
                self._record(code, int(self.order[self.starts[code]]),
                             f"direction must be one of {DIRECTIONS}, got {direction[code]!r}")
            attrs["direction"] = direction.to_numpy(dtype=object)
        else:
            attrs["direction"] = np.full(n, MAXIMIZE, dtype=object)
        ends = np.r_[self.starts[1:], len(self.tokens)] - 1
        last = self.tokens[ends]
        if self.budget_column in self.frame.columns:
            firsts = pd.Series(self._first_rows(self.budget_column))
            budget, bad = numeric_cells(firsts)
            for code in np.flatnonzero(bad):
                self._record(int(code), int(self.order[self.starts[code]]),
                             cell_rule(self.budget_column, firsts[code]))
            budget = np.where(np.isnan(budget), last, budget)
            for code in np.flatnonzero(~(budget >= last) | ~np.isfinite(budget)):
                self._record(code, int(self.order[ends[code]]),
                             f"{self.budget_column} must be finite and >= the last "
                             f"{self.tokens_column} ({float(last[code])!r}), got {float(budget[code])!r}")
        else:
            budget = last
        attrs["budget"] = budget
        self._check_bounds(attrs)
        self._check_scales(attrs)
        return attrs

    def _directions(self) -> pd.Series:
        """Per curve, its first given direction (default maximize); a different one on a later
        row of the same curve is an error."""
        given = self.frame["direction"].iloc[self.order].reset_index(drop=True)
        text = given.astype("string").str.strip().str.lower()
        first = text.groupby(self.sorted_codes).first().reindex(range(len(self.starts)))
        per_row = first.to_numpy(dtype=object)[self.sorted_codes]
        conflict = (text.notna() & (text != per_row)).to_numpy(dtype=bool)
        self._flag(conflict, lambda p: f"direction must be the same on every row of a curve, "
                                       f"got {per_row[p]!r} then {text[p]!r}")
        return first.fillna(MAXIMIZE).astype(object).reset_index(drop=True)

    def _bounded(self, attrs: dict[str, np.ndarray]) -> np.ndarray:
        """Per curve: a share of examples (``is_bounded_metric``) not declared unbounded."""
        metrics = pd.Series(attrs["metric"]).astype("string").str.lower().fillna("")
        names = [m for m in metrics.unique() if is_bounded_metric(m)]
        return metrics.isin(names).to_numpy(dtype=bool) & ~self.unbounded

    def _check_bounds(self, attrs: dict[str, np.ndarray]) -> None:
        """A share of examples (accuracy, EM, F1) stays in its range (``bounded_breaks``),
        unless its curve declares it unbounded."""
        bounded = self._bounded(attrs)
        if not bounded.any():
            return
        kinds = bounded_breaks(self.values, self.starts)
        kinds[~np.repeat(bounded, np.diff(np.r_[self.starts, len(self.values)]))] = 0
        for kind in (1, 2, 3):
            self._flag(kinds == kind, lambda p, k=kind: (
                f"metric {attrs['metric'][self.sorted_codes[p]]!r}: "
                f"{bounded_message(k, float(self.values[p]))} (a 'bounded' column set to "
                f"false declares a metric unbounded)"))

    def _check_scales(self, attrs: dict[str, np.ndarray]) -> None:
        """A bounded metric (accuracy, EM, F1) must use one scale, 0-1 or 0-100, across curves."""
        metrics = pd.Series(attrs["metric"]).astype("string").str.lower()
        bounded = self._bounded(attrs)
        if not bounded.any():
            return
        peak = np.maximum.reduceat(np.abs(np.nan_to_num(self.values)), self.starts)
        for metric in metrics[bounded].unique():
            codes = np.flatnonzero((metrics == metric).fillna(False).to_numpy(dtype=bool) & bounded)
            percent = peak[codes] > 1.0 + 1e-9
            if percent.any() and not percent.all():
                odd_code = codes[percent][0] if percent.sum() < (~percent).sum() else codes[~percent][0]
                self._record(int(odd_code), int(self.order[self.starts[odd_code]]),
                             f"metric {metric!r} mixes scales: some curves reach values above 1 "
                             f"(0-100) and others stay within 0-1; convert to one scale")

    def _metas(self, extra: list[str]) -> list[dict[str, Any]]:
        """Per-curve metadata from the first row of each curve; missing cells left out."""
        if not extra:
            return [{} for _ in self.starts]
        firsts = self.frame[extra].iloc[self.order[self.starts]].reset_index(drop=True)
        for column in extra:
            if firsts[column].dtype == object:
                firsts[column] = self._uniform(firsts[column])
        missing = firsts.isna().to_numpy().tolist()
        return [{k: v for (k, v), m in zip(row.items(), miss) if not m}
                for row, miss in zip(firsts.to_dict("records"), missing)]

    def _uniform(self, column: pd.Series) -> pd.Series:
        """A metadata column whose values mix kinds across curves or nest, as text (said in
        ``warnings``): Parquet keeps one type per column."""
        kinds = _kinds(column)
        if len(kinds) <= 1 and "nested" not in kinds:
            return column
        where = f"file {self.source}: " if self.source else ""
        self.warnings.append(f"{where}metadata column {column.name!r} holds "
                             f"{' and '.join(sorted(kinds))} values; stored as text")
        log.warning("%s", self.warnings[-1])
        return _as_texts(column)

    def _assemble(self, attrs: dict[str, np.ndarray]) -> CurveSet:
        known = {*REQUIRED_COLUMNS, *POINT_COLUMNS, self.tokens_column, *CURVE_COLUMNS,
                 self.budget_column}
        extra = [c for c in self.frame.columns if c not in known]
        metas = self._metas(extra)
        run_ids, tasks, metrics = (_texts(attrs[k]) for k in ("run_id", "task", "metric"))
        directions, budgets = attrs["direction"].tolist(), attrs["budget"].tolist()
        ends = np.r_[self.starts[1:], len(self.tokens)]
        curves, dropped = [], []
        # Each curve's arrays are views of the builder's own sorted arrays (no copy per curve).
        for code, (start, end) in enumerate(zip(self.starts.tolist(), ends.tolist())):
            name = str(self.names[code])
            if code in self.problems:
                row, rule = self.problems[code]
                dropped.append(str(self.fail(rule, curve=name, row=row)))
                continue
            curves.append(Curve._trusted(
                name, self.tokens[start:end], self.values[start:end], str(directions[code]),
                float(budgets[code]), run_ids[code], tasks[code], metrics[code], metas[code]))
        if not curves:
            raise self.fail(f"no valid curve left after skipping {len(dropped)} bad ones; "
                            f"first problem: {dropped[0] if dropped else 'none'}")
        return CurveSet(curves, dropped=dropped, warnings=self.warnings)


def _texts(values: np.ndarray) -> list[str | None]:
    """Per-curve text attributes: ``None`` where missing, else ``str``."""
    missing = pd.isna(values)
    return [None if m else str(v) for v, m in zip(values.tolist(), missing.tolist())]
