"""The ``metastop`` command: thin wrappers that parse arguments, call the library and print.

Each command prints a rich table for people and, with ``--json``, the same facts for
machines. Library errors (``MetastopError``) become a one-line message and exit status 1.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from .errors import MetastopError


def library_errors(command: Callable) -> Callable:
    """Turn metastop's own errors into ``click.ClickException`` (a clean message, exit 1)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MetastopError as error:
            raise click.ClickException(str(error)) from None

    return wrapper


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a rich table; numbers are shown with 4 significant digits."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(data: Any, path: str | None) -> None:
    """Write ``data`` as JSON to ``path`` (``-`` for standard output), atomically."""
    from .curves import atomic_path

    text = json.dumps(data, indent=2, default=str)
    if path in (None, "-"):
        click.echo(text)
        return
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text + "\n")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metastop")
def main() -> None:
    """metastop: decide when a training run should stop.

    \b
    Examples:
      metastop ingest trainer_state.json -o curves.parquet
      metastop analyze data/sample_curves.parquet --png reports/analyze.png
      metastop backtest data/sample_curves.parquet --json reports/backtest.json
    """


# --- ingest (readers) ------------------------------------------------------------------
# [cli:ingest]

# --- analyze / predict / backtest / plot / models --------------------------------------
# [cli:analysis]

# --- retrain / report ------------------------------------------------------------------
# [cli:feedback]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
