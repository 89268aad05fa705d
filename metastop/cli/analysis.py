"""``metastop analyze``, ``predict`` and ``plot``: what the model says about curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click

from ..stop.prices import Price
from .main import (
    JSON,
    PNG,
    _interval_text,
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

HISTORY_HELP = ("History store URL (e.g. sqlite:///history.db): each curve is predicted with "
                "the finished runs of its task stored there (same task and metric, another "
                "run; never its own).")


def _history_option(command: Callable) -> Callable:
    return click.option("--history", default=None, metavar="URL", help=HISTORY_HELP)(command)


def _with_history(predictor: Any, curves: Sequence[Any], history: str | None) -> Any:
    """``predictor``, predicting each curve with its context from ``history`` when given."""
    if history is None:
        return predictor
    from ..evaluate.contexts import ContextPredictor, leave_one_run_out_contexts

    contexts = leave_one_run_out_contexts(curves, history=history)
    _echo_context(sum(x is not None for x in contexts), len(curves), history)
    return ContextPredictor.of(predictor, curves, contexts)


def _echo_context(n_with: int, n: int, source: str) -> None:
    """Say on standard error how many curves have a context, and from where."""
    from ..curves.history import mask_url

    shown = mask_url(source) if "://" in source else source
    click.echo(f"context: {n_with} of {n} curves have finished runs of their task in {shown}",
               err=True)


CONTEXT_HELP = ("Task memory: none, or give each curve the finished runs of its task from "
                "other runs (same task and metric), from --history, else from the curves of "
                "the file. Default: leave-one-run-out with --history, else none.")


def _selection_options(command: Callable) -> Callable:
    """--task, --metric, --held-out, --limit and --seed: which curves of the file to use."""
    for option in reversed((
        click.option("--task", default=None, metavar="NAME", help="Only the curves of this task."),
        click.option("--metric", default=None, metavar="NAME", help="Only the curves of this metric."),
        click.option("--held-out", is_flag=True,
                     help="Only curves of the held-out split (never seen by the shipped model)."),
        click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
                     help="Use a seeded random sample of at most N curves."),
        _seed_option,
    )):
        command = option(command)
    return command


def _select(curves: Any, *, task: str | None = None, metric: str | None = None,
            held_out: bool = False) -> Any:
    """The curves of ``task`` and ``metric`` (each when given), of the held-out split if asked."""
    if task is not None or metric is not None:
        curves = curves.filter(lambda c: (task is None or c.task == task)
                               and (metric is None or c.metric == metric))
    if held_out:
        from ..curves.splits import split_holdout

        curves = split_holdout(curves)[1]
    if not len(curves):
        raise click.ClickException(f"no curve left after --task {task} --metric {metric}"
                                   f"{' --held-out' if held_out else ''}")
    return curves


def context_mode(context: str | None, history: str | None) -> str:
    """The --context to use: as given, else leave-one-run-out when --history is given."""
    if context == "none" and history is not None:
        raise click.UsageError("--history gives each curve its context, --context none asks "
                               "for none: drop one of them")
    return context or ("leave-one-run-out" if history is not None else "none")


def curve_contexts(curves: Any, pool: Any, mode: str,
                   history: str | None) -> tuple[list | None, str | None]:
    """Each curve's context for ``mode`` and where it came from (the store or the files)."""
    if mode == "none":
        return None, None
    from ..curves.history import mask_url
    from ..evaluate.contexts import leave_one_run_out_contexts

    if history is not None:
        contexts, source = leave_one_run_out_contexts(curves, history=history), mask_url(history)
    else:
        contexts, source = leave_one_run_out_contexts(curves, pool=pool), "files"
    _echo_context(sum(x is not None for x in contexts), len(curves), source)
    return contexts, source


def _with_contexts(predictor: Any, curves: Sequence[Any], contexts: list | None) -> Any:
    if contexts is None:
        return predictor
    from ..evaluate.contexts import ContextPredictor

    return ContextPredictor.of(predictor, curves, contexts)


@main.command()
@click.argument("curves_path", metavar="CURVES", type=click.Path(dir_okay=False))
@_model_option
@_price_option
@click.option("--png", type=click.Path(dir_okay=False), default=None,
              help="Write a summary PNG (a .png path): a grid of the curves with prediction "
                   "and stop point.")
@click.option("--max-panels", type=click.IntRange(1, 200), default=36, show_default=True,
              help="Curves drawn in the PNG grid (the first ones).")
@click.option("--json", "json_path", default=None, metavar="PATH",
              help="Write the analysis as JSON to PATH (.json, or '-' for standard output): 'price', "
                   "'curves' (per curve: predicted_final, interval_80, stop_index, "
                   "tokens_saved, decision, ...) and 'summary'.")
@_selection_options
@click.option("--context", type=click.Choice(["none", "leave-one-run-out"]), default=None,
              help=CONTEXT_HELP)
@_history_option
@click.option("--baseline", default="patience-5", show_default=True, metavar="POLICY",
              help="Policy the summary line compares with (replayed on the same curves, "
                   "keep-best), e.g. patience-5.")
@library_errors
def analyze(curves_path: str, model: str | None, price: Price, png: str | None,
            max_panels: int, json_path: str | None, task: str | None, metric: str | None,
            held_out: bool, limit: int | None, seed: int, context: str | None,
            history: str | None, baseline: str) -> None:
    """Analyze curves: predicted final value and where metastop would stop.

    Each curve is replayed point by point through the default policy (CostAware at the
    shipped price, or --price). The table shows the points seen, the best value so far,
    the predicted final value with its 80% interval (predicted from the stop point, or from
    the last point of a running curve), the recommended stop point and the tokens it saves.
    A last line sums it up against --baseline on the same curves.

    \b
    Example:
      metastop analyze data/sample_curves.parquet --png reports/analyze.png
      metastop analyze pythia_evals.parquet --task lambada_openai --metric acc \\
          --held-out --limit 8 --context leave-one-run-out
      metastop analyze run.parquet --price 0.02 --json -
      metastop analyze run.parquet --history sqlite:///history.db
    """
    from ..evaluate.analysis import analyze_curves, sample
    from ..evaluate.plotting import CurvePanel, curve_grid
    from ..evaluate.suite import make_policy

    check_output(png, "--png", suffixes=PNG)
    check_output(json_path, "--json", suffixes=JSON)
    pool = _select(_read_curve_files([curves_path]), task=task, metric=metric)
    curves = sample(_select(pool, held_out=True) if held_out else pool, limit, seed=seed)
    contexts, _ = curve_contexts(curves, pool, context_mode(context, history), history)
    predictor = _with_contexts(_load_predictor(model), curves, contexts)
    policy = make_policy("metastop", predictor, price=price)
    with _progress_bar(f"replaying {len(curves)} curves") as progress:
        results = analyze_curves(curves, predictor, policy=policy, progress=progress)
    summary = analysis_summary(results, baseline)
    with staged(png, json_path) as (png_file, json_file):
        if png is not None:
            panels = [CurvePanel(a.curve, a.prediction, a.stop_index, a.seen)
                      for a in results[:max_panels]]
            title = _figure_title(Path(curves_path).name, results, price)
            curve_grid(panels, png_file, title=title)
        if json_path is not None:
            write_json({"price": price.to_dict(), "curves": [a.to_dict() for a in results],
                        "summary": summary}, json_file)
    if json_path != "-":
        _print_analysis(results, price)
        click.echo(_summary_text(summary))
        if png is not None:
            click.echo(f"wrote {png}")


def _figure_title(name: str, results: Sequence[Any], price: Any) -> str:
    kinds = sorted({f"{a.curve.task}/{a.curve.metric}" for a in results if a.curve.task})
    what = ", ".join(kinds[:3]) + (", ..." if len(kinds) > 3 else "")
    return f"{name}{': ' + what if what else ''} - {len(results)} curves, metastop at {price}"


def _gain(a: Any) -> float | None:
    """Predicted improvement of the final value over the best of the points the prediction
    saw (metric units, > 0 is better)."""
    if a.predicted_final is None:
        return None
    return float(a.curve.sign * (a.predicted_final - a.curve.prefix(a.seen).best))


def analysis_summary(results: Sequence[Any], baseline: str | None = "patience-5") -> dict[str, Any]:
    """Counts and means over analysed curves; for finished curves, metastop's savings and
    EM loss (keep-best) beside ``baseline``'s, replayed on the same curves."""
    import numpy as np

    from ..evaluate.outcomes import PolicyReport, backtest, outcome
    from ..evaluate.suite import make_policy

    gains = [g for g in (_gain(a) for a in results) if g is not None]
    out: dict[str, Any] = {
        "n_curves": len(results), "n_stop": sum(a.stop_index is not None for a in results),
        "mean_predicted_gain": float(np.mean(gains)) if gains else None,
        "tokens_saved_fraction_mean": float(np.mean(
            [a.tokens_saved / a.curve.budget if a.curve.budget else 0.0 for a in results]))}
    done = [a for a in results if a.curve.tokens[-1] >= a.curve.budget]
    if done:
        mine = PolicyReport.from_outcomes("metastop", {}, [
            outcome(a.curve, len(a.curve) - 1 if a.stop_index is None else a.stop_index)
            for a in done])
        reports = [mine] + ([backtest([a.curve for a in done], make_policy(baseline), name=baseline)]
                            if baseline else [])
        out["replay"] = {r.name: {"n_curves": r.n_curves,
                                  "token_savings_mean": r.token_savings_mean,
                                  "em_loss_mean": r.em_loss_mean, "em_loss_p95": r.em_loss_p95}
                         for r in reports}
    return out


def _summary_text(summary: dict[str, Any]) -> str:
    from ..stop.prices import to_points

    gain = summary["mean_predicted_gain"]
    text = (f"summary: {summary['n_curves']} curves, mean predicted gain after the stop point "
            f"{'-' if gain is None else f'{gain:+.4g}'}; metastop stops {summary['n_stop']} of "
            f"{summary['n_curves']}, saving {summary['tokens_saved_fraction_mean']:.0%} of tokens")
    replay = summary.get("replay", {})
    for name, r in replay.items():
        loss = f"EM loss {to_points(r['em_loss_mean']):.2f} pts mean"
        text += (f", {loss}" if name == "metastop" else
                 f"; {name} saves {r['token_savings_mean']:.0%}, {loss}")
    return text + (" (keep-best replay)" if replay else "")


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
              help="Write the predictions as JSON to PATH (.json, or '-' for standard output): "
                   "'at_fraction', 'curves' (per curve: predicted_final, interval_80, "
                   "true_final, ...) and 'summary'.")
@_history_option
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Use a seeded random sample of at most N curves.")
@_seed_option
@library_errors
def predict(curves_path: str, fraction: float, model: str | None, json_path: str | None,
            history: str | None, limit: int | None, seed: int) -> None:
    """Predict each curve's final value from its first F of the budget.

    The true final value is shown where the curve reached its budget.

    \b
    Example:
      metastop predict data/sample_curves.parquet --at-fraction 0.25
      metastop predict data/sample_curves.parquet --at-fraction 0.5 --json -
      metastop predict run.parquet --at-fraction 0.25 --history sqlite:///history.db
    """
    from ..evaluate.analysis import forecast_at, sample

    check_output(json_path, "--json", suffixes=JSON)
    curves = sample(_read_curve_files([curves_path]), limit, seed=seed)
    predictor = _with_history(_load_predictor(model), curves, history)
    with _progress_bar(f"predicting {len(curves)} curves") as progress:
        results = []
        for start in range(0, len(curves), PREDICT_CHUNK):
            results += forecast_at(curves[start:start + PREDICT_CHUNK], predictor, fraction)
            progress(len(results), len(curves))
    summary = _predict_summary(results)
    if json_path is not None:
        write_json({"at_fraction": fraction, "curves": [
            {k: v for k, v in a.to_dict().items() if not k.startswith(("stop", "tokens_saved", "decision"))}
            for a in results], "summary": summary}, json_path)
    if json_path == "-":
        return
    rows = []
    for a in results:
        error = None if a.true_final is None else abs(a.predicted_final - a.true_final)
        rows.append([a.curve.curve_id, a.seen, a.predicted_final, _interval_text(a.interval),
                     a.true_final, error])
    print_table(f"final value predicted from the first {fraction:.0%} of the budget",
                ["curve", "points seen", "predicted final", "80% interval", "true final", "abs error"], rows)
    gain, mae = summary["mean_predicted_gain"], summary["mae"]
    click.echo(f"summary: {summary['n_curves']} curves, mean predicted gain "
               f"{'-' if gain is None else f'{gain:+.4g}'}, MAE {'-' if mae is None else f'{mae:.4g}'} "
               f"on {summary['n_finished']} finished curves")


PREDICT_CHUNK = 256
"""Curves predicted per batch by ``predict`` (the progress bar moves once per batch)."""


def _predict_summary(results: Sequence[Any]) -> dict[str, Any]:
    import numpy as np

    gains = [g for g in (_gain(a) for a in results) if g is not None]
    errors = [abs(a.predicted_final - a.true_final) for a in results
              if a.true_final is not None and a.predicted_final is not None]
    return {"n_curves": len(results), "n_finished": len(errors),
            "mean_predicted_gain": float(np.mean(gains)) if gains else None,
            "mae": float(np.mean(errors)) if errors else None}


@main.command()
@click.argument("curves_path", metavar="CURVES", type=click.Path(dir_okay=False))
@click.option("--curve", "curve_ids", multiple=True, metavar="ID",
              help="Curve to draw (repeatable). Default: the first 12.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The PNG to write (must end in .png; its folder must exist).")
@click.option("--at-fraction", "fraction", type=click.FloatRange(0, 1, min_open=True), default=None,
              metavar="F", help="Predict from the first F of the budget instead of the stop point.")
@_model_option
@_price_option
@library_errors
def plot(curves_path: str, curve_ids: tuple[str, ...], output: str, fraction: float | None,
         model: str | None, price: Price) -> None:
    """Draw curves with their observed points, predicted band and stop point.

    Points after the prediction point are drawn faded: the model did not see them.

    \b
    Example:
      metastop plot data/sample_curves.parquet -o reports/curves.png
      metastop plot runs.parquet --curve run7/em --at-fraction 0.3 -o run7.png
    """
    from ..evaluate.analysis import analyze_curves
    from ..evaluate.plotting import CurvePanel, curve_grid
    from ..evaluate.suite import make_policy

    check_output(output, "-o/--output", suffixes=PNG)
    curves = _read_curve_files([curves_path])
    try:
        chosen = [curves[i] for i in curve_ids] if curve_ids else list(curves)[:12]
    except KeyError as error:
        raise click.ClickException(f"file {curves_path}: {error.args[0]}") from None
    predictor = _load_predictor(model)
    policy = make_policy("metastop", predictor, price=price)
    results = analyze_curves(chosen, predictor, policy=policy, at_fraction=fraction)
    with staged(output) as (png_file,):
        curve_grid([CurvePanel(a.curve, a.prediction, a.stop_index, a.seen) for a in results],
                   png_file, columns=min(4, len(results)))
    click.echo(f"wrote {output} ({len(results)} curves)")
