"""The history store: finished curves with their run metadata, addressed by a database URL.

As in Optuna's storage, a store is named by a SQLAlchemy URL: an embedded SQLite file is
the default (``sqlite:///history.db``) and a PostgreSQL server serves a team
(``postgresql://user:password@host/db``). ``HistoryStore(None)`` reads the URL from the
``METASTOP_HISTORY`` environment variable, else uses the default.

Layout (two tables, SQLAlchemy Core)::

    metastop_meta     key -> value; holds schema_version
    metastop_curves   one row per curve: curve_id (primary key), run_id, task, metric,
                      direction, budget, n_points, tokens and values (little-endian float64
                      bytes, so they read back bit for bit), meta (JSON), source, added_at

Each ``add`` is one transaction that inserts or replaces curves by ``curve_id``: a writer
killed at any moment leaves every curve it committed and none of the batch it was writing.
SQLite runs in WAL mode, takes its write lock up front (``BEGIN IMMEDIATE``) and waits up to
``SQLITE_BUSY_TIMEOUT_MS`` for it, so several processes can write at once and lose nothing.

Example:
    >>> with HistoryStore("sqlite:///history.db") as store:  # doctest: +SKIP
    ...     store.add(read_curves("curves.parquet"), source="curves.parquet")
    ...     context = store.context_for(new_curve)            # same task, other runs
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .curveset import CurveSet
from .schema import Curve
from ..errors import CurveError, MetastopError

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///history.db"
ENV_URL = "METASTOP_HISTORY"
SCHEMA_VERSION = 1
SQLITE_BUSY_TIMEOUT_MS = 30_000
BACKENDS = ("sqlite", "postgresql")
_PG_DRIVERS = ("psycopg", "psycopg2")  # SQLAlchemy 2.1 defaults to psycopg, 2.0 to psycopg2

_FLOATS = np.dtype("<f8")
_SCHEMA_KEY = "schema_version"
_SCHEMA_LOCK = 0x6D657461  # PostgreSQL advisory lock taken while tables are created
_WRITE = "metastop_write"  # execution option: this transaction writes
_PASSWORD = re.compile(r"(://[^:/@]*:)[^/?#]*@")  # user:password@ up to the host's last @

_tables = sa.MetaData()
_META = sa.Table(
    "metastop_meta", _tables,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
_CURVES = sa.Table(
    "metastop_curves", _tables,
    sa.Column("curve_id", sa.Text, primary_key=True),
    sa.Column("run_id", sa.Text),
    sa.Column("task", sa.Text),
    sa.Column("metric", sa.Text),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("budget", sa.Double, nullable=False),
    sa.Column("n_points", sa.Integer, nullable=False),
    sa.Column("tokens", sa.LargeBinary, nullable=False),
    sa.Column("values", sa.LargeBinary, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("metastop_curves_task_metric", "task", "metric"),
)
# A curve's run: its run_id, else the curve itself (the CV group rule of CurveSet).
_RUN = sa.func.coalesce(_CURVES.c.run_id, _CURVES.c.curve_id)


class HistoryError(MetastopError):
    """The history store cannot be opened, read or written.

    Args:
        rule: what went wrong, in words.
        url: the store's URL; any password is masked in the message.

    Example:
        >>> str(HistoryError("cannot open", url="postgresql://me:secret@db/h"))
        'history postgresql://me:***@db/h: cannot open'
    """

    def __init__(self, rule: str, *, url: str):
        self.rule = rule
        self.url = mask_url(url)
        super().__init__(f"history {self.url}: {rule}")

    def __reduce__(self) -> tuple:
        return _history_error, (self.rule, self.url)


def _history_error(rule: str, url: str) -> HistoryError:
    """Rebuild a ``HistoryError`` after pickling (it crosses process boundaries)."""
    return HistoryError(rule, url=url)


@dataclass(frozen=True)
class TaskSummary:
    """How many runs and curves the store holds for one (task, metric).

    Example:
        >>> TaskSummary("squad", "em", n_runs=3, n_curves=4).to_dict()["n_runs"]
        3
    """

    task: str | None
    metric: str | None
    n_runs: int
    n_curves: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_url(url: str | None) -> str:
    """The store URL to use: ``url`` if given, else ``$METASTOP_HISTORY``, else the default.

    Example:
        >>> resolve_url("sqlite:///team.db")
        'sqlite:///team.db'
    """
    if url is not None:
        return url
    return os.environ.get(ENV_URL) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and display.

    Example:
        >>> mask_url("postgresql://me:secret@db.example/history")
        'postgresql://me:***@db.example/history'
    """
    return _PASSWORD.sub(r"\1***@", url)


class HistoryStore:
    """Finished curves with their run metadata, in SQLite or PostgreSQL.

    Opening creates the tables when they are missing and refuses a store written by a newer
    schema version. The store keeps a connection pool: ``close()`` it, or use ``with``.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://user@host/db``);
            ``None`` reads ``$METASTOP_HISTORY``, else uses ``sqlite:///history.db``.

    Example:
        >>> with HistoryStore("sqlite://") as store:
        ...     store.add([Curve("a/em", tokens=[1.0, 2.0], values=[0.1, 0.2], task="squad",
        ...                      run_id="a")])
        ...     [s.n_curves for s in store.tasks()]
        1
        [1]
    """

    def __init__(self, url: str | None = None):
        self._raw_url = resolve_url(url)
        self.url = mask_url(self._raw_url)
        self._engine = _open_engine(self._raw_url, self.url)
        try:
            with self._guard("cannot open the history store"):
                self._prepare()
        except HistoryError:
            self._engine.dispose()
            raise
        log.debug("opened history %s", self.url)

    def __repr__(self) -> str:
        return f"HistoryStore({self.url!r})"

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections; the store cannot be used afterwards."""
        self._engine.dispose()

    # --- writing ---------------------------------------------------------------------
    def add(self, curves: Iterable[Curve], *, source: str | None = None) -> int:
        """Insert curves, replacing stored ones with the same ``curve_id``, in one transaction.

        Args:
            curves: the curves (a ``CurveSet`` or any iterable of ``Curve``); a later curve
                with the same ``curve_id`` in the same call wins.
            source: where the curves came from (a file name), kept with each row.

        Returns:
            The number of distinct curves written.
        """
        rows = self._rows(curves, source)
        if not rows:
            return 0
        with self._guard("cannot add curves"), self._writing() as conn:
            conn.execute(self._upsert(), rows)
        log.info("added %d curves to history %s", len(rows), self.url)
        return len(rows)

    def _rows(self, curves: Iterable[Curve], source: str | None) -> list[dict[str, Any]]:
        added_at = dt.datetime.now(dt.timezone.utc)
        rows: dict[str, dict[str, Any]] = {}
        for i, curve in enumerate(curves):
            if not isinstance(curve, Curve):
                raise HistoryError(f"curves must hold Curve objects, got {type(curve).__name__} "
                                   f"at position {i}", url=self.url)
            rows[curve.curve_id] = _row(curve, source, added_at, self.url)
        return list(rows.values())

    def _upsert(self) -> sa.Insert:
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(_CURVES)
        replaced = {c.name: insert.excluded[c.name] for c in _CURVES.columns if not c.primary_key}
        return insert.on_conflict_do_update(index_elements=[_CURVES.c.curve_id], set_=replaced)

    # --- reading ---------------------------------------------------------------------
    def curves(self, *, task: str | None = None, metric: str | None = None,
               exclude_run: str | None = None) -> CurveSet:
        """Stored curves, sorted by ``curve_id``, optionally of one task and metric.

        Args:
            task: keep only curves of this task.
            metric: keep only curves of this metric.
            exclude_run: leave out the curves of this run (a curve without ``run_id`` is its
                own run, named by its ``curve_id``).
        """
        return self._read(self._select(task, metric, exclude_run))

    def context_for(self, curve: Curve) -> CurveSet:
        """Finished curves to learn from for ``curve``: same task, other runs.

        Same task, same metric when ``curve.metric`` is set, and a different run
        (``run_id``, else ``curve_id``); never ``curve`` itself. Empty when ``curve.task``
        is ``None``.
        """
        own_run = curve.run_id if curve.run_id is not None else curve.curve_id
        return self.siblings(curve.task, curve.metric, exclude_run=own_run,
                             exclude_curve=curve.curve_id)

    def siblings(self, task: str | None, metric: str | None = None, *,
                 exclude_run: str | None = None, exclude_curve: str | None = None) -> CurveSet:
        """Finished curves of ``task`` (and ``metric`` when set) outside run ``exclude_run``
        and other than ``exclude_curve``: ``context_for`` before the curve exists (a
        controller reads them when it is built, so that no decision waits on the store).
        Empty when ``task`` is ``None``."""
        if task is None:
            return CurveSet()
        query = self._select(task, metric, exclude_run)
        if exclude_curve is not None:
            query = query.where(_CURVES.c.curve_id != exclude_curve)
        return self._read(query)

    def tasks(self) -> list[TaskSummary]:
        """One summary per (task, metric) stored, sorted by task then metric (``None`` last)."""
        query = (sa.select(_CURVES.c.task, _CURVES.c.metric, sa.func.count(sa.distinct(_RUN)),
                           sa.func.count())
                 .group_by(_CURVES.c.task, _CURVES.c.metric))
        with self._guard("cannot read tasks"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        summaries = [TaskSummary(task, metric, int(runs), int(n)) for task, metric, runs, n in rows]
        return sorted(summaries, key=lambda s: (s.task is None, s.task or "",
                                                s.metric is None, s.metric or ""))

    @staticmethod
    def _select(task: str | None, metric: str | None, exclude_run: str | None) -> sa.Select:
        query = sa.select(_CURVES)
        if task is not None:
            query = query.where(_CURVES.c.task == task)
        if metric is not None:
            query = query.where(_CURVES.c.metric == metric)
        if exclude_run is not None:
            query = query.where(_RUN != exclude_run)
        return query

    def _read(self, query: sa.Select) -> CurveSet:
        with self._guard("cannot read curves"), self._engine.connect() as conn:
            rows = [row._mapping for row in conn.execute(query)]
        curves = [_curve(row, self.url) for row in rows]
        return CurveSet(sorted(curves, key=lambda c: c.curve_id))

    # --- connections -------------------------------------------------------------------
    def _prepare(self) -> None:
        """Check the schema version of an existing store, then create missing tables."""
        with self._writing() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            stored = None
            if sa.inspect(conn).has_table(_META.name):
                stored = conn.execute(sa.select(_META.c.value)
                                      .where(_META.c.key == _SCHEMA_KEY)).scalar_one_or_none()
            if stored is not None:
                self._check_version(stored)
            _tables.create_all(conn)
            if stored is None:
                conn.execute(_META.insert().values(key=_SCHEMA_KEY, value=str(SCHEMA_VERSION)))

    def _check_version(self, stored: str) -> None:
        if not stored.strip().isdigit():
            raise HistoryError(f"schema_version in table {_META.name} must be a whole number, "
                               f"got {stored!r}; this is not a metastop history store",
                               url=self.url)
        if int(stored) > SCHEMA_VERSION:
            raise HistoryError(f"the store was written by schema version {int(stored)}, newer than "
                               f"this metastop's version {SCHEMA_VERSION}; upgrade metastop to "
                               f"read it", url=self.url)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """A write transaction (on SQLite it takes the write lock at once: BEGIN IMMEDIATE)."""
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn database errors into a ``HistoryError`` naming the store and the cause."""
        try:
            yield
        except (sa.exc.SQLAlchemyError, ImportError) as error:
            raise HistoryError(f"{what} ({_cause(error)})", url=self.url) from error


def open_history(history: str | HistoryStore | None) -> HistoryStore:
    """A store for ``history``: a store passes through, a URL (or ``None``) is opened.

    A store passed in stays the caller's to close.

    Example:
        >>> store = open_history("sqlite://")
        >>> open_history(store) is store
        True
    """
    return history if isinstance(history, HistoryStore) else HistoryStore(history)


# --- engines ---------------------------------------------------------------------------
def _open_engine(url: str, shown: str) -> sa.Engine:
    """An engine for a supported URL; a bad URL or missing driver raises ``HistoryError``."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise HistoryError("is not a database URL; expected e.g. sqlite:///history.db or "
                           "postgresql://user:password@host/db", url=shown) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise HistoryError(f"the database must be one of {BACKENDS}, got {backend!r}", url=shown)
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    try:
        return _postgresql_engine(parsed)
    except (sa.exc.SQLAlchemyError, ImportError) as error:
        raise HistoryError(f"cannot open the history store ({_cause(error)}); PostgreSQL needs "
                           f"a driver: pip install 'psycopg[binary]'", url=shown) from error


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    engine = sa.create_engine(url)
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL (readers never block the writer), a busy timeout, and our own BEGIN statements."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    write = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _postgresql_engine(url: sa.URL) -> sa.Engine:
    """A bare ``postgresql://`` URL uses whichever driver is installed, psycopg 3 first."""
    if url.drivername == "postgresql":
        installed = [d for d in _PG_DRIVERS if importlib.util.find_spec(d) is not None]
        url = url.set(drivername=f"postgresql+{installed[0]}") if installed else url
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _cause(error: BaseException) -> str:
    """The first line of the driver's own message, without SQLAlchemy's boilerplate."""
    origin = getattr(error, "orig", None) or error
    lines = str(origin).strip().splitlines() or [type(origin).__name__]
    return lines[0]


# --- rows <-> curves -------------------------------------------------------------------
def _row(curve: Curve, source: str | None, added_at: dt.datetime, url: str) -> dict[str, Any]:
    return {
        "curve_id": curve.curve_id, "run_id": curve.run_id, "task": curve.task,
        "metric": curve.metric, "direction": curve.direction, "budget": float(curve.budget),
        "n_points": len(curve), "tokens": curve.tokens.astype(_FLOATS).tobytes(),
        "values": curve.values.astype(_FLOATS).tobytes(), "meta": _meta_json(curve, url),
        "source": source, "added_at": added_at,
    }


def _meta_json(curve: Curve, url: str) -> str:
    bad_keys = [k for k in curve.meta if not isinstance(k, str)]
    if bad_keys:
        raise HistoryError(f"curve {curve.curve_id!r}: meta keys must be text, got "
                           f"{bad_keys[0]!r}", url=url)
    try:
        return json.dumps(dict(curve.meta), default=_plain)
    except TypeError as error:
        raise HistoryError(f"curve {curve.curve_id!r}: meta values must be numbers, text, "
                           f"booleans, dates, lists or mappings ({error})", url=url) from None


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: numpy scalars and arrays; dates as ISO text."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _curve(row: Mapping[str, Any], url: str) -> Curve:
    curve_id = row["curve_id"]
    tokens = np.frombuffer(bytes(row["tokens"]), dtype=_FLOATS)
    values = np.frombuffer(bytes(row["values"]), dtype=_FLOATS)
    if not len(tokens) == len(values) == row["n_points"]:
        raise HistoryError(f"stored curve {curve_id!r} is damaged: n_points={row['n_points']} "
                           f"but {len(tokens)} tokens and {len(values)} values", url=url)
    try:
        return Curve(curve_id, tokens=tokens, values=values, direction=row["direction"],
                     budget=row["budget"], run_id=row["run_id"], task=row["task"],
                     metric=row["metric"], meta=json.loads(row["meta"]))
    except (CurveError, ValueError) as error:
        raise HistoryError(f"stored curve {curve_id!r} is damaged ({error})", url=url) from None
