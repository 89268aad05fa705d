"""``metastop backtest``: replay finished curves through stopping policies."""

from __future__ import annotations

from typing import Any

import click

from ..stop.prices import Price
from .analysis import HISTORY_HELP, _echo_context
from .main import (
    _load_predictor,
    _model_option,
    _price_option,
    _progress_bar,
    _read_curve_files,
    library_errors,
    main,
    print_table,
    write_json,
)


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
@click.option("--context", type=click.Choice(["none", "leave-one-run-out"]), default=None,
              help="Task memory: none, or give each curve the finished runs of its task from "
                   "other runs (same task and metric), from --history, else from the curves "
                   "of the files. Default: leave-one-run-out with --history, else none.")
@click.option("--history", default=None, metavar="URL", help=HISTORY_HELP)
@library_errors
def backtest(curves_paths: tuple[str, ...], json_path: str | None, policies: tuple[str, ...],
             price: Price, keep: str, png: str | None, no_sweep: bool,
             model: str | None, limit: int | None, seed: int, context: str | None,
             history: str | None) -> None:
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

    everything = _read_curve_files(curves_paths)
    curves = sample(everything, limit, seed=seed)
    names = tuple(dict.fromkeys(policies)) or STANDARD_POLICIES
    predictor = _load_predictor(model) if any(not n.startswith("patience-") for n in names) else None
    contexts, source = _contexts(curves, everything, _context_mode(context, history), history)
    with _progress_bar(f"backtesting {len(curves)} curves") as progress:
        suite = run_suite(curves, predictor, policies=names, price=price, keep=keep,
                          sweeps=not no_sweep, contexts=contexts, progress=progress)
    extra = {"files": list(curves_paths), "context_source": source}
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


def _context_mode(context: str | None, history: str | None) -> str:
    """The --context to use: as given, else leave-one-run-out when --history is given."""
    if context == "none" and history is not None:
        raise click.UsageError("--history gives each curve its context, --context none asks "
                               "for none: drop one of them")
    return context or ("leave-one-run-out" if history is not None else "none")


def _contexts(curves: Any, everything: Any, mode: str,
              history: str | None) -> tuple[list | None, str | None]:
    """Each curve's context for ``mode`` and where it came from (the store or the files)."""
    if mode == "none":
        return None, None
    from ..curves.history import mask_url
    from ..evaluate.contexts import leave_one_run_out_contexts

    if history is not None:
        contexts, source = leave_one_run_out_contexts(curves, history=history), mask_url(history)
    else:
        contexts, source = leave_one_run_out_contexts(curves, pool=everything), "files"
    _echo_context(sum(x is not None for x in contexts), len(curves), source)
    return contexts, source


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
