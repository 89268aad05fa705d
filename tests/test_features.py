import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metastop.errors import ParameterError
from metastop.predict.features import (FEATURE_NAMES, FEATURE_VERSION, MAX_FIT_POINTS, REGISTRY,
                               PrefixBatch, curve_scale, feature_matrix, features_of,
                               relative_target)

TOKENS = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
SCORES = np.array([0.10, 0.30, 0.38, 0.45, 0.43, 0.50])
BUDGET = 128.0
# Features that depend on the absolute level of the scores (documented exceptions).
LEVEL_FEATURES = {"scale_ratio", "best_level", "headroom_rel", "loss_room_rel"}


def test_registry_names_are_the_column_names_and_version_is_set():
    assert list(REGISTRY) == list(FEATURE_NAMES)
    assert all(REGISTRY[name].name == name for name in FEATURE_NAMES)
    assert isinstance(FEATURE_VERSION, str) and FEATURE_VERSION


def test_known_values_of_simple_features():
    f = features_of(TOKENS, SCORES, BUDGET, horizon=BUDGET)
    assert f["frac_seen"] == pytest.approx(32 / 128)
    assert f["n_points"] == 6
    assert f["last_rel"] == 0.0  # the last point is the best
    assert f["first_rel"] == pytest.approx(-0.4 / 0.07)  # scale: range of the last 3 points
    assert f["best_age_points"] == 0
    assert f["h_log_ratio"] == pytest.approx(np.log(4.0))
    assert f["h_frac"] == 1.0
    assert f["slope_last3"] > 0


def test_evaluations_since_last_improvement():
    f = features_of(TOKENS, [0.1, 0.5, 0.4, 0.3, 0.2, 0.45], BUDGET, horizon=BUDGET)
    assert f["best_age_points"] == 4
    assert f["best_age_frac"] == pytest.approx((32 - 2) / 32)


def test_features_are_pure():
    tokens, scores = TOKENS.copy(), SCORES.copy()
    first = features_of(tokens, scores, BUDGET, horizon=64.0)
    second = features_of(tokens, scores, BUDGET, horizon=64.0)
    assert first == second
    np.testing.assert_array_equal(tokens, TOKENS)
    np.testing.assert_array_equal(scores, SCORES)


@pytest.mark.parametrize("factor, shift", [(10.0, 0.0), (0.5, 3.0), (7.0, -20.0)])
def test_value_features_are_scale_and_shift_invariant(factor, shift):
    base = features_of(TOKENS, SCORES, BUDGET, horizon=BUDGET)
    moved = features_of(TOKENS, SCORES * factor + shift, BUDGET, horizon=BUDGET)
    for name in FEATURE_NAMES:
        if name in LEVEL_FEATURES:
            continue
        assert moved[name] == pytest.approx(base[name], rel=1e-4, abs=1e-4), name


def test_headroom_only_for_curves_within_unit_interval():
    assert features_of(TOKENS, SCORES, BUDGET, horizon=BUDGET)["headroom_rel"] == \
        pytest.approx(0.5 / 0.07)
    assert features_of(TOKENS, SCORES - 5.0, BUDGET, horizon=BUDGET)["headroom_rel"] == -1.0


def test_loss_room_only_for_negative_scores():
    losses = -np.array([5.0, 4.0, 3.5, 3.2])
    f = features_of(TOKENS[:4], losses, BUDGET, horizon=BUDGET)
    assert f["loss_room_rel"] == pytest.approx(3.2 / 0.8)
    assert features_of(TOKENS, SCORES, BUDGET, horizon=BUDGET)["loss_room_rel"] == -1.0


def test_cost_unit_does_not_matter():
    base = features_of(TOKENS, SCORES, BUDGET, horizon=64.0)
    scaled = features_of(TOKENS * 1e9, SCORES, BUDGET * 1e9, horizon=64.0 * 1e9)
    for name in FEATURE_NAMES:
        assert scaled[name] == pytest.approx(base[name], rel=1e-6, abs=1e-9), name


def test_scale_is_recent_range_with_floors():
    assert curve_scale(np.array([3.0, 5.0])) == 2.0
    assert curve_scale(np.array([-3e6, -1e5, -300.0, -120.0, -100.0])) == pytest.approx(200.0)
    assert curve_scale(np.array([0.1, 0.9, 0.5, 0.52, 0.5])) == pytest.approx(0.02)
    assert curve_scale(np.array([0.0, 0.0])) == 0.01
    assert curve_scale(np.array([-11.0, -11.0])) == pytest.approx(0.11)
    assert relative_target(np.array([0.6]), 0.5, 0.1)[0] == pytest.approx(1.0)


def test_batch_rows_match_single_curve_calls():
    curves = [(TOKENS, SCORES, BUDGET), (TOKENS[:3], SCORES[:3][::-1], 64.0)]
    batch = PrefixBatch.from_curves(curves)
    xh = np.array([[0.5, 1.0], [0.5, np.nan]])
    matrix = feature_matrix(batch, xh)
    for i, (t, y, b) in enumerate(curves):
        single = features_of(t, y, b, horizon=0.5 * b)
        np.testing.assert_allclose(matrix[i, 0], [single[n] for n in FEATURE_NAMES],
                                   rtol=1e-9, atol=1e-12)


def test_long_curves_keep_recent_points_and_exact_best():
    n = 200
    tokens = np.arange(1.0, n + 1)
    scores = np.sin(tokens / 7.0)
    batch = PrefixBatch.from_curves([(tokens, scores, 400.0)])
    assert batch.mask.sum() == MAX_FIT_POINTS
    assert batch.n_points[0] == n
    assert batch.best[0] == scores.max()
    assert batch.x_last[0] == tokens[-1] / 400.0


def test_horizon_feature_needs_a_horizon():
    with pytest.raises(ParameterError, match="horizon"):
        REGISTRY["pow3_at_h"](TOKENS, SCORES, BUDGET)


def test_unknown_feature_names_are_rejected():
    batch = PrefixBatch.from_curves([(TOKENS, SCORES, BUDGET)])
    with pytest.raises(ParameterError, match="unknown"):
        feature_matrix(batch, np.array([[1.0]]), names=["frac_seen", "nope"])


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=1, max_size=30))
def test_features_are_finite_on_any_curve(values):
    tokens = np.arange(len(values), dtype=float)
    f = features_of(tokens, values, float(len(values) * 2), horizon=float(len(values) * 2))
    bad = {k: v for k, v in f.items() if not np.isfinite(v)}
    assert not bad, bad
