"""Curve / CurveSet: validation, direction, budget, groups, and the table round trip."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from metastop.curves import Curve, CurveSet, atomic_path
from metastop.curves.curveset import cell_rule, numeric_cells
from metastop.curves.schema import (bounded_breaks, bounded_message, bounded_rule,
                                    declared_unbounded)
from metastop.errors import CurveError, ParameterError
from metastop.ingest import read_curves


def table(**columns) -> pd.DataFrame:
    base = {"curve_id": ["a", "a", "a", "b", "b"], "tokens": [1.0, 2.0, 3.0, 1.0, 5.0],
            "value": [0.1, 0.2, 0.3, 0.5, 0.4]}
    return pd.DataFrame(base | columns)


# --- Curve ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, values, rule", [
    ([1, 2, 3], [0.1, np.nan, 0.3], r"point 1|value must be finite"),
    ([1, 2, 3], [0.1, np.inf, 0.3], r"value must be finite"),
    ([1, np.inf, 3], [0.1, 0.2, 0.3], r"tokens must be finite"),
    ([-1, 2, 3], [0.1, 0.2, 0.3], r"tokens must be >= 0"),
    ([1, 2, 2], [0.1, 0.2, 0.3], r"duplicate point"),
    ([1, 3, 2], [0.1, 0.2, 0.3], r"tokens go backwards"),
    ([], [], r"at least one point"),
    ([1, 2], [0.1], r"differ in length"),
])
def test_curve_rejects_bad_points(tokens, values, rule):
    with pytest.raises(CurveError, match=rule) as info:
        Curve("c1", tokens=tokens, values=values)
    assert info.value.curve == "c1"


def test_curve_error_names_the_row_of_the_bad_point():
    with pytest.raises(CurveError, match=r"curve 'c1', row 2: tokens must strictly increase"):
        Curve("c1", tokens=[1, 2, 2], values=[0, 0, 0])


def test_curve_rejects_unknown_direction_and_small_budget():
    with pytest.raises(CurveError, match=r"direction must be one of .*got 'up'"):
        Curve("c", tokens=[1], values=[1], direction="up")
    with pytest.raises(CurveError, match=r"budget must be finite and >= the last tokens"):
        Curve("c", tokens=[1, 4], values=[1, 2], budget=3)


def test_budget_defaults_to_last_tokens_and_fraction_seen():
    curve = Curve("c", tokens=[1e6, 2e6, 4e6], values=[0.1, 0.3, 0.35])
    assert curve.budget == 4e6 and curve.fraction_seen == 1.0
    assert Curve("c", tokens=[1, 2], values=[0, 1], budget=8).fraction_seen == 0.25


def test_direction_minimize_flips_scores_only_through_sign():
    loss = Curve("loss", tokens=[1, 2, 3], values=[3.0, 1.0, 2.0], direction="minimize")
    assert loss.sign == -1.0
    np.testing.assert_array_equal(loss.scores, [-3.0, -1.0, -2.0])
    assert loss.best == 1.0 and loss.best_index == 1
    assert loss.to_metric(-1.5) == 1.5
    em = Curve("em", tokens=[1, 2, 3], values=[0.1, 0.5, 0.2])
    assert em.best == 0.5 and em.best_index == 1


def test_curve_arrays_are_read_only_and_prefix_keeps_budget():
    curve = Curve("c", tokens=[1, 2, 3, 4], values=[0.1, 0.2, 0.3, 0.4], budget=10)
    with pytest.raises(ValueError):
        curve.values[0] = 1.0
    head = curve.prefix(2)
    assert len(head) == 2 and head.budget == 10
    assert len(curve.upto(2.5)) == 2 and len(curve.upto(0)) == 1
    with pytest.raises(ParameterError, match=r"n must be in \[1, 4\], got n=0"):
        curve.prefix(0)


def test_with_point_validates_the_new_point():
    curve = Curve("c", tokens=[1, 2], values=[0.1, 0.2])
    assert len(curve.with_point(3, 0.3)) == 3
    with pytest.raises(CurveError, match=r"duplicate point"):
        curve.with_point(2, 0.3)


# --- CurveSet ----------------------------------------------------------------------------
def test_curveset_requires_unique_ids_and_indexes_by_id():
    a = Curve("a", tokens=[1], values=[0])
    with pytest.raises(CurveError, match=r"curve 'a': curve_id must be unique"):
        CurveSet([a, Curve("a", tokens=[2], values=[1])])
    curves = CurveSet([a, Curve("b", tokens=[1], values=[1])])
    assert curves["b"].curve_id == "b" and curves.ids == ["a", "b"]
    with pytest.raises(KeyError, match=r"no curve 'z'"):
        curves["z"]


def test_groups_by_run_then_task_then_curve():
    curves = CurveSet([Curve("r1/em", tokens=[1], values=[0], run_id="r1", task="qa"),
                       Curve("r1/f1", tokens=[1], values=[0], run_id="r1", task="qa"),
                       Curve("x", tokens=[1], values=[0], task="qa"),
                       Curve("y", tokens=[1], values=[0])])
    assert {k: len(v) for k, v in curves.groups().items()} == {"r1": 2, "qa": 1, "y": 1}
    assert {k: len(v) for k, v in curves.groups("task").items()} == {"qa": 3, "": 1}
    with pytest.raises(ParameterError, match=r"by must be one of"):
        curves.groups("learner")


# --- from_frame: validation --------------------------------------------------------------------
@pytest.mark.parametrize("columns, curve, row, rule", [
    ({"value": [0.1, np.nan, 0.3, 0.5, 0.4]}, "a", 1, r"value must be finite"),
    ({"value": [0.1, 0.2, 0.3, np.inf, 0.4]}, "b", 3, r"value must be finite"),
    ({"tokens": [1.0, 2.0, 2.0, 1.0, 5.0]}, "a", 2, r"duplicate point"),
    ({"tokens": [1.0, 3.0, 2.0, 1.0, 5.0]}, "a", 2, r"tokens must strictly increase .* got 3.0 then 2.0"),
    ({"tokens": [1.0, 2.0, 3.0, -1.0, 5.0]}, "b", 3, r"tokens must be >= 0"),
    ({"value": [0.1, "x", 0.3, 0.5, 0.4]}, "a", 1, r"value must be a number, got 'x'"),
    ({"direction": ["maximize"] * 3 + ["upwards"] * 2}, "b", 3, r"direction must be one of"),
    ({"budget": [10.0] * 3 + [2.0] * 2}, "b", 4, r"budget must be finite and >= the last"),
])
def test_from_frame_names_file_curve_row_and_rule(columns, curve, row, rule):
    with pytest.raises(CurveError, match=rf"file t.csv, curve '{curve}', row {row}: {rule}"):
        CurveSet.from_frame(table(**columns), source="t.csv")


@pytest.mark.parametrize("frame, rule", [
    (pd.DataFrame({"curve_id": ["a"], "value": [1.0]}), r"missing required column\(s\) \['tokens'\]"),
    (pd.DataFrame({"curve_id": [], "tokens": [], "value": []}), r"has no rows"),
    (pd.DataFrame({"curve_id": ["a", None], "tokens": [1, 2], "value": [1, 2]}),
     r"row 1: curve_id must not be empty"),
])
def test_from_frame_rejects_bad_tables(frame, rule):
    with pytest.raises(CurveError, match=rule):
        CurveSet.from_frame(frame, source="t.csv")


def test_skip_drops_bad_curves_and_says_why():
    curves = CurveSet.from_frame(table(value=[0.1, np.nan, 0.3, 0.5, 0.4]), source="t.csv",
                                 on_error="skip")
    assert curves.ids == ["b"]
    assert curves.dropped == ["file t.csv, curve 'a', row 1: value must be finite (got nan)"]


def test_skip_with_nothing_left_still_fails():
    with pytest.raises(CurveError, match=r"no valid curve left after skipping 2"):
        CurveSet.from_frame(table(value=[np.nan] * 5), source="t.csv", on_error="skip")


def test_on_error_must_be_known():
    with pytest.raises(ParameterError, match=r"on_error must be one of"):
        CurveSet.from_frame(table(), on_error="ignore")


def test_rows_map_errors_to_the_files_own_rows():
    with pytest.raises(CurveError, match=r"curve 'a', row 41: duplicate point"):
        CurveSet.from_frame(table(tokens=[1.0, 1.0, 3.0, 1.0, 5.0]), rows=[40, 41, 42, 43, 44])


def test_a_metric_on_0_100_in_one_curve_and_0_1_in_another_is_rejected():
    frame = table(value=[10.0, 50.0, 70.0, 0.5, 0.4], metric=["exact_match"] * 5)
    frame = pd.concat([frame, frame.assign(curve_id=frame["curve_id"] + "2",
                                           value=[0.1, 0.5, 0.7, 0.5, 0.4])])
    with pytest.raises(CurveError, match=r"metric 'exact_match' mixes scales"):
        CurveSet.from_frame(frame, source="t.csv")
    ok = CurveSet.from_frame(frame.assign(metric="loss"))  # unbounded metrics may exceed 1
    assert len(ok) == 4


def test_rows_of_a_curve_may_be_interleaved_but_stay_in_order():
    frame = pd.DataFrame({"curve_id": ["a", "b", "a", "b"], "tokens": [1, 1, 2, 2],
                          "value": [0.1, 0.2, 0.3, 0.4]})
    curves = CurveSet.from_frame(frame)
    np.testing.assert_array_equal(curves["a"].values, [0.1, 0.3])


# --- round trip ---------------------------------------------------------------------------------
def sample_set() -> CurveSet:
    return CurveSet([
        Curve("r1/em", tokens=[1e3, 2e3, 4e3], values=[0.1, 0.4, 0.5], budget=8e3, run_id="r1",
              task="qa", metric="exact_match", meta={"learner": "gpt2", "seed": 3}),
        Curve("r2/loss", tokens=[10, 20], values=[2.0, 1.5], direction="minimize",
              run_id="r2", metric="loss", meta={"learner": "bert"}),
    ])


def assert_same(a: CurveSet, b: CurveSet) -> None:
    assert a.ids == b.ids
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.tokens, y.tokens)
        np.testing.assert_allclose(x.values, y.values)
        assert (x.direction, x.budget, x.run_id, x.task, x.metric) == \
            (y.direction, y.budget, y.run_id, y.task, y.metric)
        assert {k: v for k, v in x.meta.items()} == {k: v for k, v in y.meta.items()}


def test_round_trip_through_the_frame():
    curves = sample_set()
    frame = curves.to_frame()
    assert list(frame.columns[:3]) == ["curve_id", "tokens", "value"]
    assert len(frame) == 5
    assert_same(curves, CurveSet.from_frame(frame))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_round_trip_through_each_file_format(tmp_path, suffix):
    curves = sample_set()
    path = curves.write(tmp_path / f"curves{suffix}")
    assert_same(curves, read_curves(path))


def test_write_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ParameterError, match=r"path must end in one of"):
        sample_set().write(tmp_path / "curves.xlsx")


def test_atomic_path_leaves_an_existing_file_untouched_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = sample_set().write(tmp_path / "curves.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_table_with_some_metric_names_missing_round_trips(tmp_path):
    curves = CurveSet([Curve("a", [1, 2, 3], [0.1, 0.2, 0.3], metric="acc"),
                       Curve("b", [1, 2, 3], [0.1, 0.2, 0.4])])
    path = curves.write(tmp_path / "mixed.parquet")
    back = read_curves(path)
    assert back["a"].metric == "acc" and back["b"].metric is None


@pytest.mark.parametrize("metric, direction, values, expected", [
    ("acc", "maximize", [0.2, 0.7], (0.0, 1.0)),
    ("eval_exact_match", "maximize", [20.0, 70.0], (0.0, 100.0)),
    ("val_ppl", "minimize", [40.0, 9.0], (-np.inf, -1.0)),
    ("val_loss", "minimize", [4.0, 3.3], (-np.inf, 0.0)),
    ("val_loss", "minimize", [-1.0, -2.0], (-np.inf, np.inf)),  # below its floor: no bound
    ("reward", "maximize", [-2.0, 5.0], (-np.inf, np.inf)),
])
def test_score_range_is_the_metric_range_in_score_orientation(metric, direction, values, expected):
    curve = Curve("c", [1.0, 2.0], values, direction=direction, metric=metric)
    assert curve.score_range() == expected


# --- cells that are not numbers, shares of examples, metadata kinds ---------------------------
@pytest.mark.parametrize("values, expected", [
    ([0.1, 0.2, 50.0, 0.3], [0, 0, 3, 0]),            # a 50 among values on 0-1
    ([0.5, 3.0, 40.0], [0, 0, 0]),                    # a 0-100 curve starting below 1
    ([0.0, 0.2, 0.5, 0.9, 30.0, 95.0, 99.0], [0] * 7),  # grokking on 0-100
    ([0.1, 0.2, 0.3, 0.6, 5.0], [0] * 5),             # too close to tell: left alone
    ([-0.1, 0.5], [1, 0]), ([20.0, 1e308], [0, 2]), ([np.nan, 0.5], [0, 0]),
])
def test_bounded_breaks_names_each_point_a_share_cannot_take(values, expected):
    assert bounded_breaks(np.array(values)).tolist() == expected


def test_bounded_breaks_judges_each_curve_on_its_own():
    values = np.array([0.1, 0.2, 50.0, 10.0, 20.0, 50.0])
    assert bounded_breaks(values, [0, 3]).tolist() == [0, 0, 3, 0, 0, 0]
    assert bounded_rule(values[:3]) == (2, bounded_message(3, 50.0))
    assert bounded_rule(np.array([])) is None


@pytest.mark.parametrize("meta, expected", [
    ({"bounded": False}, True), ({"bounded": "false"}, True), ({"bounded": " No "}, True),
    ({"bounded": 0}, True), ({"bounded": True}, False), ({"bounded": "yes"}, False),
    ({"bounded": float("nan")}, False), ({}, False),
])
def test_declared_unbounded(meta, expected):
    assert declared_unbounded(meta) is expected


def test_a_declared_unbounded_curve_has_no_range_from_its_name():
    bounded = Curve("c", [1.0, 2.0], [0.2, 0.7], metric="acc")
    unbounded = Curve("d", [1.0, 2.0], [-0.2, 0.7], metric="acc", meta={"bounded": False})
    assert bounded.score_range() == (0.0, 1.0)
    assert unbounded.score_range() == (-np.inf, np.inf)


@pytest.mark.parametrize("cells, bad", [
    (pd.Series([1, "2", None, "x"], dtype=object), [False, False, False, True]),
    (pd.Series([1.0, True, np.bool_(False)], dtype=object), [False, True, True]),
    (pd.Series([True, False]), [True, True]),
    (pd.Series(pd.to_datetime(["2024-01-01", None])), [True, False]),
    (pd.Series([pd.Timestamp("2024-01-01"), 3.0], dtype=object), [True, False]),
    (pd.Series([1 + 2j, 3.0], dtype=object), [True, False]),
    (pd.Series([[1], {"a": 1}, 2.0], dtype=object), [True, True, False]),
    (pd.Series([1.5, None], dtype="Float64"), [False, False]),
])
def test_numeric_cells_flags_what_is_not_a_number(cells, bad):
    numbers, flagged = numeric_cells(cells)
    assert flagged.tolist() == bad
    assert np.isnan(numbers[flagged]).all() and numbers.flags.writeable


def test_cell_rule_says_what_the_cell_holds_instead():
    assert cell_rule("value", np.True_) == ("value must be a number, got True (true/false is "
                                            "not a measurement)")
    assert cell_rule("tokens", pd.Timestamp("2024-01-01")).endswith("(a date or duration is not a count)")
    assert cell_rule("value", "abc") == "value must be a number, got 'abc'"


def test_metadata_of_mixed_kinds_or_nested_writes_as_text(tmp_path, caplog):
    curves = CurveSet([Curve("a", [1, 2], [0.1, 0.2], meta={"seed": 3, "cfg": {"lr": 0.1}}),
                       Curve("b", [1, 2], [0.1, 0.3], meta={"seed": "x", "cfg": [1, 2]})])
    back = read_curves(curves.write(tmp_path / "c.parquet"))
    assert [c.meta["seed"] for c in back] == ["3", "x"]
    assert [c.meta["cfg"] for c in back] == ['{"lr": 0.1}', "[1, 2]"]
    assert "metadata column 'seed' holds number and text values; written as text" in caplog.text
    numbers = CurveSet([Curve("a", [1], [0.1], meta={"seed": 3}),
                        Curve("b", [1], [0.1], meta={"seed": 4.5})])
    assert [c.meta["seed"] for c in read_curves(numbers.write(tmp_path / "n.parquet"))] == [3, 4.5]


def test_from_frame_keeps_what_readers_said_in_warnings():
    frame = pd.DataFrame({"curve_id": ["a", "a", "b"], "tokens": [1.0, 2.0, 1.0],
                          "value": [0.1, 0.2, 0.3], "seed": pd.Series([1, 1, "x"], dtype=object)})
    curves = CurveSet.from_frame(frame, source="f.jsonl")
    assert curves.warnings == ["file f.jsonl: metadata column 'seed' holds number and text "
                               "values; stored as text"]
    assert CurveSet(list(curves)).warnings == []
