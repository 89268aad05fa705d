import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metastop.errors import ParameterError
from metastop.predict.fits import FAMILY_NAMES, best_of_fits, fit, fit_all, fit_batch, fit_families

X = np.linspace(0.05, 0.5, 12)


@pytest.mark.parametrize("family, truth, params, tol", [
    ("pow3", lambda x: 0.8 - 0.1 * x ** -0.6, {"c": 0.8, "a": 0.1, "alpha": 0.6}, 0.03),
    ("exp3", lambda x: 0.9 - 0.5 * np.exp(-5.0 * x), {"c": 0.9, "a": 0.5, "k": 5.0}, 0.03),
])
def test_one_parameter_families_recover_known_parameters(family, truth, params, tol):
    result = fit(X, truth(X), 1.0, family=family)
    for name, value in params.items():
        assert result.params[name] == pytest.approx(value, rel=tol), name
    assert result.rmse < 1e-3


@pytest.mark.parametrize("family, truth", [
    ("mmf", lambda x: (0.1 * 0.05 + 0.9 * x ** 1.5) / (0.05 + x ** 1.5)),
    ("janoschek", lambda x: 0.9 - 0.8 * np.exp(-3.0 * x ** 0.8)),
    ("logpower", lambda x: 0.7 / (1.0 + (x / np.exp(-3.0)) ** -1.2)),
])
def test_two_parameter_families_fit_their_own_curves_and_extrapolate(family, truth):
    result = fit(X, truth(X), 1.0, family=family)
    assert result.rmse < 0.005
    assert result(1.0) == pytest.approx(truth(1.0), abs=0.08)


def test_fit_on_tokens_uses_budget_normalisation():
    tokens = X * 1e9
    result = fit(tokens, 0.8 - 0.1 * X ** -0.6, 1e9, family="pow3")
    assert result.at_tokens(1e9, 1e9) == pytest.approx(0.7, abs=0.005)


def test_amplitude_bound_makes_decreasing_scores_a_constant():
    y = np.linspace(0.9, 0.5, len(X))
    for name in ("pow3", "exp3", "mmf", "janoschek"):
        result = fit(X, y, 1.0, family=name)
        assert result(2.0) == pytest.approx(y.mean()), name


def test_batch_matches_single_curve_fits():
    rng = np.random.default_rng(0)
    ys = 0.8 - 0.1 * X ** -0.5 + rng.normal(0, 0.01, (5, len(X)))
    batch = fit_batch(np.tile(X, (5, 1)), ys, family="exp3")
    for i in range(5):
        single = fit(X, ys[i], 1.0, family="exp3")
        assert batch.rmse[i] == pytest.approx(single.rmse)
        assert batch.predict(np.array([1.0]))[i, 0] == pytest.approx(single(1.0))


def test_padding_weights_are_ignored():
    y = 0.9 - 0.5 * np.exp(-4.0 * X)
    padded_x = np.r_[X, [1.0, 1.0]][None]
    padded_y = np.r_[y, [100.0, -100.0]][None]
    weights = np.r_[np.ones(len(X)), [0.0, 0.0]][None]
    assert fit_batch(padded_x, padded_y, weights, family="exp3").rmse[0] < 1e-3


def test_zero_cost_points_are_left_out_when_enough_remain():
    y = 0.8 - 0.1 * X ** -0.6
    with_zero = fit(np.r_[0.0, X], np.r_[-5.0, y], 1.0, family="pow3")
    assert with_zero.rmse < 1e-3


def test_best_of_fits_picks_lowest_rmse():
    fits = fit_all(X, 0.9 - 0.5 * np.exp(-5.0 * X), 1.0)
    best = best_of_fits(fits)
    assert best.rmse == min(f.rmse for f in fits.values())


def test_unknown_family_is_rejected():
    with pytest.raises(ParameterError, match="family must be one of"):
        fit(X, X, 1.0, family="cubic")
    with pytest.raises(ParameterError, match="families must be names"):
        fit_families(X, X, families=("pow3", "nope"))


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ParameterError, match="same shape"):
        fit_batch(np.ones((2, 3)), np.ones((2, 4)), family="pow3")


odd_values = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(values=odd_values, start=st.floats(0.0, 10.0), flat=st.booleans())
def test_fits_never_raise_and_stay_finite_on_odd_curves(values, start, flat):
    values = [values[0]] * len(values) if flat else values
    tokens = start + np.arange(len(values), dtype=float)
    for name, result in fit_all(tokens, values, tokens[-1] * 2 if tokens[-1] > 0 else 1.0).items():
        assert np.isfinite(result.rmse), name
        assert np.all(np.isfinite(result(np.array([0.5, 1.0, 2.0])))), name
        if flat and name != "logpower":  # logpower has no offset: it cannot be flat
            assert result(1.0) == pytest.approx(values[0], rel=1e-6, abs=1e-6), name


@pytest.mark.parametrize("tokens, values", [([1.0], [0.3]), ([1.0, 2.0], [0.3, 0.3]),
                                            ([0.0, 1.0], [5.0, 3.0]), ([], [])])
def test_tiny_curves_fit_without_error(tokens, values):
    fits = fit_all(tokens, values)
    assert set(fits) == set(FAMILY_NAMES)
    assert all(np.isfinite(f.rmse) for f in fits.values())
