"""Benchmark the predictor on held-out groups, with and without task memory, against the
context-free model, the sibling-median rule and curve-fitting baselines; and its speed.

For each corpus (``metastop.ops.recipe.default_corpora``: curves carry their task), the
held-out groups of ``metastop.curves.splits`` (whole runs; whole datasets for LCDB), never seen
in training, are cut at observed budget fractions 0.1, 0.25 and 0.5 (the points with
``tokens <= f * budget``) and the final value is predicted. Each held-out curve's context is
its leave-one-run-out siblings from the whole corpus (every split: the finished curves of the
same task and metric from other runs, never its own; at most 64, a sample seeded by the curve
id). Reported per corpus and fraction, MAE in the metric's units, of:

- ``metastop``: the model (``--model``, default the shipped one) with that context;
- ``metastop_no_context``: the same model without context (a run with no finished sibling);
- ``context_free``: the previous shipped model without task memory (``--context-free-model``);
- ``sibling_median``: the rule that learns nothing, the value now plus the siblings' median
  change from the fraction seen to the end (``metastop.predict.context``);
- the baselines: last value, best so far, each parametric family fitted by
  ``metastop.predict.fits``, best-of-fits (lowest rmse);

and the coverage of each model's 80% interval (``coverage_80_model_only`` leaves out the
low-confidence prior predictions of prefixes with fewer than two points). Each corpus's
``coverage_80`` pools its three fractions, like ``coverage_80`` in the backtest JSON of
DESIGN.md; the coverage target applies to it, with and without context.

Task-memory targets (LCDB, Pythia accuracies, generated EM; at 25% observed, on the curves with
at least 3 siblings): the model's MAE with context <= 0.85x the best context-free predictor
(the context-free model, the model without context and every baseline; 0.7x on EM) and <= 0.9x
the sibling-median rule. Without siblings: the model without context is no worse than the
context-free model beyond bootstrap noise (``no_siblings.diff_ci95``, a paired bootstrap 95%
interval of the MAE difference over curves; the target holds when its low end is <= 0).

Baselines are clipped to the metric's range (``metastop.curves.metric_range``), so that a
parametric fit extrapolated to the budget cannot blow up the MAE: a bounded metric (accuracy,
EM, F1) to [0, 1] (to [0, 100] for a curve logged on 0-100, i.e. with an observed value above
1), any other metric to its floor (1 for a perplexity, else 0) when every observed value is
above it. The predictor keeps its own predictions in the same range.

Two hindsight references say how far the MAE targets are from what any predictor could
reach. ``floor`` (``noise_floor_mae``; ``noise_floor_ratio`` divides it by the best baseline's
MAE) is the noise-floor MAE, sqrt(2/pi) * mean sigma, where sigma is each held-out curve's
evaluation noise estimated robustly from the second differences of its second half: even a
predictor that knew the noise-free final value would make this error. ``hind3``
(``hindsight_mean3_ratio``) is the same ratio for predicting the final value by the mean of
the three points before it, an assumption-free reference that knows almost the whole future.

Both models must have been trained on the train split only (``n_curves_in_holdout == 0`` in
their manifests); a model that saw held-out curves is refused.

Usage:
    .venv/bin/python scripts/bench_predictor.py [--model DIR] [--max-curves 3000]
    .venv/bin/python scripts/bench_predictor.py --limit 200 --corpus em_curves --context both
Writes reports/bench_predictor.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from metastop.curves import Curve, CurveSet, metric_range
from metastop.curves.splits import RULE, split_holdout
from metastop.evaluate.contexts import LEAVE_ONE_RUN_OUT, NONE, leave_one_run_out_contexts
from metastop.evaluate.quality import seen_at
from metastop.ops.recipe import default_corpora
from metastop.predict.context import sibling_median_forecast
from metastop.predict.fits import FAMILY_NAMES, fit_families
from metastop.predict.model import Predictor

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {corpus.name: corpus for corpus in default_corpora()}
ACCURACY = "pythia_evals_acc"  # the Pythia accuracy curves alone, without perplexities
EXACT_MATCH = "em_curves_em"  # the generated EM curves alone, without their eval-loss twins
SUBSETS = {"pythia_evals": (ACCURACY, lambda c: c.metric in ("acc", "acc_norm")),
           "em_curves": (EXACT_MATCH, lambda c: c.metric == "exact_match")}
FRACTIONS = (0.1, 0.25, 0.5)
BASELINES = ("last", "best", *FAMILY_NAMES, "best_of_fits")
MODELS = ("metastop", "metastop_no_context", "context_free")
MAD_TO_STD = 1.4826  # a Gaussian's std over its median absolute deviation
MIN_NOISE_POINTS = 6  # fewer points give no noise estimate
MIN_SIBLINGS = 3
CONTEXT_TARGETS = {"lcdb": 0.85, ACCURACY: 0.85, EXACT_MATCH: 0.7}
"""Per corpus: the most the model's MAE with context may be, as a share of the best
context-free predictor's, at 25% observed."""
SIBLING_RATIO_MAX = 0.9
BOOTSTRAP = 2000
CHOICES = {"none": (NONE,), "leave-one-run-out": (LEAVE_ONE_RUN_OUT,),
           "both": (NONE, LEAVE_ONE_RUN_OUT)}


def baseline_finals(prefixes: list[Curve]) -> dict[str, np.ndarray]:
    """Each baseline's predicted final value (metric units) for every prefix, clipped to the
    metric's range (``metastop.curves.metric_range``)."""
    width = max(len(c) for c in prefixes)
    x = np.ones((len(prefixes), width))
    y = np.zeros((len(prefixes), width))
    w = np.zeros((len(prefixes), width))
    for i, c in enumerate(prefixes):
        x[i, :len(c)] = c.tokens / c.budget
        y[i, :len(c)] = c.scores
        w[i, :len(c)] = 1.0
    fits = fit_families(x, y, w)
    scores = {name: fits[name].predict(np.ones((len(prefixes), 1)))[:, 0] for name in FAMILY_NAMES}
    rmse = np.stack([fits[name].rmse for name in FAMILY_NAMES])
    scores["best_of_fits"] = np.stack([scores[n] for n in FAMILY_NAMES])[
        np.argmin(rmse, axis=0), np.arange(len(prefixes))]
    scores["last"] = np.array([c.scores[-1] for c in prefixes])
    scores["best"] = np.array([c.scores.max() for c in prefixes])
    sign = np.array([c.sign for c in prefixes])
    low, high = np.array([metric_range(c.metric, c.values) for c in prefixes]).T
    return {name: np.clip(scores[name] * sign, low, high) for name in BASELINES}


def noise_sigma(curve: Curve) -> float:
    """Robust i.i.d. evaluation-noise std of a whole curve, in metric units (hindsight).

    1.4826 * median |second differences over the curve's second half| / sqrt(6): second
    differences remove a smooth trend, and for i.i.d. Gaussian noise they have std
    sqrt(6) sigma. ``nan`` for curves with fewer than ``MIN_NOISE_POINTS`` points.
    """
    if len(curve) < MIN_NOISE_POINTS:
        return np.nan
    second = np.diff(curve.values[len(curve) // 2:], n=2)
    return MAD_TO_STD * float(np.median(np.abs(second))) / np.sqrt(6.0)


def hindsight_mean3(curve: Curve) -> float:
    """The mean of the three values before the final one (``nan`` below four points)."""
    return float(np.mean(curve.values[-4:-1])) if len(curve) >= 4 else np.nan


def hindsight_references(curves: list[Curve], truth: np.ndarray, best_mae: float) -> dict:
    """Noise-floor and mean-of-3 hindsight MAEs of the final value, and their ratios to the
    best baseline's MAE ``best_mae``."""
    sigma = np.array([noise_sigma(c) for c in curves])
    mean3 = np.array([hindsight_mean3(c) for c in curves])
    has_sigma, has_mean3 = np.isfinite(sigma), np.isfinite(mean3)
    floor = float(np.sqrt(2 / np.pi) * sigma[has_sigma].mean()) if has_sigma.any() else np.nan
    hind3 = float(np.abs(mean3 - truth)[has_mean3].mean()) if has_mean3.any() else np.nan
    scale = max(best_mae, 1e-12)
    return {"noise_floor_mae": _finite_or_none(floor),
            "noise_floor_ratio": _finite_or_none(floor / scale),
            "noise_floor_n": int(has_sigma.sum()),
            "hindsight_mean3_mae": _finite_or_none(hind3),
            "hindsight_mean3_ratio": _finite_or_none(hind3 / scale),
            "hindsight_mean3_n": int(has_mean3.sum())}


def _finite_or_none(x: float) -> float | None:
    """``x``, or ``None`` (JSON null) when it is nan: no curve had enough points."""
    return float(x) if np.isfinite(x) else None


def _ratio(x: float | None, width: int = 0) -> str:
    """A ratio with two decimals, or ``-`` when it could not be measured."""
    return f"{x:{width}.2f}" if x is not None else f"{'-':>{width}s}"


def predictions(models: dict[str, Predictor], curves: list[Curve], prefixes: list[Curve],
                contexts: list, modes: tuple[str, ...]) -> dict[str, list]:
    """Each model variant's predictions of the prefixes at their curves' last tokens."""
    horizons = [[c.tokens[-1]] for c in curves]
    out = {"context_free": models["context_free"].predict_many(prefixes, horizons)}
    if NONE in modes:
        out["metastop_no_context"] = models["metastop"].predict_many(prefixes, horizons)
    if LEAVE_ONE_RUN_OUT in modes:
        out["metastop"] = models["metastop"].predict_many(prefixes, horizons, contexts=contexts)
    return out


def fraction_row(models: dict[str, Predictor], curves: list[Curve], prefixes: list[Curve],
                 contexts: list, modes: tuple[str, ...], rng: np.random.Generator) -> dict:
    """Every predictor's MAE and every model's coverage at one fraction, with the subsets."""
    truth = np.array([c.values[-1] for c in curves])
    final_scores = np.array([c.scores[-1] for c in curves])
    finals: dict[str, np.ndarray] = {}
    row: dict = {"n": len(curves)}
    for name, preds in predictions(models, curves, prefixes, contexts, modes).items():
        finals[name] = np.array([c.to_metric(p.final_median) for c, p in zip(curves, preds)])
        inside = np.array([p.low[-1] <= y <= p.high[-1] for p, y in zip(preds, final_scores)])
        prior = np.array([p.low_confidence for p in preds])
        row[f"{name}_coverage_80"] = float(np.mean(inside))
        row[f"{name}_n_inside"] = int(inside.sum())
        row[f"{name}_coverage_80_model_only"] = (float(np.mean(inside[~prior]))
                                                 if (~prior).any() else None)
        row[f"{name}_low_confidence_share"] = float(np.mean(prior))
    if LEAVE_ONE_RUN_OUT in modes:
        finals["sibling_median"] = np.array([
            sibling_median_forecast(p, x) if x is not None else p.values[-1]
            for p, x in zip(prefixes, contexts)])
    finals.update(baseline_finals(prefixes))
    errors = {name: np.abs(values - truth) for name, values in finals.items()}
    row.update({f"{name}_mae": float(e.mean()) for name, e in errors.items()})
    main = "metastop" if "metastop" in errors else "metastop_no_context"
    row["main"] = main
    row["metastop_mae"] = row[f"{main}_mae"]
    row["coverage_80"], row["n_inside"] = row[f"{main}_coverage_80"], row[f"{main}_n_inside"]
    best_name = min(BASELINES, key=lambda n: row[f"{n}_mae"])
    row["best_baseline"] = best_name
    row["ratio_to_best_baseline"] = row["metastop_mae"] / max(row[f"{best_name}_mae"], 1e-12)
    row.update(hindsight_references(curves, truth, row[f"{best_name}_mae"]))
    siblings = np.array([0 if x is None else len(x) for x in contexts])
    if LEAVE_ONE_RUN_OUT in modes:
        row["with_siblings"] = sibling_subset(errors, siblings >= MIN_SIBLINGS)
    if NONE in modes:
        row["no_siblings"] = no_sibling_check(errors, int((siblings == 0).sum()), rng)
    return row


def sibling_subset(errors: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """MAEs on the curves with at least ``MIN_SIBLINGS`` siblings, and the context ratios."""
    out: dict = {"min_siblings": MIN_SIBLINGS, "n": int(mask.sum())}
    if not mask.any():
        return out
    maes = {name: float(e[mask].mean()) for name, e in errors.items()}
    free = [n for n in ("context_free", "metastop_no_context", *BASELINES) if n in maes]
    best = min(free, key=maes.get)
    out.update({f"{n}_mae": maes[n] for n in ("metastop", "sibling_median", *free)})
    out.update({"best_context_free": best, "best_context_free_mae": maes[best],
                "ratio_to_best_context_free": maes["metastop"] / max(maes[best], 1e-12),
                "ratio_to_sibling_median": maes["metastop"] / max(maes["sibling_median"], 1e-12)})
    return out


def no_sibling_check(errors: dict[str, np.ndarray], n_natural: int,
                     rng: np.random.Generator) -> dict:
    """The model without context against the context-free model on every curve (context
    withheld): the MAE difference and its paired bootstrap 95% interval over curves."""
    diff = errors["metastop_no_context"] - errors["context_free"]
    draws = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    means = diff[draws].mean(axis=1)
    return {"n": len(diff), "n_without_siblings_naturally": n_natural,
            "metastop_no_context_mae": float(errors["metastop_no_context"].mean()),
            "context_free_mae": float(errors["context_free"].mean()),
            "diff": float(diff.mean()),
            "diff_ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "bootstrap": BOOTSTRAP}


def evaluate_corpus(models: dict[str, Predictor], test: list[Curve], contexts: list,
                    modes: tuple[str, ...], rng: np.random.Generator) -> dict:
    out: dict = {"n_curves": len(test),
                 "median_points": float(np.median([len(c) for c in test])) if test else 0.0,
                 "n_curves_with_context": sum(x is not None for x in contexts), "fractions": {}}
    for f in FRACTIONS:
        cut = [(c, p, x) for c, x in zip(test, contexts) if (p := seen_at(c, f)) is not None]
        if cut:
            curves, prefixes, ctx = (list(v) for v in zip(*cut))
            out["fractions"][str(f)] = fraction_row(models, curves, prefixes, ctx, modes, rng)
    rows = out["fractions"].values()
    for name in ("metastop", "metastop_no_context", "context_free"):
        if rows and all(f"{name}_n_inside" in r for r in rows):
            out[f"{name}_coverage_80"] = (sum(r[f"{name}_n_inside"] for r in rows)
                                          / max(1, sum(r["n"] for r in rows)))
    main = "metastop" if LEAVE_ONE_RUN_OUT in modes else "metastop_no_context"
    out["coverage_80"] = out.get(f"{main}_coverage_80")
    return out


def latency(predictor: Predictor, curves: list[Curve], contexts: list, calls: int) -> dict:
    """One-curve p50/p99 (default 8 horizons; without and with a context) and batch
    throughput at 25% observed."""
    candidates = [(p, x) for c, x in zip(curves, contexts)
                  if len(c) >= 8 and (p := seen_at(c, 0.5)) is not None]
    one, context = candidates[0]
    out = {"one_curve_points": len(one), "calls": calls}
    for label, given in (("", None), ("_context", context)):
        if label and given is None:
            continue
        predictor.predict(one, context=given)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            predictor.predict(one, context=given)
            times.append(time.perf_counter() - start)
        out[f"one_curve{label}_p50_ms"] = 1e3 * float(np.percentile(times, 50))
        out[f"one_curve{label}_p99_ms"] = 1e3 * float(np.percentile(times, 99))
    out["context_siblings"] = 0 if context is None else len(context)
    batch = [p for c in curves if (p := seen_at(c, 0.25)) is not None][:4000]
    start = time.perf_counter()
    predictor.predict_many(batch)
    out.update({"batch_curves": len(batch), "batch_curves_per_s": len(batch) / (time.perf_counter() - start)})
    return out


def _floor(x: float | None) -> str:
    """The noise-floor MAE with four decimals, or ``-`` when no curve gave one."""
    return f"{x:8.4f}" if x is not None else f"{'-':>8s}"


def _mae(row: dict, name: str) -> str:
    value = row.get(f"{name}_mae")
    return f"{value:8.4f}" if value is not None else f"{'-':>8s}"


def print_table(report: dict) -> None:
    names = ("metastop", "metastop_no_context", "context_free", "sibling_median", "last", "best",
             "best_of_fits")
    labels = ("context", "no-ctx", "ctx-free", "sib-med", "last", "best", "fits")
    print(f"{'corpus':18s} {'f':>5s} {'n':>5s} " + " ".join(f"{n:>8s}" for n in labels)
          + f" {'floor':>8s} {'cov ctx':>7s} {'cov no':>7s} {'/bestCF':>7s} {'/sibmed':>7s}")
    print("(MAE of the final value in metric units; context = the model with leave-one-run-out "
          "siblings; floor = noise-floor MAE; /bestCF, /sibmed = context MAE over the best "
          "context-free predictor's and the sibling-median rule's, on curves with >= 3 siblings)")
    for corpus, result in report["corpora"].items():
        for f, row in result["fractions"].items():
            sub = row.get("with_siblings", {})
            cov = [row.get(f"{n}_coverage_80") for n in ("metastop", "metastop_no_context")]
            print(f"{corpus:18s} {f:>5s} {row['n']:5d} " + " ".join(_mae(row, n) for n in names)
                  + f" {_floor(row['noise_floor_mae'])} "
                  + " ".join(_ratio(c, 7) for c in cov)
                  + f" {_ratio(sub.get('ratio_to_best_context_free'), 7)}"
                  + f" {_ratio(sub.get('ratio_to_sibling_median'), 7)}")
    lat = report["latency"]
    print(f"latency: one curve p50 {lat['one_curve_p50_ms']:.2f} ms, p99 "
          f"{lat['one_curve_p99_ms']:.2f} ms; with {lat['context_siblings']} siblings p99 "
          f"{lat.get('one_curve_context_p99_ms', float('nan')):.2f} ms; batch "
          f"{lat['batch_curves_per_s']:.0f} curves/s")
    for line in report["targets"]:
        print(line)


def _mark(ok: bool) -> str:
    return "MET " if ok else "MISS"


def context_targets(corpus: str, row: dict) -> list[str]:
    """The task-memory target lines of one corpus at 25% observed."""
    lines = []
    sub = row.get("with_siblings")
    if corpus in CONTEXT_TARGETS and sub and sub["n"]:
        limit = CONTEXT_TARGETS[corpus]
        ok = (sub["ratio_to_best_context_free"] <= limit
              and sub["ratio_to_sibling_median"] <= SIBLING_RATIO_MAX)
        lines.append(f"{_mark(ok)} {corpus}: MAE@0.25 with context {sub['metastop_mae']:.4f} = "
                     f"{sub['ratio_to_best_context_free']:.2f} x best context-free "
                     f"({sub['best_context_free']} {sub['best_context_free_mae']:.4f}, target <= "
                     f"{limit}), {sub['ratio_to_sibling_median']:.2f} x sibling-median "
                     f"({sub['sibling_median_mae']:.4f}, target <= {SIBLING_RATIO_MAX}); "
                     f"context-free model {sub['context_free_mae']:.4f}, last "
                     f"{sub['last_mae']:.4f}, noise floor {_floor(row['noise_floor_mae']).strip()}"
                     f" ({sub['n']} curves with >= {MIN_SIBLINGS} siblings)")
    free = row.get("no_siblings")
    if free:
        low, high = free["diff_ci95"]
        lines.append(f"{_mark(low <= 0)} {corpus}: without siblings, MAE@0.25 "
                     f"{free['metastop_no_context_mae']:.4f} vs context-free model "
                     f"{free['context_free_mae']:.4f}: difference {free['diff']:+.4f}, "
                     f"95% CI [{low:+.4f}, {high:+.4f}] (target: not worse beyond noise)")
    return lines


def targets(report: dict) -> list[str]:
    lines = []
    for corpus, result in report["corpora"].items():
        row = result["fractions"].get("0.25")
        if row is None:
            continue
        if result["median_points"] >= 8:
            lines.append(f"{_mark(row['ratio_to_best_baseline'] <= 0.5)} {corpus}: MAE@0.25 "
                         f"({row['main']}) = {row['ratio_to_best_baseline']:.2f} x best baseline "
                         f"({row['best_baseline']}), target <= 0.5; noise floor "
                         f"{_ratio(row['noise_floor_ratio'])} x, hindsight mean-of-3 "
                         f"{_ratio(row['hindsight_mean3_ratio'])} x")
        lines += context_targets(corpus, row)
        for name, label in (("metastop", "with context"), ("metastop_no_context", "without context")):
            cover = result.get(f"{name}_coverage_80")
            if cover is not None:
                covs = [r[f"{name}_coverage_80"] for r in result["fractions"].values()]
                lines.append(f"{_mark(0.75 <= cover <= 0.85)} {corpus}: 80% coverage {label} "
                             f"{cover:.3f} over all its predictions (by fraction "
                             f"{', '.join(f'{c:.3f}' for c in covs)}), target in [0.75, 0.85]")
    lat = report["latency"]
    lines.append(f"{_mark(lat['one_curve_p99_ms'] <= 5)} one-curve p99 "
                 f"{lat['one_curve_p99_ms']:.2f} ms, target <= 5 ms")
    lines.append(f"{_mark(lat['batch_curves_per_s'] >= 2000)} batch "
                 f"{lat['batch_curves_per_s']:.0f} curves/s, target >= 2000")
    return lines


def load_model(path: Path | None, what: str) -> Predictor:
    """A model trained on the train split only (else the benchmark refuses it)."""
    predictor = Predictor.load(path)
    if predictor.training_.get("n_curves_in_holdout", 1) != 0:
        raise SystemExit(f"{what} {path or 'models/default'} was trained on held-out curves "
                         f"(manifest training.n_curves_in_holdout != 0): not comparable")
    return predictor


def held_out(name: str, limit: int, rng: np.random.Generator,
             modes: tuple[str, ...]) -> tuple[list[Curve], list]:
    """A seeded sample of at most ``limit`` held-out curves of a corpus, and each one's
    leave-one-run-out context from the whole corpus (``None`` each without task memory)."""
    everything = CORPORA[name].read()
    _, test = split_holdout(everything)
    if len(test) > limit:
        test = CurveSet(test[int(i)] for i in np.sort(rng.choice(len(test), limit, replace=False)))
    test = list(test)
    if LEAVE_ONE_RUN_OUT not in modes:
        return test, [None] * len(test)
    return test, leave_one_run_out_contexts(test, pool=everything)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--context-free-model", type=Path, default=ROOT / "models" / "context-free",
                        help="the model without task memory to compare with")
    parser.add_argument("--max-curves", "--limit", dest="max_curves", type=int, default=3000,
                        help="held-out curves evaluated per corpus, drawn at random")
    parser.add_argument("--corpus", action="append", choices=sorted(CORPORA),
                        help="corpora to run (default: every one whose file exists)")
    parser.add_argument("--context", choices=sorted(CHOICES), default="both",
                        help="evaluate without context, with leave-one-run-out context, or both")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=ROOT / "reports" / "bench_predictor.json")
    args = parser.parse_args()
    models = {"metastop": load_model(args.model, "model"),
              "context_free": load_model(args.context_free_model, "context-free model")}
    modes = CHOICES[args.context]
    rng = np.random.default_rng(0)
    report = {"model": str(args.model or "models/default"),
              "context_free_model": str(args.context_free_model), "context": args.context,
              "holdout_rule": RULE, "model_training": models["metastop"].training_,
              "corpora": {}, "machine": {"python": platform.python_version(), "cpus": 2}}
    names = args.corpus or [n for n, c in CORPORA.items() if c.path.exists()]
    timed = None
    for name in names:
        start = time.perf_counter()
        test, contexts = held_out(name, args.max_curves, rng, modes)
        report["corpora"][name] = evaluate_corpus(models, test, contexts, modes, rng)
        if name in SUBSETS:
            subset, wanted = SUBSETS[name]
            keep = [i for i, c in enumerate(test) if wanted(c)]
            report["corpora"][subset] = evaluate_corpus(
                models, [test[i] for i in keep], [contexts[i] for i in keep], modes, rng)
        report["corpora"][name]["wall_s"] = round(time.perf_counter() - start, 1)
        if timed is None or name == "pythia_evals":
            timed = (test, contexts)
    report["latency"] = latency(models["metastop"], *timed, args.calls)
    report["targets"] = targets(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
