"""Task memory: context features from sibling runs, the predictor with context, the controller
reading the history store."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from metastop.curves import Curve
from metastop.curves.history import HistoryStore
from metastop.errors import ParameterError
from metastop.predict.context import (CONTEXT_NAMES, Context, SiblingPool, context_matrix,
                                      leave_one_run_out, sibling_median_forecast)
from metastop.predict.features import PrefixBatch
from metastop.predict.model import Predictor
from metastop.stop.controller import StopController
from metastop.stop.policies import CostAware
from metastop.stop.prices import Price

X = np.linspace(0.05, 1.0, 20)


def task_curves(n_tasks=12, runs=10, seed=0):
    """Each task jumps by 0.3 at its own point of the budget: a curve's first quarter cannot
    tell when (or whether) that happens, its task's finished runs can."""
    rng = np.random.default_rng(seed)
    curves = []
    for t in range(n_tasks):
        jump = rng.uniform(0.35, 0.95)
        height = 0.3 if t % 3 else 0.0
        for r in range(runs):
            level = rng.uniform(0.1, 0.3)
            y = level + 0.1 * X + height * (X >= jump) + rng.normal(0, 0.005, len(X))
            curves.append(Curve(f"t{t}/r{r}", X * 1000, np.clip(y, 0, 1), budget=1000.0,
                                run_id=f"t{t}-r{r}", task=f"t{t}", metric="acc"))
    return curves


def test_leave_one_run_out_never_gives_a_curve_its_own_run():
    curves = task_curves(n_tasks=2, runs=3)
    twin = Curve("t0/r0-other-metric", X * 1000, np.full(len(X), 0.5), run_id="t0-r0", task="t0",
                 metric="acc")
    contexts = leave_one_run_out(curves + [twin])
    assert [c.run_id for c in contexts[0]] == ["t0-r1", "t0-r2"]
    assert "t0-r0" not in {c.run_id for c in contexts[-1]}
    assert leave_one_run_out([Curve("no-task", [1, 2], [0.1, 0.2])]) == [[]]


def test_sibling_median_rule_by_hand():
    sibs = [Curve(f"s{i}", [1, 2, 4], [0.1, 0.2, 0.2 + d], run_id=f"s{i}")
            for i, d in enumerate((0.1, 0.2, 0.6))]
    prefix = Curve("c", [1, 2], [0.3, 0.35], budget=4, run_id="c")
    # 0.35 now + the median change from half the budget to the end (0.2); siblings are read
    # on a log-spaced grid of fractions, hence the tolerance
    assert sibling_median_forecast(prefix, Context.of(prefix, sibs)) == pytest.approx(0.55, abs=0.005)
    assert sibling_median_forecast(prefix, Context.empty()) == 0.35


def test_rule_breaking_siblings_are_left_out_with_a_warning(caplog):
    curve = Curve("c", [1, 2], [0.3, 0.35], budget=4, run_id="c", metric="acc")
    loss = Curve("loss", [1, 2, 4], [3.0, 2.0, 1.5], direction="minimize", run_id="a")
    percent = Curve("pct", [1, 2, 4], [30.0, 40.0, 50.0], run_id="b")
    own = Curve("own", [1, 2, 4], [0.1, 0.2, 0.3], run_id="c")
    with caplog.at_level(logging.WARNING):
        assert len(Context.of(curve, [loss, percent, own])) == 0
    assert "'loss'" in caplog.text and "direction is minimize" in caplog.text
    assert "'pct'" in caplog.text and "exceed 1" in caplog.text
    assert "'own'" not in caplog.text  # its own run is left out by rule, not by accident


def test_vectorised_features_match_one_prefix_at_a_time():
    curves = task_curves(n_tasks=3, runs=6)
    pool = SiblingPool.of(curves)
    rng = np.random.default_rng(1)
    contexts = [pool.draw(i, rng) for i in range(len(curves))]
    batch = PrefixBatch.from_curves([(c.tokens[:6], c.scores[:6], c.budget) for c in curves])
    xh = np.tile([[0.5, 0.8, 1.0, np.nan]], (len(curves), 1))
    together = context_matrix(batch, xh, contexts)
    alone = context_matrix(batch, xh, contexts, block=1)
    np.testing.assert_allclose(together, alone, equal_nan=True)
    without = np.array([c is None for c in contexts])
    assert without.any() and (~without).any()
    assert (together[without, :, 0] == 0).all() and np.isnan(together[without, :, 1:]).all()
    assert np.isnan(together[~without, 3]).all() and together.shape[2] == len(CONTEXT_NAMES)


@pytest.fixture(scope="module")
def trained():
    train = task_curves(seed=0)
    return Predictor(n_estimators=60, num_leaves=15, min_child_samples=20).fit(train)


def test_context_makes_the_task_s_jump_predictable(trained):
    test = task_curves(n_tasks=8, runs=5, seed=7)
    contexts = leave_one_run_out(test)
    prefixes = [c.prefix(5) for c in test]  # 25% of the budget
    finals = np.array([c.values[-1] for c in test])
    alone = np.array([p.final_median for p in trained.predict_many(prefixes, fractions=[1.0])])
    with_ctx = np.array([p.final_median for p in trained.predict_many(
        prefixes, fractions=[1.0], contexts=contexts)])
    mae_alone, mae_ctx = np.abs(alone - finals).mean(), np.abs(with_ctx - finals).mean()
    assert mae_ctx < 0.5 * mae_alone, (mae_ctx, mae_alone)


def test_context_is_optional_and_checked(trained):
    curve = task_curves(n_tasks=1, runs=2)[0].prefix(5)
    assert trained.predict(curve).final_median == trained.predict(curve, context=[]).final_median
    with pytest.raises(ParameterError, match="must hold Curve objects"):
        trained.predict(curve, context=[1, 2])
    with pytest.raises(ParameterError, match="one entry per curve"):
        trained.predict_many([curve], contexts=[None, None])


def test_saved_model_keeps_its_context_features(trained, tmp_path):
    loaded = Predictor.load(trained.save(tmp_path / "m"))
    assert loaded.context and loaded.feature_names[-len(CONTEXT_NAMES):] == CONTEXT_NAMES
    curve = task_curves(n_tasks=1, runs=3)[0]
    siblings = task_curves(n_tasks=1, runs=3)[1:]
    np.testing.assert_array_equal(loaded.predict(curve.prefix(5), context=siblings).scores,
                                  trained.predict(curve.prefix(5), context=siblings).scores)


class CountingStore(HistoryStore):
    """A real SQLite store that counts how often the controller asks it for siblings."""

    asked = 0

    def siblings(self, *args, **kwargs):
        CountingStore.asked += 1
        return super().siblings(*args, **kwargs)


def test_controller_reads_the_history_once_and_records_the_run(trained, tmp_path):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    past = task_curves(n_tasks=1, runs=6)
    store = CountingStore(url)
    store.add(past[1:])
    run = past[0]
    CountingStore.asked = 0
    ctl = StopController(CostAware(trained, price=Price.fraction_of_budget(0.01)), budget=1000.0,
                         task="t0", metric="acc", run_id="new-run", history=store)
    assert CountingStore.asked == 1  # read when built: no decision waits on the store
    for t, v in zip(run.tokens, run.values):
        ctl.observe(t, v)
    assert CountingStore.asked == 1
    assert ctl.decisions[-2].predicted_final is not None
    assert ctl.record() == 1
    assert "new-run" in {c.run_id for c in store.curves(task="t0")}
    store.close()


def test_unreadable_history_warns_and_the_run_goes_on(trained, tmp_path, caplog):
    folder = tmp_path / "not-a-db"
    folder.mkdir()
    ctl = StopController(CostAware(trained), budget=1000.0, task="t0",
                         history=f"sqlite:///{folder}")
    with caplog.at_level(logging.WARNING):
        decisions = [ctl.observe(t, v) for t, v in zip(X[:8] * 1000, np.linspace(0.1, 0.3, 8))]
    assert "cannot be read, predicting without context" in caplog.text
    assert decisions[-1].predicted_final is not None and not any(d.stop for d in decisions[:2])
    with pytest.raises(ParameterError, match="needs a history store"):
        StopController(CostAware(trained), budget=10.0).record()


def test_without_siblings_it_is_exactly_the_context_free_model(trained):
    """A curve without siblings gets what a context-free model of the same recipe says."""
    plain = Predictor(n_estimators=60, num_leaves=15, min_child_samples=20,
                      context=False).fit(task_curves(seed=0))
    curve = task_curves(n_tasks=1, runs=1, seed=3)[0].prefix(6)
    np.testing.assert_array_equal(trained.predict(curve).scores, plain.predict(curve).scores)
    siblings = task_curves(n_tasks=1, runs=4, seed=3)[1:]
    assert not np.array_equal(trained.predict(curve, context=siblings).scores,
                              plain.predict(curve).scores)


def test_a_crowded_task_is_sampled_down_the_same_way_every_time():
    curve = Curve("c", [1, 2], [0.1, 0.2], budget=4, run_id="me")
    crowd = [Curve(f"s{i}", [1, 2, 4], [0.1, 0.2, 0.3 + i / 1e4], run_id=f"r{i}") for i in range(200)]
    first, again = Context.of(curve, crowd), Context.of(curve, crowd)
    assert len(first) == 64 and first.runs == again.runs
