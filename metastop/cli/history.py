"""``metastop history``: add finished curves to the history store, list and show them.

Thin commands: parse arguments, call ``metastop.curves.history`` and print a rich table (or,
with ``--json``, the same facts as JSON). The store is named by ``--history URL``, else
``$METASTOP_HISTORY``, else ``sqlite:///history.db``. Library errors become a one-line
message and exit status 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from .main import _counted, _progress_bar, library_errors, print_table

_HISTORY_HELP = ("History store URL, e.g. sqlite:///history.db or "
                 "postgresql://user:password@host/db. Default: $METASTOP_HISTORY, else "
                 "sqlite:///history.db.")


def _store_options(command: Callable) -> Callable:
    """``--history URL`` and ``--json``, shared by every history command."""
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON instead of a table.")(command)
    return click.option("--history", "url", default=None, metavar="URL",
                        help=_HISTORY_HELP)(command)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group("history")
def history() -> None:
    """The history store: finished curves with their run metadata.

    A store is a database URL: an SQLite file (the default, sqlite:///history.db) or a
    PostgreSQL server shared by a team (postgresql://user:password@host/db).

    \b
    Examples:
      metastop history add curves.parquet
      metastop history list --history postgresql://me@db/history
      metastop history show squad --json
    """


@history.command("add")
@click.argument("curves", nargs=-1, required=True, type=click.Path(path_type=Path))
@_store_options
@library_errors
def add_command(curves: tuple[Path, ...], url: str | None, as_json: bool) -> None:
    """Add the finished curves in CURVES to the store.

    CURVES are curve tables (Parquet, CSV, JSONL) or any log that `metastop ingest` reads.
    All files are read before anything is written; each file is then added in one
    transaction, replacing stored curves with the same curve_id.

    \b
    Examples:
      metastop history add curves.parquet
      metastop history add runs/*.parquet --history postgresql://me@db/history
    """
    from ..ingest import read_curves
    from ..curves.history import HistoryStore

    with _progress_bar(f"reading {len(curves)} files") as progress:
        tables = [(path, read_curves(path)) for path in _counted(curves, progress)]
    with HistoryStore(url) as store, _progress_bar(f"adding {len(tables)} files") as progress:
        added = [(str(path), store.add(table, source=str(path)))
                 for path, table in _counted(tables, progress)]
        shown = store.url
    if as_json:
        _echo_json({"history": shown, "added": [{"file": f, "curves": n} for f, n in added]})
        return
    print_table(f"Added to {shown}", ["file", "curves"], added)


@history.command("list")
@click.option("--task", default=None, help="Only this task.")
@_store_options
@library_errors
def list_command(task: str | None, url: str | None, as_json: bool) -> None:
    """List the tasks in the store: runs and curves per task and metric.

    \b
    Examples:
      metastop history list
      metastop history list --task squad --json
    """
    from ..curves.history import HistoryStore

    with HistoryStore(url) as store:
        summaries = [s for s in store.tasks() if task is None or s.task == task]
        shown = store.url
    if as_json:
        _echo_json([s.to_dict() for s in summaries])
        return
    print_table(f"History {shown}", ["task", "metric", "runs", "curves"],
                 [(s.task, s.metric, s.n_runs, s.n_curves) for s in summaries])


@history.command("show")
@click.argument("task")
@_store_options
@library_errors
def show_command(task: str, url: str | None, as_json: bool) -> None:
    """Show the curves stored for TASK, one row per curve.

    \b
    Examples:
      metastop history show squad
      metastop history show squad --history sqlite:///team.db --json
    """
    from ..curves.history import HistoryStore

    with HistoryStore(url) as store:
        curves = store.curves(task=task)
        known = [s.task for s in store.tasks()] if not len(curves) else []
        shown = store.url
    if not len(curves):
        names = sorted({t for t in known if t is not None})
        raise click.ClickException(f"history {shown}: no curves for task {task!r}; "
                                   f"tasks stored: {', '.join(names) or 'none'}")
    facts = [_curve_facts(c) for c in curves]
    if as_json:
        _echo_json(facts)
        return
    columns = ["curve_id", "run_id", "metric", "direction", "points", "tokens", "budget",
               "last", "best"]
    keys = ["curve_id", "run_id", "metric", "direction", "n_points", "tokens_seen", "budget",
            "last", "best"]
    print_table(f"Task {task} in {shown}", columns, [[f[k] for k in keys] for f in facts])


def _curve_facts(curve: Any) -> dict[str, Any]:
    return {"curve_id": curve.curve_id, "run_id": curve.run_id, "task": curve.task,
            "metric": curve.metric, "direction": curve.direction, "n_points": len(curve),
            "tokens_seen": curve.last_tokens, "budget": curve.budget,
            "last": float(curve.values[-1]), "best": curve.best, "meta": dict(curve.meta)}
