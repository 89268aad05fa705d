"""The decision log: one writer, one reader, older lines still read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metastop.errors import ParameterError, ReadError
from metastop.stop.controller import Reporting, StopController
from metastop.stop.decision import Decision, Reason
from metastop.stop.decisionlog import (LOG_VERSION, DecisionLog, LogContext, read_logs,
                                       run_from_records)
from metastop.stop.rules import Patience

LOSS = [3.0, 2.5, 2.4, 2.45, 2.44, 2.46]


def controller_log(tmp_path, values, **options):
    path = tmp_path / "d.jsonl"
    ctl = StopController(Patience(2), budget=100.0, reporting=Reporting(log_path=path), **options)
    for i, v in enumerate(values):
        ctl.observe(10.0 * (i + 1), v)
    return path, ctl


def test_every_line_says_what_a_reader_needs(tmp_path):
    path, _ = controller_log(tmp_path, LOSS, direction="minimize", run_id="r1", task="lm")
    line = json.loads(path.read_text().splitlines()[0])
    assert line["version"] == LOG_VERSION
    assert (line["run_id"], line["task"], line["direction"], line["budget"]) == ("r1", "lm", "minimize", 100.0)
    assert line["params"] == {"patience": 2, "min_delta": 0.0, "warmup": 0}
    assert line["policy"] == "patience" and line["shadow"] is False and "time" in line


def test_reader_rebuilds_the_run_the_controller_saw(tmp_path):
    path, ctl = controller_log(tmp_path, LOSS, direction="minimize", run_id="r1")
    run = read_logs(path).runs["r1"]
    assert run.direction == "minimize" and run.budget == 100.0
    np.testing.assert_array_equal(run.curve().values, ctl.curve.values)
    assert run.stopped is ctl.should_stop is True
    assert run.would_stop_index == next(i for i, d in enumerate(ctl.decisions) if d.stop) == 4


def test_first_format_lines_still_read_and_get_their_direction(tmp_path):
    """Lines written before the format had a version or a direction: a falling best-so-far
    that tracks the running minimum says minimize."""
    lines = [{"tokens": 10.0 * (i + 1), "value": v, "best": float(np.minimum.accumulate(LOSS)[i]),
              "stop": False, "reason": "continue_worth_it", "run_id": "old"} for i, v in enumerate(LOSS)]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = read_logs(path).runs["old"]
    assert run.direction == "minimize" and run.entries[0].version == 1
    assert run.budget == 60.0  # no budget logged: the last tokens


def test_torn_and_garbage_lines_are_skipped_and_counted(tmp_path):
    path, _ = controller_log(tmp_path, [0.1, 0.2, 0.3], run_id="r")
    with open(path, "a") as handle:
        handle.write('[1]\n{"tokens": "x", "reason": "warmup"}\n' + "[" * 100_000 + "\n"
                     + '{"tokens": 1e400, "reason": "warmup"}\n{"tokens": 40.0, "rea')
    read = read_logs(path)
    assert len(read.runs["r"].points) == 3
    assert len(read.skipped) == 5 and ":8: not JSON" in read.skipped[-1]


def test_resumed_run_logs_its_repeated_evaluation_once(tmp_path):
    path = tmp_path / "d.jsonl"
    first = StopController(Patience(5), budget=100.0, reporting=Reporting(log_path=path))
    first.observe(10.0, 0.1)
    first.observe(20.0, 0.2)
    resumed = StopController(Patience(5), budget=100.0, reporting=Reporting(log_path=path))
    resumed.load_state_dict(first.state_dict())
    again = resumed.observe(20.0, 0.2)  # the checkpoint's evaluation, seen again
    assert again == first.last_decision
    assert len(path.read_text().splitlines()) == 2


def test_ignored_input_is_logged_but_is_not_a_point(tmp_path):
    path, _ = controller_log(tmp_path, [0.1, float("nan"), 0.3], run_id="r")
    run = read_logs(path).runs["r"]
    assert len(run.entries) == 3 and len(run.points) == 2
    assert run.entries[1].decision.reason is Reason.NON_FINITE


def test_unwritable_log_warns_and_the_decision_stands(tmp_path, caplog):
    folder = tmp_path / "ro"
    folder.mkdir()
    log = DecisionLog(folder, LogContext(run_id="r"))  # a folder is no file
    decision = Decision(stop=False, reason=Reason.WARMUP, message="m", tokens=1.0, value=0.1, best=0.1)
    log.write(decision, acted=False)
    assert "cannot write decision log" in caplog.text


def test_missing_path_and_records_without_points_are_errors(tmp_path):
    with pytest.raises(ReadError, match="does not exist"):
        read_logs(tmp_path / "missing.jsonl")
    with pytest.raises(ParameterError, match="no record is a curve point"):
        run_from_records([{"tokens": 1.0, "value": None, "reason": "non_finite"}])
    with pytest.raises(ParameterError, match="record 1: not a decision record"):
        run_from_records([{"tokens": 1.0, "reason": "no-such-reason"}])


def test_lever_events_read_apart_from_decisions(tmp_path):
    path = tmp_path / "run.jsonl"
    log = DecisionLog(path, LogContext(run_id="r1", task="qa", budget=100.0))
    log.write(Decision(stop=False, reason=Reason.IMPROVING, message="", tokens=10.0, value=0.1, best=0.1),
              acted=False)
    log.write_event("batch_size", tokens=12.0, step=3, message="noise scale 300 > batch 64",
                    change={"accumulation": [2, 4]})
    log.write(Decision(stop=False, reason=Reason.IMPROVING, message="", tokens=20.0, value=0.2, best=0.2),
              acted=False)
    read = read_logs(path)
    assert read.skipped == ()
    assert list(read.runs["r1"].tokens) == [10.0, 20.0]
    (event,) = read.events
    assert (event.kind, event.run_id, event.tokens, event.step) == ("batch_size", "r1", 12.0, 3)
    assert event.change == {"accumulation": [2, 4]}
    assert "noise scale" in event.message


def test_unknown_event_kind_is_refused_when_written_and_skipped_when_read(tmp_path):
    log = DecisionLog(tmp_path / "run.jsonl", LogContext(run_id="r1"))
    with pytest.raises(ParameterError, match="event kind"):
        log.write_event("learning_rate", tokens=1.0, step=1, message="", change={})
    (tmp_path / "run.jsonl").write_text('{"kind": "lr", "tokens": 1}\n')
    read = read_logs(tmp_path / "run.jsonl")
    assert read.events == () and len(read.skipped) == 1 and "kind" in read.skipped[0]
