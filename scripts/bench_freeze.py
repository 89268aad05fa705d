"""Freezing blocks on tiny transformers: metastop's Freezer rules against no freezing and
FreezeOut's fixed schedule, at the same token budget.

Each task (``task:difficulty``) trains a 3-layer ``metastop.generate`` transformer from
scratch once per seed and policy, all reading the same examples in the same order for the
same tokens (``train_run`` with ``RunConfig(freeze_rule=...)``): ``none``, ``freezeout``
(Brock et al. 2017, linear schedule, ``t0=0.5``), ``adaptive`` (``metastop.adapt.Freezer``
with its defaults: grad-norm plateau relative to the head) and ``collapse``
(``Freezer(collapse=0.05)``: raw grad norm at 5% of its peak; the value was tuned on seed
``TUNING_SEED``, outside the bench's seeds 0..4). Reported per task and overall: final exact
match (mean over seeds, with a bootstrap 95% interval), the share of backward FLOPs saved, and
the EM lost against no freezing in points (paired by seed, with a bootstrap 95% interval).
Target (``TARGET_POLICY``): save >= 25% of backward FLOPs at <= 0.5 pt EM loss and beat
FreezeOut's trade (more saved at no more loss).

Runs are deterministic on CPU (one thread), so ``--reuse`` takes the runs an earlier report
already holds for the same model, steps, task, seed and policy instead of training them again.

Usage:
    .venv/bin/python scripts/bench_freeze.py                       # about 20 minutes on 2 cores
    .venv/bin/python scripts/bench_freeze.py --tasks reversal:4 --seeds 2 --steps 60 --json
    .venv/bin/python scripts/bench_freeze.py --reuse reports/bench_freeze.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metastop.curves.atomic import atomic_path
from metastop.generate.train import RunConfig, train_run

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("bench_freeze")

POLICIES = ("none", "freezeout", "adaptive", "collapse")
TARGET_POLICY, TUNING_SEED = "collapse", 5
TASKS = ("reversal:4", "sorting:4", "qa:1")
MODEL = {"d_model": 64, "n_layers": 3, "n_heads": 4, "lr": 3e-3, "batch_size": 32,
         "eval_size": 256, "n_evals": 10}
TARGET_SAVED, TARGET_LOSS_PT = 0.25, 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/bench_freeze.py --tasks reversal:4,qa:1 --seeds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated task:difficulty (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (default: 5)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first seed (default: 0; the collapse rule was tuned on "
                             f"seed {TUNING_SEED})")
    parser.add_argument("--steps", type=int, default=300,
                        help="optimizer steps that set the token budget (default: 300)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier report whose runs of the same settings are kept")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_freeze.json")
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    args = parser.parse_args(argv)
    args.tasks = [_task(t) for t in args.tasks.split(",") if t.strip()]
    if (args.seeds < 1 or args.first_seed < 0 or args.jobs < 1 or args.steps < MODEL["n_evals"]
            or not args.tasks):
        parser.error("need --seeds >= 1, --first-seed >= 0, --jobs >= 1, --steps >= 10 and at "
                     "least one task")
    if args.reuse is not None and not args.reuse.is_file():
        parser.error(f"--reuse must be an existing report, got {args.reuse}")
    return args


def _task(text: str) -> tuple[str, int]:
    name, _, difficulty = text.strip().partition(":")
    return name, int(difficulty or 2)


def run_one(task: str, difficulty: int, seed: int, policy: str, steps: int) -> dict:
    """Train one run (on one thread) and keep what the report needs."""
    torch.set_num_threads(1)
    config = RunConfig(task=task, difficulty=difficulty, seed=seed, steps=steps,
                       freeze_rule=policy, **MODEL)
    result = train_run(config)
    total = result.backward_flops + result.backward_flops_saved
    return {"task": task, "difficulty": difficulty, "seed": seed, "policy": policy,
            "final_em": result.values[-1], "em_curve": list(result.values),
            "budget": result.budget, "tokens": result.tokens[-1],
            "optimizer_steps": result.optimizer_steps, "backward_flops": result.backward_flops,
            "backward_flops_saved": result.backward_flops_saved,
            "saved_share": result.backward_flops_saved / total if total else 0.0,
            "frozen": [[e.step, e.message] for e in result.events if e.kind == "freeze"],
            "seconds": round(result.seconds, 2)}


def bootstrap(values: np.ndarray, n_boot: int, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of ``values`` (resampled with replacement)."""
    if len(values) < 2:
        return [float(values.mean())] * 2
    draws = np.random.default_rng(seed).choice(values, size=(n_boot, len(values)))
    return [float(x) for x in np.percentile(draws.mean(1), [2.5, 97.5])]


def summarize(runs: list[dict], n_boot: int) -> dict:
    """Per task and overall: EM, saved share and EM loss against ``none`` (paired by seed)."""
    tasks = sorted({(r["task"], r["difficulty"]) for r in runs})
    groups = {f"{t}:{d}": [r for r in runs if (r["task"], r["difficulty"]) == (t, d)]
              for t, d in tasks}
    groups["overall"] = runs
    return {name: {policy: _row(rows, policy, n_boot) for policy in POLICIES}
            for name, rows in groups.items()}


def _row(rows: list[dict], policy: str, n_boot: int) -> dict:
    key = lambda r: (r["task"], r["difficulty"], r["seed"])
    base = {key(r): r["final_em"] for r in rows if r["policy"] == "none"}
    mine = [r for r in rows if r["policy"] == policy]
    em = np.array([r["final_em"] for r in mine])
    loss = np.array([100.0 * (base[key(r)] - r["final_em"]) for r in mine])
    return {"n": len(mine), "em_mean": float(em.mean()), "em_ci": bootstrap(em, n_boot),
            "saved_share_mean": float(np.mean([r["saved_share"] for r in mine])),
            "em_loss_pt_mean": float(loss.mean()), "em_loss_pt_ci": bootstrap(loss, n_boot)}


def verdict(summary: dict, policy: str = TARGET_POLICY) -> dict:
    mine, freezeout = summary["overall"][policy], summary["overall"]["freezeout"]
    met = (mine["saved_share_mean"] >= TARGET_SAVED
           and mine["em_loss_pt_mean"] <= TARGET_LOSS_PT)
    beats = (mine["saved_share_mean"] >= freezeout["saved_share_mean"]
             and mine["em_loss_pt_mean"] <= freezeout["em_loss_pt_mean"])
    return {"saved_min": TARGET_SAVED, "em_loss_max_pt": TARGET_LOSS_PT, "met": bool(met),
            "beats_freezeout": bool(beats)}


def same_budget(runs: list[dict]) -> bool:
    """Whether every policy spent the same tokens on each task and seed."""
    spent: dict = {}
    for r in runs:
        key = (r["task"], r["difficulty"], r["seed"])
        spent.setdefault(key, set()).add((r["budget"], r["tokens"]))
    return all(len(v) == 1 for v in spent.values())


def print_table(report: dict) -> None:
    print(f"{'task':<12} {'policy':<10} {'final EM (95% CI)':<24} {'bwd FLOPs saved':>15} "
          f"{'EM loss vs none, pt (95% CI)':>30}")
    for task, rows in report["summary"].items():
        for policy, row in rows.items():
            low, high = row["em_ci"]
            loss_low, loss_high = row["em_loss_pt_ci"]
            print(f"{task:<12} {policy:<10} {row['em_mean']:.3f} [{low:.3f}, {high:.3f}]"
                  f"{'':<4} {row['saved_share_mean']:>14.1%} "
                  f"{row['em_loss_pt_mean']:>+12.2f} [{loss_low:+.2f}, {loss_high:+.2f}]")
    target = report["target"]
    print(f"target ({report['target_policy']}, overall): saves >= {target['saved_min']:.0%} at <= "
          f"{target['em_loss_max_pt']} pt: {'MET' if target['met'] else 'MISSED'}; beats "
          f"FreezeOut's trade: {'yes' if target['beats_freezeout'] else 'no'}; same token budget "
          f"across policies: {report['same_budget']}")


def reusable(path: Path | None, steps: int) -> dict[tuple, dict]:
    """The runs of an earlier report made with the same model and steps, by (task,
    difficulty, seed, policy); none when its settings differ."""
    if path is None:
        return {}
    old = json.loads(path.read_text())
    if {k: old.get("config", {}).get(k) for k in [*MODEL, "steps"]} != {**MODEL, "steps": steps}:
        logger.warning("--reuse %s: other model or steps, nothing reused", path)
        return {}
    return {(r["task"], r["difficulty"], r["seed"], r["policy"], steps): r for r in old["runs"]}


def train_all(args: argparse.Namespace) -> list[dict]:
    """Every task x seed x policy run, in plan order, ``args.jobs`` at a time (runs of the
    ``--reuse`` report are kept, not trained)."""
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    plan = [(t, d, s, p, args.steps) for t, d in args.tasks for s in seeds for p in POLICIES]
    old = reusable(args.reuse, args.steps)
    done: dict[int, dict] = {i: {**old[item], "reused": True}
                             for i, item in enumerate(plan) if item in old}
    logger.info("reusing %d of %d runs from %s", len(done), len(plan), args.reuse)
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, *item): i for i, item in enumerate(plan) if i not in done}
        for future in concurrent.futures.as_completed(futures):
            run = done[futures[future]] = future.result()
            logger.info("[%d/%d] %s:%d seed %d %-9s EM %.3f saved %5.1f%% (%.0fs)", len(done),
                        len(plan), run["task"], run["difficulty"], run["seed"], run["policy"],
                        run["final_em"], 100 * run["saved_share"], run["seconds"])
    return [done[i] for i in range(len(plan))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("metastop").setLevel(logging.WARNING)
    started = time.time()
    runs = train_all(args)
    summary = summarize(runs, args.boot)
    report = {"command": "python scripts/bench_freeze.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "config": {**MODEL, "steps": args.steps, "freezeout_t0": 0.5,
                         "freezer": "metastop.adapt.Freezer defaults",
                         "collapse": "metastop.adapt.Freezer(collapse=0.05)"},
              "tasks": [f"{t}:{d}" for t, d in args.tasks], "seeds": args.seeds,
              "first_seed": args.first_seed, "policies": list(POLICIES),
              "tuning": {"policy": "collapse", "value": 0.05, "seed": TUNING_SEED,
                         "note": f"collapse tuned on seed {TUNING_SEED} of each task, outside "
                                 "the bench's seeds"},
              "same_budget": same_budget(runs), "summary": summary,
              "target_policy": TARGET_POLICY, "target": verdict(summary),
              "target_by_policy": {p: verdict(summary, p) for p in ("adaptive", "collapse")},
              "runs": runs,
              "reused": sum(r.get("reused", False) for r in runs),
              "wall_s": round(time.time() - started, 1)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
        print(f"wrote {args.out} in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
