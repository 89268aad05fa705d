"""Replay hyperparameter sweeps built from finished curves through real Optuna studies.

A *study* is a handful of curves of one task (and metric) from different runs, taken as the
trials of a sweep in a shuffled order. ``replay_study`` runs it through an Optuna study with a
given pruner, one trial after another (``study.ask()``, ``trial.report(value, step)``,
``trial.should_prune()``, ``study.tell(...)``), and measures what DESIGN.md's "Sweeps and
multi-task runs" defines:

- tokens saved = 1 - tokens used / tokens of the unpruned study;
- study-best regret = best value of the unpruned study minus best value of the pruned one, where
  a pruned trial counts its best value before it was pruned (direction-aware, metric units,
  >= 0).

Steps: the trials of a study share one integer step grid, ``step = tokens / unit`` with
``unit`` the greatest common divisor of all their tokens (``study_grid``), so every pruner
compares trials at equal cost and ``tokens_per_step = unit`` is exact for ``MetaStopPruner``.
A completed trial reports its best value (keep-best). Optuna is imported inside functions: it
is optional.

Example:
    >>> specs = sample_studies(curves, n_trials=8, n_studies=20, seeds=(0, 1))  # doctest: +SKIP
    >>> outcome = replay_study(specs[0], lambda unit, longest: optuna.pruners.MedianPruner())  # doctest: +SKIP
    >>> outcome.tokens_saved, outcome.regret_points  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..stop.prices import to_points

PrunerFactory = Callable[[float, float], Any]
"""``factory(tokens_per_step, longest) -> pruner``: a fresh pruner for one study (pruners keep
state); ``longest`` is the tokens of the study's longest trial (its planned budget)."""


@dataclass(frozen=True)
class StudySpec:
    """One sweep to replay: its trials' curves, in the order they run.

    Attributes:
        name: ``task|metric#index`` of the study.
        task, metric: what the trials share.
        seed: the seed that drew the trials and their order.
        curves: the trials' curves, in trial order.
    """

    name: str
    task: str | None
    metric: str | None
    seed: int
    curves: tuple[Curve, ...]

    @property
    def direction(self) -> str:
        return self.curves[0].direction


@dataclass(frozen=True)
class TrialOutcome:
    """One trial of a replayed study: how far it ran and the best score it showed (scores are
    values oriented so that higher is better, ``Curve.scores``)."""

    curve_id: str
    n_seen: int
    n_points: int
    tokens_used: float
    tokens_full: float
    best_score_seen: float
    best_score_full: float
    stop_gain_points: float | None = None
    """The gain (points) the pruner still expected when it pruned, where it says
    (``MetaStopPruner``: the decision's ``expected_gain``)."""

    @property
    def pruned(self) -> bool:
        return self.n_seen < self.n_points


@dataclass(frozen=True)
class StudyOutcome:
    """A study replayed with one pruner (values in metric units, regret also in points)."""

    study: str
    seed: int
    pruner: str
    direction: str
    unit: float
    trials: tuple[TrialOutcome, ...]
    n_decisions: int

    @property
    def tokens_saved(self) -> float:
        full = sum(t.tokens_full for t in self.trials)
        used = sum(t.tokens_used for t in self.trials)
        return 1.0 - used / full if full > 0 else 0.0

    @property
    def regret(self) -> float:
        """Best of the unpruned study minus best of the pruned one (metric units, >= 0)."""
        return (max(t.best_score_full for t in self.trials)
                - max(t.best_score_seen for t in self.trials))

    @property
    def regret_points(self) -> float:
        return float(to_points(self.regret))

    @property
    def n_pruned(self) -> int:
        return sum(t.pruned for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "seed": self.seed, "pruner": self.pruner,
                "tokens_saved": self.tokens_saved, "regret_points": self.regret_points,
                "n_pruned": self.n_pruned, "n_trials": len(self.trials)}


@dataclass(frozen=True)
class Summary:
    """A pruner over many studies: means with bootstrap 95% intervals over studies x seeds."""

    pruner: str
    n: int
    tokens_saved_mean: float
    tokens_saved_ci95: tuple[float, float]
    regret_points_mean: float
    regret_points_ci95: tuple[float, float]
    regret_points_p95: float
    share_zero_regret: float
    trials_pruned_mean: float

    def to_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner, "n_study_seeds": self.n,
                "tokens_saved_mean": self.tokens_saved_mean,
                "tokens_saved_ci95": list(self.tokens_saved_ci95),
                "regret_points_mean": self.regret_points_mean,
                "regret_points_ci95": list(self.regret_points_ci95),
                "regret_points_p95": self.regret_points_p95,
                "share_zero_regret": self.share_zero_regret,
                "trials_pruned_mean": self.trials_pruned_mean}


def sample_studies(curves: Sequence[Curve], *, n_trials: int = 8, n_studies: int = 20,
                   seeds: Sequence[int] = (0, 1, 2, 3, 4)) -> list[StudySpec]:
    """Draw up to ``n_studies`` studies, each replayed under every seed.

    Curves are grouped by ``(task, metric)``; only one curve per run counts, and groups with
    fewer than ``n_trials`` runs are skipped. Groups are taken in a seeded shuffle, round after
    round, a group giving at most one study per ``n_trials`` of its runs (a large task gives
    several studies, a small one a single study). Each ``(study, seed)`` draws its own
    ``n_trials`` curves of the group, in a random order.

    Raises:
        ParameterError: ``n_trials < 2`` or ``n_studies < 1``.
    """
    if n_trials < 2 or n_studies < 1:
        raise ParameterError(f"need n_trials >= 2 and n_studies >= 1, but got {n_trials=}, "
                             f"{n_studies=}")
    groups = _groups(curves, n_trials)
    specs = []
    for index, key in enumerate(_study_groups(groups, n_trials, n_studies)):
        members, (task, metric) = groups[key], key
        for seed in seeds:
            rng = np.random.default_rng([int(seed), index])
            chosen = rng.choice(len(members), size=n_trials, replace=False)
            specs.append(StudySpec(f"{task}|{metric}#{index}", task, metric, int(seed),
                                   tuple(members[i] for i in chosen)))
    return specs


def _groups(curves: Sequence[Curve], n_trials: int) -> dict[tuple, list[Curve]]:
    """Curves by (task, metric), one per run, groups of at least ``n_trials`` only."""
    groups: dict[tuple, dict[str, Curve]] = defaultdict(dict)
    for curve in curves:
        groups[(curve.task, curve.metric)].setdefault(curve.run_id or curve.curve_id, curve)
    return {k: sorted(v.values(), key=lambda c: c.curve_id)
            for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))
            if len(v) >= n_trials}


def _study_groups(groups: Mapping[tuple, list], n_trials: int, n_studies: int) -> list[tuple]:
    """The group of each study: a seeded shuffle of the groups, round after round, while a
    group has ``n_trials`` runs to spare for another study."""
    keys = list(groups)
    keys = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    rounds = max((len(g) // n_trials for g in groups.values()), default=0)
    order = [k for r in range(rounds) for k in keys if len(groups[k]) // n_trials > r]
    return order[:n_studies]


def study_grid(curves: Sequence[Curve]) -> tuple[float, list[np.ndarray]]:
    """The study's token unit and each curve's integer steps (``tokens = step * unit``).

    The unit is the greatest common divisor of every integral token count in the study, so all
    trials share one grid of equal cost; non-integral tokens are first scaled by a power of 10.
    """
    tokens = np.concatenate([c.tokens for c in curves])
    scale = 1.0
    while scale < 1e6 and not np.allclose(tokens * scale, np.round(tokens * scale), rtol=0, atol=1e-6):
        scale *= 10.0
    ints = [round(float(t) * scale) for t in tokens]
    unit = math.gcd(*ints) or 1
    steps = [np.array([round(float(t) * scale) // unit for t in c.tokens], dtype=np.int64)
             for c in curves]
    return unit / scale, steps


def replay_study(spec: StudySpec, factory: PrunerFactory, *, name: str = "pruner") -> StudyOutcome:
    """Run ``spec``'s trials through a real Optuna study pruned by ``factory(unit, longest)``.

    Each trial reports its raw values at its steps, asks ``should_prune()`` after every report
    but its last, and is told ``PRUNED`` when pruned, else its best value (keep-best). The
    study is named after the spec and seed, so HyperbandPruner (which assigns brackets by a
    checksum of the study's name) replays the same way every time.
    """
    import optuna

    unit, grids = study_grid(spec.curves)
    pruner = factory(unit, max(c.last_tokens for c in spec.curves))
    study = optuna.create_study(direction=spec.direction, pruner=pruner,
                                study_name=f"{spec.name}/seed{spec.seed}",
                                sampler=optuna.samplers.RandomSampler(seed=spec.seed))
    seen = []
    for curve, steps in zip(spec.curves, grids):
        trial = study.ask()
        seen.append(_run_trial(trial, curve, steps))
        if seen[-1] < len(steps):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, float(curve.best))
    gains = _stop_gains(pruner)
    trials = tuple(_trial(c, n, gains.get(i) if n < len(c.tokens) else None)
                   for i, (c, n) in enumerate(zip(spec.curves, seen)))
    return StudyOutcome(spec.name, spec.seed, name, spec.direction, unit, trials, sum(seen))


def _run_trial(trial: Any, curve: Curve, steps: np.ndarray) -> int:
    """Report the curve's points until the pruner says prune; the number of points seen."""
    for k, (step, value) in enumerate(zip(steps, curve.values)):
        trial.report(float(value), int(step))
        if k < len(steps) - 1 and trial.should_prune():
            return k + 1
    return len(steps)


def _stop_gains(pruner: Any) -> dict[int, float]:
    """Trial number -> the expected gain of the pruner's last decision, where it keeps them."""
    decisions = getattr(pruner, "decisions", None)
    if not isinstance(decisions, Mapping):
        return {}
    return {n: float(d.expected_gain) for n, d in decisions.items()
            if getattr(d, "expected_gain", None) is not None}


def _trial(curve: Curve, seen: int, gain: float | None) -> TrialOutcome:
    return TrialOutcome(curve.curve_id, seen, len(curve.tokens), float(curve.tokens[seen - 1]),
                        float(curve.last_tokens), float(curve.scores[:seen].max()),
                        float(curve.scores.max()), gain)


def optuna_pruners() -> dict[str, PrunerFactory]:
    """Factories of Optuna's pruners (Optuna's defaults except what the name says)."""
    import optuna

    p = optuna.pruners
    return {"median": lambda unit, longest: p.MedianPruner(),
            "percentile_25": lambda unit, longest: p.PercentilePruner(25.0),
            "successive_halving": lambda unit, longest: p.SuccessiveHalvingPruner(),
            "hyperband": lambda unit, longest: p.HyperbandPruner(),
            "patient_median_3": lambda unit, longest: p.PatientPruner(p.MedianPruner(), patience=3),
            "none": lambda unit, longest: p.NopPruner()}


def metastop_pruner(policy: Any, *, planned_budget: bool = False) -> PrunerFactory:
    """A factory of ``MetaStopPruner(policy)`` with the study's ``tokens_per_step``.

    ``planned_budget=True`` passes the study's longest trial as ``budget`` (a user who knows the
    sweep's largest planned run); by default the pruner's own ``budget="auto"`` applies.
    """
    from ..integrations.optuna import MetaStopPruner

    if planned_budget:
        return lambda unit, longest: MetaStopPruner(policy, budget=longest, tokens_per_step=unit)
    return lambda unit, longest: MetaStopPruner(policy, tokens_per_step=unit)


def summarize(outcomes: Sequence[StudyOutcome], *, n_resamples: int = 2000,
              seed: int = 0) -> Summary:
    """Means over studies x seeds with percentile-bootstrap 95% intervals (seeded).

    Raises:
        ParameterError: no outcomes, or outcomes of several pruners.
    """
    names = {o.pruner for o in outcomes}
    if len(names) != 1:
        raise ParameterError(f"summarize takes the outcomes of one pruner, got pruners={sorted(names)}")
    saved = np.array([o.tokens_saved for o in outcomes])
    regret = np.array([o.regret_points for o in outcomes])
    return Summary(names.pop(), len(outcomes), float(saved.mean()),
                   bootstrap_ci(saved, n_resamples=n_resamples, seed=seed),
                   float(regret.mean()), bootstrap_ci(regret, n_resamples=n_resamples, seed=seed),
                   float(np.percentile(regret, 95)), float(np.mean(regret <= 1e-9)),
                   float(np.mean([o.n_pruned for o in outcomes])))


def bootstrap_ci(values: np.ndarray, *, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap 95% interval of the mean (``scipy.stats.bootstrap``)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    result = stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile",
                             vectorized=True, random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def dominates(a: Summary, b: Summary) -> bool:
    """Whether ``a`` saves more tokens than ``b`` at no more mean regret."""
    return a.tokens_saved_mean > b.tokens_saved_mean and a.regret_points_mean <= b.regret_points_mean


def regret_by_study(outcomes: Sequence[StudyOutcome], *, top: int = 5) -> list[dict[str, Any]]:
    """The studies with the most regret (mean over seeds), for diagnosis."""
    by: dict[str, list[StudyOutcome]] = defaultdict(list)
    for o in outcomes:
        by[o.study].append(o)
    rows = [{"study": s, "regret_points_mean": float(np.mean([o.regret_points for o in os])),
             "tokens_saved_mean": float(np.mean([o.tokens_saved for o in os])),
             "seeds_with_regret": sum(o.regret_points > 1e-9 for o in os), "n_seeds": len(os)}
            for s, os in by.items()]
    return sorted(rows, key=lambda r: -r["regret_points_mean"])[:top]


def regret_causes(outcomes: Sequence[StudyOutcome], *, top: int = 10) -> dict[str, Any]:
    """Why studies lost their best: the pruned trial that would have won each of them.

    Returns the largest cases (study, seed, the winner's position among the trials, the share
    of its tokens seen when pruned, what it had shown then and what it reached, in points) and
    a summary over every study with regret. Where the pruner states the gain it still expected
    when it pruned, the share of prunes that expected none says how many a higher price could
    not have kept (a price weighs a gain; it cannot revive a zero one).
    """
    cases = [_cause(o) for o in outcomes if o.regret > 1e-12]
    cases.sort(key=lambda c: -c["regret_points"])
    fractions = np.array([c["fraction_seen"] for c in cases]) if cases else np.array([])
    gains = np.array([t.stop_gain_points for o in outcomes for t in o.trials
                      if t.pruned and t.stop_gain_points is not None])
    return {"n_with_regret": len(cases), "n_outcomes": len(outcomes),
            "n_prunes_with_gain": len(gains),
            "share_prunes_with_zero_gain": float(np.mean(gains <= 1e-9)) if len(gains) else None,
            "winner_fraction_seen_median": float(np.median(fractions)) if cases else None,
            "winner_pruned_before_half": int((fractions < 0.5).sum()),
            "winner_position_counts": _counts([c["winner_position"] for c in cases]),
            "winner_longer_than_completed": _longer(cases),
            "largest": cases[:top]}


def _cause(outcome: StudyOutcome) -> dict[str, Any]:
    position = int(np.argmax([t.best_score_full for t in outcome.trials]))
    winner = outcome.trials[position]
    runner_up = max(t.best_score_seen for t in outcome.trials)
    done = [t.tokens_full for t in outcome.trials[:position] if not t.pruned]
    return {"study": outcome.study, "seed": outcome.seed, "curve_id": winner.curve_id,
            "winner_position": position, "n_pruned": outcome.n_pruned,
            "winner_length_vs_longest_completed": winner.tokens_full / max(done) if done else None,
            "fraction_seen": winner.tokens_used / winner.tokens_full if winner.tokens_full else 0.0,
            "points_seen": winner.n_seen, "points_total": winner.n_points,
            "winner_gain_after_pruning_points": float(to_points(winner.best_score_full
                                                                - winner.best_score_seen)),
            "regret_points": outcome.regret_points,
            "winner_stop_gain_points": winner.stop_gain_points,
            "winner_behind_delivered_when_pruned_points": float(to_points(runner_up - winner.best_score_seen))}


def _longer(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Cases whose winner ran longer than every trial completed before it (``budget="auto"``
    then judged it against too short a budget), and their share of the regret."""
    longer = [c for c in cases if (c["winner_length_vs_longest_completed"] or 0.0) > 1.0]
    total = sum(c["regret_points"] for c in cases)
    return {"n": len(longer),
            "share_of_regret": sum(c["regret_points"] for c in longer) / total if total else None}


def _counts(values: Sequence[int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in zip(*np.unique(np.asarray(values, dtype=int), return_counts=True))}
