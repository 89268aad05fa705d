"""Sweeps replayed through real Optuna studies (``metastop.evaluate.sweeps``), the library part
of ``scripts/bench_sweeps.py``, on a handful of made-up curves."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from metastop.curves import Curve  # noqa: E402
from metastop.errors import ParameterError  # noqa: E402
from metastop.evaluate import sweeps  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parent.parent


class PruneAfter(optuna.pruners.BasePruner):
    """Prunes every trial but the first once it has reported ``k`` values."""

    def __init__(self, k: int):
        self.k = k

    def prune(self, study, trial) -> bool:
        return trial.number > 0 and len(trial.intermediate_values) >= self.k


def curve(name: str, values, *, task: str = "t", direction: str = "maximize",
          tokens=None) -> Curve:
    tokens = tokens if tokens is not None else 100.0 * np.arange(1, len(values) + 1)
    return Curve(name, tokens, values, direction=direction, run_id=name, task=task, metric="em")


def study(curves, seed: int = 0) -> sweeps.StudySpec:
    return sweeps.StudySpec("t|em#0", "t", "em", seed, tuple(curves))


RISING = [0.1, 0.2, 0.3, 0.4]
LATE = [0.0, 0.0, 0.1, 0.9]  # looks worst early, wins in the end


@pytest.mark.parametrize("direction, sign", [("maximize", 1.0), ("minimize", -1.0)])
def test_regret_counts_a_pruned_trial_by_its_best_before_pruning(direction, sign):
    curves = [curve("a", [sign * v for v in RISING], direction=direction),
              curve("b", [sign * v for v in LATE], direction=direction)]
    outcome = sweeps.replay_study(study(curves), lambda unit, longest: PruneAfter(2), name="after2")
    assert [t.n_seen for t in outcome.trials] == [4, 2]
    assert outcome.regret == pytest.approx(0.5)  # unpruned best 0.9, pruned study's 0.4
    assert outcome.regret_points == pytest.approx(50.0)
    assert outcome.tokens_saved == pytest.approx(1 - 600 / 800)
    assert outcome.n_pruned == 1 and outcome.n_decisions == 6


def test_no_pruning_saves_nothing_and_loses_nothing():
    curves = [curve("a", RISING), curve("b", LATE), curve("c", [0.5, 0.5, 0.5, 0.5])]
    outcome = sweeps.replay_study(study(curves), sweeps.optuna_pruners()["none"], name="none")
    assert outcome.tokens_saved == 0.0 and outcome.regret == 0.0 and outcome.n_pruned == 0


def test_trials_share_one_integer_grid_of_equal_cost():
    curves = [curve("a", RISING, tokens=[2e9, 4e9, 6e9, 8e9]),
              curve("b", RISING[:3], tokens=[3e9, 6e9, 9e9])]
    unit, steps = sweeps.study_grid(curves)
    assert unit == 1e9 and [s.tolist() for s in steps] == [[2, 4, 6, 8], [3, 6, 9]]
    unit, steps = sweeps.study_grid([curve("c", RISING[:3], tokens=[0.5, 1.0, 1.25])])
    assert unit == pytest.approx(0.25) and steps[0].tolist() == [2, 4, 5]


def test_studies_take_one_curve_per_run_and_skip_small_tasks():
    curves = [curve(f"r{i}", RISING) for i in range(9)] + [curve(f"s{i}", RISING, task="small")
                                                           for i in range(3)]
    specs = sweeps.sample_studies(curves, n_trials=4, n_studies=5, seeds=(0, 1))
    assert {s.task for s in specs} == {"t"}
    assert len(specs) == 2 * 2  # 9 runs give two studies of 4, each under two seeds
    assert all(len({c.run_id for c in s.curves}) == 4 for s in specs)
    assert [c.curve_id for c in specs[0].curves] != [c.curve_id for c in specs[1].curves]
    again = sweeps.sample_studies(curves, n_trials=4, n_studies=5, seeds=(0, 1))
    assert [[c.curve_id for c in s.curves] for s in specs] == [[c.curve_id for c in s.curves]
                                                               for s in again]
    with pytest.raises(ParameterError, match="n_trials >= 2"):
        sweeps.sample_studies(curves, n_trials=1)


def test_summary_means_intervals_and_zero_regret_share():
    curves = [curve("a", RISING), curve("b", LATE)]
    outcomes = [sweeps.replay_study(study(curves, seed), lambda unit, longest, k=k: PruneAfter(k), name="p")
                for seed, k in ((0, 2), (1, 4))]
    summary = sweeps.summarize(outcomes, n_resamples=200)
    assert summary.n == 2 and summary.share_zero_regret == 0.5
    assert summary.regret_points_mean == pytest.approx(25.0)
    low, high = summary.regret_points_ci95
    assert low <= summary.regret_points_mean <= high
    assert sweeps.bootstrap_ci(np.zeros(5)) == (0.0, 0.0)
    with pytest.raises(ParameterError, match="one pruner"):
        sweeps.summarize([outcomes[0], sweeps.replay_study(study(curves), lambda u, longest: PruneAfter(2),
                                                           name="other")])


def test_metastop_pruner_replays_a_study_and_keeps_the_leader(shipped_predictor):
    from metastop.stop.controller import default_policy

    rng = np.random.default_rng(0)
    tokens = 1e6 * np.arange(1, 13)
    curves = [curve(f"r{i}", np.clip(top * (1 - np.exp(-tokens / 3e6)) + rng.normal(0, 0.005, 12),
                                     0, 1), tokens=tokens)
              for i, top in enumerate((0.8, 0.3, 0.35, 0.2, 0.5, 0.25))]
    factory = sweeps.metastop_pruner(default_policy(shipped_predictor))
    outcome = sweeps.replay_study(study(curves), factory, name="metastop")
    assert outcome.unit == 1e6 and not outcome.trials[0].pruned  # the first trial leads
    assert 0.0 <= outcome.tokens_saved < 1.0 and outcome.regret >= 0.0
    assert outcome.n_pruned >= 1  # trials far below 0.8 are not worth their tokens
    assert all(t.stop_gain_points is not None for t in outcome.trials if t.pruned)
    causes = sweeps.regret_causes([outcome])
    assert causes["n_outcomes"] == 1 and causes["n_prunes_with_gain"] == outcome.n_pruned
    planned = sweeps.metastop_pruner(default_policy(shipped_predictor), planned_budget=True)
    assert planned(1e6, 1.2e7).budget == 1.2e7 and factory(1e6, 1.2e7).budget == "auto"


def test_script_targets_read_the_summaries():
    spec = importlib.util.spec_from_file_location("bench_sweeps", ROOT / "scripts" / "bench_sweeps.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def summary(name, saved, regret):
        return sweeps.Summary(name, 10, saved, (saved, saved), regret, (regret, regret), regret,
                              float(regret == 0), 1.0)

    summaries = {"metastop": summary("metastop", 0.5, 0.2), "median": summary("median", 0.2, 0.1),
                 "hyperband": summary("hyperband", 0.6, 0.1), "none": summary("none", 0.0, 0.0)}
    t = script.targets(summaries)["default"]
    assert t["tokens_saved_ge_40pct"] and t["regret_le_0.25pt"] and not t["beats_every_optuna_pruner"]
    assert t["not_beaten"] == ["hyperband", "median"] and t["dominated_by"] == ["hyperband"]
    assert not math.isnan(summaries["metastop"].tokens_saved_mean)
