"""Benchmark the predictor on held-out groups against curve-fitting baselines, and its speed.

For each corpus, the held-out groups of ``metastop.splits`` (whole runs; whole datasets for
LCDB), never seen in training, are cut at observed budget fractions 0.1, 0.25 and 0.5 (the
points with ``tokens <= f * budget``) and the final value is predicted. Reported per corpus
and fraction: MAE in the metric's units for metastop (the median) and for the baselines
(last value, best so far, each parametric family fitted by ``metastop.fits``, best-of-fits
= lowest rmse), and the coverage of metastop's 80% interval (``coverage_80_model_only``
leaves out the low-confidence prior predictions of prefixes with fewer than two points).
Each corpus's ``coverage_80`` pools its three fractions, like ``coverage_80`` in the
backtest JSON of DESIGN.md; the target applies to it. Then latency: one curve
(features + all quantiles + 8 horizons) p50/p99 over 1000 calls, and batch throughput.

Baselines are clipped to the metric's range (``metastop.curves.metric_range``), so that a
parametric fit extrapolated to the budget cannot blow up the MAE: a bounded metric (accuracy,
EM, F1) to [0, 1] (to [0, 100] for a curve logged on 0-100, i.e. with an observed value above
1), any other metric to its floor (1 for a perplexity, else 0) when every observed value is
above it. The predictor keeps its own predictions in the same range.

Two hindsight references say how far the MAE targets are from what any predictor could
reach. ``floor`` (``noise_floor_ratio``) is the noise-floor MAE, sqrt(2/pi) * mean sigma, where
sigma is each held-out curve's evaluation noise estimated robustly from the second
differences of its second half: even a predictor that knew the noise-free final value would
make this error, divided by the best baseline's MAE. ``hind3`` (``hindsight_mean3_ratio``) is
the same ratio for predicting the final value by the mean of the three points before it, an
assumption-free reference that knows almost the whole future.

By default the shipped model is evaluated: ``scripts/train_default.py`` trains it on the
train split only, and its manifest must say so (``n_curves_in_holdout == 0``); a model that
saw held-out curves is refused.

Usage:
    .venv/bin/python scripts/bench_predictor.py [--model DIR] [--max-curves 3000]
Writes reports/bench_predictor.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from metastop.evaluate.quality import seen_at
from metastop.curves import Curve, CurveSet, metric_range
from metastop.predict.fits import FAMILY_NAMES, fit_families
from metastop.curves.paths import shared_data_dir
from metastop.predict.model import Predictor
from metastop.curves.splits import RULE, split_holdout
from metastop.ingest import read_curves

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()
CORPORA = {
    "lcdb": ROOT / "data" / "lcdb.parquet",
    "pythia_evals": SHARED / "pythia_evals.parquet",
    "nanogpt_speedrun": SHARED / "nanogpt_speedrun.parquet",
    "em_curves": ROOT / "data" / "em_curves.parquet",
    "pythia_arithmetic": SHARED / "pythia_arithmetic.parquet",
}
FRACTIONS = (0.1, 0.25, 0.5)
BASELINES = ("last", "best", *FAMILY_NAMES, "best_of_fits")
MAD_TO_STD = 1.4826  # a Gaussian's std over its median absolute deviation
MIN_NOISE_POINTS = 6  # fewer points give no noise estimate


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


def evaluate_corpus(predictor: Predictor, test: CurveSet) -> dict:
    out = {"n_curves": len(test), "median_points": float(np.median([len(c) for c in test])),
           "fractions": {}}
    for f in FRACTIONS:
        pairs = [(c, p) for c in test if (p := seen_at(c, f)) is not None]
        if not pairs:
            continue
        curves, prefixes = zip(*pairs)
        truth = np.array([c.values[-1] for c in curves])
        preds = predictor.predict_many(list(prefixes), [[c.budget] for c in curves])
        median = np.array([c.to_metric(p.final_median) for c, p in zip(curves, preds)])
        final_scores = np.array([c.scores[-1] for c in curves])
        low = np.array([p.low[-1] for p in preds])
        high = np.array([p.high[-1] for p in preds])
        inside = (low <= final_scores) & (final_scores <= high)
        prior = np.array([p.low_confidence for p in preds])
        row = {"n": len(pairs), "metastop_mae": float(np.mean(np.abs(median - truth))),
               "coverage_80": float(np.mean(inside)),
               "coverage_80_model_only": float(np.mean(inside[~prior])) if (~prior).any() else None,
               "n_inside": int(inside.sum()),
               "low_confidence_share": float(np.mean(prior))}
        for name, values in baseline_finals(list(prefixes)).items():
            row[f"{name}_mae"] = float(np.mean(np.abs(values - truth)))
        best_name = min(BASELINES, key=lambda n: row[f"{n}_mae"])
        row["best_baseline"] = best_name
        row["ratio_to_best_baseline"] = row["metastop_mae"] / max(row[f"{best_name}_mae"], 1e-12)
        row.update(hindsight_references(list(curves), truth, row[f"{best_name}_mae"]))
        out["fractions"][str(f)] = row
    rows = out["fractions"].values()
    out["coverage_80"] = sum(r["n_inside"] for r in rows) / max(1, sum(r["n"] for r in rows))
    return out


def latency(predictor: Predictor, curves: CurveSet, calls: int) -> dict:
    """One-curve p50/p99 (default 8 horizons) and batch throughput at 25% observed."""
    candidates = [p for c in curves if len(c) >= 8 and (p := seen_at(c, 0.5)) is not None]
    one = candidates[0]
    predictor.predict(one)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor.predict(one)
        times.append(time.perf_counter() - start)
    batch = [p for c in curves if (p := seen_at(c, 0.25)) is not None][:4000]
    start = time.perf_counter()
    predictor.predict_many(batch)
    elapsed = time.perf_counter() - start
    return {"one_curve_points": len(one), "calls": calls,
            "one_curve_p50_ms": 1e3 * float(np.percentile(times, 50)),
            "one_curve_p99_ms": 1e3 * float(np.percentile(times, 99)),
            "batch_curves": len(batch), "batch_curves_per_s": len(batch) / elapsed}


def print_table(report: dict) -> None:
    names = ["metastop", "last", "best", *FAMILY_NAMES, "best_of_fits"]
    header = f"{'corpus':18s} {'f':>5s} {'n':>6s} " + " ".join(f"{n[:9]:>9s}" for n in names)
    print(header + f" {'cov80':>6s} {'ratio':>6s} {'floor':>6s} {'hind3':>6s}")
    print("(MAE of the final value in metric units; ratio = metastop / best baseline; floor ="
          " noise-floor MAE / best baseline; hind3 = hindsight mean-of-3 MAE / best baseline)")
    for corpus, result in report["corpora"].items():
        for f, row in result["fractions"].items():
            maes = " ".join(f"{row[f'{n}_mae']:9.4f}" for n in names)
            print(f"{corpus:18s} {f:>5s} {row['n']:6d} {maes} {row['coverage_80']:6.3f} "
                  f"{row['ratio_to_best_baseline']:6.2f} {_ratio(row['noise_floor_ratio'], 6)} "
                  f"{_ratio(row['hindsight_mean3_ratio'], 6)}")
    lat = report["latency"]
    print(f"latency: one curve p50 {lat['one_curve_p50_ms']:.2f} ms, p99 "
          f"{lat['one_curve_p99_ms']:.2f} ms; batch {lat['batch_curves_per_s']:.0f} curves/s")
    for line in report["targets"]:
        print(line)


def targets(report: dict) -> list[str]:
    lines = []
    for corpus, result in report["corpora"].items():
        row = result["fractions"].get("0.25")
        if row is None:
            continue
        if result["median_points"] >= 8:
            ok = row["ratio_to_best_baseline"] <= 0.5
            lines.append(f"{'MET ' if ok else 'MISS'} {corpus}: MAE@0.25 = "
                         f"{row['ratio_to_best_baseline']:.2f} x best baseline "
                         f"({row['best_baseline']}), target <= 0.5; noise floor "
                         f"{_ratio(row['noise_floor_ratio'])} x, hindsight mean-of-3 "
                         f"{_ratio(row['hindsight_mean3_ratio'])} x")
        covs = [r["coverage_80"] for r in result["fractions"].values()]
        ok = 0.75 <= result["coverage_80"] <= 0.85
        lines.append(f"{'MET ' if ok else 'MISS'} {corpus}: 80% coverage "
                     f"{result['coverage_80']:.3f} over all its predictions (by fraction "
                     f"{', '.join(f'{c:.3f}' for c in covs)} at f={list(result['fractions'])}), "
                     f"target in [0.75, 0.85]")
    lat = report["latency"]
    lines.append(f"{'MET ' if lat['one_curve_p99_ms'] <= 5 else 'MISS'} one-curve p99 "
                 f"{lat['one_curve_p99_ms']:.2f} ms, target <= 5 ms")
    lines.append(f"{'MET ' if lat['batch_curves_per_s'] >= 2000 else 'MISS'} batch "
                 f"{lat['batch_curves_per_s']:.0f} curves/s, target >= 2000")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--max-curves", type=int, default=3000,
                        help="held-out curves evaluated per corpus, drawn at random")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=ROOT / "reports" / "bench_predictor.json")
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    if predictor.training_.get("n_curves_in_holdout", 1) != 0:
        raise SystemExit(f"model {args.model or 'models/default'} was trained on held-out "
                         f"curves (manifest training.n_curves_in_holdout != 0): not comparable")
    rng = np.random.default_rng(0)
    report = {"model": str(args.model or "models/default"), "holdout_rule": RULE,
              "model_training": predictor.training_, "corpora": {},
              "machine": {"python": platform.python_version(), "cpus": 2}}
    tests = {}
    for name, path in CORPORA.items():
        if not path.exists():
            continue
        _, test = split_holdout(read_curves(path, on_error="skip"))
        if len(test) > args.max_curves:
            test = CurveSet(test[int(i)] for i in np.sort(rng.choice(len(test), args.max_curves,
                                                                     replace=False)))
        tests[name] = test
        report["corpora"][name] = evaluate_corpus(predictor, test)
        if name == "pythia_evals":  # the accuracy curves alone, without perplexities
            accuracy = test.filter(lambda c: c.metric in ("acc", "acc_norm"))
            report["corpora"]["pythia_evals_acc"] = evaluate_corpus(predictor, accuracy)
    report["latency"] = latency(predictor, tests["pythia_evals"], args.calls)
    report["targets"] = targets(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
