"""Adaptive batch size against fixed and ramped batches: tiny transformers, one token budget.

For each exact-answer task and seed, four runs of ``metastop.generate.train.train_run`` read
the same example stream and spend the same token budget (the tokens of ``--steps`` optimizer
steps of 16 examples); they differ only in how many examples an optimizer step takes:

- fixed_small: 16 examples a step;
- fixed_large: 128 a step (1/8 the steps), learning rate x sqrt(8);
- ramp: 16 -> 128, linear in tokens, learning rate x sqrt(batch / 16);
- adaptive: ``metastop.adapt.BatchSizeController`` (gradient noise scale), 16..128 in
  micro-batches of 8, learning rate x sqrt(batch / 16).

Reported per task and over all tasks: final exact match (mean over seeds, bootstrap 95% CI),
optimizer steps, and each policy against the task's best fixed policy (paired by seed: EM
difference with its CI, share of optimizer steps saved). Issue #17's target: adaptive within
0.5 pt of the best fixed setting's final EM with at least 20% fewer optimizer steps.

Usage:
    .venv/bin/python scripts/bench_batchsize.py                 # 60 runs, ~20 min on 2 busy cores
    .venv/bin/python scripts/bench_batchsize.py --tasks qa:1 --seeds 2 --steps 200 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from metastop.curves import atomic_path
from metastop.curves.paths import REPORTS_DIR
from metastop.generate.train import RunConfig

logger = logging.getLogger("bench_batchsize")

POLICIES = ("fixed_small", "fixed_large", "ramp", "adaptive")
FIXED = ("fixed_small", "fixed_large")
SMALL, LARGE, MICRO = 16, 128, 8
N_EVALS = 8
TARGET_EM_PT, TARGET_STEPS_SAVED = 0.5, 0.20
DEFAULT_TASKS = "qa:1,sorting:4,reversal:7"


def parse_tasks(text: str) -> list[tuple[str, int]]:
    """``task:difficulty`` items joined by commas, e.g. ``qa:1,sorting:4``."""
    try:
        tasks = [(name, int(level)) for name, level in (item.split(":") for item in text.split(","))]
        for name, level in tasks:
            RunConfig(task=name, difficulty=level)  # checks the task and its difficulty range
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--tasks must look like qa:1,sorting:4 ({error}), "
                                         f"got {text!r}") from None
    return tasks


def policy_fields(policy: str, *, steps: int, lr: float) -> dict:
    """The ``RunConfig`` fields of one policy; all spend ``steps * SMALL`` examples."""
    ratio = LARGE // SMALL
    if policy == "fixed_small":
        return {"batch_size": SMALL, "micro_batch": MICRO, "steps": steps, "lr": lr}
    if policy == "fixed_large":
        return {"batch_size": LARGE, "micro_batch": MICRO, "steps": steps // ratio,
                "lr": lr * math.sqrt(ratio)}
    return {"batch_size": SMALL, "micro_batch": MICRO, "max_batch_size": LARGE, "steps": steps,
            "lr": lr, "batch_rule": policy, "lr_scaling": "sqrt"}


def plan(args: argparse.Namespace) -> list[dict]:
    """One job per task x seed x policy: its labels and its ``RunConfig``."""
    jobs = []
    for task, difficulty in args.tasks:
        for seed in range(args.seeds):
            for policy in POLICIES:
                fields = policy_fields(policy, steps=args.steps, lr=args.lr)
                config = RunConfig(task=task, difficulty=difficulty, d_model=32, n_layers=2,
                                   n_heads=2, train_size=1024, eval_size=args.eval_size,
                                   n_evals=min(N_EVALS, fields["steps"]), seed=seed,
                                   schedule="cosine", **fields)
                jobs.append({"task": f"{task}:{difficulty}", "seed": seed, "policy": policy,
                             "config": config})
    return jobs


def run_job(job: dict) -> dict:
    """Train one run single-threaded and keep what the summary needs."""
    import torch

    from metastop.generate.train import train_run

    torch.set_num_threads(1)
    result = train_run(job["config"])
    return {"task": job["task"], "seed": job["seed"], "policy": job["policy"],
            "run_id": job["config"].run_id, "final_em": float(result.values[-1]),
            "optimizer_steps": int(result.optimizer_steps), "budget": int(result.budget),
            "tokens": int(result.tokens[-1]), "batch_sizes": list(result.batch_sizes),
            "events": [e.message for e in result.events], "seconds": round(result.seconds, 2)}


def run_all(jobs: list[dict], n_jobs: int) -> list[dict]:
    """Every job, ``n_jobs`` at a time, logging each as it finishes."""
    from joblib import Parallel, delayed

    started, rows = time.time(), []
    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    for row in parallel(delayed(run_job)(job) for job in jobs):
        rows.append(row)
        logger.info("[%3d/%d] %6.0fs  %-10s seed %d  %-11s EM %.3f  %4d steps  %.1fs",
                    len(rows), len(jobs), time.time() - started, row["task"], row["seed"],
                    row["policy"], row["final_em"], row["optimizer_steps"], row["seconds"])
    order = {(j["task"], j["seed"], j["policy"]): i for i, j in enumerate(jobs)}
    return sorted(rows, key=lambda r: order[(r["task"], r["seed"], r["policy"])])


def bootstrap_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> list[float]:
    """95% percentile interval of the mean of ``values`` (resampled with replacement)."""
    if len(values) < 2:
        return [float(values.mean()), float(values.mean())]
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    return [float(q) for q in np.percentile(means, [2.5, 97.5])]


def compare(rows: list[dict], n_boot: int, seed: int) -> dict:
    """Per policy: EM (mean, CI), optimizer steps and, paired by (task, seed), the EM
    difference (pt) and steps saved against the best fixed policy of each task."""
    rng = np.random.default_rng(seed)
    table = {(r["task"], r["seed"], r["policy"]): r for r in rows}
    pairs = sorted({(r["task"], r["seed"]) for r in rows})
    best = {task: max(FIXED, key=lambda p: np.mean([table[(t, s, p)]["final_em"]
                                                      for t, s in pairs if t == task]))
            for task in sorted({t for t, _ in pairs})}
    out = {}
    for policy in POLICIES:
        em = np.array([table[(t, s, policy)]["final_em"] for t, s in pairs])
        steps = np.array([table[(t, s, policy)]["optimizer_steps"] for t, s in pairs], float)
        best_em = np.array([table[(t, s, best[t])]["final_em"] for t, s in pairs])
        best_steps = np.array([table[(t, s, best[t])]["optimizer_steps"] for t, s in pairs], float)
        diff = 100.0 * (em - best_em)
        out[policy] = {"final_em_mean": float(em.mean()), "final_em_ci": bootstrap_ci(em, n_boot, rng),
                       "optimizer_steps_mean": float(steps.mean()),
                       "em_vs_best_fixed_pt": float(diff.mean()),
                       "em_vs_best_fixed_pt_ci": bootstrap_ci(diff, n_boot, rng),
                       "steps_saved_vs_best_fixed": float(1.0 - steps.sum() / best_steps.sum()),
                       "budget_tokens": sorted({table[(t, s, policy)]["budget"] for t, s in pairs})}
    return {"best_fixed": best, "policies": out}


def summarize(rows: list[dict], n_boot: int, seed: int) -> dict:
    """The comparison over all tasks, each task's own, and whether the target is met."""
    tasks = {task: compare([r for r in rows if r["task"] == task], n_boot, seed)
             for task in sorted({r["task"] for r in rows})}
    overall = compare(rows, n_boot, seed)
    adaptive = overall["policies"]["adaptive"]
    met = (adaptive["em_vs_best_fixed_pt"] >= -TARGET_EM_PT
           and adaptive["steps_saved_vs_best_fixed"] >= TARGET_STEPS_SAVED)
    budgets = {(r["task"], r["seed"]): set() for r in rows}
    for r in rows:
        budgets[(r["task"], r["seed"])].add(r["budget"])
    return {"overall": overall, "tasks": tasks,
            "same_budget": all(len(b) == 1 for b in budgets.values()),
            "target": {"em_within_pt": TARGET_EM_PT, "steps_saved_at_least": TARGET_STEPS_SAVED,
                       "adaptive_em_vs_best_fixed_pt": adaptive["em_vs_best_fixed_pt"],
                       "adaptive_steps_saved": adaptive["steps_saved_vs_best_fixed"],
                       "met": bool(met)}}


def table(summary: dict) -> str:
    """The human-readable table: one block per task, then all tasks."""
    lines = [f"{'task':<11} {'policy':<12} {'final EM [95% CI]':>24} {'steps':>7} "
             f"{'vs best fixed: EM pt [95% CI]':>32} {'steps saved':>12}"]
    blocks = [*summary["tasks"].items(), ("all", summary["overall"])]
    for task, block in blocks:
        for policy, row in block["policies"].items():
            low, high = row["final_em_ci"]
            dlow, dhigh = row["em_vs_best_fixed_pt_ci"]
            mark = "*" if policy == block["best_fixed"].get(task, "") else " "
            lines.append(f"{task:<11} {policy:<11}{mark} {row['final_em_mean']:>8.3f} "
                         f"[{low:.3f}, {high:.3f}] {row['optimizer_steps_mean']:>7.0f} "
                         f"{row['em_vs_best_fixed_pt']:>+12.2f} [{dlow:+6.2f}, {dhigh:+6.2f}] "
                         f"{row['steps_saved_vs_best_fixed']:>11.0%}")
    target = summary["target"]
    lines.append(f"* best fixed policy of the task. Target (adaptive within {TARGET_EM_PT} pt of "
                 f"the best fixed EM with >= {TARGET_STEPS_SAVED:.0%} fewer steps): "
                 f"{'met' if target['met'] else 'not met'} ({target['adaptive_em_vs_best_fixed_pt']:+.2f} pt, "
                 f"{target['adaptive_steps_saved']:.0%} fewer steps); same token budget per "
                 f"task and seed: {summary['same_budget']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: nice -n 5 .venv/bin/python scripts/bench_batchsize.py --tasks "
               f"{DEFAULT_TASKS} --seeds 5 --steps 800 --n-jobs 2 --out reports/bench_batchsize.json")
    parser.add_argument("--tasks", type=parse_tasks, default=parse_tasks(DEFAULT_TASKS),
                        help=f"task:difficulty items, comma-separated (default {DEFAULT_TASKS})")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task (default 5)")
    parser.add_argument("--steps", type=int, default=800,
                        help=f"the token budget, in optimizer steps of {SMALL} examples; a "
                             f"multiple of {LARGE // SMALL} (default 800)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate at the small "
                                                               "batch (default 3e-3)")
    parser.add_argument("--eval-size", type=int, default=256,
                        help="held-out examples per evaluation (default 256)")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="parallel worker processes, one thread each (default 1)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR / "bench_batchsize.json",
                        help="the JSON report to write (default reports/bench_batchsize.json)")
    parser.add_argument("--json", action="store_true", help="print the JSON report, not the table")
    args = parser.parse_args(argv)
    if args.steps < LARGE // SMALL or args.steps % (LARGE // SMALL):
        parser.error(f"--steps must be a positive multiple of {LARGE // SMALL} (the large batch "
                     f"takes 1/{LARGE // SMALL} of the steps), got {args.steps}")
    if args.seeds < 1 or args.n_jobs < 1:
        parser.error(f"--seeds and --n-jobs must be >= 1, got {args.seeds} and {args.n_jobs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)  # progress lines; the runs' own logs stay quiet
    started = time.time()
    jobs = plan(args)
    logger.info("%d runs: %d tasks x %d seeds x %d policies, %d at a time", len(jobs),
                len(args.tasks), args.seeds, len(POLICIES), args.n_jobs)
    rows = run_all(jobs, args.n_jobs)
    summary = summarize(rows, args.boot, seed=0)
    report = {"command": "python scripts/bench_batchsize.py " + " ".join(argv or sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"tasks": [f"{t}:{d}" for t, d in args.tasks], "seeds": args.seeds,
                           "steps": args.steps, "lr": args.lr, "small": SMALL, "large": LARGE,
                           "micro_batch": MICRO, "eval_size": args.eval_size,
                           "controller_defaults": controller_defaults(),
                           "configs": {p: _plain(asdict(j["config"])) for j in jobs[:len(POLICIES)]
                                       for p in [j["policy"]]}},
              **summary, "runs": rows, "wall_s": round(time.time() - started, 1)}
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1) if args.json else table(summary))
    logger.info("wrote %s in %.0f s", args.out, report["wall_s"])
    return 0


def controller_defaults() -> dict:
    """The ``BatchSizeController`` settings the adaptive runs use (``train_run`` keeps its
    defaults but for the bounds and the LR rule)."""
    import inspect

    from metastop.adapt import BatchSizeController

    keep = ("check_every", "warmup_steps", "smoothing", "noise_fraction")
    return {name: parameter.default for name, parameter
            in inspect.signature(BatchSizeController).parameters.items() if name in keep}


def _plain(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k not in ("task", "difficulty", "seed")}


if __name__ == "__main__":
    sys.exit(main())
