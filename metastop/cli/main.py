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

from ..errors import MetastopError
from .history import history


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


# --- ingest (readers) ------------------------------------------------------------------
@main.command("ingest")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Curve table to write (.parquet, .csv or .jsonl); written atomically.")
@click.option("--metric", default=None,
              help="Metric to read from logs: a log_history key, TensorBoard tag or column "
                   "(default: exact match).")
@click.option("--tokens-per-step", type=float, default=None,
              help="Tokens per optimizer step, for logs without token counts.")
@click.option("--tokens-tag", default=None, help="TensorBoard tag holding cumulative tokens.")
@click.option("--scale", type=click.Choice(["1", "100"]), default=None,
              help="Scale of a bounded metric (EM, accuracy); default: detect (> 1 means 0-100).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at the first bad curve; skip: drop it and say why.")
@click.option("--json", "json_path", default=None,
              help="Also write a JSON summary to this path ('-' for standard output).")
@library_errors
def ingest_command(sources: tuple[Path, ...], output: Path, metric: str | None,
                   tokens_per_step: float | None, tokens_tag: str | None, scale: str | None,
                   on_error: str, json_path: str | None) -> None:
    """Read curves from training logs and tables into one curve table.

    SOURCES are long tables (CSV, Parquet, JSONL with a curve_id column), Hugging Face
    trainer_state.json files (or their output directories), TensorBoard event files (or
    directories holding them) and wide step x metric exports (W&B, MLflow CSV). The format
    is detected from each file's name and contents.

    \b
    Examples:
      metastop ingest out/trainer_state.json -o curves.parquet
      metastop ingest runs/ --metric eval/exact_match --tokens-per-step 4096 -o curves.parquet
      metastop ingest wandb_export.csv --tokens-per-step 4096 --on-error skip -o curves.parquet
    """
    from ..ingest import read_sources

    result = read_sources(sources, on_error=on_error, metric=metric,
                          tokens_per_step=tokens_per_step, tokens_tag=tokens_tag,
                          scale=None if scale is None else float(scale))
    result.curves.write(output)
    if json_path != "-":  # keep standard output clean JSON for machines
        _print_ingest(result, output)
    if json_path is not None:
        write_json(result.to_dict() | {"output": str(output)}, json_path)


def _print_ingest(result: Any, output: Path) -> None:
    print_table(f"read {len(result.curves)} curves ({result.curves.n_points} points) into {output}",
                ["source", "format", "curves", "points", "metrics", "dropped"],
                [(s.path, s.format, s.curves, s.points, ", ".join(s.metrics), len(s.dropped))
                 for s in result.sources])
    if result.dropped:
        print_table("dropped", ["#", "what and why"], list(enumerate(result.dropped, 1)))


# --- analyze / predict / backtest / plot / models --------------------------------------
import contextlib  # noqa: E402  (imports of the analysis commands' section)
from typing import Iterator  # noqa: E402


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


def _price_option(command: Callable) -> Callable:
    return click.option(
        "--price", type=float, default=None, metavar="F",
        help="What one EM point (0.01) is worth, as a share of the run's budget "
             "(0.05 = 5%). Default: the shipped DEFAULT_PRICE.")(command)


def _model_option(command: Callable) -> Callable:
    return click.option("--model", type=click.Path(file_okay=False), default=None,
                        help="Model folder (default: the shipped model).")(command)


def _interval_text(interval: tuple[float, float] | None) -> str:
    return "-" if interval is None else f"[{interval[0]:.4g}, {interval[1]:.4g}]"


@main.command()
@click.argument("curves_path", metavar="CURVES", type=click.Path(dir_okay=False))
@_model_option
@_price_option
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a summary PNG: a grid of the curves with prediction and stop point.")
@click.option("--max-panels", type=click.IntRange(1, 200), default=36, show_default=True,
              help="Curves drawn in the PNG grid (the first ones).")
@click.option("--json", "json_path", default=None, metavar="PATH",
              help="Write the analysis as JSON to PATH ('-' for standard output).")
@library_errors
def analyze(curves_path: str, model: str | None, price: float | None, png: str | None,
            max_panels: int, json_path: str | None) -> None:
    """Analyze curves: predicted final value and where metastop would stop.

    Each curve is replayed point by point through the default policy (CostAware at the
    shipped price, or --price). The table shows the points seen, the best value so far,
    the predicted final value with its 80% interval (predicted from the stop point, or from
    the last point of a running curve), the recommended stop point and the tokens it saves.

    \b
    Example:
      metastop analyze data/sample_curves.parquet --png reports/analyze.png
      metastop analyze run.parquet --price 0.02 --json -
    """
    from ..evaluate.backtest import analyze_curves, as_price, make_policy
    from ..evaluate.plotting import CurvePanel, curve_grid

    curves = _read_curve_files([curves_path])
    predictor = _load_predictor(model)
    policy = make_policy("metastop", predictor, price=as_price(price))
    with _progress_bar(f"replaying {len(curves)} curves") as progress:
        results = analyze_curves(curves, predictor, policy=policy, progress=progress)
    if png is not None:
        panels = [CurvePanel(a.curve, a.prediction, a.stop_index, a.seen) for a in results[:max_panels]]
        curve_grid(panels, png, title=f"{Path(curves_path).name}: metastop at {as_price(price)}")
    if json_path is not None:
        write_json({"price": as_price(price).to_dict(), "curves": [a.to_dict() for a in results]},
                   json_path)
    if json_path != "-":
        _print_analysis(results, as_price(price))
        if png is not None:
            click.echo(f"wrote {png}")


def _print_analysis(results: Sequence[Any], price: Any) -> None:
    rows = []
    for a in results:
        c = a.curve
        stop = "continue" if a.stop_index is None else f"pt {a.stop_index} @ {a.stop_tokens:.4g}"
        saved = "-" if a.stop_index is None else f"{a.tokens_saved:.3g} ({a.tokens_saved / c.budget:.0%})"
        rows.append([c.curve_id, f"{len(c)} ({c.fraction_seen:.0%})", c.best, a.predicted_final,
                     _interval_text(a.interval), a.seen, stop, saved])
    print_table(f"metastop analyze ({price})",
                ["curve", "points (budget seen)", "best", "predicted final", "80% interval",
                 "from pts", "stop at", "tokens saved"], rows)


@main.command()
@click.argument("curves_path", metavar="CURVES", type=click.Path(dir_okay=False))
@click.option("--at-fraction", "fraction", type=click.FloatRange(0, 1, min_open=True),
              required=True, metavar="F", help="Predict from the points within the first F of the budget.")
@_model_option
@click.option("--json", "json_path", default=None, metavar="PATH",
              help="Write the predictions as JSON to PATH ('-' for standard output).")
@library_errors
def predict(curves_path: str, fraction: float, model: str | None, json_path: str | None) -> None:
    """Predict each curve's final value from its first F of the budget.

    The true final value is shown where the curve reached its budget.

    \b
    Example:
      metastop predict data/sample_curves.parquet --at-fraction 0.25
      metastop predict data/sample_curves.parquet --at-fraction 0.5 --json -
    """
    from ..evaluate.backtest import forecast_at

    curves = _read_curve_files([curves_path])
    results = forecast_at(curves, _load_predictor(model), fraction)
    if json_path is not None:
        write_json({"at_fraction": fraction, "curves": [
            {k: v for k, v in a.to_dict().items() if not k.startswith(("stop", "tokens_saved", "decision"))}
            for a in results]}, json_path)
    if json_path == "-":
        return
    rows = []
    for a in results:
        error = None if a.true_final is None else abs(a.predicted_final - a.true_final)
        rows.append([a.curve.curve_id, a.seen, a.predicted_final, _interval_text(a.interval),
                     a.true_final, error])
    print_table(f"final value predicted from the first {fraction:.0%} of the budget",
                ["curve", "points seen", "predicted final", "80% interval", "true final", "abs error"], rows)


@main.command()
@click.argument("curves_paths", metavar="CURVES...", nargs=-1, required=True,
                type=click.Path(dir_okay=False))
@click.option("--json", "json_path", default=None, metavar="OUT",
              help="Write DESIGN.md's backtest JSON to OUT ('-' for standard output).")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="Policies to compare (repeatable): metastop, patience-N, "
                   "improvement-probability, oracle. Default: all standard ones.")
@_price_option
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Deliver the best checkpoint seen (best) or the last one (last).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write the frontier figure (token savings vs EM loss) to this PNG.")
@click.option("--no-sweep", is_flag=True, help="Skip the frontier sweeps (faster).")
@_model_option
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Use a seeded random sample of at most this many curves.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit sample.")
@library_errors
def backtest(curves_paths: tuple[str, ...], json_path: str | None, policies: tuple[str, ...],
             price: float | None, keep: str, png: str | None, no_sweep: bool,
             model: str | None, limit: int | None, seed: int) -> None:
    """Replay finished curves through stopping policies: token savings vs EM loss.

    Every policy sees each curve point by point (never the future). EM loss is in the
    metric's units; the oracle stops where utility is largest in hindsight.

    \b
    Example:
      metastop backtest data/sample_curves.parquet --json reports/backtest.json
      metastop backtest a.parquet b.parquet --policy metastop --policy patience-5 --png frontier.png
    """
    from ..evaluate.backtest import STANDARD_POLICIES, compare, run_suite, sample

    curves = sample(_read_curve_files(curves_paths), limit, seed=seed)
    names = tuple(dict.fromkeys(policies)) or STANDARD_POLICIES
    predictor = _load_predictor(model) if any(not n.startswith("patience-") for n in names) else None
    with _progress_bar(f"backtesting {len(curves)} curves") as progress:
        suite = run_suite(curves, predictor, policies=names, price=price, keep=keep,
                          sweeps=not no_sweep, progress=progress)
    extra = {"files": list(curves_paths)}
    if "metastop" in names and "patience-5" in names:
        extra["comparison"] = compare(suite.report("metastop"), suite.report("patience-5")).to_dict()
    if json_path is not None:
        write_json(suite.to_json(extra), json_path)
    if png is not None:
        _frontier_png(suite, png)
    if json_path != "-":
        _print_suite(suite)
        if "comparison" in extra:
            _print_comparison(extra["comparison"])


def _frontier_png(suite: Any, png: str) -> None:
    from ..evaluate.plotting import frontier_plot

    points = {r.name: (r.token_savings_mean, r.em_loss_mean) for r in suite.reports}
    frontier_plot(suite.frontiers, png, points,
                  title=f"{suite.n_curves} curves, keep-{suite.keep}, oracle at {suite.price}")


def _print_suite(suite: Any) -> None:
    utility = suite.utility()
    rows = [[r.name, r.n_curves, 100 * r.token_savings_mean, 100 * r.em_loss_mean,
             100 * r.em_loss_p95, utility["policies"][r.name]["share_of_oracle_gain"]]
            for r in suite.reports]
    print_table(f"backtest: {suite.n_curves} curves, keep-{suite.keep}, price {suite.price}",
                ["policy", "curves", "token savings %", "EM loss mean (pts)", "EM loss p95 (pts)",
                 "share of oracle gain"], rows)
    if suite.prediction is not None:
        p = suite.prediction
        print_table("prediction of the final value",
                    ["seen", *(f"MAE @ {f:g}" for f in p.mae_at), "coverage 80%"],
                    [["first fraction of budget", *p.mae_at.values(), p.coverage_80]])


def _print_comparison(c: dict[str, Any]) -> None:
    rows = [["token savings", c["token_savings_diff"], *c["token_savings_ci95"]],
            ["EM loss", c["em_loss_diff"], *c["em_loss_ci95"]]]
    print_table(f"paired difference {c['a']} - {c['b']} (bootstrap 95% CI, seed {c['seed']})",
                ["measure", "mean difference", "CI low", "CI high"], rows)


@main.command()
@click.argument("curves_path", metavar="CURVES", type=click.Path(dir_okay=False))
@click.option("--curve", "curve_ids", multiple=True, metavar="ID",
              help="Curve to draw (repeatable). Default: the first 12.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The PNG to write.")
@click.option("--at-fraction", "fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              metavar="F", help="Predict from the first F of the budget instead of the stop point.")
@_model_option
@_price_option
@library_errors
def plot(curves_path: str, curve_ids: tuple[str, ...], output: str, fraction: float | None,
         model: str | None, price: float | None) -> None:
    """Draw curves with their observed points, predicted band and stop point.

    Points after the prediction point are drawn faded: the model did not see them.

    \b
    Example:
      metastop plot data/sample_curves.parquet -o reports/curves.png
      metastop plot runs.parquet --curve run7/em --at-fraction 0.3 -o run7.png
    """
    from ..evaluate.backtest import analyze_curves, as_price, make_policy
    from ..evaluate.plotting import CurvePanel, curve_grid

    curves = _read_curve_files([curves_path])
    try:
        chosen = [curves[i] for i in curve_ids] if curve_ids else list(curves)[:12]
    except KeyError as error:
        raise click.ClickException(f"file {curves_path}: {error.args[0]}") from None
    predictor = _load_predictor(model)
    policy = make_policy("metastop", predictor, price=as_price(price))
    results = analyze_curves(chosen, predictor, policy=policy, at_fraction=fraction)
    curve_grid([CurvePanel(a.curve, a.prediction, a.stop_index, a.seen) for a in results], output,
               columns=min(4, len(results)))
    click.echo(f"wrote {output} ({len(results)} curves)")


@main.group(invoke_without_command=True)
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Registry folder (default: $METASTOP_MODELS or the project's models/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
@library_errors
def models(ctx: click.Context, root: str | None, as_json: bool) -> None:
    """List model versions (folders with a manifest.json) and their metrics.

    \b
    Example:
      metastop models
      metastop models show default
    """
    ctx.obj = {"root": root, "as_json": as_json}
    if ctx.invoked_subcommand is not None:
        return
    from ..ops.registry import Registry

    versions = Registry(root).versions()
    if as_json:
        write_json([v.to_dict() for v in versions], "-")
        return
    rows = [[v.name, "*" if v.champion else "", v.created, _metrics_text(v.metrics), v.problem]
            for v in versions]
    print_table(f"model versions in {Registry(root).root}",
                ["version", "champion", "created", "metrics", "problem"], rows)


def _metrics_text(metrics: dict[str, Any], limit: int = 6) -> str:
    flat = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    return ", ".join(f"{k}={v:.4g}" for k, v in flat[:limit]) or "-"


@models.command("show")
@click.argument("version")
@click.pass_context
@library_errors
def models_show(ctx: click.Context, version: str) -> None:
    """Show the manifest of one model version.

    \b
    Example:
      metastop models show default
    """
    from ..ops.registry import Registry, read_manifest

    manifest = read_manifest(Registry(ctx.obj["root"]).path(version))
    if ctx.obj["as_json"]:
        write_json(manifest, "-")
        return
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v]
            for k, v in manifest.items()]
    print_table(f"model {version}", ["key", "value"], rows)

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
              help="Report folder (default: reports/retrain/<UTC time>).")
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
              help="Also write the report JSON to PATH ('-' for standard output).")
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

    corpora = () if no_corpus else (default_corpora(data_dir) if data_dir else default_corpora())
    params = {**DEFAULT_PARAMS, **{k: v for k, v in (("n_estimators", n_estimators),
                                                     ("num_threads", num_threads)) if v is not None}}
    recipe = Recipe(corpora=corpora, max_curves=max_curves, params=params)
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


@models.command("promote")
@click.argument("version")
@click.option("--reason", default="manual promotion", show_default=True)
@click.pass_context
@library_errors
def models_promote(ctx: click.Context, version: str, reason: str) -> None:
    """Make VERSION the champion (verified first; atomic).

    \b
    Example:
      metastop models promote 20250101-120000-3fa2c1d0
    """
    from ..ops.registry import Registry

    Registry(ctx.obj["root"]).promote(version, reason=reason)
    click.echo(f"champion: {version}")


@models.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
@click.pass_context
@library_errors
def models_rollback(ctx: click.Context, reason: str) -> None:
    """Go back to the previous champion (atomic).

    \b
    Example:
      metastop models rollback
    """
    from ..ops.registry import Registry

    click.echo(f"champion: {Registry(ctx.obj['root']).rollback(reason=reason)}")


@main.command("report")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--pricebook", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Price book (JSON or TOML) with the prices in force.")
@click.option("--governor-state", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Governor state JSON: its price changes and loss budget are shown.")
@click.option("--json", "json_path", default=None, metavar="OUT",
              help="Write the report as JSON to OUT ('-' for standard output).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG: tokens saved and shadow EM loss (95% CI) per task.")
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
    from ..stop.prices import PriceBook
    from ..ops.report import REPORT_COLUMNS, fleet_report, plot_report, report_rows

    book = PriceBook.read(pricebook) if pricebook else None
    governor = Governor.load(governor_state, pricebook=book) if governor_state else None
    result = fleet_report(logs, pricebook=book, governor=governor)
    if json_path is not None:
        write_json(result.to_dict(), json_path)
    if png is not None:
        plot_report(result, png)
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


main.add_command(history)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
