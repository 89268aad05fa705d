"""Multi-task runs on held-out Pythia runs: metastop's run-level rule against three rivals.

Every held-out Pythia run (its accuracy curves, one per lm-eval task, equal prices) is replayed
checkpoint by checkpoint (``metastop.evaluate.runs``). Policies:

- metastop: ``MultiTask(CostAware)``, the gain of the price-weighted score built from each
  task's own prediction, swept over prices;
- (a) ``CostAware`` on a curve of the run's mean score, swept over prices;
- (b) ``AllOf`` of per-task ``CostAware`` (the run stops when every task's policy would stop it);
- (c) patience on the mean score, swept over patience (patience-5 is the usual default).

For each: run-level token savings and weighted loss (points); each frontier's savings at a
weighted loss of 0.5 pt; whether metastop's frontier dominates each rival setting, with a
bootstrap 95% interval over runs of the loss gap at the rival's savings.

Usage:
    .venv/bin/python scripts/bench_multitask.py              # about 10 minutes on 2 cores
    .venv/bin/python scripts/bench_multitask.py --runs 6 --boot 200   # a quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from metastop.curves import CurveSet
from metastop.curves.paths import REPORTS_DIR
from metastop.curves.splits import split_holdout
from metastop.evaluate.frontiers import Frontier, FrontierPoint
from metastop.evaluate.runs import MeanCurve, PerTask, RunReport, group_runs, replay_runs
from metastop.ops.recipe import default_corpora
from metastop.predict.model import Predictor
from metastop.stop import CostAware, MultiTask, Patience, Price
from metastop.stop.prices import POINT, to_points

PRICES = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
PATIENCE = (1, 2, 3, 5, 8, 12)
TARGET_LOSS = 0.5 * POINT


def held_out_runs(limit: int | None, seed: int) -> dict:
    corpus = next(c for c in default_corpora() if c.name == "pythia_evals")
    curves = CurveSet(c for c in corpus.read() if c.metric == "acc")
    runs = group_runs(split_holdout(curves)[1], min_tasks=5)
    names = sorted(runs)
    if limit is not None and limit < len(names):
        names = sorted(np.random.default_rng(seed).choice(names, size=limit, replace=False))
    return {n: runs[n] for n in names}


def sweeps(predictor: Predictor) -> dict[str, list[tuple[dict, object]]]:
    price = lambda p: Price.fraction_of_budget(p)  # noqa: E731
    return {
        "metastop": [({"price": p}, MultiTask(CostAware(predictor, price=price(p)))) for p in PRICES],
        "cost_aware_on_mean": [({"price": p}, MeanCurve(CostAware(predictor, price=price(p))))
                               for p in PRICES],
        "all_of_per_task": [({"price": p}, PerTask(CostAware(predictor, price=price(p))))
                            for p in PRICES],
        "patience_on_mean": [({"patience": k}, MeanCurve(Patience(k))) for k in PATIENCE],
    }


def frontier(name: str, reports: list[RunReport]) -> Frontier:
    return Frontier(name, tuple(FrontierPoint(r.params, r.token_savings_mean, r.weighted_loss_mean,
                                              r.to_dict()["weighted_loss_p95"], len(r.outcomes))
                                for r in reports))


def savings_at_loss(front: Frontier, loss: float) -> float:
    """The most savings the frontier's hull reaches at a mean loss of at most ``loss``."""
    _, xs, ys = front._hull()
    if len(xs) == 0 or ys[0] > loss:
        return 0.0
    if ys[-1] <= loss:
        return float(xs[-1])
    j = int(np.searchsorted(ys, loss, side="right"))
    return float(np.interp(loss, ys[j - 1:j + 1], xs[j - 1:j + 1]))


def gap_interval(mine: list[RunReport], rival: RunReport, n_boot: int, seed: int) -> list[float]:
    """Bootstrap 95% interval over runs of (metastop's hull loss at the rival's savings -
    the rival's loss), in points: below 0 metastop loses less."""
    rng = np.random.default_rng(seed)
    n = len(rival.outcomes)
    saved = np.array([[o.token_savings for o in r.outcomes] for r in mine])
    lost = np.array([[o.weighted_loss for o in r.outcomes] for r in mine])
    r_saved = np.array([o.token_savings for o in rival.outcomes])
    r_lost = np.array([o.weighted_loss for o in rival.outcomes])
    gaps = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        points = tuple(FrontierPoint({}, float(s[rows].mean()), float(l[rows].mean()), 0.0, n)
                       for s, l in zip(saved, lost))
        at = Frontier("boot", points).loss_at(float(r_saved[rows].mean()))
        gaps.append(to_points(at - r_lost[rows].mean()) if np.isfinite(at) else np.inf)
    low, high = np.percentile(gaps, [2.5, 97.5], method="nearest")  # inf: beyond the hull
    return [float(low), float(high)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="at most this many held-out runs")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "bench_multitask.json")
    args = parser.parse_args()
    start = time.time()
    runs = held_out_runs(args.runs, args.seed)
    predictor = Predictor.load()
    reports = {name: [replay_runs(runs, policy, params=params) for params, policy in settings]
               for name, settings in sweeps(predictor).items()}
    fronts = {name: frontier(name, rs) for name, rs in reports.items()}
    summary = {name: {"savings_at_0.5pt": savings_at_loss(f, TARGET_LOSS),
                      "points": [{**p.to_dict(), "weighted_loss_mean_pt": to_points(p.em_loss_mean)}
                                 for p in f.points]}
               for name, f in fronts.items()}
    dominance = {name: [{"params": dict(r.params), "token_savings_mean": r.token_savings_mean,
                         "weighted_loss_mean_pt": to_points(r.weighted_loss_mean),
                         "gap_pt_95ci": gap_interval(reports["metastop"], r, args.boot, args.seed)}
                        for r in rs] for name, rs in reports.items() if name != "metastop"}
    result = {"command": "python scripts/bench_multitask.py" + (f" --runs {args.runs}" if args.runs else ""),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "n_runs": len(runs),
              "n_tasks_mean": float(np.mean([len(r) for r in runs.values()])),
              "frontiers": summary, "dominance": dominance, "wall_s": round(time.time() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(runs)} held-out Pythia runs, {result['n_tasks_mean']:.0f} tasks each on average")
    print(f"{'policy':<22} {'savings at 0.5 pt':>18}")
    for name, row in summary.items():
        print(f"{name:<22} {row['savings_at_0.5pt']:>17.1%}")
    print("metastop's hull loss minus each rival setting's, at the rival's savings (95% CI, pt):")
    for name, rows in dominance.items():
        for row in rows:
            low, high = row["gap_pt_95ci"]
            print(f"  {name:<20} {json.dumps(row['params']):<18} saves {row['token_savings_mean']:6.1%} "
                  f"loses {row['weighted_loss_mean_pt']:5.2f} pt   gap [{low:+.2f}, {high:+.2f}]")
    print(f"wrote {args.out} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
