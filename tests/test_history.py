"""The history store (``metastop.curves.history``) and its CLI, on SQLite and on PostgreSQL.

Every store test runs twice: on an SQLite file and on a real PostgreSQL server that the
session starts itself (``pgserver``, no root, no system packages), one fresh database per test.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from metastop.cli.history import history
from metastop.curves import Curve, CurveSet
from metastop.errors import MetastopError
from metastop.ingest import read_curves
from metastop.curves.history import (DEFAULT_URL, ENV_URL, SCHEMA_VERSION, HistoryError,
                                  HistoryStore, TaskSummary, mask_url, open_history, resolve_url)

pytestmark = pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")  # pgserver's platformdirs
REPO = Path(__file__).resolve().parent.parent
_databases = itertools.count()


# --- servers and stores ------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A PostgreSQL server for the whole session, in a temporary folder; stopped at the end."""
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server
    server.cleanup()


def _postgres_url(server) -> str:
    """A fresh, empty database on ``server``."""
    name = f"history_{os.getpid()}_{next(_databases)}"
    server.psql(f"CREATE DATABASE {name};")
    return sa.make_url(server.get_uri()).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """The URL of a new, empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return _postgres_url(request.getfixturevalue("postgres"))


@pytest.fixture
def store(url):
    with HistoryStore(url) as opened:
        yield opened


def make_curve(curve_id: str, *, run_id: str | None = None, task: str | None = "squad",
               metric: str | None = "em", n: int = 5, seed: int = 0, **meta) -> Curve:
    rng = np.random.default_rng(seed)
    tokens = np.cumsum(rng.uniform(0.1, 3.0, n)) * 1e6 / 3.0
    return Curve(curve_id, tokens=tokens, values=rng.uniform(0.0, 1.0, size=n), direction="maximize",
                 budget=float(tokens[-1]) * 1.7, run_id=run_id, task=task, metric=metric,
                 meta=meta)


def assert_same_curve(got: Curve, want: Curve) -> None:
    assert got.curve_id == want.curve_id
    assert got.tokens.tobytes() == want.tokens.tobytes()  # bit for bit, not approximately
    assert got.values.tobytes() == want.values.tobytes()
    for name in ("direction", "budget", "run_id", "task", "metric"):
        assert getattr(got, name) == getattr(want, name), name
    assert dict(got.meta) == dict(want.meta)


# --- round trip and replace ----------------------------------------------------------------
def test_round_trip_reproduces_every_curve_exactly(store):
    curves = [
        make_curve("a/em", run_id="a", model_size=np.int64(160_000_000), lr=3e-4, optimizer="adamw",
                   tied=True, note=None, schedule=[1, 2.5, "cosine"], nested={"k": [1, 2]}),
        Curve("b/loss", tokens=[0.0, 1 / 3, 1 + 2 ** -52, 2 ** 60],
              values=[-1e-310, 7.25, -3.0, 1e300],
              direction="minimize", budget=2.0 ** 61, run_id=None, task=None, metric=None),
        make_curve("c/em", run_id="c", task="squad", metric=None, n=1),
    ]
    assert store.add(curves, source="curves.parquet") == 3
    stored = store.curves()
    assert stored.ids == ["a/em", "b/loss", "c/em"]
    for got, want in zip(stored, curves):
        assert_same_curve(got, want)
    assert type(stored["a/em"].meta["model_size"]) is int


def test_round_trip_of_a_shipped_curve_table(store):
    curves = read_curves(REPO / "data" / "sample_curves.parquet")
    assert store.add(curves) == len(curves) > 0
    stored = store.curves()
    assert sorted(stored.ids) == sorted(curves.ids)
    for want in curves:
        assert_same_curve(stored[want.curve_id], want)


def test_add_replaces_by_curve_id_and_last_duplicate_wins(store):
    assert store.add([make_curve("a/em", run_id="a", seed=1)]) == 1
    newer = make_curve("a/em", run_id="a2", seed=2, n=8)
    assert store.add([make_curve("a/em", run_id="a", seed=3), newer]) == 1
    (only,) = store.curves()
    assert_same_curve(only, newer)


def test_add_rejects_what_is_not_a_curve(store):
    with pytest.raises(HistoryError, match=r"must hold Curve objects, got dict at position 1"):
        store.add([make_curve("a/em"), {"curve_id": "b"}])
    assert len(store.curves()) == 0  # nothing of the failed call was written


def test_meta_that_json_cannot_hold_is_refused_by_name(store):
    with pytest.raises(HistoryError, match=r"curve 'a/em': meta values must be numbers"):
        store.add([make_curve("a/em", weird=object())])
    with pytest.raises(HistoryError, match=r"meta keys must be text, got 3"):
        store.add([Curve("b", tokens=[1.0], values=[0.0], meta={3: "x"})])


def test_add_of_nothing_writes_nothing(store):
    assert store.add([]) == 0
    assert store.tasks() == []


# --- queries -------------------------------------------------------------------------------
@pytest.fixture
def filled(store):
    store.add([
        make_curve("r1/em", run_id="r1"), make_curve("r1/f1", run_id="r1", metric="f1"),
        make_curve("r2/em", run_id="r2"), make_curve("r3/em", run_id="r3"),
        make_curve("solo/em", run_id=None),
        make_curve("gsm/acc", run_id="g1", task="gsm8k", metric="acc"),
        make_curve("orphan", run_id="o1", task=None),
    ])
    return store


def test_curves_filter_by_task_metric_and_run(filled):
    assert filled.curves(task="squad").ids == ["r1/em", "r1/f1", "r2/em", "r3/em", "solo/em"]
    assert filled.curves(task="squad", metric="f1").ids == ["r1/f1"]
    assert filled.curves(metric="em", exclude_run="r1").ids == ["orphan", "r2/em", "r3/em",
                                                                "solo/em"]
    assert filled.curves(exclude_run="solo/em").ids == [
        "gsm/acc", "orphan", "r1/em", "r1/f1", "r2/em", "r3/em"]
    assert filled.curves(task="no such task").ids == []


def test_context_is_same_task_and_metric_from_other_runs(filled):
    live = make_curve("r1/em-live", run_id="r1")
    assert filled.context_for(live).ids == ["r2/em", "r3/em", "solo/em"]


def test_context_without_metric_takes_every_metric_of_the_task(filled):
    live = make_curve("r2/live", run_id="r2", metric=None)
    assert filled.context_for(live).ids == ["r1/em", "r1/f1", "r3/em", "solo/em"]


def test_context_of_a_curve_without_run_excludes_the_curve_itself(filled):
    assert filled.context_for(make_curve("solo/em", run_id=None)).ids == ["r1/em", "r2/em", "r3/em"]
    # the stored copy of a curve is never its own context, whatever run it now claims
    assert "r2/em" not in filled.context_for(make_curve("r2/em", run_id="elsewhere")).ids


def test_context_without_task_is_empty(filled):
    context = filled.context_for(make_curve("x", run_id="new", task=None))
    assert isinstance(context, CurveSet) and len(context) == 0


def test_tasks_count_runs_and_curves_per_task_and_metric(filled):
    assert filled.tasks() == [
        TaskSummary("gsm8k", "acc", n_runs=1, n_curves=1),
        TaskSummary("squad", "em", n_runs=4, n_curves=4),  # solo/em is its own run
        TaskSummary("squad", "f1", n_runs=1, n_curves=1),
        TaskSummary(None, "em", n_runs=1, n_curves=1),
    ]


def test_reopening_keeps_curves_and_schema_version(url):
    with HistoryStore(url) as first:
        first.add([make_curve("a/em", run_id="a")])
    with HistoryStore(url) as second:
        assert second.curves().ids == ["a/em"]
        with second._engine.connect() as conn:
            assert conn.execute(sa.text("SELECT key, value FROM metastop_meta")).all() == [
                ("schema_version", str(SCHEMA_VERSION))]


# --- errors --------------------------------------------------------------------------------
def _set_schema_version(url: str, value: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE metastop_meta SET value = :v WHERE key = 'schema_version'"),
                     {"v": value})
    engine.dispose()


def test_newer_schema_version_is_refused_naming_url_and_versions(url):
    HistoryStore(url).close()
    _set_schema_version(url, str(SCHEMA_VERSION + 1))
    with pytest.raises(HistoryError, match=r"written by schema version 2, newer than this "
                                           r"metastop's version 1; upgrade metastop") as caught:
        HistoryStore(url)
    assert caught.value.url == mask_url(url)
    assert isinstance(caught.value, MetastopError)


def test_garbage_schema_version_is_refused(url):
    HistoryStore(url).close()
    _set_schema_version(url, "two")
    with pytest.raises(HistoryError, match=r"schema_version .* must be a whole number, got 'two'"):
        HistoryStore(url)


@pytest.mark.parametrize("bad, rule", [
    ("not a url", r"history not a url: is not a database URL"),
    ("mysql://me@localhost/h",
     r"the database must be one of \('sqlite', 'postgresql'\), got 'mysql'"),
    ("sqlite:////no/such/folder/history.db",
     r"history sqlite:////no/such/folder/history.db: cannot open the history store \("),
])
def test_unopenable_urls_raise_history_error(bad, rule):
    with pytest.raises(HistoryError, match=rule):
        HistoryStore(bad)


def test_unreachable_postgres_masks_the_password():
    with pytest.raises(HistoryError, match=r"cannot open the history store") as caught:
        HistoryStore("postgresql://me:s3cret@127.0.0.1:1/history")
    assert "postgresql://me:***@127.0.0.1:1/history" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_mask_url_hides_only_the_password():
    assert mask_url("postgresql+psycopg2://me:p@ss@db:5432/h?sslmode=require") == \
        "postgresql+psycopg2://me:***@db:5432/h?sslmode=require"
    assert mask_url("postgresql://me@db/h") == "postgresql://me@db/h"
    assert mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"


def test_resolve_url_prefers_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///history.db"
    monkeypatch.setenv(ENV_URL, "sqlite:///team.db")
    assert resolve_url(None) == "sqlite:///team.db"
    assert resolve_url("sqlite:///mine.db") == "sqlite:///mine.db"


def test_open_history_passes_a_store_through_and_opens_a_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_URL, raising=False)
    with open_history(None) as opened:
        assert open_history(opened) is opened
        assert opened.url == DEFAULT_URL
    assert (tmp_path / "history.db").exists()


# --- concurrency and crashes ---------------------------------------------------------------
def _write_twenty(url: str, worker: int) -> None:
    with HistoryStore(url) as store:
        for i in range(20):
            store.add([make_curve(f"w{worker}/c{i}", run_id=f"w{worker}", seed=i)])


def test_four_processes_writing_at_once_lose_nothing(url):
    HistoryStore(url).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_twenty, args=(url, w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    with HistoryStore(url) as store:
        stored = store.curves()
        assert len(stored) == 80
        assert stored.ids == sorted(f"w{w}/c{i}" for w in range(4) for i in range(20))
        assert_same_curve(stored["w3/c17"], make_curve("w3/c17", run_id="w3", seed=17))
        assert store.tasks() == [TaskSummary("squad", "em", n_runs=4, n_curves=80)]


BATCH, POINTS = 10, 20_000  # about 3 MB a transaction: a kill lands inside one
_WRITER = """
import sys
from metastop.curves.history import HistoryStore
from tests.test_history import BATCH, POINTS, make_curve
with HistoryStore(sys.argv[1]) as store:
    for batch in range(100_000):
        store.add([make_curve(f"b{batch}/c{k}", run_id=f"b{batch}", n=POINTS, seed=batch)
                   for k in range(BATCH)])
        print(batch, flush=True)
"""


def test_killed_writer_leaves_every_committed_curve_and_no_half_batch(url):
    HistoryStore(url).close()
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 3 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    time.sleep(0.02)  # into the next batch's transaction
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    assert len(committed) == 3, writer.stderr.read()[-2000:]
    with HistoryStore(url) as store:
        batches = store.curves().groups("run_id")
    assert {f"b{b}" for b in committed} <= set(batches)
    for run, curves in batches.items():
        assert len(curves) == BATCH, f"batch {run} is partly written"
        for curve in curves:
            assert_same_curve(curve, make_curve(curve.curve_id, run_id=run, n=POINTS,
                                                seed=int(run[1:])))


# --- CLI -------------------------------------------------------------------------------------
@pytest.fixture
def table(tmp_path) -> Path:
    path = tmp_path / "curves.parquet"
    CurveSet([make_curve("r1/em", run_id="r1", model_size=160), make_curve("r2/em", run_id="r2"),
              make_curve("g/acc", run_id="g", task="gsm8k", metric="acc")]).write(path)
    return path


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(history, list(args), env=env, catch_exceptions=False)


def test_cli_add_list_show_round_trip(url, table):
    added = invoke("add", str(table), "--history", url, "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["added"] == [{"file": str(table), "curves": 3}]
    listed = json.loads(invoke("list", "--history", url, "--json").output)
    assert listed == [{"task": "gsm8k", "metric": "acc", "n_runs": 1, "n_curves": 1},
                      {"task": "squad", "metric": "em", "n_runs": 2, "n_curves": 2}]
    assert json.loads(invoke("list", "--task", "gsm8k", "--history", url, "--json").output) == \
        listed[:1]
    shown = json.loads(invoke("show", "squad", "--history", url, "--json").output)
    assert [c["curve_id"] for c in shown] == ["r1/em", "r2/em"]
    assert shown[0]["meta"] == {"model_size": 160} and shown[0]["n_points"] == 5


def test_cli_tables_for_people(tmp_path, table):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert "curves.parquet" in invoke("add", str(table), "--history", url).output
    listed = invoke("list", "--history", url).output
    assert "squad" in listed and "gsm8k" in listed
    shown = invoke("show", "gsm8k", "--history", url).output
    assert "g/acc" in shown and "r1/em" not in shown


def test_cli_history_url_defaults_to_environment(tmp_path, table):
    env = {ENV_URL: f"sqlite:///{tmp_path / 'env.db'}"}
    assert invoke("add", str(table), env=env).exit_code == 0
    assert (tmp_path / "env.db").exists()
    assert len(json.loads(invoke("list", "--json", env=env).output)) == 2


def test_cli_show_unknown_task_lists_the_tasks(tmp_path, table):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    invoke("add", str(table), "--history", url)
    result = invoke("show", "mmlu", "--history", url)
    assert result.exit_code == 1
    assert "no curves for task 'mmlu'; tasks stored: gsm8k, squad" in result.output


def test_cli_errors_are_one_clean_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    HistoryStore(url).close()
    _set_schema_version(url, "7")
    result = invoke("list", "--history", url)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: history {url}: the store was written by schema "
                                    f"version 7")
    missing = invoke("add", str(tmp_path / "nope.parquet"), "--history", url)
    assert missing.exit_code == 1 and "nope.parquet" in missing.output


def test_cli_every_command_has_help_with_an_example():
    for name in history.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.output and f"metastop history {name}" in result.output, name
        assert "--history URL" in result.output and "--json" in result.output, name
