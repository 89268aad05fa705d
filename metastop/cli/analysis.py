"""``metastop analyze``, ``predict`` and ``plot``: what the model says about curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click

from ..stop.prices import Price
from .main import (
    _interval_text,
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
@_history_option
@library_errors
def analyze(curves_path: str, model: str | None, price: Price, png: str | None,
            max_panels: int, json_path: str | None, history: str | None) -> None:
    """Analyze curves: predicted final value and where metastop would stop.

    Each curve is replayed point by point through the default policy (CostAware at the
    shipped price, or --price). The table shows the points seen, the best value so far,
    the predicted final value with its 80% interval (predicted from the stop point, or from
    the last point of a running curve), the recommended stop point and the tokens it saves.

    \b
    Example:
      metastop analyze data/sample_curves.parquet --png reports/analyze.png
      metastop analyze run.parquet --price 0.02 --json -
      metastop analyze run.parquet --history sqlite:///history.db
    """
    from ..evaluate.analysis import analyze_curves
    from ..evaluate.plotting import CurvePanel, curve_grid
    from ..evaluate.suite import make_policy

    curves = _read_curve_files([curves_path])
    predictor = _with_history(_load_predictor(model), curves, history)
    policy = make_policy("metastop", predictor, price=price)
    with _progress_bar(f"replaying {len(curves)} curves") as progress:
        results = analyze_curves(curves, predictor, policy=policy, progress=progress)
    if png is not None:
        panels = [CurvePanel(a.curve, a.prediction, a.stop_index, a.seen) for a in results[:max_panels]]
        curve_grid(panels, png, title=f"{Path(curves_path).name}: metastop at {price}")
    if json_path is not None:
        write_json({"price": price.to_dict(), "curves": [a.to_dict() for a in results]},
                   json_path)
    if json_path != "-":
        _print_analysis(results, price)
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
@_history_option
@library_errors
def predict(curves_path: str, fraction: float, model: str | None, json_path: str | None,
            history: str | None) -> None:
    """Predict each curve's final value from its first F of the budget.

    The true final value is shown where the curve reached its budget.

    \b
    Example:
      metastop predict data/sample_curves.parquet --at-fraction 0.25
      metastop predict data/sample_curves.parquet --at-fraction 0.5 --json -
      metastop predict run.parquet --at-fraction 0.25 --history sqlite:///history.db
    """
    from ..evaluate.analysis import forecast_at

    curves = _read_curve_files([curves_path])
    results = forecast_at(curves, _with_history(_load_predictor(model), curves, history), fraction)
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

    curves = _read_curve_files([curves_path])
    try:
        chosen = [curves[i] for i in curve_ids] if curve_ids else list(curves)[:12]
    except KeyError as error:
        raise click.ClickException(f"file {curves_path}: {error.args[0]}") from None
    predictor = _load_predictor(model)
    policy = make_policy("metastop", predictor, price=price)
    results = analyze_curves(chosen, predictor, policy=policy, at_fraction=fraction)
    curve_grid([CurvePanel(a.curve, a.prediction, a.stop_index, a.seen) for a in results], output,
               columns=min(4, len(results)))
    click.echo(f"wrote {output} ({len(results)} curves)")
