"""Benchmark the stopping policies on the held-out curves of each corpus.

For every corpus (Pythia evals, LCDB, generated EM curves when present, nanoGPT) this keeps
only the curves of held-out groups (``metastop.splits``: the shipped model never trained on
them), optionally a seeded random sample of them, and runs the standard backtest suite:
metastop at the shipped defaults, patience 3/5/10, improvement-probability and the hindsight
oracle, plus the frontiers (price sweep for metastop, patience sweep, oracle). It writes
``reports/bench_stopping.json`` and prints a table with the targets:

- at the shipped default price, metastop saves at least as many tokens as patience-5 with a
  mean keep-best EM loss <= 0.5 points and a p95 <= 2 points (a point is ``POINT``, 0.01);
- the metastop frontier dominates every patience setting, and reaches >= 90% of the
  oracle's utility gain over never stopping (at some price on the frontier, both judged at
  that price; the share at the default price is reported beside it). For each patience
  setting it does not dominate, a paired bootstrap interval of the loss gap at equal savings
  (``metastop.evaluate.ab.hull_gap``) says whether patience is better beyond the noise of the
  sample.

Task memory: every held-out curve's context is its leave-one-run-out siblings from the whole
corpus (every split: the finished curves of the same task and metric from other runs, never
its own; ``metastop.evaluate.contexts``). With ``--context both`` (the default) the suite runs
twice, with that context (``corpora[name]``, ``"context": "leave-one-run-out"``) and without
(``corpora[name]["without_context"]``), and metastop (default settings and price frontier)
also runs on the previous model without task memory (``--context-free-model``) and on the
sibling-median rule (``metastop.evaluate.contexts.SiblingPredictor``: the siblings' change
from the fraction seen, no learning). ``task_memory`` compares them: at a mean loss of 0.5 pt,
the share of what the hindsight oracle's frontier saves that each frontier saves (read off the
hulls), and each at the default settings against patience-5. The task-memory targets (with
context): that share >= 0.75, and at the default settings more savings than patience-5 with
less mean loss.

Beside the targets it reports a hindsight bound: the most the oracle saves while its own mean
and p95 loss meet the loss targets (``hindsight_bound``). Where that is below patience-5's
savings, no policy can meet the first target on that corpus.

The targets apply to the accuracy/EM corpora (Pythia, LCDB, EM); nanoGPT is validation loss
and is reported for information.

Usage:
    python scripts/bench_stopping.py                      # 1,000 held-out curves per corpus
    python scripts/bench_stopping.py --limit 300 --corpus lcdb --model models/default
    python scripts/bench_stopping.py --limit 100 --corpus em --context leave-one-run-out
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from metastop.ops.recipe import default_corpora
from metastop.stop.prices import POINT, to_points

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {corpus.name: corpus for corpus in default_corpora()}

CORPORA = {
    # name: (corpus of default_corpora, keep(curve) or None, targets apply)
    "pythia": ("pythia_evals", lambda c: c.metric in ("acc", "acc_norm"), True),
    "lcdb": ("lcdb", None, True),
    "em": ("em_curves", lambda c: c.metric == "exact_match", True),  # not its eval-loss curves
    "nanogpt": ("nanogpt_speedrun", None, False),
}
SELECTIONS = {"pythia": "metric in (acc, acc_norm)", "em": "metric == exact_match"}
TARGETS = {"em_loss_mean_max": 0.5 * POINT, "em_loss_p95_max": 2 * POINT,
           "share_of_oracle_gain_min": 0.9, "share_of_oracle_savings_min": 0.75}
"""The targets; losses in metric units (0.5 and 2 points), as in the backtest JSON."""
SHARE_AT_LOSS = 0.5 * POINT
"""The mean loss at which frontiers' savings are compared with the oracle's (0.5 pt)."""
CHOICES = {"none": ("none",), "leave-one-run-out": ("leave-one-run-out",),
           "both": ("none", "leave-one-run-out")}


def held_out(name: str, limit: int | None, seed: int) -> tuple[list, dict[str, Any], Any]:
    """The held-out curves of one corpus (a seeded sample of at most ``limit``), where they
    came from, and the whole corpus (every split: where their contexts come from)."""
    from metastop.curves.splits import RULE, split_holdout
    from metastop.evaluate.analysis import sample

    source, keep, _ = CORPORA[name]
    path = SOURCES[source].path
    curves = SOURCES[source].read()
    selected = curves.filter(keep) if keep is not None else curves
    _, test = split_holdout(selected)
    chosen = sample(test, limit, seed=seed)
    return chosen, {"path": str(path), "n_curves_file": len(curves),
                    "n_curves_selected": len(selected), "n_held_out": len(test),
                    "n_used": len(chosen), "sampled": limit is not None and limit < len(test),
                    "selection": SELECTIONS.get(name, "all"),
                    "holdout_rule": RULE, "seed": seed}, curves


def bench_corpus(name: str, models: dict[str, Any], limit: int | None, seed: int,
                 modes: tuple[str, ...], png_dir: Path | None = None) -> dict[str, Any]:
    """The suite on one corpus's held-out curves, per context mode, and the task-memory
    comparison; the main entry (the backtest JSON) is the suite with context when it ran."""
    from metastop.evaluate.contexts import leave_one_run_out_contexts

    curves, source, everything = held_out(name, limit, seed)
    start = time.perf_counter()
    contexts = (leave_one_run_out_contexts(curves, pool=everything)
                if "leave-one-run-out" in modes else None)
    source["context_wall_s"] = round(time.perf_counter() - start, 1)
    suites = {mode: suite_json(name, curves, models["metastop"], source,
                               contexts if mode == "leave-one-run-out" else None)
              for mode in modes}
    rivals = rival_suites(curves, models, contexts)
    data = suites[modes[-1]][1]
    if len(modes) > 1:
        data["without_context"] = suites["none"][1]
    data["task_memory"] = task_memory(suites, rivals)
    data["targets"].update(task_memory_targets(data["task_memory"]))
    data["wall_s"] = round(time.perf_counter() - start, 1)
    if png_dir is not None:
        data["png"] = str(plot(name, len(curves), suites, rivals, png_dir))
    return data


def suite_json(name: str, curves: list, predictor: Any, source: dict[str, Any],
               contexts: list | None) -> tuple[Any, dict[str, Any]]:
    """The standard suite (with ``contexts``, if any) and its backtest JSON with targets."""
    from metastop.evaluate.ab import compare
    from metastop.evaluate.suite import STANDARD_POLICIES, run_suite

    start = time.perf_counter()
    suite = run_suite(curves, predictor, policies=(*STANDARD_POLICIES, "metastop-confirmed-2"),
                      contexts=contexts)
    wall = time.perf_counter() - start
    metastop = suite.report("metastop")
    data = suite.to_json({
        "source": source, "wall_s": round(wall, 1),
        "wall_s_per_1000_curves_default_policy": round(1000 * metastop.wall_s / max(1, len(curves)), 2),
        "comparison": compare(metastop, suite.report("patience-5")).to_dict(),
        "not_dominated_patience": suite.dominated(),
        "hindsight_bound": hindsight_bound(curves),
        "by_task": {task: r.summary() for task, r in metastop.by_task().items()},
    })
    data["targets"] = targets(suite, data["hindsight_bound"], data["not_dominated_patience"],
                              applies=CORPORA[name][2])
    return suite, data


def rival_suites(curves: list, models: dict[str, Any], contexts: list | None) -> dict[str, Any]:
    """metastop (default settings and frontier) on the model without task memory, and on the
    sibling-median rule when there are contexts."""
    from metastop.evaluate.contexts import SiblingPredictor
    from metastop.evaluate.suite import run_suite

    policies = ("metastop", "patience-5", "oracle")
    out = {"context_free_model": run_suite(curves, models["context_free"], policies=policies)}
    if contexts is not None:
        out["sibling_median"] = run_suite(curves, SiblingPredictor(), policies=policies,
                                          contexts=contexts)
    return out


def variant(suite: Any) -> dict[str, Any]:
    """One way of running metastop: its default settings against patience-5, and its share of
    the oracle's savings at a mean loss of 0.5 pt."""
    m, p5 = suite.report("metastop"), suite.report("patience-5")
    return {"context": suite.context, "default": m.summary(),
            "share_at_0.5pt": suite.oracle_savings_share(SHARE_AT_LOSS),
            "saves_more_than_patience5_with_less_loss": bool(
                m.token_savings_mean > p5.token_savings_mean and m.em_loss_mean < p5.em_loss_mean),
            "prediction": None if suite.prediction is None else suite.prediction.to_dict()}


def task_memory(suites: dict[str, tuple[Any, dict]], rivals: dict[str, Any]) -> dict[str, Any]:
    any_suite = next(iter(suites.values()))[0]
    out = {"patience5": any_suite.report("patience-5").summary(), "variants": {}}
    labels = {"leave-one-run-out": "context", "none": "no_context"}
    for mode, (suite, _) in suites.items():
        out["variants"][labels[mode]] = variant(suite)
    for name, suite in rivals.items():
        out["variants"][name] = variant(suite)
    return out


def task_memory_targets(memory: dict[str, Any]) -> dict[str, Any]:
    """The task-memory checks on the model with context (none without that variant)."""
    with_context = memory["variants"].get("context")
    if with_context is None:
        return {}
    share = with_context["share_at_0.5pt"]["share_of_oracle_savings"]
    checks = {"context_share_of_oracle_savings_at_0.5pt_ge_0.75":
              share is not None and share >= TARGETS["share_of_oracle_savings_min"],
              "context_default_beats_patience5": with_context["saves_more_than_patience5_with_less_loss"]}
    return {"task_memory_checks": checks, "context_share_of_oracle_savings_at_0.5pt": share}


def plot(name: str, n_curves: int, suites: dict[str, tuple[Any, dict]], rivals: dict[str, Any],
         png_dir: Path) -> Path:
    """The frontier figure: the main suite's frontiers and points, and the metastop frontier
    of every other variant."""
    from metastop.evaluate.plotting import frontier_plot

    modes = list(suites)
    main = suites[modes[-1]][0]
    frontiers = dict(main.frontiers)
    if len(modes) > 1:
        frontiers["metastop (no context)"] = suites["none"][0].frontiers["metastop"]
    for label, suite in rivals.items():
        frontiers[f"metastop ({label.replace('_', ' ')})"] = suite.frontiers["metastop"]
    points = {r.name: (r.token_savings_mean, r.em_loss_mean) for r in main.reports}
    return frontier_plot(frontiers, Path(png_dir) / f"bench_stopping_{name}.png", points,
                         title=f"{name}: {n_curves} held-out curves, keep-best, context {main.context}")


def hindsight_bound(curves: list) -> dict[str, Any]:
    """The most tokens any policy could save within the loss targets, known in hindsight.

    The oracle (which stops where utility is largest, knowing the whole curve) is swept over
    a dense grid of prices; the bound is its largest mean saving among the prices where its
    mean keep-best loss and p95 still meet the targets. A causal policy cannot expect to beat
    it, so where it is below patience-5's savings the first target cannot be met.
    """
    import numpy as np

    from metastop.evaluate.outcomes import oracle
    from metastop.stop.prices import Price

    best = None
    for price in np.geomspace(0.001, 100.0, 41):
        report = oracle(curves, Price.fraction_of_budget(float(price)))
        within = (report.em_loss_mean <= TARGETS["em_loss_mean_max"]
                  and report.em_loss_p95 <= TARGETS["em_loss_p95_max"])
        if within and (best is None or report.token_savings_mean > best["token_savings_mean"]):
            best = {"price": float(price), "token_savings_mean": report.token_savings_mean,
                    "em_loss_mean": report.em_loss_mean, "em_loss_p95": report.em_loss_p95}
    return {"rule": "oracle over 41 prices in [0.001, 100] (share of the budget per point); "
                    "the largest mean saving with mean loss <= 0.5 pt and p95 <= 2 pt",
            "oracle": best}


def targets(suite: Any, bound: dict[str, Any], not_dominated: list[dict[str, Any]], *,
            applies: bool) -> dict[str, Any]:
    m, p5 = suite.report("metastop"), suite.report("patience-5")
    share = suite.utility()["policies"]["metastop"]["share_of_oracle_gain"]
    points = [p for p in suite.frontier_utility() if p["share_of_oracle_gain"] is not None]
    best = max(points, key=lambda p: p["share_of_oracle_gain"], default=None)
    best_share = best["share_of_oracle_gain"] if best else None
    reaching = [p["params"]["price"]["amount"] for p in points
                if p["share_of_oracle_gain"] >= TARGETS["share_of_oracle_gain_min"]]
    checks = {
        "savings_ge_patience5": m.token_savings_mean >= p5.token_savings_mean,
        "em_loss_mean_le_0.5pt": m.em_loss_mean <= TARGETS["em_loss_mean_max"],
        "em_loss_p95_le_2pt": m.em_loss_p95 <= TARGETS["em_loss_p95_max"],
        "frontier_dominates_patience": not not_dominated,
        "frontier_reaches_90pct_of_oracle_gain": (best_share is not None
                                                  and best_share >= TARGETS["share_of_oracle_gain_min"]),
    }
    return {"applies": applies, "checks": checks, "all_met": all(checks.values()),
            "share_of_oracle_gain_default": share, "best_share_on_frontier": best_share,
            "best_share_params": best["params"] if best else None,
            "patience_beating_frontier_beyond_noise": [
                e["params"] for e in not_dominated
                if e["loss_gap_ci95"] is None or e["loss_gap_ci95"][0] > 0],
            "prices_reaching_share_min": reaching,
            "hindsight_savings_at_loss_targets": (bound["oracle"] or {}).get("token_savings_mean"),
            "patience5_savings": p5.token_savings_mean}


def print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    table = Table(title="bench_stopping: held-out curves, keep-best (points = 0.01 of the metric)")
    for column in ("corpus", "curves", "policy", "savings %", "loss mean pt", "loss p95 pt",
                   "oracle gain share"):
        table.add_column(column)
    for corpus, data in results.items():
        shares = data["utility"]["policies"]
        for i, entry in enumerate(data["policies"]):
            share = shares[entry["name"]]["share_of_oracle_gain"]
            table.add_row(corpus, str(entry["n_curves"]), entry["name"],
                          f"{100 * entry['token_savings_mean']:.1f}",
                          f"{to_points(entry['em_loss_mean']):.2f}", f"{to_points(entry['em_loss_p95']):.2f}",
                          "-" if share is None else f"{share:.2f}",
                          end_section=i == len(data["policies"]) - 1)
    console.print(table)
    checks = Table(title="targets (metastop at the shipped default price)")
    for column in ("corpus", "savings >= patience-5", "loss mean <= 0.5 pt", "loss p95 <= 2 pt",
                   "frontier dominates patience", "frontier reaches 0.9 of oracle gain (default / best)",
                   "s per 1000 curves", "hindsight savings within loss targets / patience-5"):
        checks.add_column(column)
    for corpus, data in results.items():
        t = data["targets"]
        marks = ["yes" if ok else "NO" for ok in t["checks"].values()]
        best = t["best_share_on_frontier"]
        marks[-1] += f" ({_fmt(t['share_of_oracle_gain_default'])} / {_fmt(best)})"
        if not t["checks"]["frontier_dominates_patience"]:
            beyond = len(t["patience_beating_frontier_beyond_noise"])
            marks[3] += f" ({beyond} beyond noise)"
        label = corpus if t["applies"] else f"{corpus} (info only)"
        bound = t.get("hindsight_savings_at_loss_targets")
        checks.add_row(label, *marks, str(data["wall_s_per_1000_curves_default_policy"]),
                       f"{_pct(bound)} / {_pct(t.get('patience5_savings'))}")
    console.print(checks)
    print_task_memory(console, results)


def print_task_memory(console: Any, results: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="task memory: metastop at the default settings, and its frontier's "
                        "share of the oracle's savings at a mean loss of 0.5 pt (loo = "
                        "leave-one-run-out siblings)")
    for column in ("corpus", "variant", "context", "savings %", "loss mean pt", "loss p95 pt",
                   "beats patience-5", "frontier savings at 0.5 pt", "oracle's", "share",
                   "MAE@0.25"):
        table.add_column(column, no_wrap=column == "variant")
    for corpus, data in results.items():
        memory = data["task_memory"]
        p5 = memory["patience5"]
        table.add_row(corpus, "patience-5", "-", f"{100 * p5['token_savings_mean']:.1f}",
                      f"{to_points(p5['em_loss_mean']):.2f}", f"{to_points(p5['em_loss_p95']):.2f}",
                      "-", "-", "-", "-", "-")
        items = list(memory["variants"].items())
        for i, (name, v) in enumerate(items):
            d, share = v["default"], v["share_at_0.5pt"]
            mae = (v["prediction"] or {}).get("mae_at", {}).get("0.25")
            table.add_row(corpus, name, "loo" if v["context"] == "leave-one-run-out" else v["context"],
                          f"{100 * d['token_savings_mean']:.1f}",
                          f"{to_points(d['em_loss_mean']):.2f}", f"{to_points(d['em_loss_p95']):.2f}",
                          "yes" if v["saves_more_than_patience5_with_less_loss"] else "no",
                          _pct(share["token_savings_mean"]), _pct(share["oracle_token_savings_mean"]),
                          _fmt(share["share_of_oracle_savings"]),
                          "-" if mae is None else f"{mae:.4f}", end_section=i == len(items) - 1)
    console.print(table)
    for corpus, data in results.items():
        for check, ok in data["targets"].get("task_memory_checks", {}).items():
            print(f"{'MET ' if ok else 'MISS'} {corpus}: {check}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", choices=sorted(CORPORA),
                        help="corpora to run (default: every one whose file exists)")
    parser.add_argument("--limit", type=int, default=1000,
                        help="held-out curves sampled per corpus (0: all); default 1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--context-free-model", default=str(ROOT / "models" / "context-free"),
                        help="the model without task memory to compare with")
    parser.add_argument("--context", choices=sorted(CHOICES), default="both",
                        help="backtest without context, with leave-one-run-out context, or both")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_stopping.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from metastop.cli.main import write_json
    from metastop.predict.model import Predictor
    from metastop.stop.policies import DEFAULT_RISK
    from metastop.stop.prices import DEFAULT_PRICE

    models = {"metastop": Predictor.load(args.model),
              "context_free": Predictor.load(args.context_free_model)}
    modes = CHOICES[args.context]
    names = args.corpus or [n for n, (source, _, _) in CORPORA.items()
                            if SOURCES[source].path.exists()]
    missing = [n for n in CORPORA if n not in names]
    results = {}
    for name in names:
        print(f"{name}: backtesting held-out curves ({args.context}) ...", file=sys.stderr, flush=True)
        results[name] = bench_corpus(name, models, args.limit or None, args.seed, modes,
                                     Path(args.out).parent)
    report = {"settings": {"price": DEFAULT_PRICE.to_dict(), "risk": DEFAULT_RISK,
                           "limit": args.limit, "seed": args.seed, "model": args.model or "models/default",
                           "context_free_model": args.context_free_model, "context": args.context,
                           "targets": TARGETS, "share_at_loss": SHARE_AT_LOSS,
                           "skipped_corpora": missing},
              "corpora": results}
    write_json(report, args.out)
    print_table(results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
