"""The feedback loop: shadow assignment, shadow outcomes, price updates, state."""

from __future__ import annotations

import json

import pytest

from metastop.errors import ParameterError, ReadError
from metastop.ops.governor import (DEFAULT_TASK, Governor, PriceChange, ShadowOutcome,
                                   mean_interval, mean_upper_bound, shadow_outcome)
from metastop.stop.decisionlog import run_from_records
from metastop.stop.prices import Price, PriceBook

BOOK = PriceBook(Price.fraction_of_budget(0.05), tasks={"gsm8k": Price.tokens(1e8)})


def outcome(run: str, task: str | None, loss: float, saved: float = 0.3, **kw) -> ShadowOutcome:
    return ShadowOutcome(run, task, loss, saved, 50.0, 100.0, 100.0, **kw)


def log_lines(values, *, stop_at=None, run="r1", task="arc", budget=100.0, shadow=True,
              best=True):
    lines, top = [], -1e9
    for i, v in enumerate(values):
        top = max(top, v)
        stop = stop_at is not None and i >= stop_at
        line = {"tokens": 10.0 * (i + 1), "value": v, "stop": stop,
                "reason": "gain_below_cost" if stop else "continue_worth_it",
                "run_id": run, "curve_id": f"{run}/em", "task": task, "budget": budget,
                "shadow": shadow, "acted": False, "time": 1000.0 + i}
        if best:
            line["best"] = top
        lines.append(line)
    return lines


# --- shadow assignment -------------------------------------------------------------------------
def test_assign_shadow_is_deterministic_and_near_the_fraction():
    gov = Governor(BOOK, shadow_fraction=0.2)
    picks = [gov.assign_shadow(f"run-{i}") for i in range(4000)]
    assert picks == [Governor(BOOK, shadow_fraction=0.2).assign_shadow(f"run-{i}")
                     for i in range(4000)]
    assert 0.18 < sum(picks) / len(picks) < 0.22


@pytest.mark.parametrize("fraction, expected", [(0.0, False), (1.0, True)])
def test_assign_shadow_edges(fraction, expected):
    gov = Governor(BOOK, shadow_fraction=fraction)
    assert {gov.assign_shadow(f"r{i}") for i in range(200)} == {expected}


# --- measuring one shadow run --------------------------------------------------------------------
@pytest.mark.parametrize("values, stop_at, loss, saved, stop_tokens", [
    ([0.1, 0.2, 0.3, 0.5], 1, 30.0, 0.2, 20.0),      # rises after the would-stop point
    ([0.1, 0.4, 0.3, 0.35], 1, 0.0, 0.2, 20.0),      # keep-best: nothing lost
    ([0.1, 0.2, 0.3, 0.31], None, 0.0, 0.0, None),   # never would have stopped
    ([0.1, 0.2, 0.3, 0.31], 0, 21.0, 0.3, 10.0),     # stops at the first point
])
def test_shadow_outcome_table(values, stop_at, loss, saved, stop_tokens):
    got = shadow_outcome(run_from_records(log_lines(values, stop_at=stop_at)))
    assert got.em_loss == pytest.approx(loss)
    assert got.tokens_saved == pytest.approx(saved)
    assert got.stop_tokens == stop_tokens
    assert (got.run_id, got.task, got.budget, got.final_tokens) == ("r1", "arc", 100.0, 40.0)
    assert (got.started, got.time) == (1000.0, 1003.0)


def test_shadow_outcome_without_best_uses_values_and_direction():
    lines = log_lines([3.0, 2.5, 2.0, 1.0], stop_at=1, best=False)
    for line in lines:
        line["direction"] = "minimize"
    assert shadow_outcome(run_from_records(lines)).em_loss == pytest.approx(150.0)


def test_shadow_outcome_rejects_a_run_without_a_finite_value():
    lines = [{"tokens": 1.0, "value": None, "best": None, "reason": "continue_worth_it"}]
    with pytest.raises(ParameterError, match="no finite value"):
        shadow_outcome(run_from_records(lines))


def test_record_log_counts_only_shadow_runs_once(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = log_lines([0.1, 0.2, 0.5], stop_at=1, run="s") + log_lines(
        [0.1, 0.2], stop_at=1, run="acted", shadow=False)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    gov = Governor(BOOK)
    assert [o.run_id for o in gov.record_log(path)] == ["s"]
    assert gov.record_log(path) == []
    assert gov.evidence("arc").n == 1


# --- bounds --------------------------------------------------------------------------------------
def test_confidence_bounds():
    assert mean_upper_bound([1.0], 0.9) is None
    assert mean_upper_bound([0.0, 0.0, 0.0], 0.9) == 0.0
    up = mean_upper_bound([0.0, 1.0, 2.0, 3.0], 0.9)
    assert up == pytest.approx(1.5 + 1.6377 * 1.2910 / 2, rel=1e-3)
    low, high = mean_interval([0.0, 1.0, 2.0, 3.0])
    assert low < 1.5 < high and high - 1.5 == pytest.approx(1.5 - low)


# --- price updates -------------------------------------------------------------------------------
def test_high_loss_raises_the_price_and_low_loss_lowers_it():
    gov = Governor(BOOK, loss_budget=0.5, min_runs=10, step=2.0)
    for i in range(12):
        gov.record(outcome(f"hi{i}", "gsm8k", 1.5 + 0.1 * (i % 3)))
        gov.record(outcome(f"lo{i}", "arc", 0.0 if i % 4 else 0.2))
        gov.record(outcome(f"mid{i}", "mmlu", 0.3 + 0.05 * (i % 2)))
    changes = {c.task: c for c in gov.update(now=5000.0)}
    assert sorted(changes) == ["arc", "gsm8k"]
    raise_, lower = changes["gsm8k"], changes["arc"]
    assert raise_.new == Price.tokens(2e8) and raise_.factor == 2.0
    assert "> budget 0.5 pt" in raise_.reason and "stop later" in raise_.reason
    assert lower.new == Price.fraction_of_budget(0.025) and lower.factor == 0.5
    assert "save more" in lower.reason and lower.n_runs == 12
    assert gov.pricebook.price_for(task="gsm8k") == Price.tokens(2e8)
    assert gov.pricebook.price_for(task="arc") == Price.fraction_of_budget(0.025)
    assert gov.pricebook.price_for(task="mmlu") == Price.fraction_of_budget(0.05)
    # evidence starts again after a change; runs begun under the old price do not count
    assert gov.evidence("gsm8k").n == 0 and gov.update() == []
    assert gov.record(outcome("late", "gsm8k", 9.0, started=4000.0)) is False
    assert gov.record(outcome("new", "gsm8k", 9.0, started=6000.0)) is True


def test_no_change_on_too_little_evidence():
    gov = Governor(BOOK, min_runs=20)
    for i in range(19):
        gov.record(outcome(f"r{i}", "arc", 5.0 + i % 2))
    assert gov.update() == []
    gov.record(outcome("r19", "arc", 5.0))
    assert [c.task for c in gov.update()] == ["arc"]


def test_runs_without_task_move_the_default_price():
    gov = Governor(BOOK, min_runs=3)
    for i in range(4):
        gov.record(outcome(f"r{i}", None, 3.0 + i))
    [change] = gov.update()
    assert change.task == DEFAULT_TASK
    assert gov.pricebook.default == Price.fraction_of_budget(0.1)
    assert gov.pricebook.tasks == BOOK.tasks


def test_noisy_loss_straddling_the_budget_holds_the_price():
    gov = Governor(BOOK, loss_budget=0.5, min_runs=5)
    for i, loss in enumerate([0.0, 0.0, 0.9, 0.0, 0.0, 1.2, 0.0, 0.0]):
        gov.record(outcome(f"r{i}", "arc", loss))
    ev = gov.evidence("arc")
    assert ev.mean < 0.5 < ev.upper
    [change] = gov.update()  # the upper bound, not the mean, must be under the budget
    assert change.factor == 2.0


# --- state ---------------------------------------------------------------------------------------
def test_state_round_trip(tmp_path):
    gov = Governor(BOOK, loss_budget=0.7, min_runs=3, step=1.5, confidence=0.95)
    for i in range(4):
        gov.record(outcome(f"a{i}", "arc", 3.0 + i))
    gov.update(now=10.0)
    gov.record(outcome("m0", "mmlu", 0.1, started=20.0))
    path = gov.save(tmp_path / "gov" / "state.json")
    again = Governor.load(path)
    assert again.state_dict() == gov.state_dict()
    assert again.changes[0] == gov.changes[0] and isinstance(again.changes[0], PriceChange)
    assert again.record(outcome("m0", "mmlu", 0.1)) is False
    override = Governor.load(path, pricebook=BOOK)
    assert override.pricebook == BOOK and override.loss_budget == 0.7
    state = json.loads(path.read_text())
    assert state["version"] == 1 and state["retired"] == {"arc": 4}
    partial = Governor(BOOK)
    partial.load_state_dict({"outcomes": state["outcomes"]})
    assert partial.evidence("mmlu").n == 1 and partial.changes == []


def test_load_refuses_bad_state_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{\"version\": 1, ")
    with pytest.raises(ReadError, match="state.json: cannot read governor state"):
        Governor.load(path)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss_budget": 0.0}, "loss_budget must be > 0"),
    ({"shadow_fraction": 1.5}, "shadow_fraction must be in"),
    ({"min_runs": 1}, "min_runs must be an integer >= 2"),
    ({"confidence": 0.4}, "confidence must be in"),
    ({"step": 1.0}, "step must be > 1"),
])
def test_bad_parameters_are_rejected(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        Governor(BOOK, **kwargs)
    with pytest.raises(ParameterError, match="pricebook must be a PriceBook"):
        Governor({"default": 1})
