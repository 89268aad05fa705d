"""Multi-task runs: one controller, a dict of task values per evaluation, one delivered checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metastop.errors import ParameterError
from metastop.stop.controller import Reporting, StopController
from metastop.stop.decision import Reason
from metastop.stop.multitask import MultiTask, TaskCurves
from metastop.stop.policies import CostAware
from metastop.stop.prices import Price, PriceBook
from metastop.stop.rules import Patience

BUDGET = 100.0
TOKENS = np.arange(1, 11) * 10.0
FLAT = [0.40, 0.50, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52, 0.52]
RISING = [0.05, 0.08, 0.11, 0.14, 0.17, 0.20, 0.23, 0.26, 0.29, 0.32]


def run(policy, values, **options):
    ctl = StopController(policy, budget=BUDGET, **options)
    decisions = [ctl.observe(t, v) for t, v in zip(TOKENS, values)]
    return ctl, decisions


def first_stop(decisions):
    return next((i for i, d in enumerate(decisions) if d.stop), None)


def test_a_rising_task_keeps_the_run_going_and_is_named(shipped_predictor):
    policy = MultiTask(CostAware(shipped_predictor, price=Price.fraction_of_budget(0.05)))
    _, decisions = run(policy, [{"flat": f, "rising": r} for f, r in zip(FLAT, RISING)])
    middle = decisions[4]
    assert not middle.stop and "rising" in middle.message.split("may add")[0]
    cheap = MultiTask(CostAware(shipped_predictor, price=Price.fraction_of_budget(0.005)))
    _, flat_only = run(cheap, [{"flat": f, "also_flat": f} for f in FLAT])
    _, with_rising = run(cheap, [{"flat": f, "rising": r} for f, r in zip(FLAT, RISING)])
    assert first_stop(flat_only) is not None and first_stop(flat_only) < 9
    # at every decision the rising task leaves more to gain than a second flat one
    assert all(r.expected_gain > f.expected_gain for r, f in zip(with_rising[1:5], flat_only[1:5]))


def test_the_task_price_weighs_the_decision(shipped_predictor):
    """A dear task (urgent) keeps a run going that a cheap one would stop."""
    base = CostAware(shipped_predictor, price=Price.fraction_of_budget(0.002))
    values = [{"flat": f, "rising": r} for f, r in zip(FLAT, RISING)]
    cheap = MultiTask(base)
    dear = MultiTask(base, prices=PriceBook(Price.fraction_of_budget(0.002),
                                            tasks={"rising": Price.fraction_of_budget(1.0)}))
    stop_cheap, stop_dear = first_stop(run(cheap, values)[1]), first_stop(run(dear, values)[1])
    assert stop_cheap is not None and (stop_dear is None or stop_dear > stop_cheap)


def test_missing_new_and_nan_tasks_are_named_and_the_others_kept(shipped_predictor, tmp_path):
    log = tmp_path / "run.jsonl"
    ctl = StopController(MultiTask(CostAware(shipped_predictor)), budget=BUDGET,
                         reporting=Reporting(log_path=log))
    ctl.observe(10.0, {"a": 0.1, "b": 0.2})
    missing = ctl.observe(20.0, {"a": 0.15})
    new = ctl.observe(30.0, {"a": 0.2, "b": 0.3, "c": 0.05})
    nan = ctl.observe(40.0, {"a": float("nan"), "b": 0.35, "c": object()})
    assert "task 'b' missing at 20 tokens" in missing.message
    assert "'c'" not in missing.message and new.reason is not Reason.PREDICTOR_ERROR
    assert "task 'a' skipped at 40 tokens" in nan.message and "task 'c' skipped" in nan.message
    assert {t: len(v[0]) for t, v in ctl.state_dict()["tasks"].items()} == {"a": 3, "b": 3, "c": 1}
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[2]["values"] == {"a": 0.2, "b": 0.3, "c": 0.05} and len(lines) == 4


def test_state_round_trip_resumes_a_multi_task_run(shipped_predictor):
    policy = MultiTask(CostAware(shipped_predictor))
    values = [{"flat": f, "rising": r} for f, r in zip(FLAT, RISING)]
    whole, decisions = run(policy, values)
    first = StopController(policy, budget=BUDGET)
    for t, v in zip(TOKENS[:5], values[:5]):
        first.observe(t, v)
    resumed = StopController(policy, budget=BUDGET)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    rest = [resumed.observe(t, v) for t, v in zip(TOKENS[5:], values[5:])]
    assert [d.stop for d in rest] == [d.stop for d in decisions[5:]]
    assert [d.message for d in rest] == [d.message for d in decisions[5:]]


def test_a_single_curve_policy_cannot_judge_a_run_and_training_goes_on():
    ctl = StopController(Patience(2), budget=BUDGET)
    decision = ctl.observe(10.0, {"a": 0.1})
    assert not decision.stop and decision.reason is Reason.PREDICTOR_ERROR
    assert "MultiTask(CostAware" in decision.message


def test_the_delivered_checkpoint_is_the_best_weighted_one(shipped_predictor):
    """Task a peaks at the second evaluation, b at the third: the weighted best is the
    checkpoint where both were evaluated and their weighted mean is highest."""
    policy = MultiTask(CostAware(shipped_predictor))
    _, decisions = run(policy, [{"a": 0.6, "b": 0.1}, {"a": 0.7, "b": 0.2}, {"a": 0.3, "b": 0.3}])
    assert decisions[-1].best == pytest.approx(0.45)  # (0.7 + 0.2) / 2 at 20 tokens
    assert decisions[-1].value == pytest.approx(0.3)


def test_bad_arguments():
    with pytest.raises(ParameterError, match="policy must be a CostAware"):
        MultiTask(Patience(2))
    with pytest.raises(ParameterError, match="state 'tasks'"):
        TaskCurves.from_state({"a": [[1.0], []]}, "maximize")
