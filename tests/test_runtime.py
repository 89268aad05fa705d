"""StopController: decision log, shadow mode, fail-open, bad input, resume, torch.distributed."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from metastop.curves import Curve
from metastop.stop.decision import Decision, Reason
from metastop.errors import ParameterError
from metastop.predict.prediction import Prediction
from metastop.stop.policies import DEFAULT_RISK, CostAware
from metastop.stop.rules import Patience, Threshold
from metastop.stop.prices import DEFAULT_PRICE
from metastop.stop.prices import Price
from metastop.stop.controller import StopController, sync_decision, Reporting

TOKENS = [100.0 * i for i in range(1, 11)]
PLATEAU = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4, 0.4, 0.4]  # Patience(2) stops at index 4


class SlopePredictor:
    """Deterministic predictor: continues the last slope, quantiles +/- ``spread`` at the budget."""

    def __init__(self, spread: float = 0.0):
        self.spread = spread

    def predict(self, curve: Curve, horizons=None) -> Prediction:
        t, s = curve.tokens, curve.scores
        h = np.asarray([curve.budget] if horizons is None else horizons, dtype=float)
        slope = (s[-1] - s[-2]) / (t[-1] - t[-2])
        median = s[-1] + slope * (h - t[-1])
        width = self.spread * (h - t[-1]) / (curve.budget - t[-1])
        return Prediction(curve.curve_id, float(t[-1]), h, (0.1, 0.5, 0.9),
                          np.stack([median - width, median, median + width], axis=1))


class BrokenPredictor:
    def predict(self, curve, horizons=None):
        raise RuntimeError("model file exploded")


def run(controller: StopController, tokens=TOKENS, values=PLATEAU) -> list[Decision]:
    return [controller.observe(t, v) for t, v in zip(tokens, values)]


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- construction -------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"budget": 0}, r"budget must be finite and > 0, got budget=0"),
    ({"budget": -1e9}, r"budget=-1000000000.0"),
    ({"budget": float("nan")}, r"budget must be finite"),
    ({"budget": 1e9, "direction": "up"}, r"direction must be one of .*got direction='up'"),
    ({"budget": 1e9, "min_tokens": -1}, r"min_tokens must be finite and >= 0, got min_tokens=-1"),
    ({"budget": 1e9, "policy": "patience"}, r"policy must have a decide\(curve\) method"),
    ({"budget": 1e9, "reporting": Reporting(distributed=True)}, r"distributed=True needs torch.distributed"),
])
def test_construction_errors_raise_at_once(options, message):
    options.setdefault("policy", Patience(3))
    with pytest.raises(ParameterError, match=message):
        StopController(**options)


def test_predictor_and_policy_together_is_an_error():
    with pytest.raises(ParameterError, match="either predictor .* or policy"):
        StopController(Patience(3), predictor=SlopePredictor(), budget=1e3)


def test_default_policy_is_cost_aware_with_shipped_settings():
    controller = StopController(predictor=SlopePredictor(), budget=1e3)
    assert isinstance(controller.policy, CostAware)
    assert controller.policy.price == DEFAULT_PRICE and controller.policy.risk == DEFAULT_RISK


# --- deciding and the decision log -------------------------------------------------------
def test_stops_and_logs_one_line_per_decision(tmp_path):
    log = tmp_path / "logs" / "decisions.jsonl"
    controller = StopController(policy=Patience(2), budget=1000.0, curve_id="r1/em",
                                run_id="r1", task="gsm8k", reporting=Reporting(log_path=log))
    lines_seen = []
    for t, v in zip(TOKENS[:6], PLATEAU[:6]):
        controller.observe(t, v)
        lines_seen.append(len(log.read_text().splitlines()))  # flushed after every decision
    assert lines_seen == [1, 2, 3, 4, 5, 6]
    assert controller.should_stop and controller.decisions[4].stop
    assert controller.decisions[4].reason is Reason.PATIENCE_EXHAUSTED
    assert controller.best == 0.3
    records = read_log(log)
    assert [r["acted"] for r in records] == [False] * 4 + [True, True]
    first = records[0]
    assert first["curve_id"] == "r1/em" and first["run_id"] == "r1" and first["task"] == "gsm8k"
    assert first["budget"] == 1000.0 and first["shadow"] is False
    assert first["reason"] == "improving" and first["policy"] == "patience"
    assert dt.datetime.fromisoformat(first["time"]).tzinfo is not None
    assert {k for k in Decision.__dataclass_fields__} <= set(first)


def test_log_is_appended_across_controllers(tmp_path):
    log = tmp_path / "decisions.jsonl"
    run(StopController(policy=Patience(2), budget=1000.0, reporting=Reporting(log_path=log)), TOKENS[:3], PLATEAU[:3])
    run(StopController(policy=Patience(2), budget=1000.0, reporting=Reporting(log_path=log)), TOKENS[:2], PLATEAU[:2])
    assert len(read_log(log)) == 5


def test_budget_reached_and_min_tokens():
    always = Threshold(target=0.0)
    controller = StopController(policy=always, budget=1000.0, min_tokens=300.0)
    decisions = run(controller, TOKENS[:3], PLATEAU[:3])
    assert [d.reason for d in decisions] == [Reason.WARMUP, Reason.WARMUP, Reason.TARGET_REACHED]
    budget = StopController(policy=Patience(50), budget=250.0)
    decisions = run(budget, TOKENS[:3], PLATEAU[:3])
    assert [d.stop for d in decisions] == [False, False, True]
    assert decisions[2].reason is Reason.BUDGET_REACHED


# --- shadow mode --------------------------------------------------------------------------
def test_shadow_never_stops_but_logs_the_verdict(tmp_path):
    log = tmp_path / "shadow.jsonl"
    controller = StopController(policy=Patience(2), budget=1000.0, reporting=Reporting(log_path=log, shadow=True))
    decisions = run(controller)
    assert not controller.should_stop and not any(d.stop for d in decisions)
    assert [d.reason for d in decisions[:4]] == [Reason.IMPROVING] * 4
    assert all(d.reason is Reason.SHADOW for d in decisions[4:])
    assert decisions[4].message.startswith("shadow: would stop (stop: no improvement")
    assert decisions[7].message.startswith("shadow: would have stopped at 5.0e+02 tokens")
    records = read_log(log)
    assert [r["stop"] for r in records] == [False] * 4 + [True] * 6
    assert records[4]["reason"] == "patience_exhausted"
    assert all(r["shadow"] is True and r["acted"] is False for r in records)


# --- fail-open and bad input --------------------------------------------------------------
def test_fail_open_when_the_predictor_raises(caplog, tmp_path):
    log = tmp_path / "d.jsonl"
    controller = StopController(predictor=BrokenPredictor(), budget=1000.0, reporting=Reporting(log_path=log))
    with caplog.at_level(logging.WARNING, logger="metastop.runtime"):
        decisions = run(controller, TOKENS[:4], PLATEAU[:4])
    assert decisions[0].reason is Reason.WARMUP  # one point: the predictor is not asked
    for d in decisions[1:]:
        assert not d.stop and d.reason is Reason.PREDICTOR_ERROR
        assert "RuntimeError: model file exploded" in d.message
    assert not controller.should_stop
    assert sum("model file exploded" in r.getMessage() for r in caplog.records) == 3
    assert [r["reason"] for r in read_log(log)][1:] == ["predictor_error"] * 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_value_is_reported_not_kept(bad, caplog):
    controller = StopController(policy=Patience(2), budget=1000.0)
    controller.observe(100.0, 0.2)
    with caplog.at_level(logging.WARNING, logger="metastop.runtime"):
        decision = controller.observe(200.0, bad)
    assert not decision.stop and decision.reason is Reason.NON_FINITE
    assert "not finite" in decision.message and caplog.records
    assert len(controller.curve) == 1 and controller.best == 0.2
    assert controller.observe(200.0, 0.25).reason is Reason.IMPROVING  # same tokens now accepted
    assert len(controller.curve) == 2


@pytest.mark.parametrize("tokens, words", [(100.0, "repeated"), (50.0, "went backwards"),
                                           (float("nan"), "finite number"), (-5.0, ">= 0"),
                                           ("lots", "finite number")])
def test_bad_tokens_are_reported_not_raised(tokens, words):
    controller = StopController(policy=Patience(2), budget=1000.0)
    controller.observe(100.0, 0.2)
    decision = controller.observe(tokens, 0.3)
    assert not decision.stop and decision.reason is Reason.BAD_INPUT and words in decision.message
    assert controller.curve.tokens.tolist() == [100.0]
    assert json.dumps(decision.to_dict())


def test_value_on_a_0_to_100_scale_is_flagged():
    controller = StopController(policy=Patience(2), budget=1000.0)
    controller.observe(100.0, 0.31)
    controller.observe(200.0, 0.35)
    decision = controller.observe(300.0, 37.0)
    assert decision.reason is Reason.BAD_INPUT and "divide it by 100" in decision.message
    assert controller.best == 0.35
    assert controller.observe(300.0, 0.37).reason is Reason.IMPROVING


def test_loss_above_one_is_not_a_scale_error():
    controller = StopController(policy=Patience(2), budget=1000.0, direction="minimize")
    decisions = run(controller, TOKENS[:3], [0.9, 0.8, 12.0])
    assert [d.reason for d in decisions] == [Reason.IMPROVING] * 2 + [Reason.IMPROVING]
    assert controller.best == 0.8


# --- resume -------------------------------------------------------------------------------
def noisy_curve(seed: int, n: int = 30):
    rng = np.random.default_rng(seed)
    tokens = np.cumsum(rng.uniform(50, 150, n))
    values = 0.6 * (1 - np.exp(-tokens / 800)) + rng.normal(0, 0.01, n)
    values[n // 2] = np.nan  # one bad evaluation in the middle
    return tokens, values


@pytest.mark.parametrize("make_policy", [
    lambda: CostAware(SlopePredictor(spread=0.03), price=Price.fraction_of_budget(0.02)),
    lambda: Patience(3, min_delta=0.002),
], ids=["cost_aware", "patience"])
@pytest.mark.parametrize("shadow", [False, True])
def test_resume_from_state_dict_makes_the_same_decisions(make_policy, shadow, tmp_path):
    tokens, values = noisy_curve(7)
    budget = float(tokens[-1] * 1.2)
    whole = StopController(policy=make_policy(), budget=budget, reporting=Reporting(shadow=shadow))
    expected = [d.to_dict() for d in run(whole, tokens, values)]
    assert any(d["stop"] or d["reason"] == "shadow" for d in expected)
    for cut in (1, 5, 15, 16, 22):
        first = StopController(policy=make_policy(), budget=budget, reporting=Reporting(shadow=shadow))
        run(first, tokens[:cut], values[:cut])
        state = json.loads(json.dumps(first.state_dict()))  # plain data only
        resumed = StopController(policy=make_policy(), budget=budget, reporting=Reporting(shadow=shadow))
        resumed.load_state_dict(state)
        run(resumed, tokens[cut:], values[cut:])
        assert [d.to_dict() for d in resumed.decisions] == expected, f"cut at {cut}"
        assert resumed.should_stop == whole.should_stop


def test_load_state_dict_tolerates_missing_keys():
    controller = StopController(policy=Patience(2), budget=1000.0)
    controller.load_state_dict({})
    assert controller.best is None and controller.decisions == []
    controller.load_state_dict({"tokens": [100.0, 200.0], "values": [0.3, 0.2]})
    assert controller.best == 0.3 and not controller.should_stop
    assert controller.observe(300.0, 0.2).stop


def test_load_state_dict_rejects_broken_state():
    controller = StopController(policy=Patience(2), budget=1000.0)
    with pytest.raises(ParameterError, match="2 tokens but 1 values"):
        controller.load_state_dict({"tokens": [1.0, 2.0], "values": [0.3]})


# --- torch.distributed -------------------------------------------------------------------
def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        rng = np.random.default_rng(100 + rank)  # each rank sees different noise
        tokens = 100.0 * np.arange(1, 21)
        values = 0.5 * (1 - np.exp(-tokens / 500)) + rng.normal(0, 0.02, len(tokens))
        if rank == 1:
            values[5] = np.nan  # a local glitch on one rank must not desynchronise the ranks
        policy = CostAware(SlopePredictor(spread=0.02), price=Price.fraction_of_budget(0.02))
        controller = StopController(policy=policy, budget=2000.0,
                                    reporting=Reporting(log_path=f"{out_dir}/log.jsonl"))
        decisions = [controller.observe(t, v).to_dict() for t, v in zip(tokens, values)]
        payload = {"decisions": decisions, "should_stop": controller.should_stop}
        with open(f"{out_dir}/rank{rank}.json", "w") as handle:
            json.dump(payload, handle)
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_get_rank0s_decision(tmp_path):
    torch = pytest.importorskip("torch")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_distributed_worker, args=(2, port, str(tmp_path)), nprocs=2,
                                join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["decisions"] == rank1["decisions"]
    assert rank0["should_stop"] == rank1["should_stop"]
    assert any(d["reason"] == "continue_worth_it" for d in rank0["decisions"])
    assert rank0["should_stop"], "the noisy plateau should be stopped before the budget"
    assert len(read_log(tmp_path / "log.jsonl")) == 20, "only rank 0 writes the log"


def test_sync_decision_without_a_process_group_is_the_identity():
    decision = Decision(stop=True, reason=Reason.DIVERGED, message="x", tokens=1.0, value=0.1,
                        best=0.2)
    assert sync_decision(decision) is decision


# --- the real shipped model ---------------------------------------------------------------


def test_default_controller_uses_the_shipped_model(tmp_path):
    controller = StopController(budget=2e9, reporting=Reporting(log_path=tmp_path / "d.jsonl"))  # no predictor, no policy
    assert isinstance(controller.policy, CostAware)
    steps = np.arange(1, 21)
    values = 0.6 * (1 - np.exp(-1.5 * steps)) + np.random.default_rng(0).normal(0, 0.003, 20)
    decisions = []
    for t, v in zip(1e8 * steps, values):
        decisions.append(controller.observe(t, v))
        if controller.should_stop:
            break
    reasons = {d.reason for d in decisions}
    assert Reason.PREDICTOR_ERROR not in reasons
    assert controller.should_stop and decisions[-1].reason is Reason.GAIN_BELOW_COST
    assert len(decisions) < 20, "a curve flat from the third evaluation on should stop early"
    assert len(read_log(tmp_path / "d.jsonl")) == len(decisions)


# --- hostile input: the reproductions of the hardening issue ---------------------------------
class _RaisingFloat:
    def __float__(self):
        raise NotImplementedError("meta tensors have no data")


class _BadPolicy:
    def __init__(self, decision):
        self.decision = decision

    def decide(self, curve):
        return self.decision


@pytest.mark.parametrize("tokens, value", [
    (10 ** 400, 0.5), (100.0, 10 ** 400), (100.0, _RaisingFloat()), (_RaisingFloat(), 0.5),
    (100.0, "0.5"), (True, 0.5), (100.0, None), (object(), [0.5]),
])
def test_observe_never_raises_on_hostile_values(tokens, value):
    controller = StopController(Patience(2), budget=1000.0)
    decision = controller.observe(tokens, value)
    assert not decision.stop and decision.reason in (Reason.BAD_INPUT, Reason.NON_FINITE)
    assert controller.observe(200.0, 0.3).reason is not Reason.BAD_INPUT  # the run goes on


def test_ids_that_are_not_json_still_log(tmp_path):
    log = tmp_path / "d.jsonl"
    controller = StopController(Patience(2), budget=1000.0, run_id=tmp_path, task=Path("qa"),
                                reporting=Reporting(log_path=log))
    controller.observe(100.0, 0.2)
    assert json.loads(log.read_text())["run_id"] == str(tmp_path)


@pytest.mark.parametrize("returned", [
    np.float32(0.5),
    Decision(stop=np.bool_(True), reason="stop", message="m", tokens=1.0, value=0.1, best=0.1),
])
def test_a_policy_returning_garbage_fails_open(returned):
    controller = StopController(_BadPolicy(returned), budget=1000.0)
    decision = controller.observe(100.0, 0.2)
    assert not decision.stop and decision.reason is Reason.PREDICTOR_ERROR


def test_one_bogus_token_count_does_not_poison_the_run():
    controller = StopController(Patience(50), budget=1000.0)
    controller.observe(100.0, 0.2)
    bogus = controller.observe(1e300, 0.3)
    assert bogus.reason is Reason.BAD_INPUT and "bogus" in bogus.message and not bogus.stop
    later = controller.observe(200.0, 0.4)
    assert later.reason is not Reason.BAD_INPUT and len(controller.curve) == 2


@pytest.mark.parametrize("state, match", [
    ({"version": 99}, r"'version' must be an integer from 1 to 1"),
    ({"tokens": "abc"}, r"'tokens' must be a list"),
    ({"tokens": [1.0, 2.0], "values": [0.1]}, r"2 tokens but 1 values"),
    ({"tokens": [2.0, 1.0], "values": [0.1, 0.2]}, r"not a valid curve"),
    ({"decisions": [{"stop": True}]}, r"bad decision"),
    ({"stopped": "yes"}, r"'stopped' must be true or false"),
    ({"would_stop_at": "later"}, r"'would_stop_at' must be a number"),
    ([1, 2], r"state must be a mapping"),
])
def test_a_bad_state_is_refused_and_changes_nothing(state, match):
    controller = StopController(Patience(2), budget=1000.0)
    controller.observe(100.0, 0.2)
    before = controller.state_dict()
    with pytest.raises(ParameterError, match=match):
        controller.load_state_dict(state)
    assert controller.state_dict() == before
