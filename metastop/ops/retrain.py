"""The batch retraining pipeline: gather curves, train a challenger, promote it only if better.

Steps (``retrain``), all under the registry's lock so two retrains never interleave:

1. **Gather** the recipe's corpora (``metastop.ops.recipe``: the one recipe the shipped model
   is trained with), extra files and a folder of finished runs (curve files and controller
   decision logs, ``metastop.ops.gather``).
2. **Train** a challenger ``Predictor`` by the recipe on the curves outside the held-out
   groups (``metastop.curves.splits``); with a Dask scheduler address the boosters train on
   that cluster (``lightgbm.dask``).
3. **Evaluate** champion and challenger on the same held-out curves: MAE of the predicted
   final value at 25% of the budget observed, and the mean utility of ``CostAware`` at the
   default price (``metastop.backtest``).
4. **Promote** the challenger only if it wins by ``PROMOTION_RULE`` (or ``force``), through
   ``Registry.add`` + ``Registry.promote`` (both atomic).
5. **Report**: ``report.json`` and ``report.md`` in the output folder.

Example:
    >>> result = retrain(runs_dir="runs/finished")  # doctest: +SKIP
    >>> result.verdict.promote, result.verdict.reason                       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..curves import Curve, CurveSet, atomic_path
from ..errors import ModelError, ParameterError
from ..predict.model import Predictor, train_booster
from .registry import Registry
from ..curves.splits import RULE as HOLDOUT_RULE
from .gather import Gathered, gather_curves
from .recipe import Recipe, TrainingSet, fit, training_set

log = logging.getLogger(__name__)

EVAL_FRACTION = 0.25
MIN_IMPROVEMENT = 0.01
UTILITY_TOLERANCE = 0.0
PROMOTION_RULE = (
    "promote when the challenger's held-out MAE of the final value at 25% observed is lower "
    "than the champion's by at least {min_improvement:.0%} AND its mean CostAware utility at the "
    "default price (points per curve) is not lower than the champion's by more than "
    "{tolerance:g}; --force promotes regardless; with no usable champion the challenger is "
    "promoted")
MAX_EVAL_CURVES = 2000
"""At most this many held-out curves are evaluated (the same hash-chosen ones for both models)."""
MAX_LISTED = 200


def dask_trainer(client: Any) -> Any:
    """A ``BoosterTrainer`` that trains each booster with ``lightgbm.dask`` on ``client``'s cluster.

    The parameters are the predictor's own (``Predictor.booster_params``). Rows arrive grouped
    by curve (and so by task); they are shuffled and split into one chunk per worker, since
    LightGBM averages the per-worker quantiles when it renews the leaves of a quantile tree.
    """

    def train(params: dict[str, Any], X: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Any:
        import dask.array as da
        import lightgbm.dask as lgb_dask

        from ..predict.model import column_names

        n_workers = max(1, len(client.scheduler_info()["workers"]))
        rows = max(1, math.ceil(len(X) / n_workers))
        order = np.random.default_rng(params["seed"]).permutation(len(X))
        X, y, weight = X[order], y[order], weight[order]
        params = {k: v for k, v in params.items() if k != "num_threads"}  # Dask sets threads
        model = lgb_dask.DaskLGBMRegressor(client=client, **params)
        model.fit(da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=rows),
                  sample_weight=da.from_array(weight, chunks=rows),
                  feature_name=column_names(X.shape[1]))
        return model.booster_

    return train


def train_predictor(training: TrainingSet, *, params: Mapping[str, Any] | None = None,
                    dask_scheduler: str | None = None) -> Predictor:
    """Fit the recipe's ``Predictor``, its boosters on a Dask cluster if an address is given.

    Args:
        training: the recipe's training set.
        params: ``Predictor`` keyword arguments (default: the recipe's).
        dask_scheduler: address of a running Dask scheduler (``tcp://host:8786``), or ``None``
            to train on this machine.
    """
    if dask_scheduler is None:
        return fit(training, params, trainer=train_booster)
    from distributed import Client

    try:
        client = Client(dask_scheduler, timeout="30s")
    except OSError as error:
        raise ParameterError(f"cannot reach the Dask scheduler at dask_scheduler="
                             f"{dask_scheduler!r}: {error}") from None
    with client:
        return fit(training, params, trainer=dask_trainer(client))


# --- evaluation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """How one model does on the held-out curves.

    Attributes:
        mae_25: MAE of the predicted final value (metric units) at 25% of the budget observed.
        n_mae: curves with a prediction at 25%.
        mae_all: MAE of the median at every later observed point from every prefix of >= 2
            points (``heldout_mae``): many more predictions, so a steadier number.
        utility: mean ``CostAware`` utility at the default price (points per curve), or
            ``None`` when not computed.
        token_savings, em_loss_mean: the same backtest's savings and mean EM loss (metric units).
        n_curves: held-out curves.
    """

    mae_25: float
    n_mae: int
    mae_all: float
    utility: float | None
    token_savings: float | None
    em_loss_mean: float | None
    n_curves: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def evaluate(predictor: Any, curves: Sequence[Curve], *, utility: bool = True) -> Evaluation:
    """Held-out MAE at 25% observed and CostAware utility at the default price."""
    from ..evaluate.outcomes import backtest
    from ..evaluate.quality import prediction_report
    from ..stop.policies import CostAware
    from ..stop.prices import DEFAULT_PRICE

    prediction = prediction_report(curves, predictor, fractions=(EVAL_FRACTION,))
    mae, n_mae = prediction.mae_at[EVAL_FRACTION], prediction.n_at[EVAL_FRACTION]
    steady = heldout_mae(predictor, curves)
    if not utility:
        return Evaluation(mae, n_mae, steady, None, None, None, len(curves))
    report = backtest(curves, CostAware(predictor, price=DEFAULT_PRICE))
    return Evaluation(mae, n_mae, steady, report.utility_mean(DEFAULT_PRICE),
                      report.token_savings_mean, report.em_loss_mean, len(curves))


def heldout_mae(predictor: Any, curves: Sequence[Curve]) -> float:
    """MAE (metric units) of the median prediction at every later observed point, from every
    prefix of at least two points of every curve (one batched ``predict_many`` call)."""
    prefixes, horizons, truths = [], [], []
    for curve in curves:
        for k in range(2, len(curve)):
            prefixes.append(curve.prefix(k))
            horizons.append(curve.tokens[k:])
            truths.append(curve.scores[k:])
    if not prefixes:
        return math.nan
    predictions = predictor.predict_many(prefixes, horizons=horizons)
    errors = [np.abs(p.median - t) for p, t in zip(predictions, truths)]
    return float(np.mean(np.concatenate(errors)))


@dataclass(frozen=True)
class Verdict:
    """Whether to promote the challenger, the rule applied and the reason in numbers."""

    promote: bool
    forced: bool
    rule: str
    reason: str


def promotion_verdict(champion: Evaluation | None, challenger: Evaluation, *,
                      force: bool = False, min_improvement: float = MIN_IMPROVEMENT,
                      utility_tolerance: float = UTILITY_TOLERANCE) -> Verdict:
    """Apply ``PROMOTION_RULE`` to the two evaluations.

    Example:
        >>> a = Evaluation(0.050, 10, 0.06, 60.0, 0.3, 0.001, 10)
        >>> b = Evaluation(0.045, 10, 0.05, 60.2, 0.3, 0.001, 10)
        >>> promotion_verdict(a, b).promote, promotion_verdict(b, a).promote
        (True, False)
    """
    rule = PROMOTION_RULE.format(min_improvement=min_improvement, tolerance=utility_tolerance)
    if not math.isfinite(challenger.mae_25):
        return Verdict(force, force, rule, "the challenger gives no held-out prediction at 25%")
    if champion is None:
        return Verdict(True, False, rule, "no usable champion to compare with")
    gain = 1.0 - challenger.mae_25 / champion.mae_25 if champion.mae_25 > 0 else -math.inf
    mae_ok = gain >= min_improvement
    parts = [f"MAE@25% {champion.mae_25:.5g} -> {challenger.mae_25:.5g} "
             f"({-gain:+.1%}; needs <= {-min_improvement:+.0%})"]
    utility_ok = True
    if champion.utility is not None and challenger.utility is not None:
        utility_ok = challenger.utility >= champion.utility - utility_tolerance
        parts.append(f"utility {champion.utility:.4g} -> {challenger.utility:.4g} "
                     f"({challenger.utility - champion.utility:+.3g} pt; needs >= "
                     f"{-utility_tolerance:+g})")
    else:
        parts.append("utility not compared (not computed)")
    better = mae_ok and utility_ok
    verdict = "challenger is better" if better else "challenger is not better"
    if force and not better:
        verdict += "; promoted anyway (--force)"
    return Verdict(better or force, force and not better, rule, f"{verdict}: {'; '.join(parts)}")


# --- the pipeline -----------------------------------------------------------------------------
@dataclass
class RetrainResult:
    """What one retrain did; written as ``report.json`` and ``report.md``."""

    started: str
    finished: str | None
    registry: str
    data: dict[str, Any]
    champion: dict[str, Any]
    challenger: dict[str, Any]
    verdict: Verdict
    promoted_as: str | None
    out: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = asdict(self.verdict)
        return data


def retrain(paths: Iterable[str | os.PathLike] = (), *, runs_dir: str | os.PathLike | None = None,
            recipe: Recipe | None = None, registry: Registry | None = None,
            out: str | os.PathLike | None = None, dask_scheduler: str | None = None,
            force: bool = False, min_improvement: float = MIN_IMPROVEMENT) -> RetrainResult:
    """Run the whole pipeline (see the module docstring) and return what it did.

    Args:
        paths: extra curve files or folders, folded in beside the recipe's corpora.
        runs_dir: a folder of finished runs (curve files and decision logs).
        recipe: the training recipe (default: ``Recipe()``, the shipped model's).
        registry: where the champion lives and the challenger goes (default ``Registry()``).
        out: the report folder (default ``reports/retrain/<UTC time>``).
        dask_scheduler: train the boosters on this Dask cluster.
        force: promote even if the challenger is not better.
        min_improvement: relative MAE improvement the rule asks for.
    """
    if not 0 <= min_improvement < 1:
        raise ParameterError(f"min_improvement must be in [0, 1), but got {min_improvement=}")
    registry, recipe = registry or Registry(), recipe or Recipe()
    out = Path(out) if out is not None else Path("reports/retrain") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    started = _now()
    with registry.lock():
        gathered = _gather(paths, runs_dir)
        training = training_set(recipe, extra=gathered.curves, extra_sources=gathered.sources)
        _check_held_out(training)
        evaluated = eval_sample(training.held_out)
        champion_name, champion, champion_info = _load_champion(registry)
        log.info("training a challenger on %d curves (%d held out)", len(training.train),
                 len(training.held_out))
        started_fit = time.perf_counter()
        fitted = train_predictor(training, params=recipe.params, dask_scheduler=dask_scheduler)
        fit_s = time.perf_counter() - started_fit
        stage = fitted.save(out / "challenger")
        challenger = Predictor.load(stage)
        challenger_eval = evaluate(challenger, evaluated)
        champion_eval = evaluate(champion, evaluated) if champion is not None else None
        verdict = promotion_verdict(champion_eval, challenger_eval, force=force,
                                    min_improvement=min_improvement)
        promoted_as = None
        if verdict.promote:
            promoted_as = registry.add(stage)
            registry.promote(promoted_as, reason=verdict.reason)
    result = RetrainResult(
        started=started, finished=_now(), registry=str(registry.root),
        data=_data_summary(gathered, training),
        champion={"name": champion_name, **champion_info,
                  "evaluation": champion_eval.to_dict() if champion_eval else None},
        challenger=_challenger_summary(challenger, challenger_eval, stage, fit_s, dask_scheduler),
        verdict=verdict, promoted_as=promoted_as, out=str(out))
    write_report(result, out)
    return result


def _challenger_summary(challenger: Predictor, evaluation: Evaluation, stage: Path,
                        fit_s: float, dask_scheduler: str | None) -> dict[str, Any]:
    return {"params": challenger.get_params(), "dask_scheduler": dask_scheduler,
            "fit_seconds": round(fit_s, 2), "path": str(stage), "evaluation": evaluation.to_dict()}


def _check_held_out(training: TrainingSet) -> None:
    if len(training.held_out) == 0:
        raise ParameterError(f"the held-out split ({HOLDOUT_RULE}) left no held-out curve among "
                             f"{len(training.train)}; retraining needs curves from more runs")


def _gather(paths: Iterable[str | os.PathLike], runs_dir: str | os.PathLike | None) -> Gathered:
    paths = list(paths)
    if not paths and runs_dir is None:
        return Gathered(CurveSet(), (), (), ())
    return gather_curves(paths, runs_dir=runs_dir)


def eval_sample(curves: CurveSet, limit: int = MAX_EVAL_CURVES) -> CurveSet:
    """At most ``limit`` curves, chosen by the SHA-256 of their ids (stable across runs)."""
    if len(curves) <= limit:
        return curves
    keyed = sorted(curves, key=lambda c: hashlib.sha256(c.curve_id.encode()).hexdigest())
    return CurveSet(keyed[:limit])


def _load_champion(registry: Registry) -> tuple[str, Any, dict[str, Any]]:
    name = registry.champion_name()
    try:
        path = registry.champion()
        return name, Predictor.load(path), {"path": str(path)}
    except ModelError as error:
        log.warning("no usable champion: %s", error)
        return name, None, {"problem": str(error)}


def _data_summary(gathered: Gathered, training: TrainingSet) -> dict[str, Any]:
    n_train, n_test = len(training.train), len(training.held_out)
    return {"n_curves": n_train + n_test, "n_train": n_train, "n_held_out": n_test,
            "holdout_rule": HOLDOUT_RULE, "sources": list(training.sources),
            "n_skipped": len(gathered.skipped), "n_duplicates": len(gathered.duplicates),
            "skipped": [str(s) for s in gathered.skipped[:MAX_LISTED]],
            "duplicates": [str(s) for s in gathered.duplicates[:MAX_LISTED]]}


def write_report(result: RetrainResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out``, atomically."""
    out = Path(out)
    paths = out / "report.json", out / "report.md"
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(report_markdown(result))
    return paths


def report_markdown(result: RetrainResult) -> str:
    """The report for people: data, the two evaluations side by side, the verdict."""
    d, v = result.data, result.verdict
    champ = result.champion.get("evaluation") or {}
    chall = result.challenger["evaluation"]
    lines = [
        "# metastop retrain", "",
        f"- started {result.started}, finished {result.finished}",
        f"- registry `{result.registry}`; champion `{result.champion['name']}`"
        + (f" (unusable: {result.champion['problem']})" if "problem" in result.champion else ""),
        f"- curves: {d['n_curves']} ({d['n_train']} train, {d['n_held_out']} held out); "
        f"{d['n_skipped']} skipped, {d['n_duplicates']} duplicates",
        f"- held-out rule: {d['holdout_rule']}", "",
        "| model | MAE@25% | MAE all points | utility (pt) | token savings | EM loss | held-out curves |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ev in (("champion", champ), ("challenger", chall)):
        lines.append(f"| {name} | {_fmt(ev.get('mae_25'))} | {_fmt(ev.get('mae_all'))} | "
                     f"{_fmt(ev.get('utility'))} | "
                     f"{_fmt(ev.get('token_savings'))} | {_fmt(ev.get('em_loss_mean'))} | "
                     f"{ev.get('n_curves', '-')} |")
    lines += ["", f"**Verdict: {'promote' if v.promote else 'keep the champion'}**"
              + (f" as `{result.promoted_as}`" if result.promoted_as else ""), "",
              f"- reason: {v.reason}", f"- rule: {v.rule}"]
    if d["skipped"]:
        lines += ["", "## Skipped inputs", ""] + [f"- {s}" for s in d["skipped"]]
    if d["duplicates"]:
        lines += ["", "## Duplicates", ""] + [f"- {s}" for s in d["duplicates"]]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.5g}" if isinstance(value, float) else str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
