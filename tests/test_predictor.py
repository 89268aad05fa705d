import json
import re
from pathlib import Path

import numpy as np
import pytest

from metastop.curves.paths import shared_corpus
from metastop.curves import Curve, CurveSet
from metastop.errors import ModelError, NotFittedError, ParameterError
from metastop.predict.features import FEATURE_VERSION
from metastop.predict.calibration import _apply_conformal, _conformal_offsets
from metastop.predict.kinds import N_CELLS, _cell
from metastop.predict.manifest import MANIFEST
from metastop.predict.model import Predictor, default_horizons
from metastop.predict.prior import PRIOR_METRIC_CURVES
from metastop.predict.prediction import Prediction
from metastop.curves.splits import holdout_group, is_held_out, split_holdout
from metastop.ingest import read_curves

PYTHIA = shared_corpus("pythia_evals.parquet")


@pytest.fixture(scope="module")
def curves() -> CurveSet:
    full = read_curves(PYTHIA)
    rng = np.random.default_rng(0)
    return CurveSet(full[int(i)] for i in np.sort(rng.choice(len(full), 200, replace=False)))


@pytest.fixture(scope="module")
def predictor(curves) -> Predictor:
    return Predictor(n_estimators=20, num_leaves=15, min_child_samples=20).fit(curves)


@pytest.fixture()
def saved(predictor, tmp_path) -> Path:
    return predictor.save(tmp_path / "model")


def partial(curve: Curve, n: int = 5) -> Curve:
    return curve.prefix(min(n, len(curve) - 1))


def test_predict_returns_ordered_quantiles_at_default_horizons(predictor, curves):
    curve = partial(curves[0])
    p = predictor.predict(curve)
    assert isinstance(p, Prediction)
    assert p.scores.shape == (8, 3)
    assert p.horizons[-1] == curve.budget
    assert np.all(np.diff(p.horizons) > 0) and p.horizons[0] > curve.last_tokens
    assert np.all(np.diff(p.scores, axis=1) >= 0)
    assert not p.low_confidence
    assert np.all(np.isfinite(p.scores))


def test_predict_final_and_explicit_horizons(predictor, curves):
    curve = partial(curves[1])
    final = predictor.predict_final(curve)
    assert final.horizons.tolist() == [curve.budget]
    two = predictor.predict(curve, [curve.budget / 2, curve.budget])
    np.testing.assert_allclose(two.scores[-1], final.scores[0])


def test_predictions_are_in_score_orientation_for_minimize_metrics(predictor):
    loss = Curve("loss", [1.0, 2.0, 3.0, 4.0], [5.0, 4.0, 3.5, 3.2], direction="minimize",
                 budget=16.0)
    p = predictor.predict_final(loss)
    assert p.final_median < 0  # scores are negated losses
    assert loss.to_metric(p.final_median) > 0


def test_losses_are_never_predicted_below_zero_nor_perplexities_below_one(predictor):
    loss = Curve("loss", [1.0, 2.0, 3.0], [3e6, 2e3, 50.0], direction="minimize", budget=30.0)
    ppl = Curve("ppl", [1.0, 2.0, 3.0], [3e6, 2e3, 50.0], direction="minimize", budget=30.0,
                metric="word_perplexity")
    for p in (predictor.predict(loss), predictor.predict(loss.prefix(1))):
        assert np.all(p.scores <= 0.0)
    assert predictor.predict(loss).scores.max() > -1.0  # the model does predict below 1 here
    for p in (predictor.predict(ppl), predictor.predict(ppl.prefix(1))):
        assert np.all(p.scores <= -1.0)


def test_bounded_metrics_are_never_predicted_beyond_their_scale(predictor):
    """A perfect accuracy stays at most 1, an EM logged on 0-100 at most 100, at every
    quantile and horizon, from the model and from the one-point prior alike."""
    tokens = [1.0, 2.0, 4.0, 8.0]
    acc = Curve("acc", tokens, [0.6, 0.9, 1.0, 1.0], budget=64.0, metric="acc")
    em = Curve("em", tokens, [60.0, 90.0, 100.0, 100.0], budget=64.0, metric="eval_exact_match")
    for curve, top in ((acc, 1.0), (em, 100.0)):
        for p in (predictor.predict(curve), predictor.predict(curve.prefix(1))):
            assert p.scores.max() <= top
            assert p.scores.min() >= 0.0
    unbounded = Curve("reward", tokens, [0.6, 0.9, 1.0, 1.0], budget=64.0, metric="reward")
    assert predictor.predict(unbounded).scores.max() > 1.0  # the same shape, free to go on


def test_sample_weight_must_match_curves(curves):
    with pytest.raises(ParameterError, match="sample_weight must hold 200"):
        Predictor(n_estimators=2).fit(curves, sample_weight=[1.0, 2.0])


def test_predict_many_matches_predict(predictor, curves):
    batch = [partial(c, n) for c, n in zip(curves[:20], range(2, 22))]
    many = predictor.predict_many(batch)
    for curve, p in zip(batch, many):
        np.testing.assert_allclose(p.scores, predictor.predict(curve).scores, rtol=1e-9)


def test_predict_many_with_fractions(predictor, curves):
    batch = [partial(c, 3) for c in curves[:5]]
    for curve, p in zip(batch, predictor.predict_many(batch, fractions=[0.5, 1.0])):
        np.testing.assert_allclose(p.horizons, [0.5 * curve.budget, curve.budget])


def test_bad_horizons_are_rejected(predictor, curves):
    with pytest.raises(ParameterError, match="strictly increase"):
        predictor.predict(partial(curves[0]), [3e11, 1e11])
    with pytest.raises(ParameterError, match="horizons or fractions"):
        predictor.predict_many([curves[0]], [[1.0]], fractions=[1.0])


def test_one_point_curve_gets_low_confidence_prior(predictor, curves):
    p = predictor.predict(curves[0].prefix(1))
    assert p.low_confidence
    assert p.scores.shape == (8, 3)
    assert np.all(np.diff(p.scores, axis=1) >= 0)


def test_accuracies_losses_and_perplexities_are_calibrated_in_cells_of_their_own():
    """Same observed fraction, same score: the kind of curve (and the horizon) picks the cell."""
    best = np.array([0.7, -3.3, -3.3])       # an accuracy, a loss, a perplexity (as scores)
    perplexity = np.array([False, False, True])
    before_end = _cell(np.full(3, 0.3), best, np.full(3, 0.9), perplexity)
    at_end = _cell(np.full(3, 0.3), best, np.full(3, 1.0), perplexity)
    cells = np.concatenate([before_end, at_end])
    assert len(set(cells.tolist())) == 6 and cells.min() >= 0 and cells.max() < N_CELLS


def test_narrowing_past_the_median_clips_it_and_keeps_the_calibrated_bound():
    # width 4 + stabilizer 0.5; the low side moves up by 0.4 * 4.5 = 1.8, past the median.
    out = _apply_conformal(np.array([[0.0, 1.0, 4.0]]), np.array([[[-0.4, 0.0]]]))
    np.testing.assert_allclose(out, [[1.8, 1.8, 4.0]])  # re-sorting would give [1, 1.8, 4]


def test_a_pair_whose_sides_cross_is_swapped():
    # width 2.5: low side up by 2.5 to 2.5, high side down by 1.0 to 1.0.
    out = _apply_conformal(np.array([[0.0, 1.0, 2.0]]), np.array([[[-1.0, -0.4]]]))
    np.testing.assert_allclose(out, [[1.0, 1.0, 2.5]])


def test_asymmetric_conformal_misses_about_its_share_on_each_side():
    """Raw quantiles far too low and too wide: the low side must move up past the median.
    After calibration each side misses about 10% of the calibration truths."""
    rng = np.random.default_rng(0)
    y = rng.normal(2.0, 0.5, size=4000)
    raw = np.tile([-3.0, 0.0, 3.0], (len(y), 1))
    cells = np.zeros(len(y), dtype=int)
    factors = np.asarray(_conformal_offsets(raw, y, cells, (0.1, 0.5, 0.9))["factors"])
    out = _apply_conformal(raw, factors[cells])
    assert abs(np.mean(y < out[:, 0]) - 0.1) < 0.01
    assert abs(np.mean(y > out[:, 2]) - 0.1) < 0.01
    assert np.all(out[:, 1] >= out[:, 0])  # the median was moved into the interval


def test_metric_with_enough_curves_gets_its_own_prior(curves):
    """Language-model losses start near log(vocabulary) at step 0: a one-point curve of a
    metric with enough curves gets a narrow prior around where that metric ends (3.3), one of
    a metric with too few curves the prior pooled over both (3.3 or 6)."""
    rng = np.random.default_rng(1)
    tokens = np.linspace(0.0, 1e9, 8)

    def lm_losses(metric: str, n: int, final: float) -> list[Curve]:
        return [Curve(f"{metric}/{i}", tokens,
                      final + (10.8 - final) * np.exp(-tokens / 1e8) + rng.normal(0, 0.01, 8),
                      direction="minimize", metric=metric, run_id=f"{metric}/{i}")
                for i in range(n)]

    own_metric = lm_losses("val_loss", PRIOR_METRIC_CURVES, 3.3)
    few = lm_losses("train_loss", PRIOR_METRIC_CURVES - 20, 6.0)
    predictor = Predictor(n_estimators=5, num_leaves=7).fit(list(curves) + own_metric + few)
    assert set(predictor.prior_["by_metric"]) & {"val_loss", "train_loss"} == {"val_loss"}
    own = predictor.predict_final(own_metric[0].prefix(1))
    assert own.low_confidence
    assert own.scores[0] == pytest.approx([-3.3, -3.3, -3.3], abs=0.05)
    pooled = predictor.predict_final(few[0].prefix(1))
    assert pooled.scores[0, 0] == pytest.approx(-6.0, abs=0.1)
    assert pooled.scores[0, 2] == pytest.approx(-3.3, abs=0.1)


def test_calibrated_interval_covers_calibration_rows(predictor):
    metrics = predictor.metrics_
    assert 0.7 <= metrics["coverage_outer_calibrated"] <= 0.9


def test_save_load_round_trip_gives_identical_predictions(predictor, saved, curves):
    loaded = Predictor.load(saved)
    for curve in (partial(curves[2]), curves[3].prefix(1), partial(curves[4], 2)):
        np.testing.assert_array_equal(loaded.predict(curve).scores, predictor.predict(curve).scores)
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["feature_version"] == FEATURE_VERSION
    assert set(manifest["files"]) == {"quantile_0.1.txt", "quantile_0.5.txt", "quantile_0.9.txt"}


def test_no_pickle_in_saved_model(saved):
    files = [p for p in saved.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} == {saved.name, "plain"}  # the context-free twin
    for path in files:
        assert path.suffix in {".txt", ".json"}
        assert not path.read_bytes().startswith(b"\x80")  # pickle protocol header


def test_tampered_model_file_is_detected(saved):
    path = saved / "quantile_0.5.txt"
    path.write_text(path.read_text().replace("shrinkage", "shrinkagX", 1))
    with pytest.raises(ModelError, match=re.escape("quantile_0.5.txt") + ".*tampered"):
        Predictor.load(saved)


def test_truncated_model_file_is_detected(saved):
    path = saved / "quantile_0.9.txt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match=re.escape("quantile_0.9.txt") + ".*truncated"):
        Predictor.load(saved)


def test_missing_model_file_is_detected(saved):
    (saved / "quantile_0.1.txt").unlink()
    with pytest.raises(ModelError, match=re.escape("quantile_0.1.txt") + ": missing"):
        Predictor.load(saved)


def test_missing_and_truncated_manifest_are_detected(saved, tmp_path):
    text = (saved / MANIFEST).read_text()
    (saved / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(ModelError, match="manifest.json: not a valid JSON"):
        Predictor.load(saved)
    with pytest.raises(ModelError, match="manifest.json: missing"):
        Predictor.load(tmp_path / "nowhere")


def test_wrong_feature_version_is_detected(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["feature_version"] = "0-old"
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="manifest.json: incompatible feature version '0-old'"):
        Predictor.load(saved)


def test_calibration_table_of_an_older_layout_is_refused(saved):
    """A model calibrated with the earlier symmetric 8-cell table must be retrained, not
    indexed with this metastop's cells."""
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["calibration"]["factors"] = [[0.1]] * 8
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"manifest.json: incompatible calibration table .*shape "
                                         r"\(8, 1\).*expects .*shape \(72, 1, 2\): retrain"):
        Predictor.load(saved)


def test_prior_table_of_a_wrong_shape_is_refused(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["prior"]["by_metric"] = {"acc": [[0.1, 0.2], [0.3]]}
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"manifest.json: prior.by_metric must map metric names "
                                         r"to tables of shape \(3, 5, 3\); wrong: \['acc'\]"):
        Predictor.load(saved)


def test_unfitted_predictor_raises(curves):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        Predictor().predict(curves[0])


@pytest.mark.parametrize("params, match", [
    ({"quantiles": (0.5, 0.1)}, "quantiles must be"),
    ({"quantiles": (0.1, 0.5, 0.8)}, "symmetric"),
    ({"n_estimators": 0}, "n_estimators must be"),
    ({"calibration_share": 1.5}, "calibration_share must be"),
])
def test_bad_parameters_are_rejected_at_fit(curves, params, match):
    with pytest.raises(ParameterError, match=match):
        Predictor(**params).fit(curves)


def test_holdout_split_is_deterministic_and_grouped(curves):
    train, test = split_holdout(curves)
    assert len(train) + len(test) == len(curves)
    train_groups = {holdout_group(c) for c in train}
    assert not train_groups & {holdout_group(c) for c in test}
    assert all(is_held_out(holdout_group(c)) for c in test)
    assert split_holdout(curves)[1].ids == test.ids


def test_default_horizons_end_at_budget():
    curve = Curve("c", [1.0, 2.0], [0.1, 0.2], budget=10.0)
    h = default_horizons(curve)
    assert len(h) == 8 and h[-1] == 10.0 and h[0] > 2.0
    done = Curve("d", [1.0, 2.0], [0.1, 0.2])
    assert default_horizons(done).tolist() == [2.0]


def test_shipped_default_model_loads_and_was_not_trained_on_held_out_groups():
    model = Predictor.load()
    assert model.training_["n_curves_in_holdout"] == 0
    p = model.predict(Curve("c", [1e9, 2e9, 4e9], [0.1, 0.2, 0.25], budget=1e10))
    assert np.all(np.diff(p.scores, axis=1) >= 0)


def test_best_target_trains_on_the_running_best(curves):
    from metastop.predict.rows import _training_rows

    usable = [c for c in curves if len(c) >= 3][:40]
    calibration = np.zeros(len(usable), dtype=bool)
    rng = lambda: np.random.default_rng(0)  # noqa: E731 - same rows for both targets
    best = _training_rows(usable, "best", np.ones(len(usable)), calibration, 4, 4, rng())
    value = _training_rows(usable, "value", np.ones(len(usable)), calibration, 4, 4, rng())
    assert np.all(best.y >= 0.0)          # the best up to a horizon never falls below the best now
    assert np.all(best.y >= value.y)
    assert np.any(value.y < 0.0)          # while values do fall below it on real curves


def test_unknown_target_is_rejected_naming_it(curves):
    with pytest.raises(ParameterError, match="target must be one of"):
        Predictor(target="mean").fit(curves)
