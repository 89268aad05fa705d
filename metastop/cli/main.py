"""The ``metastop`` command: thin wrappers that parse arguments, call the library and print.

Each command prints a rich table for people and, with ``--json``, the same facts for
machines. Library errors (``MetastopError``) become a one-line message and exit status 1.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import click

from ..errors import MetastopError

if TYPE_CHECKING:
    from ..stop.prices import Price


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
    # Piped or captured output gets a wide table rather than rich's 80-column default.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(data: Any, path: str | None) -> None:
    """Write ``data`` as JSON to ``path`` (``-`` for standard output), atomically."""
    from ..curves import atomic_path

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




# --- options and helpers shared by the commands -------------------------------------

def _read_curve_files(paths: Sequence[str]) -> Any:
    """Read one or more curve files into one ``CurveSet`` (errors name the file)."""
    from ..curves import CurveSet
    from ..ingest import read_curves

    return CurveSet.concat(read_curves(path) for path in paths)


def _load_predictor(model: str | None) -> Any:
    from ..predict.model import Predictor

    return Predictor.load(model)


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on standard error; yields ``update(done, total)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _counted(items: Sequence[Any], progress: Callable[[int, int], None]) -> Iterator[Any]:
    """``items`` one by one, reporting ``progress(done, total)`` as each is taken."""
    for i, item in enumerate(items):
        progress(i, len(items))
        yield item
    progress(len(items), len(items))


def _price_option(command: Callable) -> Callable:
    return click.option(
        "--price", type=float, default=None, metavar="F", callback=_to_price,
        help="What one EM point (0.01) is worth, as a share of the run's budget "
             "(0.05 = 5%). Default: the shipped DEFAULT_PRICE.")(command)


def _to_price(ctx: click.Context, param: click.Parameter, value: float | None) -> Price:
    """The --price option as a ``Price``: the one place the CLI's float becomes a price."""
    from ..stop.prices import DEFAULT_PRICE, Price

    if value is None:
        return DEFAULT_PRICE
    try:
        return Price.fraction_of_budget(value)
    except MetastopError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None


def _model_option(command: Callable) -> Callable:
    return click.option("--model", type=click.Path(file_okay=False), default=None,
                        help="Model folder (default: the shipped model).")(command)


def _interval_text(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
