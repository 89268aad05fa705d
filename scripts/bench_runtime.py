"""Benchmark the runtime: how long ``StopController.observe`` takes inside a training loop.

Feeds real curves point by point through a controller with the shipped default policy
(``CostAware`` + the default model) and through ``Patience`` for comparison, and reports
p50 / p99 / max latency per observation. Optionally also times a step-synchronous backtest
replay of many curves through the default policy (``decide_many``). It prints MET or MISS
for the p99 target (5 ms) and exits 0 either way; ``--check`` makes a miss exit 1.

Usage:
    .venv/bin/python scripts/bench_runtime.py
    .venv/bin/python scripts/bench_runtime.py --n-curves 40 --replay-curves 0 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from metastop.evaluate.outcomes import replay
from metastop.stop.policies import DEFAULT_RISK, CostAware
from metastop.stop.rules import Patience
from metastop.stop.prices import DEFAULT_PRICE
from metastop.curves.paths import shared_corpus
from metastop.predict.model import Predictor
from metastop.stop.controller import StopController
from metastop.ingest import read_curves

ROOT = Path(__file__).resolve().parents[1]

TARGET_P99_MS = 5.0
HISTORY_RUNS = 50
TARGET_REPLAY_S = 60.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", default=str(shared_corpus("pythia_evals.parquet")),
                        help="curve table to replay (default: %(default)s)")
    parser.add_argument("--model", default=None, help="predictor directory (default: shipped model)")
    parser.add_argument("--n-curves", type=int, default=24, help="curves fed to observe()")
    parser.add_argument("--replay-curves", type=int, default=1000,
                        help="curves for the backtest-replay timing (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench_runtime.json"))
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the p99 target is missed (default: report only)")
    return parser.parse_args()


def observe_latencies(curves, make_controller) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per ``observe`` call, every point of every curve (after one warm-up curve), and
    seconds to build each curve's controller (where a history store is read)."""
    warm = make_controller(curves[0])
    for t, v in zip(curves[0].tokens, curves[0].values):
        warm.observe(t, v)
    times, builds = [], []
    for curve in curves:
        start = time.perf_counter()
        controller = make_controller(curve)
        builds.append(time.perf_counter() - start)
        for t, v in zip(curve.tokens.tolist(), curve.values.tolist()):
            start = time.perf_counter()
            controller.observe(t, v)
            times.append(time.perf_counter() - start)
    return np.asarray(times), np.asarray(builds)


def with_history(picked: list, pool: list, rng: np.random.Generator, folder: Path) -> tuple:
    """The picked curves as runs of one task, and a SQLite history of ``HISTORY_RUNS`` other
    curves of that task (the controller reads it once per run, when it is built)."""
    from metastop.curves.history import HistoryStore

    accuracies = [c for c in pool if c.metric == "acc"]  # one metric, so every sibling counts
    order = rng.permutation(len(accuracies))
    picked = [accuracies[i] for i in order[:len(picked)]]
    others = [accuracies[i] for i in order[len(picked):]]
    siblings = [others[i] for i in rng.choice(len(others), size=HISTORY_RUNS, replace=False)]
    url = f"sqlite:///{folder / 'history.db'}"
    as_task = lambda c, run: dataclasses.replace(c, task="bench", run_id=run)  # noqa: E731
    with HistoryStore(url) as store:
        store.add([as_task(c, f"past-{i}") for i, c in enumerate(siblings)])
    return [as_task(c, f"now-{i}") for i, c in enumerate(picked)], url


def summary(name: str, measured: tuple[np.ndarray, np.ndarray]) -> dict:
    ms, build_ms = measured[0] * 1e3, measured[1] * 1e3
    return {"name": name, "n_observations": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max()), "build_p50_ms": float(np.percentile(build_ms, 50)),
            "build_max_ms": float(build_ms.max())}


def main() -> int:
    args = parse_args()
    curves = list(read_curves(args.curves))
    rng = np.random.default_rng(args.seed)
    picked = [curves[i] for i in rng.choice(len(curves), size=min(args.n_curves, len(curves)), replace=False)]
    predictor = Predictor.load(args.model)
    default = lambda c: StopController(predictor=predictor, budget=c.budget, curve_id=c.curve_id)  # noqa: E731
    patience = lambda c: StopController(policy=Patience(5), budget=c.budget)  # noqa: E731
    rows = [summary("metastop (CostAware, default model)", observe_latencies(picked, default)),
            summary("patience(5)", observe_latencies(picked, patience))]
    with tempfile.TemporaryDirectory() as folder:
        remembered, url = with_history(picked, curves, rng, Path(folder))
        memory = lambda c: StopController(predictor=predictor, budget=c.budget,  # noqa: E731
                                          curve_id=c.curve_id, task=c.task, metric=c.metric,
                                          run_id=c.run_id, history=url)
        rows.insert(1, summary(f"metastop with a {HISTORY_RUNS}-run history",
                               observe_latencies(remembered, memory)))
    report = {"curves": args.curves, "n_curves": len(picked), "target_p99_ms": TARGET_P99_MS,
              "policy": {"price": DEFAULT_PRICE.to_dict(), "risk": DEFAULT_RISK},
              "observe": rows, "python": platform.python_version(), "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0]}
    if args.replay_curves > 0:
        sample = [curves[i] for i in rng.choice(len(curves), size=min(args.replay_curves, len(curves)),
                                                  replace=False)]
        start = time.perf_counter()
        stops = replay(sample, CostAware(predictor, price=DEFAULT_PRICE, risk=DEFAULT_RISK))
        elapsed = time.perf_counter() - start
        report["replay"] = {"n_curves": len(sample), "n_points": int(sum(len(c) for c in sample)),
                            "seconds": elapsed, "target_seconds": TARGET_REPLAY_S,
                            "stopped_early": int(sum(s < len(c) - 1 for (s, _), c in zip(stops, sample)))}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, path)
    for row in rows[:2]:
        ok = row["p99_ms"] <= TARGET_P99_MS
        print(f"{'MET ' if ok else 'MISS'} {row['name']}: observe() p99 {row['p99_ms']:.2f} ms, "
              f"target <= {TARGET_P99_MS} ms")
    met = all(row["p99_ms"] <= TARGET_P99_MS for row in rows[:2])
    return 1 if args.check and not met else 0


def print_table(report: dict, path: Path) -> None:
    print(f"observe() latency over {report['n_curves']} curves from {report['curves']}")
    print(f"{'policy':<38} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8} "
          f"{'build ms':>9}")
    for row in report["observe"]:
        print(f"{row['name']:<38} {row['n_observations']:>5} {row['p50_ms']:>8.3f} "
              f"{row['p99_ms']:>8.3f} {row['mean_ms']:>8.3f} {row['max_ms']:>8.3f} "
              f"{row['build_p50_ms']:>9.2f}")
    print(f"target: p99 <= {report['target_p99_ms']} ms; load average {report['load_average_1m']:.1f} "
          f"on {report['cpu_count']} CPUs")
    if "replay" in report:
        r = report["replay"]
        print(f"backtest replay (decide_many): {r['n_curves']} curves, {r['n_points']} points in "
              f"{r['seconds']:.1f} s (target < {r['target_seconds']:.0f} s); "
              f"{r['stopped_early']} stopped early")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
