"""Readers: long tables, Hugging Face trainer_state.json, TensorBoard events, wide exports,
LCDB mapping, many sources, and the ``metastop ingest`` command."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from metastop.cli.main import main
from metastop.curves import CurveSet
from metastop.errors import CurveError, ParameterError, ReadError
from metastop.curves import is_bounded_metric
from metastop.ingest import (detect_format, lcdb_frame, metric_direction, read_curves,
                             read_sources, read_tensorboard, read_trainer_state,
                             wide_table_curves)

FIXTURES = Path(__file__).parent / "fixtures"
TRAINER_STATE = FIXTURES / "trainer_run" / "trainer_state.json"
TRAINER_EVENTS = FIXTURES / "trainer_run" / "runs"


def trainer_state(tmp_path: Path, edit=None, name: str = "run1") -> Path:
    """A copy of the fixture's trainer_state.json, optionally edited, in ``tmp_path/name``."""
    state = json.loads(TRAINER_STATE.read_text())
    if edit is not None:
        edit(state)
    path = tmp_path / name / "trainer_state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    return path


def eval_rows(state: dict) -> list[int]:
    return [i for i, e in enumerate(state["log_history"]) if "eval_exact_match" in e]


# --- Hugging Face trainer_state.json ----------------------------------------------------------
def test_trainer_state_em_on_0_100_is_stored_on_0_1_with_tokens_seen():
    state = json.loads(TRAINER_STATE.read_text())
    logged = [e for e in state["log_history"] if "eval_exact_match" in e]
    curves = read_curves(TRAINER_STATE)
    assert detect_format(TRAINER_STATE) == "trainer_state"
    (curve,) = curves
    assert curve.curve_id == "trainer_run/eval_exact_match"
    assert curve.metric == "exact_match" and curve.direction == "maximize"
    np.testing.assert_allclose(curve.values, [e["eval_exact_match"] / 100 for e in logged])
    np.testing.assert_array_equal(curve.tokens, [e["num_input_tokens_seen"] for e in logged])
    assert curve.meta["scale_original"] == 100
    assert max(e["eval_exact_match"] for e in logged) > 1  # the fixture really is on 0-100
    # max_steps x (tokens seen / global_step)
    assert curve.budget == state["max_steps"] * state["num_input_tokens_seen"] / state["global_step"]


def test_trainer_state_loss_is_minimized_and_metric_accepts_either_name(tmp_path):
    by_short = read_curves(TRAINER_STATE, metric="loss")
    by_key = read_curves(TRAINER_STATE, metric="eval_loss")
    assert by_short[0].curve_id == by_key[0].curve_id == "trainer_run/eval_loss"
    assert by_short[0].direction == "minimize" and "scale_original" not in by_short[0].meta


def test_trainer_state_directory_and_run_id_option():
    assert read_curves(TRAINER_STATE.parent)[0].curve_id == "trainer_run/eval_exact_match"
    assert read_trainer_state(TRAINER_STATE, run_id="mine")[0].run_id == "mine"


def test_trainer_state_without_token_counts_needs_tokens_per_step(tmp_path):
    def strip(state):
        for entry in state["log_history"]:
            entry.pop("num_input_tokens_seen", None)
    path = trainer_state(tmp_path, strip)
    with pytest.raises(CurveError, match=r"trainer_state.json: log_history \(eval_exact_match\) "
                                         r"has steps but no token counts: pass tokens_per_step="):
        read_curves(path)
    curve = read_curves(path, tokens_per_step=1000)[0]
    steps = [e["step"] for e in json.loads(path.read_text())["log_history"] if "eval_exact_match" in e]
    np.testing.assert_array_equal(curve.tokens, np.array(steps) * 1000.0)
    assert curve.budget == 40 * 1000  # max_steps x tokens_per_step


def test_trainer_state_picks_eval_em_and_lists_metrics_when_none_fits(tmp_path):
    def rename(state):
        for entry in state["log_history"]:
            if "eval_exact_match" in entry:
                entry["eval_em"] = entry.pop("eval_exact_match")
    assert read_curves(trainer_state(tmp_path, rename))[0].metric == "em"
    with pytest.raises(CurveError, match=r"no 'bleu'; eval metrics present: \['eval_em', 'eval_loss'\]"):
        read_curves(trainer_state(tmp_path, rename), metric="bleu")


def test_trainer_state_em_that_never_exceeds_1_needs_scale(tmp_path):
    def tiny(state):
        for entry in state["log_history"]:
            if "eval_exact_match" in entry:
                entry["eval_exact_match"] = 0.5
    path = trainer_state(tmp_path, tiny)
    assert read_curves(path)[0].values[0] == 0.5
    assert read_curves(path, scale=100)[0].values[0] == 0.005
    with pytest.raises(ParameterError, match=r"scale must be 1, 100 or None"):
        read_curves(path, scale=10)


def test_trainer_state_bad_values_name_the_log_history_row(tmp_path):
    def nan_and_dup(state):
        rows = eval_rows(state)
        state["log_history"][rows[2]]["eval_exact_match"] = float("nan")
    path = trainer_state(tmp_path, nan_and_dup)
    row = eval_rows(json.loads(TRAINER_STATE.read_text()))[2]
    with pytest.raises(CurveError, match=rf"trainer_state.json, curve 'run1/eval_exact_match', "
                                         rf"row {row}: value must be finite"):
        read_curves(path)


def test_trainer_state_repeated_final_eval_collapses_but_conflict_is_an_error(tmp_path):
    def repeat(state):
        state["log_history"].append(dict(state["log_history"][eval_rows(state)[-1]]))
    assert len(read_curves(trainer_state(tmp_path, repeat))[0]) == 8

    def conflict(state):
        entry = dict(state["log_history"][eval_rows(state)[-1]])
        entry["eval_exact_match"] = 12.5
        state["log_history"].append(entry)
    path = trainer_state(tmp_path, conflict)
    last = len(json.loads(path.read_text())["log_history"]) - 1
    with pytest.raises(CurveError, match=rf"row {last}: duplicate point"):
        read_curves(path)


def test_trainer_state_tokens_that_go_backwards_are_an_error(tmp_path):
    def backwards(state):
        rows = eval_rows(state)
        state["log_history"][rows[3]]["num_input_tokens_seen"] = 1
    with pytest.raises(CurveError, match=r"tokens must strictly increase"):
        read_curves(trainer_state(tmp_path, backwards))


@pytest.mark.parametrize("text, error, rule", [
    ('{"log_history": [', ReadError, r"trainer_state.json: malformed JSON"),
    ("\xff\xfe", ReadError, r"malformed JSON"),
    ('{"global_step": 3}', CurveError, r"must be a JSON object with a 'log_history' list"),
    ('[1, 2]', CurveError, r"'log_history' list"),
    ('{"log_history": [{"eval_exact_match": 50, "step": "five"}]}', CurveError,
     r"row 0: step must be a number, got 'five'"),
    ('{"log_history": [{"loss": 1.0, "step": 1}]}', CurveError,
     r"no an exact-match metric .*eval metrics present: none"),
])
def test_trainer_state_malformed(tmp_path, text, error, rule):
    path = tmp_path / "trainer_state.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(error, match=rule):
        read_curves(path)


@pytest.mark.slow
def test_a_real_trainer_run_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(FIXTURES))
    import make_fixtures

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tiny" / "runs"))  # restored after
    state_path = make_fixtures.train(tmp_path / "tiny")
    curve = read_curves(state_path)[0]
    assert len(curve) == make_fixtures.MAX_STEPS // make_fixtures.EVAL_STEPS
    assert curve.meta["scale_original"] == 100 and 0 <= curve.values.min() <= curve.values.max() <= 1
    events = read_curves(tmp_path / "tiny" / "runs")[0]
    np.testing.assert_allclose(events.values, curve.values, atol=1e-6)  # float32 in events
    np.testing.assert_array_equal(events.tokens, curve.tokens)


# --- TensorBoard ----------------------------------------------------------------------------------
def write_events(directory: Path, scalars: dict[str, list[tuple[int, float]]]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(directory))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, global_step=step)
    writer.close()
    return directory


EM_POINTS = [(100, 5.0), (200, 30.0), (300, 55.0), (400, 60.0)]


def test_tensorboard_events_from_summary_writer(tmp_path):
    logdir = write_events(tmp_path / "runA", {"eval/exact_match": EM_POINTS,
                                              "train/loss": [(50, 3.0), (100, 2.0)]})
    assert detect_format(logdir) == "tensorboard"
    (curve,) = read_curves(logdir, tokens_per_step=2048)
    assert curve.curve_id == "runA/eval/exact_match" and curve.metric == "exact_match"
    np.testing.assert_array_equal(curve.tokens, [s * 2048.0 for s, _ in EM_POINTS])
    np.testing.assert_allclose(curve.values, [v / 100 for _, v in EM_POINTS])
    assert curve.meta["scale_original"] == 100
    event_file = next(logdir.iterdir())
    assert detect_format(event_file) == "tensorboard"
    loss = read_curves(event_file, metric="train/loss", tokens_per_step=1)[0]
    assert loss.direction == "minimize" and list(loss.tokens) == [50.0, 100.0]


def test_tensorboard_needs_tokens_and_names_missing_tags(tmp_path):
    logdir = write_events(tmp_path / "runA", {"eval/exact_match": EM_POINTS})
    with pytest.raises(CurveError, match=r"tag 'eval/exact_match' has steps but no token counts"):
        read_curves(logdir)
    with pytest.raises(CurveError, match=r"no tag 'bleu'; scalar tags present: \['eval/exact_match'\]"):
        read_curves(logdir, metric="bleu", tokens_per_step=1)
    with pytest.raises(CurveError, match=r"tokens_tag 'toks' is not a scalar tag"):
        read_tensorboard(logdir, tokens_tag="toks")
    with pytest.raises(ParameterError, match=r"tokens_per_step must be a finite number > 0"):
        read_curves(logdir, tokens_per_step=0)


def test_tensorboard_tokens_tag_and_several_runs(tmp_path):
    tokens = [(s, s * 100.0) for s, _ in EM_POINTS]
    write_events(tmp_path / "logs" / "a", {"eval/exact_match": EM_POINTS, "train/tokens": tokens})
    write_events(tmp_path / "logs" / "b", {"eval/exact_match": EM_POINTS[:2], "train/tokens": tokens})
    curves = read_curves(tmp_path / "logs", tokens_tag="train/tokens")
    assert curves.ids == ["a/eval/exact_match", "b/eval/exact_match"]
    np.testing.assert_array_equal(curves[0].tokens, [s * 100.0 for s, _ in EM_POINTS])


def test_tensorboard_skip_drops_a_run_without_the_tag(tmp_path):
    write_events(tmp_path / "logs" / "a", {"eval/exact_match": EM_POINTS})
    write_events(tmp_path / "logs" / "b", {"eval/loss": [(1, 2.0)]})
    with pytest.raises(CurveError, match=r"no an exact-match tag"):
        read_curves(tmp_path / "logs", tokens_per_step=1)
    curves = read_curves(tmp_path / "logs", tokens_per_step=1, on_error="skip")
    assert curves.ids == ["a/eval/exact_match"]
    assert len(curves.dropped) == 1 and "scalar tags present: ['eval/loss']" in curves.dropped[0]


def test_tensorboard_from_the_hf_trainer_uses_its_token_counts():
    state = read_curves(TRAINER_STATE)[0]
    (curve,) = read_curves(TRAINER_EVENTS)
    np.testing.assert_array_equal(curve.tokens, state.tokens)
    np.testing.assert_allclose(curve.values, state.values, atol=1e-6)
    with pytest.raises(CurveError, match=r"2 tags match 'loss': \['eval/loss', 'train/loss'\]"):
        read_curves(TRAINER_EVENTS, metric="loss")


def test_tensorboard_corrupt_or_empty_files(tmp_path):
    empty = tmp_path / "events.out.tfevents.1.host"
    empty.write_bytes(b"")
    with pytest.raises(CurveError, match=r"no an exact-match tag .*scalar tags present: none"):
        read_curves(empty)
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(ReadError, match=r"nothing_here: a directory without trainer_state.json"):
        read_curves(tmp_path / "nothing_here")


def test_tensorboard_truncated_file_keeps_what_was_complete_or_fails_cleanly(tmp_path):
    logdir = write_events(tmp_path / "run", {"eval/exact_match": EM_POINTS})
    event_file = next(logdir.iterdir())
    data = event_file.read_bytes()
    event_file.write_bytes(data[: len(data) - 7])
    curves = read_curves(logdir, tokens_per_step=1)
    assert len(curves[0]) == len(EM_POINTS) - 1  # the torn last record is not read


# --- wide exports ------------------------------------------------------------------------------
def test_wandb_export_columns_become_curves_and_empty_cells_are_skipped(tmp_path):
    path = tmp_path / "wandb_export.csv"
    pd.DataFrame({
        "Step": [100, 200, 300, 400],
        "run-a - eval/exact_match": [10.0, None, 40.0, 50.0],
        "run-a - eval/exact_match__MIN": [10.0, None, 40.0, 50.0],
        "run-a - eval/exact_match__MAX": [10.0, None, 40.0, 50.0],
        "run-b - eval/exact_match": [0.1, 0.2, 0.3, None],
    }).to_csv(path, index=False)
    assert detect_format(path) == "wide"
    curves = read_curves(path, tokens_per_step=10)
    assert curves.ids == ["run-a/eval/exact_match", "run-b/eval/exact_match"]
    np.testing.assert_array_equal(curves[0].tokens, [1000.0, 3000.0, 4000.0])
    np.testing.assert_allclose(curves[0].values, [0.1, 0.4, 0.5])
    assert curves[0].meta["scale_original"] == 100 and "scale_original" not in curves[1].meta
    assert curves[0].run_id == "run-a"


def test_mlflow_style_export_with_metrics_at_different_steps(tmp_path):
    path = tmp_path / "metrics.csv"
    pd.DataFrame({"step": [1, 2, 3, 4], "timestamp": [0, 1, 2, 3], "epoch": [0, 0, 1, 1],
                  "eval_loss": [2.0, None, 1.5, None], "train_loss": [3.0, 2.5, 2.2, 2.0]}
                 ).to_csv(path, index=False)
    curves = read_curves(path, tokens_per_step=1)
    assert curves.ids == ["metrics/eval_loss", "metrics/train_loss"]
    assert all(c.direction == "minimize" for c in curves)
    assert [len(c) for c in curves] == [2, 4]
    assert read_curves(path, tokens_per_step=1, metric="loss").ids == ["metrics/eval_loss"]


def test_wide_export_errors_name_file_curve_and_row(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame({"step": [1, 2, 3], "em": [0.1, "oops", 0.3]}).to_csv(path, index=False)
    with pytest.raises(CurveError, match=r"w.csv, curve 'w/em', row 1: value must be a number, got 'oops'"):
        read_curves(path, tokens_per_step=1)
    pd.DataFrame({"step": [1, 1, 3], "em": [0.1, 0.2, 0.3]}).to_csv(path, index=False)
    with pytest.raises(CurveError, match=r"curve 'w/em', row 1: duplicate point"):
        read_curves(path, tokens_per_step=1)
    with pytest.raises(CurveError, match=r"the wide export has steps but no token counts"):
        read_curves(path)
    pd.DataFrame({"step": [1, 2], "em": [None, None], "f1": [0.5, 0.6]}).to_csv(path, index=False)
    with pytest.raises(CurveError, match=r"curve 'w/em': an empty curve: every cell of column 'em'"):
        read_curves(path, tokens_per_step=1)


def test_wide_export_skip_drops_only_the_bad_columns(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame({"step": [1, 2, 3], "em": [None, None, None], "f1": [0.5, "x", 0.6],
                  "acc": [0.1, 0.2, 0.3]}).to_csv(path, index=False)
    curves = read_curves(path, tokens_per_step=1, on_error="skip")
    assert curves.ids == ["w/acc"]
    assert len(curves.dropped) == 2
    assert "curve 'w/em': an empty curve" in curves.dropped[0]
    assert "curve 'w/f1', row 1: value must be a number, got 'x'" in curves.dropped[1]
    only_bad = pd.read_csv(path).drop(columns="acc")
    with pytest.raises(CurveError, match=r"w.csv: no valid curve left after skipping 2 bad ones"):
        wide_table_curves(only_bad, source=str(path), tokens_per_step=1, on_error="skip")


def test_wide_export_uses_a_tokens_column(tmp_path):
    path = tmp_path / "w.csv"
    pd.DataFrame({"step": [1, 2], "num_input_tokens_seen": [500, 900], "acc": [0.5, 0.6]}
                 ).to_csv(path, index=False)
    curve = read_curves(path)[0]
    assert list(curve.tokens) == [500.0, 900.0] and curve.metric == "acc"


# --- long tables and detection -----------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_long_tables_of_each_format(tmp_path, suffix):
    frame = pd.DataFrame({"curve_id": ["a", "a", "b"], "tokens": [1, 2, 1], "value": [0.1, 0.2, 0.3],
                          "metric": "accuracy", "learner": ["x", "x", "y"]})
    path = tmp_path / f"t{suffix}"
    {".csv": lambda p: frame.to_csv(p, index=False), ".parquet": lambda p: frame.to_parquet(p),
     ".jsonl": lambda p: frame.to_json(p, orient="records", lines=True)}[suffix](path)
    curves = read_curves(path)
    assert detect_format(path) == "long" and curves.ids == ["a", "b"]
    assert curves["b"].meta == {"learner": "y"}


def test_long_table_step_axis_and_total_steps_budget(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"curve_id": ["a", "a"], "step": [10, 20], "total_steps": [100, 100],
                  "value": [2.0, 1.0], "direction": "minimize"}).to_csv(path, index=False)
    curve = read_curves(path)[0]
    assert list(curve.tokens) == [10.0, 20.0] and curve.budget == 100


@pytest.mark.parametrize("name, content, error, rule", [
    ("t.csv", b"tokens,value\n1,2\n", CurveError, r"t.csv: missing required column\(s\) \['curve_id'\]"),
    ("t.csv", b"a,b\n1,2\n", CurveError, r"missing column: a long table needs curve_id"),
    ("t.csv", b"", ReadError, r"t.csv: cannot be read as csv"),
    ("t.parquet", b"PAR1garbage", ReadError, r"t.parquet: cannot be read as parquet"),
    ("t.jsonl", b'{"curve_id": "a", "tok', ReadError, r"t.jsonl: cannot be read as jsonl"),
    ("t.xlsx", b"whatever", ReadError, r"t.xlsx: unknown format"),
])
def test_bad_files_get_metastop_errors(tmp_path, name, content, error, rule):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=rule):
        read_curves(path)


def test_truncated_parquet_is_a_read_error(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"curve_id": ["a"] * 50, "tokens": range(50), "value": 0.5}).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ReadError, match=r"t.parquet: cannot be read as parquet"):
        read_curves(path)


def test_missing_file_and_unknown_options(tmp_path):
    with pytest.raises(ReadError, match=r"nope.csv: does not exist"):
        read_curves(tmp_path / "nope.csv")
    with pytest.raises(ParameterError, match=r"unknown reader option\(s\) \['colour'\]"):
        read_curves(TRAINER_STATE, colour="red")
    with pytest.raises(ParameterError, match=r"format must be one of"):
        read_curves(TRAINER_STATE, format="xml")


def test_metric_names_give_direction_and_scale_kind():
    assert metric_direction("eval_loss") == "minimize"
    assert metric_direction("eval/perplexity") == "minimize"
    assert metric_direction("eval_exact_match") == "maximize"
    assert is_bounded_metric("eval_em") and is_bounded_metric("accuracy")
    assert not is_bounded_metric("eval_loss") and not is_bounded_metric("gem_score")


# --- LCDB ------------------------------------------------------------------------------------------
def raw_lcdb() -> pd.DataFrame:
    return pd.DataFrame({
        "openmlid": [6, 6, 3, 3, 3], "learner": ["sklearn.svm.LinearSVC"] * 2 + ["SVC_rbf"] * 3,
        "size_train": [32, 16, 16, 23, 32], "size_test": 100, "outer_seed": [1, 1, 0, 0, 0],
        "inner_seed": [2, 2, 0, 0, 0], "score_valid": [0.7, 0.6, 0.5, 0.55, 0.6],
        "score_train": 1.0})


def test_lcdb_frame_maps_into_the_curve_table():
    frame = lcdb_frame(raw_lcdb(), names={3: "kr-vs-kp"})
    curves = CurveSet.from_frame(frame)
    assert curves.ids == ["lcdb/3/SVC_rbf/0/0", "lcdb/6/LinearSVC/1/2"]
    first, second = curves
    assert (first.run_id, first.task, first.metric) == ("lcdb/3", "kr-vs-kp", "accuracy")
    assert second.task == "openml-6"
    np.testing.assert_array_equal(second.tokens, [16.0, 32.0])  # sorted by size_train
    np.testing.assert_array_equal(second.values, [0.6, 0.7])
    assert second.meta == {"dataset": 6, "learner": "sklearn.svm.LinearSVC", "outer_seed": 1,
                           "inner_seed": 2}


def test_lcdb_frame_allows_datasets_that_share_a_name():
    frame = lcdb_frame(raw_lcdb(), names={3: "iris", 6: "iris"})
    assert set(frame["task"]) == {"iris"}
    assert set(frame["run_id"]) == {"lcdb/3", "lcdb/6"}


def test_lcdb_frame_requires_its_columns():
    with pytest.raises(CurveError, match=r"missing LCDB column\(s\) \['score_valid'\]"):
        lcdb_frame(raw_lcdb().drop(columns="score_valid"))


def test_shipped_corpus_files_follow_the_schema():
    root = Path(__file__).parent.parent / "data"
    sample = read_curves(root / "sample_curves.parquet")
    assert 30 <= len(sample) <= 40 and all(len(c) >= 4 for c in sample)
    corpus_datasets = set(pd.read_parquet(root / "lcdb.parquet", columns=["dataset"])["dataset"])
    assert not {c.meta["dataset"] for c in sample} & corpus_datasets


# --- many sources and the CLI ---------------------------------------------------------------------
def test_read_sources_skip_drops_unreadable_files_and_repeated_ids(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{nope")
    result = read_sources([TRAINER_STATE, junk, TRAINER_STATE], on_error="skip")
    assert len(result.curves) == 1
    assert [s.format for s in result.sources] == ["trainer_state", None, "trainer_state"]
    assert len(result.dropped) == 2
    assert "junk.json: malformed JSON" in result.dropped[0]
    assert "curve_id must be unique across sources" in result.dropped[1]
    with pytest.raises(ReadError, match=r"junk.json: malformed JSON"):
        read_sources([TRAINER_STATE, junk])


def test_cli_ingest_writes_the_table_and_a_json_summary(tmp_path):
    out, summary = tmp_path / "curves.parquet", tmp_path / "summary.json"
    result = CliRunner().invoke(main, ["ingest", str(TRAINER_STATE), str(TRAINER_EVENTS),
                                       "-o", str(out), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    assert "trainer_state" in result.output and "tensorboard" in result.output
    facts = json.loads(summary.read_text())
    assert facts["n_curves"] == 2 and facts["n_points"] == 16 and facts["dropped"] == []
    assert len(read_curves(out)) == 2


def test_cli_ingest_json_to_stdout_is_clean(tmp_path):
    result = CliRunner().invoke(main, ["ingest", str(TRAINER_STATE), "-o",
                                       str(tmp_path / "c.csv"), "--json", "-"])
    assert json.loads(result.output)["sources"][0]["format"] == "trainer_state"


def test_cli_ingest_fails_on_junk_and_leaves_the_old_output_untouched(tmp_path):
    out = tmp_path / "curves.parquet"
    out.write_bytes(b"previous")
    junk = tmp_path / "bad.csv"
    junk.write_text("curve_id,tokens,value\na,1,0.5\na,1,0.6\n")
    result = CliRunner().invoke(main, ["ingest", str(TRAINER_STATE), str(junk), "-o", str(out)])
    assert result.exit_code == 1
    assert "bad.csv, curve 'a', row 1: duplicate point" in result.output
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "curves.parquet"]


def test_cli_ingest_skip_says_what_was_dropped(tmp_path):
    junk = tmp_path / "bad.csv"
    junk.write_text("curve_id,tokens,value\na,1,0.5\na,2,inf\nb,1,0.2\n")
    result = CliRunner().invoke(main, ["ingest", str(junk), "--on-error", "skip",
                                       "-o", str(tmp_path / "c.parquet")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and "value must be finite" in result.output
    assert read_curves(tmp_path / "c.parquet").ids == ["b"]


def test_cli_ingest_help_has_examples():
    result = CliRunner().invoke(main, ["ingest", "--help"])
    assert result.exit_code == 0 and "metastop ingest out/trainer_state.json" in result.output


def test_mlflow_single_metric_export_is_read_as_a_wide_table(tmp_path):
    path = tmp_path / "eval_exact_match.csv"
    pd.DataFrame({"step": [10, 20, 30], "value": [0.1, 0.25, 0.3],
                  "timestamp": [1700000000000, 1700000060000, 1700000120000]}).to_csv(path, index=False)
    assert detect_format(path) == "wide"
    [curve] = read_curves(path, tokens_per_step=100)
    assert curve.metric == "exact_match" and curve.curve_id == "eval_exact_match/eval_exact_match"
    assert curve.tokens.tolist() == [1000.0, 2000.0, 3000.0]
    assert curve.values.tolist() == [0.1, 0.25, 0.3]


# --- what is not a learning curve is refused, naming the row (the adversary's reproductions) -----
def long_table(rows: list[tuple], **columns) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["curve_id", "tokens", "value"])
    for name, values in columns.items():
        frame[name] = values
    return frame


def write(frame: pd.DataFrame, path: Path) -> Path:
    {".csv": lambda: frame.to_csv(path, index=False),
     ".parquet": lambda: frame.to_parquet(path, index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[path.suffix]()
    return path


EM_ROWS = [("a", 1.0, 0.1), ("a", 2.0, 0.2), ("a", 3.0, 0.3), ("a", 4.0, 0.4)]


@pytest.mark.parametrize("value, rule", [
    (-0.2, r"value must be >= 0 for a share of examples \(0-1 or 0-100\), got -0.2"),
    (101.0, r"value must be <= 100 for a share of examples"),
    (1e308, r"value must be <= 100 for a share of examples .*got 1e\+308"),
    (50.0, r"value 50.0 is above 1 while most of the curve's values lie within \(0, 1\]"),
])
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_a_share_of_examples_out_of_its_range_is_refused_naming_the_row(tmp_path, suffix, value,
                                                                        rule):
    rows = EM_ROWS[:2] + [("a", 3.0, value)] + EM_ROWS[3:]
    path = write(long_table(rows, metric="accuracy"), tmp_path / f"t{suffix}")
    with pytest.raises(CurveError, match=rf"t{suffix}, curve 'a', row 2: metric 'accuracy': {rule}"):
        read_curves(path)


def test_a_metric_declared_unbounded_may_leave_the_range(tmp_path):
    rows = [("a", 1.0, -0.3), ("a", 2.0, 0.2), ("a", 3.0, 150.0)]
    path = write(long_table(rows, metric="acc_delta", bounded=False), tmp_path / "t.parquet")
    (curve,) = read_curves(path)
    assert curve.meta["bounded"] is False
    assert curve.score_range() == (-np.inf, np.inf)
    with pytest.raises(CurveError, match="metric 'acc_delta'"):
        read_curves(write(long_table(rows, metric="acc_delta"), tmp_path / "u.parquet"))


def test_log_readers_refuse_out_of_range_shares_too(tmp_path):
    def negative(state):
        state["log_history"][eval_rows(state)[1]]["eval_exact_match"] = -5.0
    with pytest.raises(CurveError, match=r"row \d+: metric 'eval_exact_match': value must be >= 0"):
        read_curves(trainer_state(tmp_path, negative))
    with pytest.raises(CurveError, match=r"value must be in \[0, 1\] on the stated scale=1, got"):
        read_curves(TRAINER_STATE, scale=1)
    wide = tmp_path / "w.csv"
    wide.write_text("step,eval/accuracy\n1,0.1\n2,0.2\n3,50\n4,0.3\n")
    with pytest.raises(CurveError, match=r"w.csv, curve 'w/eval/accuracy', row 2: metric "
                                         r"'eval/accuracy': value 50.0 is above 1"):
        read_curves(wide, tokens_per_step=10)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])  # Parquet: see the whole-column test
@pytest.mark.parametrize("column", ["value", "tokens"])
def test_true_false_is_not_a_number(tmp_path, suffix, column):
    frame = long_table(EM_ROWS)
    frame[column] = frame[column].astype(object)
    frame.loc[1, column] = True
    path = write(frame, tmp_path / f"t{suffix}")
    with pytest.raises(CurveError, match=rf"curve 'a', row 1: {column} must be a number, got "
                                         rf"(True|'True') ?(\(true/false is not a measurement\))?"):
        read_curves(path)


def test_a_whole_true_false_column_is_not_a_curve(tmp_path):
    frame = long_table(EM_ROWS)
    frame["value"] = [True, False, True, True]
    for suffix in (".parquet", ".jsonl", ".csv"):
        with pytest.raises(CurveError, match=r"row 0: value must be a number, got True \(true/"):
            read_curves(write(frame, tmp_path / f"t{suffix}"))
    wide = tmp_path / "w.csv"
    wide.write_text("step,eval/accuracy\n1,True\n2,False\n")
    with pytest.raises(CurveError, match=r"row 0: value must be a number, got True"):
        read_curves(wide, tokens_per_step=1)


def test_dates_are_not_token_counts(tmp_path):
    frame = long_table(EM_ROWS)
    frame["tokens"] = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"])
    with pytest.raises(CurveError, match=r"row 0: tokens must be a number, got Timestamp"
                                         r"\('2024-01-01 00:00:00'\) \(a date or duration is not "
                                         r"a count\)"):
        read_curves(write(frame, tmp_path / "t.parquet"))


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_curve_id_is_refused(tmp_path, blank):
    rows = EM_ROWS[:2] + [(blank, 1.0, 0.1)]
    with pytest.raises(CurveError, match=rf"t.parquet, row 2: curve_id must not be empty"):
        read_curves(write(long_table(rows), tmp_path / "t.parquet"))


def test_a_direction_that_changes_within_a_curve_is_refused(tmp_path):
    path = write(long_table(EM_ROWS, direction=["maximize", "maximize", "minimize", None]),
                 tmp_path / "t.csv")
    with pytest.raises(CurveError, match=r"curve 'a', row 2: direction must be the same on every "
                                         r"row of a curve, got 'maximize' then 'minimize'"):
        read_curves(path)
    same = write(long_table(EM_ROWS, direction=[None, "Minimize", "minimize", None]),
                 tmp_path / "u.csv")
    assert read_curves(same)[0].direction == "minimize"  # a blank cell takes the curve's


def test_a_budget_that_is_not_a_number_is_refused(tmp_path):
    path = write(long_table(EM_ROWS, budget=["ten", "ten", "ten", "ten"]), tmp_path / "t.csv")
    with pytest.raises(CurveError, match=r"curve 'a', row 0: budget must be a number, got 'ten'"):
        read_curves(path)
    missing = write(long_table(EM_ROWS, budget=[None] * 4), tmp_path / "u.csv")
    assert read_curves(missing)[0].budget == 4.0  # no budget: the last tokens, as before


def test_metadata_of_mixed_kinds_is_stored_as_text_and_said(tmp_path, caplog):
    rows = EM_ROWS + [("b", 1.0, 0.1), ("b", 2.0, 0.3)]
    path = write(long_table(rows, seed=[1, 1, 1, 1, "x", "x"]), tmp_path / "t.jsonl")
    curves = read_curves(path)
    assert [c.meta["seed"] for c in curves] == ["1", "x"]
    [note] = curves.warnings
    assert "t.jsonl: metadata column 'seed' holds number and text values; stored as text" in note
    assert note in caplog.text
    back = read_curves(curves.write(tmp_path / "out.parquet"))
    assert [c.meta["seed"] for c in back] == ["1", "x"]
    result = read_sources([path])
    assert result.sources[0].warnings == (note,) and result.to_dict()["warnings"] == [note]


def test_metadata_nested_deep_is_kept_as_json_text_that_reads_back(tmp_path):
    nested: dict = {"lr": 0.1}
    for _ in range(500):
        nested = {"x": nested}
    lines = [json.dumps({"curve_id": "a", "tokens": t, "value": 0.1 * t, "config": nested})
             for t in (1, 2, 3)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines))
    (curve,) = read_curves(tmp_path / "t.jsonl")
    assert json.loads(curve.meta["config"]) == nested
    back = read_curves(read_curves(tmp_path / "t.jsonl").write(tmp_path / "out.parquet"))
    assert back[0].meta["config"] == curve.meta["config"]
    assert CliRunner().invoke(main, ["analyze", str(tmp_path / "out.parquet")]).exit_code == 0


def test_invalid_utf8_in_a_parquet_text_column_is_a_read_error(tmp_path):
    path = write(long_table(EM_ROWS, task=["tttt"] * 4), tmp_path / "t.parquet")
    data = path.read_bytes().replace(b"tttt", b"t\xfftt")
    path.write_bytes(data)
    with pytest.raises(ReadError, match=r"t.parquet: column 'task' holds text that is not valid "
                                        r"UTF-8"):
        read_curves(path)


@pytest.mark.parametrize("token", ["NaN", "None", "N/A", "null", "nan"])
def test_wide_cells_holding_nan_none_na_are_counted_and_said(tmp_path, caplog, token):
    path = tmp_path / "export.csv"
    path.write_text(f"step,eval/exact_match,eval/loss\n1,0.1,3\n2,{token},2.5\n3,0.3,\n"
                    f"4,{token},2\n")
    curves = read_curves(path, tokens_per_step=10)
    assert len(curves["export/eval/exact_match"]) == 2 and len(curves["export/eval/loss"]) == 3
    [note] = curves.warnings
    assert note == (f"file {path}: column 'eval/exact_match': skipped 2 cell(s) holding "
                    f"NaN/None/N/A instead of a number (first at row 1)")
    assert note in caplog.text
    summary = read_sources([path], tokens_per_step=10).sources[0]
    assert summary.warnings == (note,)


def test_mlflow_and_parquet_nan_cells_are_counted_too(tmp_path):
    mlflow = tmp_path / "eval_accuracy.csv"
    mlflow.write_text("step,value,timestamp\n1,0.1,1\n2,NaN,2\n3,0.3,3\n")
    [note] = read_curves(mlflow, tokens_per_step=1).warnings
    assert "column 'eval_accuracy': skipped 1 cell(s)" in note
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"step": [1, 2, 3, 4],
                      "eval/em": pa.array([0.1, float("nan"), None, 0.4], from_pandas=False)})
    pq.write_table(table, tmp_path / "w.parquet")
    [note] = read_curves(tmp_path / "w.parquet", tokens_per_step=1).warnings
    assert "column 'eval/em': skipped 1 cell(s)" in note  # the NaN, not the null
    lines = ['{"step": %d, "eval/em": %s}' % (i, v) for i, v in enumerate(["0.1", "NaN", "null"])]
    (tmp_path / "w.jsonl").write_text("\n".join(lines))
    [note] = read_curves(tmp_path / "w.jsonl", tokens_per_step=1).warnings
    assert "column 'eval/em': skipped 1 cell(s)" in note


def test_a_flipped_byte_in_an_event_file_is_said_with_its_offset(tmp_path):
    logdir = write_events(tmp_path / "run", {"eval/exact_match": EM_POINTS})
    event_file = next(logdir.iterdir())
    whole = event_file.read_bytes()
    flipped = bytearray(whole)
    flipped[len(whole) * 2 // 3] ^= 0x10
    event_file.write_bytes(bytes(flipped))
    curves = read_curves(logdir, tokens_per_step=1)
    assert len(curves[0]) < len(EM_POINTS)
    [note] = curves.warnings
    assert re.search(rf"{event_file}: damaged at byte \d+ of {len(whole)} \(the (data|length) of "
                     rf"record \d+ fails its CRC32C check\); only the records before it were read",
                     note)
    event_file.write_bytes(whole[:-7])
    assert "is cut short" in read_curves(logdir, tokens_per_step=1).warnings[0]
    event_file.write_bytes(whole)
    assert read_curves(logdir, tokens_per_step=1).warnings == []


def test_a_complex_tensorboard_tensor_is_refused_naming_the_tag(tmp_path):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    writer = EventFileWriter(str(tmp_path / "run"))
    for step in (1, 2):
        value = summary_pb2.Summary.Value(tag="eval/exact_match",
                                          tensor=tensor_util.make_tensor_proto(np.complex64(1j)))
        writer.add_event(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value])))
    writer.close()
    with pytest.raises(CurveError, match=r"tag 'eval/exact_match' holds a complex value \(1j\) "
                                         r"at step 1; a learning curve needs real numbers"):
        read_curves(tmp_path / "run", tokens_per_step=1)


def test_event_files_without_the_tensorboard_extra_give_an_install_hint(monkeypatch):
    for name in ("google.protobuf.message", "tensorboard.backend.event_processing.event_accumulator"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ReadError, match=r"needs the tensorboard extra: pip install "
                                        r"'metastop\[tensorboard\]'"):
        read_curves(TRAINER_EVENTS)
