"""``metastop retrain`` and ``report``: retraining and the fleet report from decision logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .main import (
    JSON,
    PNG,
    _progress_bar,
    check_output,
    library_errors,
    main,
    print_table,
    staged,
    write_json,
)


# --- retrain / report ------------------------------------------------------------------
@main.command("retrain")
@click.argument("curves", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="The project's corpus folder (lcdb.parquet, em_curves.parquet; "
              "default: the repository's data/); the shared corpora are read in place.")
@click.option("--no-corpus", is_flag=True,
              help="Train on CURVES and --runs only, not on the recipe's corpora.")
@click.option("--max-curves", type=click.IntRange(1), default=None,
              help="Cap on training curves per corpus (default: each corpus's own).")
@click.option("--runs", "runs_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of finished runs: curve files and decision logs (*.jsonl).")
@click.option("--registry", "registry_root", type=click.Path(file_okay=False), default=None,
              help="Model registry folder (default: $METASTOP_MODELS or the project's models/).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder, created if missing (default: reports/retrain/<UTC time>).")
@click.option("--force", is_flag=True, help="Promote the challenger even if it is not better.")
@click.option("--dask-scheduler", default=None, metavar="ADDRESS",
              help="Train the boosters on this running Dask cluster (tcp://host:8786).")
@click.option("--n-estimators", type=click.IntRange(1), default=None,
              help="Boosting rounds (default: the recipe's).")
@click.option("--num-threads", type=click.IntRange(1), default=None,
              help="LightGBM threads on this machine (default: all cores).")
@click.option("--min-improvement", type=click.FloatRange(0, 1, max_open=True), default=0.01,
              show_default=True, help="Relative MAE improvement needed to promote.")
@click.option("--json", "json_path", default=None, metavar="PATH",
              help="Also write the report JSON to PATH (.json, or '-' for standard output).")
@library_errors
def retrain_command(curves: tuple[Path, ...], data_dir: Path | None, no_corpus: bool,
                    max_curves: int | None, runs_dir: str | None, registry_root: str | None, out: str | None,
                    force: bool, dask_scheduler: str | None, n_estimators: int | None,
                    num_threads: int | None, min_improvement: float, json_path: str | None) -> None:
    """Retrain the predictor; promote the challenger only if it beats the champion.

    Gathers curves (the training recipe's corpora, CURVES files or folders, --runs), trains a
    challenger by the same recipe as the shipped model on the curves outside the held-out
    groups, evaluates champion and challenger on the same
    held-out curves (MAE at 25% observed, CostAware utility) and promotes by the stated
    rule. Writes report.json and report.md to --out.

    \b
    Examples:
      metastop retrain --runs runs/finished
      metastop retrain extra.parquet --no-corpus --out reports/retrain/today --force
      metastop retrain --dask-scheduler tcp://scheduler:8786
    """
    from ..ops.recipe import DEFAULT_PARAMS, Recipe, default_corpora
    from ..ops.registry import Registry
    from ..ops.retrain import retrain

    check_output(out, "--out", folder=True)
    check_output(json_path, "--json", suffixes=JSON)
    corpora = () if no_corpus else (default_corpora(data_dir) if data_dir else default_corpora())
    params = {**DEFAULT_PARAMS, **{k: v for k, v in (("n_estimators", n_estimators),
                                                     ("num_threads", num_threads)) if v is not None}}
    recipe = Recipe(corpora=corpora, max_curves=max_curves, params=params)
    with _progress_bar("retraining: gather, train, evaluate champion and challenger"):
        result = retrain(curves, runs_dir=runs_dir, recipe=recipe, registry=Registry(registry_root),
                         out=out, dask_scheduler=dask_scheduler, force=force,
                         min_improvement=min_improvement)
    if json_path is not None:
        write_json(result.to_dict(), json_path)
    if json_path == "-":
        return
    rows = [[name, ev.get("mae_25"), ev.get("utility"), ev.get("token_savings"),
             ev.get("n_curves")]
            for name, ev in (("champion " + result.champion["name"],
                              result.champion.get("evaluation") or {}),
                             ("challenger", result.challenger["evaluation"]))]
    print_table(f"retrain: {result.data['n_curves']} curves ({result.data['n_skipped']} "
                f"skipped, {result.data['n_duplicates']} duplicates)",
                ["model", "MAE@25%", "utility (pt)", "token savings", "held-out curves"], rows)
    verdict = f"promoted as {result.promoted_as}" if result.promoted_as else "champion kept"
    click.echo(f"{verdict}: {result.verdict.reason}\nreport: {result.out}/report.md")


@main.command("report")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--pricebook", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Price book (JSON or TOML) with the prices in force.")
@click.option("--governor-state", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Governor state JSON: its price changes and loss budget are shown.")
@click.option("--json", "json_path", default=None, metavar="OUT",
              help="Write the report as JSON to OUT (.json, or '-' for standard output).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG (a .png path): tokens saved and shadow EM loss (95% CI) per task.")
@library_errors
def report_command(logs: tuple[Path, ...], pricebook: str | None, governor_state: str | None,
                   json_path: str | None, png: str | None) -> None:
    """Report what stopping saved and lost, from decision logs (files or folders of *.jsonl).

    Per task and overall: runs, shadow runs, tokens saved by the runs the controller
    stopped, the EM loss shadow runs measured (points, 95% CI), prices, and the governor's
    price changes with their reasons.

    \b
    Examples:
      metastop report logs/ --pricebook prices.toml --png reports/fleet.png
      metastop report logs/ --governor-state governor.json --json -
    """
    from ..ops.governor import Governor
    from ..ops.report import REPORT_COLUMNS, fleet_report, plot_report, report_rows
    from ..stop.prices import PriceBook

    check_output(json_path, "--json", suffixes=JSON)
    check_output(png, "--png", suffixes=PNG)
    _refuse_other_files(logs)
    book = PriceBook.read(pricebook) if pricebook else None
    governor = Governor.load(governor_state, pricebook=book) if governor_state else None
    result = fleet_report(logs, pricebook=book, governor=governor)
    _refuse_no_records(logs, result)
    with staged(json_path, png) as (json_file, png_file):
        if json_path is not None:
            write_json(result.to_dict(), json_file)
        if png is not None:
            plot_report(result, png_file)
    if json_path == "-":
        return
    print_table(f"metastop report: {result.overall.runs} runs", REPORT_COLUMNS,
                report_rows(result))
    if result.changes:
        print_table("price changes by the governor", ["task", "old", "new", "reason"],
                    [[c["task"], _price_text(c["old"]), _price_text(c["new"]), c["reason"]]
                     for c in result.changes])
    if result.skipped:
        click.echo(f"{len(result.skipped)} log line(s) skipped, first: {result.skipped[0]}")
    if png is not None:
        click.echo(f"wrote {png}")


def _price_text(data: dict[str, Any]) -> str:
    from ..stop.prices import Price

    return str(Price.from_dict(data))


LOG_HINT = ("metastop report reads decision logs: JSONL, one JSON object per line, as "
            "metastop's DecisionLog writes them (curve tables go to `metastop analyze`)")


def _refuse_other_files(logs: tuple[Path, ...]) -> None:
    """Refuse a named file that is plainly not a decision log: Parquet, or binary from its
    first byte (a log starts with '{'; one whose tail a crash left zero-filled still reads)."""
    for path in logs:
        if not path.is_file():
            continue  # folders are searched for *.jsonl; a missing path is the reader's error
        with open(path, "rb") as handle:
            head = handle.read(1 << 12)
        kind = "a Parquet file" if head.startswith(b"PAR1") else (
            "binary" if not head.lstrip().startswith(b"{") and not _text(head) else None)
        if kind is not None:
            raise click.ClickException(f"file {path}: not a decision log ({kind}); {LOG_HINT}")


def _text(head: bytes) -> bool:
    """Whether ``head`` (the start of a file) is text: no NUL byte, UTF-8 (a character cut
    at its end allowed)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3 and error.reason == "unexpected end of data"
    return True


def _refuse_no_records(logs: tuple[Path, ...], result: Any) -> None:
    """Refuse logs where every line was skipped: none of them is a decision log."""
    if result.overall.runs == 0 and result.skipped:
        names = ", ".join(str(p) for p in logs)
        raise click.ClickException(f"{names}: no run found, {len(result.skipped)} line(s) "
                                   f"skipped as not decision records (first: "
                                   f"{result.skipped[0]}): not a decision log? {LOG_HINT}")
