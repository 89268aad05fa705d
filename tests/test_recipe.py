"""The one training recipe: corpora, caps, weights, and the held-out split kept out."""

from __future__ import annotations

import numpy as np
import pytest

from metastop.curves import Curve, CurveSet
from metastop.curves.splits import holdout_group, is_held_out
from metastop.errors import ParameterError
from metastop.ops.recipe import (BALANCE_CURVES, Corpus, Recipe, default_corpora, fit,
                                 training_set)


def corpus_file(tmp_path, name, n, runs=40):
    curves = [Curve(f"{name}/{i}", [1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.25, 0.3 + i % 7 / 100],
                    run_id=f"{name}-run{i % runs}", task=name, metric="acc") for i in range(n)]
    return CurveSet(curves).write(tmp_path / f"{name}.parquet")


def test_caps_weights_and_the_held_out_split(tmp_path):
    big, small = corpus_file(tmp_path, "big", 400), corpus_file(tmp_path, "small", 60)
    recipe = Recipe(corpora=(Corpus("big", big, cap=100), Corpus("small", small),
                             Corpus("gone", tmp_path / "missing.parquet")))
    got = training_set(recipe)
    sources = {s["name"]: s for s in got.sources}
    assert set(sources) == {"big", "small"}  # the missing corpus is skipped
    assert sources["big"]["n_curves_used"] == 100 < sources["big"]["n_curves_train_split"]
    assert sources["small"]["curve_weight"] == pytest.approx(min(10.0, np.sqrt(BALANCE_CURVES / sources["small"]["n_curves_used"])))
    held = [is_held_out(holdout_group(c)) for c in (*got.train, *got.held_out)]
    assert held == [False] * len(got.train) + [True] * len(got.held_out) and len(got.held_out) > 0
    assert len(got.weights) == len(got.train)


def test_same_recipe_same_training_set(tmp_path):
    recipe = Recipe(corpora=(Corpus("big", corpus_file(tmp_path, "big", 400), cap=50),), seed=3)
    assert training_set(recipe).train.ids == training_set(recipe).train.ids
    other = Recipe(corpora=recipe.corpora, seed=4)
    assert training_set(other).train.ids != training_set(recipe).train.ids


def test_finished_runs_are_one_more_corpus(tmp_path):
    extra = [Curve(f"run{i}", [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], run_id=f"r{i}") for i in range(30)]
    got = training_set(Recipe(corpora=()), extra=extra, extra_sources=[{"path": "runs/"}])
    assert [s["name"] for s in got.sources] == ["finished_runs"]
    assert got.sources[0]["files"] == [{"path": "runs/"}]
    assert len(got.train) + len(got.held_out) == 30


def test_nothing_to_train_on_is_an_error(tmp_path):
    with pytest.raises(ParameterError, match="no training curves"):
        training_set(Recipe(corpora=(Corpus("gone", tmp_path / "x.parquet"),)))
    with pytest.raises(ParameterError, match="max_curves must be >= 1"):
        Recipe(max_curves=0)


def test_default_corpora_are_the_shipped_models():
    assert [c.name for c in default_corpora()] == ["lcdb", "pythia_evals", "pythia_arithmetic",
                                                   "nanogpt_speedrun", "em_curves"]


def test_fit_records_the_recipe_in_the_manifest(tmp_path):
    recipe = Recipe(corpora=(Corpus("small", corpus_file(tmp_path, "small", 80)),),
                    params={"n_estimators": 5, "num_leaves": 7, "num_threads": 1})
    predictor = fit(training_set(recipe), recipe.params)
    assert [s["name"] for s in predictor.training_["sources"]] == ["small"]
    assert predictor.get_params()["n_estimators"] == 5
