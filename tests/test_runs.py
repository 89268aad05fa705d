"""Run-level replay of multi-task runs: checkpoints, the delivered checkpoint, the losses."""

from __future__ import annotations

import pytest

from metastop.curves import Curve
from metastop.evaluate.runs import (MeanCurve, PerTask, checkpoints, group_runs, replay_runs,
                                    run_outcome)
from metastop.stop.multitask import MultiTask
from metastop.stop.policies import CostAware
from metastop.stop.prices import Price
from metastop.stop.rules import Patience

T = [10.0, 20.0, 30.0, 40.0]


def run(a, b, run_id="r"):
    return {"a": Curve(f"{run_id}/a", T, a, run_id=run_id, task="a"),
            "b": Curve(f"{run_id}/b", T, b, run_id=run_id, task="b")}


def test_group_runs_and_common_checkpoints():
    r = run([0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.2, 0.2])
    lone = Curve("x", T, [0.1] * 4, run_id="lonely", task="a")
    other = Curve("y", [10.0, 30.0], [0.1, 0.2], run_id="r", task="c")
    grouped = group_runs([*r.values(), lone, other])
    assert list(grouped) == ["r"] and sorted(grouped["r"]) == ["a", "b", "c"]
    assert checkpoints(grouped["r"]).tolist() == [10.0, 30.0]


@pytest.mark.parametrize("stop_index, savings, weighted, task_mean", [
    (3, 0.0, 0.0, 0.0),           # never stopped: nothing lost
    (1, 0.5, 0.05, 0.05),         # best mean at 40 (0.35); delivered at 20 (0.30)
    (0, 0.75, 0.20, 0.20),        # delivered at 10 (0.15)
])
def test_run_outcome_by_hand(stop_index, savings, weighted, task_mean):
    got = run_outcome("r", run([0.1, 0.3, 0.2, 0.5], [0.2, 0.3, 0.2, 0.2]), stop_index)
    assert got.token_savings == pytest.approx(savings)
    assert got.weighted_loss == pytest.approx(weighted)
    assert got.task_loss_mean == pytest.approx(task_mean)


def test_replay_with_patience_on_the_mean_and_per_task():
    runs = {"r": run([0.3, 0.3, 0.3, 0.3], [0.5, 0.5, 0.5, 0.6])}
    mean = replay_runs(runs, MeanCurve(Patience(1)))
    assert mean.outcomes[0].stop_index == 1 and mean.to_dict()["n_runs"] == 1
    assert mean.weighted_loss_mean == pytest.approx(0.05)
    per_task = replay_runs(runs, PerTask(Patience(1)))
    assert per_task.outcomes[0].stop_index == 1


def test_multitask_policy_replays_and_a_dear_price_never_stops(shipped_predictor):
    runs = {"r": run([0.1, 0.2, 0.3, 0.4], [0.2, 0.25, 0.3, 0.35])}
    dear = MultiTask(CostAware(shipped_predictor, price=Price.fraction_of_budget(1e6)))
    report = replay_runs(runs, dear)
    assert report.outcomes[0].stop_index == 3 and report.token_savings_mean == 0.0
