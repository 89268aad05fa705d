"""Benchmark pruners on hyperparameter sweeps replayed from held-out curves.

A study is 8 curves of one task (and metric) from different runs, taken as the trials of a
sweep in a shuffled order; each study is replayed under 5 seeds (each seed draws its own 8
curves and order) through a real Optuna study (``metastop.evaluate.sweeps``) for every pruner:
metastop (``MetaStopPruner`` at the shipped defaults, a price sweep for its frontier, and
diagnostics: a later warm-up, the planned budget instead of ``"auto"``), Optuna's MedianPruner,
PercentilePruner(25), SuccessiveHalvingPruner, HyperbandPruner, PatientPruner(MedianPruner(),
patience=3) and NopPruner, at Optuna's defaults otherwise. Only held-out curves are used
(``curves.splits``: the shipped model never trained on them).

Per pruner and corpus (DESIGN.md, "Sweeps and multi-task runs"): tokens saved (1 - tokens used /
tokens of the unpruned study) and study-best regret in points (best of the unpruned study minus
best of the pruned one, a pruned trial counting its best before it was pruned), means with
bootstrap 95% intervals over studies x seeds, and the share of studies with zero regret.

Targets, per corpus: metastop saves >= 40% of the tokens at <= 0.25 pt mean regret, and more
tokens than every Optuna pruner at no more mean regret.

Usage:
    python scripts/bench_sweeps.py                         # 20 studies x 5 seeds per corpus
    python scripts/bench_sweeps.py --corpus lcdb --studies 5 --seeds 2
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SELECTIONS = {"pythia": "metric == 'acc'", "em": "metric == 'exact_match'"}
CORPORA: dict[str, tuple[str, Callable | None]] = {
    # name: (recipe corpus, keep(curve) or None)
    "lcdb": ("lcdb", None),
    "pythia": ("pythia_evals", lambda c: c.metric == "acc"),
    "nanogpt": ("nanogpt_speedrun", None),
    "em": ("em_curves", lambda c: c.metric == "exact_match"),  # not its eval-loss curves
    "pythia_arithmetic": ("pythia_arithmetic", None),
}
DEFAULT_CORPORA = ("lcdb", "pythia", "nanogpt", "em")
DEFAULT_PRICES = (0.01, 0.3, 1.0, 10.0)
"""Prices (share of the budget one point is worth) of metastop's frontier, beside the default
(0.1)."""
DEFAULT_WARMUPS = (0.25, 0.5)
"""``CostAware(min_fraction=...)`` at the default price: a diagnostic beside the price sweep
(no pruning before this share of the budget; the default is 0.1). A last diagnostic,
``metastop budget=planned``, is the default policy given the study's longest trial as
``budget`` instead of ``"auto"``."""
TARGETS = {"tokens_saved_min": 0.40, "regret_points_max": 0.25}


def held_out(name: str) -> tuple[list, dict[str, Any]]:
    """The held-out curves of one corpus, with where they came from."""
    from metastop.curves.splits import RULE, split_holdout
    from metastop.ops.recipe import default_corpora

    corpus_name, keep = CORPORA[name]
    corpus = {c.name: c for c in default_corpora()}[corpus_name]
    curves = corpus.read()
    selected = curves.filter(keep) if keep is not None else curves
    test = split_holdout(selected)[1]
    return list(test), {"path": str(corpus.path), "n_curves_file": len(curves),
                        "n_held_out": len(test), "holdout_rule": RULE,
                        "selection": SELECTIONS.get(name, "all")}


def pruners(predictor: Any, prices: tuple[float, ...],
            warmups: tuple[float, ...]) -> dict[str, Any]:
    """Every pruner's factory: metastop's default, its price sweep, its warm-up and budget
    diagnostics (all on one cached predictor), then Optuna's."""
    from metastop.evaluate.sweeps import metastop_pruner, optuna_pruners
    from metastop.stop.controller import default_policy
    from metastop.stop.policies import DEFAULT_RISK, CostAware
    from metastop.stop.prices import DEFAULT_PRICE, Price

    factories = {"metastop": metastop_pruner(default_policy(predictor))}
    for p in prices:
        policy = CostAware(predictor, price=Price.fraction_of_budget(p), risk=DEFAULT_RISK)
        factories[f"metastop price={p:g}"] = metastop_pruner(policy)
    for f in warmups:
        policy = CostAware(predictor, price=DEFAULT_PRICE, risk=DEFAULT_RISK, min_fraction=f)
        factories[f"metastop warmup={f:g}"] = metastop_pruner(policy)
    factories["metastop budget=planned"] = metastop_pruner(default_policy(predictor),
                                                           planned_budget=True)
    return {**factories, **optuna_pruners()}


def bench_corpus(name: str, factories: dict[str, Any], args: argparse.Namespace,
                 progress: Any) -> dict[str, Any]:
    from metastop.evaluate.sweeps import (
        regret_by_study,
        regret_causes,
        replay_study,
        sample_studies,
        summarize,
    )

    curves, source = held_out(name)
    specs = sample_studies(curves, n_trials=args.trials, n_studies=args.studies,
                           seeds=tuple(range(args.seeds)))
    if not specs:
        return {"source": source, "n_studies": 0, "skipped": f"no task with >= {args.trials} runs"}
    task = progress.add(f"{name}: {len(specs)} study-seeds x {len(factories)} pruners",
                        len(specs) * len(factories))
    outcomes, walls = {}, {}
    for pruner, factory in factories.items():
        start = time.perf_counter()
        outcomes[pruner] = []
        for spec in specs:
            outcomes[pruner].append(replay_study(spec, factory, name=pruner))
            progress.advance(task)
        walls[pruner] = round(time.perf_counter() - start, 2)
    summaries = {p: summarize(o, n_resamples=args.resamples) for p, o in outcomes.items()}
    data = {"source": source, "n_studies": len({s.name for s in specs}),
            "n_study_seeds": len(specs), "tasks": sorted({str(s.task) for s in specs}),
            "direction": specs[0].direction,
            "pruners": {p: {**s.to_dict(), "wall_s": walls[p]} for p, s in summaries.items()},
            "metastop_worst_studies": regret_by_study(outcomes["metastop"]),
            "metastop_regret_causes": regret_causes(outcomes["metastop"])}
    data["targets"] = targets(summaries)
    return data


def targets(summaries: dict[str, Any]) -> dict[str, Any]:
    """The targets for metastop's default, and the best point of its frontier.

    "Beats" an Optuna pruner: more tokens saved at no more mean regret (strict, as the target
    reads; NopPruner is the reference, not a rival). "Dominated by" one: it saves at least as
    much at no more mean regret, and differs.
    """
    from metastop.evaluate.sweeps import dominates

    rivals = {p: s for p, s in summaries.items() if not p.startswith("metastop") and p != "none"}
    frontier = {p: s for p, s in summaries.items() if p.startswith("metastop")}

    def checks(s: Any) -> dict[str, Any]:
        beaten = {p: dominates(s, r) for p, r in rivals.items()}
        return {"tokens_saved_ge_40pct": s.tokens_saved_mean >= TARGETS["tokens_saved_min"],
                "regret_le_0.25pt": s.regret_points_mean <= TARGETS["regret_points_max"],
                "beats_every_optuna_pruner": all(beaten.values()),
                "not_beaten": sorted(p for p, ok in beaten.items() if not ok),
                "dominated_by": sorted(p for p, r in rivals.items() if _weakly_dominates(r, s))}

    default = checks(summaries["metastop"])
    per_price = {p: checks(s) for p, s in frontier.items()}
    met = [p for p, c in per_price.items()
           if c["tokens_saved_ge_40pct"] and c["regret_le_0.25pt"] and c["beats_every_optuna_pruner"]]
    within = [p for p in frontier if per_price[p]["regret_le_0.25pt"]]
    best = max(within, key=lambda p: frontier[p].tokens_saved_mean, default=None)
    return {"default": {**default, "all_met": _met(default)},
            "frontier_points_meeting_all": met,
            "frontier_most_saved_within_regret": best,
            "frontier_most_saved_within_regret_value": (frontier[best].tokens_saved_mean
                                                        if best else None),
            "optuna_dominated_by_some_frontier_point": {
                p: [m for m, s in frontier.items() if dominates(s, r)] for p, r in rivals.items()}}


def _weakly_dominates(a: Any, b: Any) -> bool:
    """``a`` saves at least as much as ``b`` at no more mean regret, and is not the same point."""
    return (a.tokens_saved_mean >= b.tokens_saved_mean and a.regret_points_mean <= b.regret_points_mean
            and (a.tokens_saved_mean, a.regret_points_mean) != (b.tokens_saved_mean, b.regret_points_mean))


def _met(c: dict[str, Any]) -> bool:
    return c["tokens_saved_ge_40pct"] and c["regret_le_0.25pt"] and c["beats_every_optuna_pruner"]


class _IgnoredCounts(logging.Filter):
    """Counts (and keeps off the terminal) the controller's "bogus count" warnings: with
    ``budget="auto"`` a trial far longer than the completed ones is ignored past 10x."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "bogus count" in record.getMessage():
            self.count += 1
            return False
        return True


class _Progress:
    """A rich progress bar on a terminal, nothing elsewhere."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from rich.progress import Progress

            self.bar = Progress(transient=True)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def add(self, description: str, total: int) -> Any:
        return self.bar.add_task(description, total=total) if self.bar is not None else None

    def advance(self, task: Any) -> None:
        if self.bar is not None:
            self.bar.advance(task)


def print_tables(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for corpus, data in results.items():
        if not data.get("n_studies"):
            console.print(f"{corpus}: skipped ({data.get('skipped')})")
            continue
        table = Table(title=f"{corpus}: {data['n_studies']} studies x seeds = "
                            f"{data['n_study_seeds']} sweeps of 8 trials ({data['direction']}); "
                            f"1 pt = 0.01 metric units")
        for column in ("pruner", "tokens saved %", "95% CI", "regret pt", "95% CI",
                       "regret p95 pt", "zero regret %", "trials pruned", "wall s"):
            table.add_column(column, justify="left" if column == "pruner" else "right")
        for pruner, s in data["pruners"].items():
            table.add_row(pruner, f"{100 * s['tokens_saved_mean']:.1f}",
                          _ci(s["tokens_saved_ci95"], 100, 1), f"{s['regret_points_mean']:.3f}",
                          _ci(s["regret_points_ci95"], 1, 3), f"{s['regret_points_p95']:.2f}",
                          f"{100 * s['share_zero_regret']:.0f}", f"{s['trials_pruned_mean']:.1f}",
                          f"{s['wall_s']:.1f}", end_section=pruner == _last_metastop(data))
        console.print(table)
        t = data["targets"]
        d = t["default"]
        console.print(f"  targets (metastop default): saved >= 40%: {_yes(d['tokens_saved_ge_40pct'])}, "
                      f"regret <= 0.25 pt: {_yes(d['regret_le_0.25pt'])}, beats every Optuna "
                      f"pruner: {_yes(d['beats_every_optuna_pruner'])}"
                      + (f" (not: {', '.join(d['not_beaten'])})" if d["not_beaten"] else "")
                      + (f"; dominated by: {', '.join(d['dominated_by'])}" if d["dominated_by"] else ""))
        best = t["frontier_most_saved_within_regret"]
        console.print(f"  frontier: points meeting all targets: {t['frontier_points_meeting_all'] or 'none'}; "
                      f"most saved within 0.25 pt: {best or '-'}"
                      + (f" ({100 * t['frontier_most_saved_within_regret_value']:.1f}%)" if best else ""))
        causes = data["metastop_regret_causes"]
        zero = causes["share_prunes_with_zero_gain"]
        longer = causes["winner_longer_than_completed"]
        console.print(f"  metastop default: {causes['n_with_regret']} of {causes['n_outcomes']} sweeps "
                      f"lost their winner; median share of the winner's budget seen when pruned: "
                      f"{_pct(causes['winner_fraction_seen_median'])}; prunes expecting zero gain "
                      f"over the study's best: {_pct(zero)}; winner longer than every completed "
                      f"trial: {longer['n']} ({_pct(longer['share_of_regret'])} of the regret)")
        dominated = {p: m for p, m in t["optuna_dominated_by_some_frontier_point"].items()}
        console.print("  Optuna pruners beaten by some metastop point (more saved, no more regret): "
                      + ", ".join(f"{p}: {_yes(bool(m))}" for p, m in dominated.items()))


def _ci(pair: list[float], scale: float, digits: int) -> str:
    return f"[{scale * pair[0]:.{digits}f}, {scale * pair[1]:.{digits}f}]"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _last_metastop(data: dict[str, Any]) -> str:
    return [p for p in data["pruners"] if p.startswith("metastop")][-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", action="append", choices=sorted(CORPORA),
                        help=f"corpora to run (repeatable; default: {', '.join(DEFAULT_CORPORA)})")
    parser.add_argument("--studies", type=int, default=20, help="studies per corpus (default 20)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per study (default 5)")
    parser.add_argument("--trials", type=int, default=8, help="trials per study (default 8)")
    parser.add_argument("--prices", type=float, nargs="*", default=list(DEFAULT_PRICES),
                        help="metastop frontier prices, share of the budget per point "
                             f"(default {' '.join(map(str, DEFAULT_PRICES))})")
    parser.add_argument("--warmups", type=float, nargs="*", default=list(DEFAULT_WARMUPS),
                        help="metastop min_fraction diagnostics at the default price "
                             f"(default {' '.join(map(str, DEFAULT_WARMUPS))})")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench_sweeps.json"))
    args = parser.parse_args(argv)
    if args.studies < 1 or args.seeds < 1 or args.trials < 2:
        parser.error(f"need --studies >= 1, --seeds >= 1, --trials >= 2, got {args.studies=}, "
                     f"{args.seeds=}, {args.trials=}")
    logging.basicConfig(level=logging.WARNING)
    ignored = _IgnoredCounts()
    logging.getLogger("metastop.stop.controller").addFilter(ignored)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    from metastop.cli.main import write_json
    from metastop.predict.model import Predictor
    from metastop.stop.policies import DEFAULT_RISK
    from metastop.stop.prices import DEFAULT_PRICE

    start = time.perf_counter()
    predictor = Predictor.load(args.model)
    factories = pruners(predictor, tuple(args.prices), tuple(args.warmups))
    names = args.corpus or list(DEFAULT_CORPORA)
    results = {}
    with _Progress(sys.stderr.isatty()) as progress:
        for name in names:
            results[name] = bench_corpus(name, factories, args, progress)
    report = {"command": " ".join(["python", "scripts/bench_sweeps.py", *(argv or sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "settings": {"studies": args.studies, "seeds": args.seeds, "trials": args.trials,
                           "prices": args.prices, "warmups": args.warmups, "default_price": DEFAULT_PRICE.to_dict(),
                           "risk": DEFAULT_RISK, "model": args.model or "models/default",
                           "optuna": optuna.__version__, "resamples": args.resamples,
                           "ci": "percentile bootstrap 95% over studies x seeds",
                           "steps": "tokens / unit, unit = gcd of the study's tokens",
                           "targets": TARGETS},
              "wall_s": None, "controller_ignored_observations": ignored.count,
              "corpora": results}
    report["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(report, args.json)
    print_tables(results)
    if ignored.count:
        print(f"the controller ignored {ignored.count} observations as bogus token counts "
              f"(more than 10x the budget: budget='auto' is the longest completed trial)")
    print(f"wrote {args.json} in {report['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
