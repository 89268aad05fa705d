"""End-to-end: metastop's pruner inside a real Optuna study."""

from __future__ import annotations

import math

import pytest

optuna = pytest.importorskip("optuna")

from metastop.errors import ParameterError  # noqa: E402
from metastop.integrations.optuna import MetaStopPruner  # noqa: E402
from metastop.stop.rules import Patience  # noqa: E402
from conftest import cost_aware

optuna.logging.set_verbosity(optuna.logging.WARNING)

STEPS = 10
# Even trials plateau after step 2 (Patience(2) prunes them at step 4); odd trials keep rising.
CURVES = {
    "plateau": [0.1, 0.2, 0.3, 0.3, 0.3] + [0.3] * (STEPS - 5),
    "rising": [0.05 * (s + 1) for s in range(STEPS)],
}


def run_study(pruner, *, n_trials: int = 6, direction: str = "maximize", sign: float = 1.0):
    reported: dict[int, int] = {}

    def objective(trial):
        curve = CURVES["plateau" if trial.number % 2 == 0 else "rising"]
        for step, value in enumerate(curve):
            trial.report(sign * value, step)
            reported[trial.number] = step
            if trial.should_prune():
                raise optuna.TrialPruned()
        return sign * curve[-1]

    study = optuna.create_study(direction=direction, pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    return study, reported


def pruned(study) -> list[int]:
    return [t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]


@pytest.mark.parametrize("direction, sign", [("maximize", 1.0), ("minimize", -1.0)])
def test_patience_prunes_the_plateaued_trials_at_the_exact_step(direction, sign):
    """Trial 0 leads an empty study and is never pruned; later plateaus are, at step 4."""
    pruner = MetaStopPruner(Patience(2), budget=STEPS - 1)
    study, reported = run_study(pruner, direction=direction, sign=sign)
    assert pruned(study) == [2, 4]
    assert {n: reported[n] for n in (0, 2, 4)} == {0: STEPS - 1, 2: 4, 4: 4}
    assert all(reported[n] == STEPS - 1 for n in (1, 3, 5))
    assert pruner.decisions[2].reason.value == "patience_exhausted"
    assert pruner.decisions[2].tokens == 4.0


def test_the_trial_that_leads_the_study_is_never_pruned():
    """A plateaued trial above every completed one may be the winner: Patience alone would
    prune it, the study-aware pruner keeps it (Optuna drops pruned trials from best_value)."""
    curves = [[0.05 * (s + 1) for s in range(STEPS)], [0.6, 0.7] + [0.7] * (STEPS - 2)]

    def objective(trial):
        for step, value in enumerate(curves[trial.number]):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curves[trial.number][-1]

    study = optuna.create_study(direction="maximize", pruner=MetaStopPruner(Patience(2), budget=STEPS - 1))
    study.optimize(objective, n_trials=2)
    assert pruned(study) == [] and study.best_value == 0.7


def test_auto_budget_waits_for_a_completed_trial_and_warmup_steps_hold():
    pruner = MetaStopPruner(Patience(1), n_warmup_steps=6)
    study, reported = run_study(pruner, n_trials=4)
    assert pruner.budget == "auto" and 0 not in pruner.controllers  # no budget yet: no decision
    assert pruned(study) == [2] and reported[2] == 6  # Patience(1) says stop at 3; warm-up holds
    assert pruner.controllers[2].budget == STEPS - 1  # the longest completed trial's last step


def test_trials_log_their_decisions_for_the_fleet_report(tmp_path):
    from metastop.ops.report import fleet_report
    from metastop.stop.controller import Reporting

    pruner = MetaStopPruner(Patience(2), budget=STEPS - 1, reporting=Reporting(log_path=tmp_path / "sweep.jsonl"))
    run_study(pruner, n_trials=4)
    report = fleet_report(tmp_path / "sweep.jsonl")
    assert {r.run_id for r in report.runs} == {"trial-0", "trial-1", "trial-2", "trial-3"}
    assert [r.run_id for r in report.runs if r.stopped] == ["trial-2"]


def test_task_and_metric_reach_every_trial_s_curve_and_log(tmp_path):
    from metastop.stop.controller import Reporting
    from metastop.stop.decisionlog import read_logs

    log = tmp_path / "sweep.jsonl"
    pruner = MetaStopPruner(Patience(2), task="qa", metric="exact_match",
                            reporting=Reporting(log_path=log))
    run_study(pruner, n_trials=4)
    finished = pruner._study.finished.values()
    assert finished and {(c.task, c.metric) for c in finished} == {("qa", "exact_match")}
    assert {c.task for c in pruner.controllers.values()} == {"qa"}
    assert {run.task for run in read_logs(log).runs.values()} == {"qa"}


def test_patient_policy_prunes_nothing_and_tokens_per_step_scales_the_curve():
    pruner = MetaStopPruner(Patience(50), budget=1000 * (STEPS - 1), tokens_per_step=1000)
    study, _ = run_study(pruner, n_trials=3)
    assert pruned(study) == []
    assert pruner.decisions[2].tokens == 1000.0 * (STEPS - 1)


def test_non_finite_values_are_skipped_and_no_values_never_prunes():
    pruner = MetaStopPruner(Patience(1), budget=10)
    study = optuna.create_study()
    trial = study.ask()
    assert pruner.prune(study, study.trials[-1]) is False  # nothing reported yet
    trial.report(0.5, 0)
    trial.report(math.nan, 1)
    assert pruner.prune(study, study.trials[-1]) is False
    assert pruner.decisions[trial.number].reason.value == "non_finite"
    assert len(pruner.controllers[trial.number].curve) == 1  # the NaN is not kept


def test_bad_arguments_are_rejected():
    with pytest.raises(ParameterError, match="budget must be finite and > 0, got budget=0"):
        MetaStopPruner(Patience(2), budget=0)
    with pytest.raises(ParameterError, match="tokens_per_step"):
        MetaStopPruner(Patience(2), budget=10, tokens_per_step=-1)


def rising_study(pruner, n_trials: int = 3):
    """Every trial reports a rising curve at steps 1..STEPS (tokens = step)."""
    reported: dict[int, int] = {}

    def objective(trial):
        for step in range(1, STEPS + 1):
            trial.report(0.04 * step, step)
            reported[trial.number] = step
            if trial.should_prune():
                raise optuna.TrialPruned()
        return 0.04 * STEPS

    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(objective, n_trials=n_trials)
    return study, reported


def test_cost_aware_with_a_near_zero_price_prunes_right_after_warm_up(shipped_predictor):
    study, reported = rising_study(MetaStopPruner(cost_aware(shipped_predictor, 1e-9), budget=STEPS))
    assert pruned(study) == [1, 2]  # trial 0 led an empty study
    assert reported == {0: STEPS, 1: 3, 2: 3}  # a sweep waits for a quarter of the budget


def test_cost_aware_with_a_huge_price_prunes_nothing_even_at_the_budget(shipped_predictor):
    pruner = MetaStopPruner(cost_aware(shipped_predictor, 1e30), budget=STEPS, n_startup_trials=0)
    study, reported = rising_study(pruner, n_trials=1)
    assert pruned(study) == [] and reported == {0: STEPS}
    assert pruner.decisions[0].reason.value == "budget_reached"  # reported, but not pruned


def test_a_trial_that_cannot_beat_the_study_s_best_is_worth_nothing_at_any_price(shipped_predictor):
    """The same rising curve again: the completed trial already reached what it can reach."""
    pruner = MetaStopPruner(cost_aware(shipped_predictor, 1e30), budget=STEPS)
    study, reported = rising_study(pruner, n_trials=2)
    assert pruned(study) == [1] and reported[1] < STEPS
    assert "study" not in pruner.decisions[1].message or pruner.decisions[1].stop


def test_a_failing_policy_never_prunes(caplog):
    class Broken:
        def decide(self, curve):
            raise RuntimeError("model file truncated")

    pruner = MetaStopPruner(Broken(), budget=10)
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.9, intermediate_values={1: 0.8, 2: 0.9}))
    trial = study.ask()
    trial.report(0.5, 5)  # past the sweep warm-up (a quarter of the budget)
    assert pruner.prune(study, study.trials[-1]) is False
    assert "model file truncated" in caplog.text
