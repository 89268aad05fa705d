"""The ``metastop`` command: thin wrappers that parse arguments, call the library and print.

Each command prints a rich table for people and, with ``--json``, the same facts for
machines. Library errors (``MetastopError``) become a one-line message and exit status 1;
a bad option (click's usage errors, ``check_output``) exits with status 2.

Output files (``-o``, ``--json FILE``, ``--png FILE``, ``--out FOLDER``) are checked before
any work is done (``check_output``: the folder exists and is writable, the path is not a
folder, the suffix names the format written: ``.png`` for figures, ``.json`` for JSON; other
suffixes are refused rather than written in another format). They are written together at
the end (``staged``): all of them or, on any error, none.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
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


PNG = (".png", ".PNG")
"""Suffixes a figure output may have: figures are written as PNG, whatever the name says."""
JSON = (".json", ".JSON")
"""Suffixes a ``--json FILE`` output may have (``-`` is standard output)."""


def check_output(path: str | os.PathLike | None, option: str, *,
                 suffixes: Sequence[str] = (), folder: bool = False) -> None:
    """Refuse an output path that could not be written, before any work is done.

    A file output must not be a folder, must end in one of ``suffixes`` (when given) and
    its folder must exist and be writable. A ``folder`` output must not be a file and the
    nearest folder above it that exists must be writable (the rest is created). ``None``
    and ``-`` (standard output) pass.

    Raises:
        click.BadParameter: naming ``option`` (``-o/--output`` names both spellings),
            the path and the rule (exit status 2).
    """
    if path is None or str(path) == "-":
        return
    if not str(path):
        problem: str | None = "an empty path"
    else:
        problem = _folder_problem(Path(path)) if folder else _file_problem(Path(path), suffixes)
    if problem is not None:
        hint = " / ".join(f"'{name}'" for name in option.split("/"))
        raise click.BadParameter(f"{str(path)!r}: {problem}", param_hint=hint)


def _file_problem(path: Path, suffixes: Sequence[str]) -> str | None:
    if path.is_dir():
        return "is a folder; give a file name inside it"
    if suffixes and path.suffix not in suffixes:
        names = " or ".join(dict.fromkeys(s.lower() for s in suffixes))
        return f"must end in {names}, the format written (got {path.suffix or 'no suffix'!r})"
    parent = path.parent
    if not parent.exists():
        return f"folder {str(parent)!r} does not exist; create it first"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a folder"
    return _writable(parent)


def _folder_problem(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return "is a file; give a folder"
    above = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not above.is_dir():
        return f"{str(above)!r} is not a folder"
    return _writable(above)


def _writable(folder: Path) -> str | None:
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {str(folder)!r} is not writable"
    return None


@contextlib.contextmanager
def staged(*paths: str | os.PathLike | None) -> Iterator[list[Any]]:
    """Write several outputs all or none: yields, for each path, the file to write instead.

    Each file path gets a staging file beside it with the same suffix (so writers that go
    by suffix write the right format); when the block ends without error every staging
    file is renamed onto its target (through ``atomic_path``), and when it raises all of
    them are removed, leaving nothing. ``None`` and ``-`` are yielded unchanged.

    Example:
        >>> with staged(out, json_path) as (out_file, json_file):  # doctest: +SKIP
        ...     curves.write(out_file)
        ...     write_json(summary, json_file)
    """
    from ..curves import atomic_path

    with contextlib.ExitStack() as stack:
        given, moves = [], []
        for path in paths:
            if path is None or str(path) == "-":
                given.append(path)
                continue
            tmp = stack.enter_context(atomic_path(Path(path)))  # renamed onto path on exit
            stage = tmp.with_name(tmp.name + Path(path).suffix)
            stack.callback(stage.unlink, missing_ok=True)
            given.append(stage)
            moves.append((stage, tmp))
        yield given
        for stage, tmp in moves:
            os.replace(stage, tmp)


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


def _seed_option(command: Callable) -> Callable:
    return click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
                        help="Seed of the --limit sample (an integer >= 0).")(command)


def _interval_text(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"



if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
