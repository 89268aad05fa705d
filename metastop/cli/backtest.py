"""``metastop backtest``: replay finished curves through stopping policies."""

from __future__ import annotations

from typing import Any

import click

from ..stop.prices import Price
from .analysis import CONTEXT_HELP, HISTORY_HELP, context_mode, curve_contexts
from .main import (
    JSON,
    PNG,
    _load_predictor,
    _model_option,
    _price_option,
    _progress_bar,
    _read_curve_files,
    _seed_option,
    check_output,
    library_errors,
    main,
    print_table,
    staged,
    write_json,
)


@main.command()
@click.argument("curves_paths", metavar="CURVES...", nargs=-1, required=True,
                type=click.Path(dir_okay=False))
@click.option("--json", "json_path", default=None, metavar="OUT",
              help="Write the backtest JSON to OUT (.json, or '-' for standard output): n_curves, "
                   "prediction (mae_at, coverage_80), policies (name, params, "
                   "token_savings_mean, em_loss_mean, em_loss_p95, n_curves), frontier, "
                   "context, and with --by-run a by_run list (see the README).")
@click.option("--policy", "policies", multiple=True, metavar="NAME",
              help="Policies to compare (repeatable): metastop, patience-N, "
                   "improvement-probability, oracle. Default: all standard ones.")
@_price_option
@click.option("--keep", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Deliver the best checkpoint seen (best) or the last one (last).")
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write the frontier figure (token savings vs EM loss) to this .png file.")
@click.option("--no-sweep", is_flag=True, help="Skip the frontier sweeps (faster).")
@_model_option
@click.option("--limit", type=click.IntRange(1), default=None,
              help="Use a seeded random sample of at most this many curves.")
@_seed_option
@click.option("--context", type=click.Choice(["none", "leave-one-run-out"]), default=None,
              help=CONTEXT_HELP)
@click.option("--history", default=None, metavar="URL", help=HISTORY_HELP)
@click.option("--by-run", is_flag=True,
              help="Also replay whole runs (curves grouped by run_id, 2+ tasks each): one stop "
                   "per run for metastop (MultiTask), patience-5 and CostAware on the run's "
                   "mean curve; run-level savings, weighted loss and per-task loss.")
@library_errors
def backtest(curves_paths: tuple[str, ...], json_path: str | None, policies: tuple[str, ...],
             price: Price, keep: str, png: str | None, no_sweep: bool,
             model: str | None, limit: int | None, seed: int, context: str | None,
             history: str | None, by_run: bool) -> None:
    """Replay finished curves through stopping policies: token savings vs EM loss.

    Every policy sees each curve point by point (never the future). EM loss is in the
    metric's units; the oracle stops where utility is largest in hindsight.

    \b
    Example:
      metastop backtest data/sample_curves.parquet --json reports/backtest.json
      metastop backtest a.parquet b.parquet --policy metastop --policy patience-5 --png frontier.png
    """
    from ..evaluate.ab import compare
    from ..evaluate.analysis import sample
    from ..evaluate.suite import STANDARD_POLICIES, run_suite

    check_output(json_path, "--json", suffixes=JSON)
    check_output(png, "--png", suffixes=PNG)
    everything = _read_curve_files(curves_paths)
    curves = sample(everything, limit, seed=seed)
    names = tuple(dict.fromkeys(policies)) or STANDARD_POLICIES
    needs_model = by_run or any(not n.startswith("patience-") for n in names)
    predictor = _load_predictor(model) if needs_model else None
    contexts, source = curve_contexts(curves, everything, context_mode(context, history), history)
    with _progress_bar(f"backtesting {len(curves)} curves") as progress:
        suite = run_suite(curves, predictor, policies=names, price=price, keep=keep,
                          sweeps=not no_sweep, contexts=contexts, progress=progress)
    extra = {"files": list(curves_paths), "context_source": source}
    if "metastop" in names and "patience-5" in names:
        extra["comparison"] = compare(suite.report("metastop"), suite.report("patience-5")).to_dict()
    if by_run:
        extra["by_run"] = by_run_section(curves, predictor, price, contexts)
    with staged(json_path, png) as (json_file, png_file):
        if json_path is not None:
            write_json(suite.to_json(extra), json_file)
        if png is not None:
            _frontier_png(suite, png_file)
    if json_path != "-":
        _print_suite(suite)
        if "comparison" in extra:
            _print_comparison(extra["comparison"])
        if by_run:
            _print_by_run(extra["by_run"])


def by_run_section(curves: Any, predictor: Any, price: Price,
                   contexts: list | None = None) -> list[dict[str, Any]]:
    """The JSON's ``by_run`` section: whole runs replayed through metastop's run-level policy
    (``MultiTask(CostAware)``), patience-5 and CostAware on the run's mean curve."""
    from ..evaluate.common import plain
    from ..evaluate.runs import MeanCurve, group_runs, replay_runs
    from ..evaluate.suite import make_policy
    from ..stop.multitask import MultiTask
    from .analysis import _with_contexts

    runs = group_runs(list(curves))
    if not runs:
        raise click.ClickException("--by-run: no run_id holds curves of 2 or more tasks")
    model = _with_contexts(predictor, list(curves), contexts)
    policies = {"metastop": MultiTask(make_policy("metastop", model, price=price)),
                "patience-5 (mean curve)": MeanCurve(make_policy("patience-5")),
                "cost-aware (mean curve)": MeanCurve(make_policy("metastop", model, price=price))}
    with _progress_bar(f"replaying {len(runs)} runs") as progress:
        reports = []
        for i, (name, policy) in enumerate(policies.items()):
            reports.append(plain(replay_runs(runs, policy, name=name).to_dict()))
            progress(i + 1, len(policies))
    return reports


def _print_by_run(reports: list[dict[str, Any]]) -> None:
    rows = [[r["name"], r["n_runs"], 100 * r["token_savings_mean"], 100 * r["weighted_loss_mean"],
             100 * r["weighted_loss_p95"], 100 * r["task_loss_mean"]] for r in reports]
    print_table("by run: one stop per run, keep-best weighted checkpoint",
                ["policy", "runs", "token savings %", "weighted loss mean (pts)",
                 "weighted loss p95 (pts)", "task loss mean (pts)"], rows)


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
    context = "" if suite.context == "none" else (
        f", context {suite.context} ({suite.n_with_context} curves with siblings)")
    print_table(f"backtest: {suite.n_curves} curves, keep-{suite.keep}, price {suite.price}{context}",
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
