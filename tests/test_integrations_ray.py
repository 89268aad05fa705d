"""End-to-end: metastop's stopper in a real local Ray Tune experiment (4 trials, 2 CPUs)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
tune = pytest.importorskip("ray.tune")

from metastop.errors import ParameterError  # noqa: E402
from metastop.integrations.ray import MetaStopStopper  # noqa: E402
from metastop.stop.rules import Patience  # noqa: E402
from conftest import cost_aware

pytestmark = pytest.mark.slow

ITERATIONS, TOKENS_PER_ITERATION = 8, 100
# exact_match by training iteration (1-based): "plateau" peaks at iteration 3.
CURVES = {
    "plateau": [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
    "late": [0.1, 0.2, 0.3, 0.3, 0.4, 0.4, 0.4, 0.4],
    "rising": [0.1 * i for i in range(1, ITERATIONS + 1)],
}


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():  # another module's Ray instance: use it, leave it running
        yield
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def run_experiment(stoppers: dict, cases: list[tuple[str, str]], tmp_path) -> list[tuple[str, str, int]]:
    """Run one trial per ``(stopper name, curve kind)``; each trial's results go to its stopper.

    Returns sorted ``(stopper name, kind, last training_iteration)`` rows.
    """
    curves = CURVES

    def trainable(config):  # a closure, so Ray ships it by value to its workers
        for i, value in enumerate(curves[config["kind"]], start=1):
            tune.report({"exact_match": value, "tokens": i * TOKENS_PER_ITERATION})

    def stop(trial_id, result):  # several MetaStopStoppers in one experiment, to save time
        return stoppers[result["config"]["case"]["stopper"]](trial_id, result)

    space = {"case": tune.grid_search([{"stopper": s, "kind": k} for s, k in cases])}
    tuner = tune.Tuner(lambda config: trainable(config["case"]), param_space=space,
                       tune_config=tune.TuneConfig(max_concurrent_trials=1),  # in grid order
                       run_config=tune.RunConfig(stop=stop, storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    return sorted((r.config["case"]["stopper"], r.config["case"]["kind"], r.metrics["training_iteration"])
                  for r in grid)


def test_patience_stops_each_trial_at_its_exact_iteration(local_ray, tmp_path):
    budget = ITERATIONS * TOKENS_PER_ITERATION
    strict, lenient = MetaStopStopper(Patience(2), budget=budget), MetaStopStopper(Patience(50), budget=budget)
    cases = [("strict", "plateau"), ("strict", "rising"), ("strict", "late"),
             ("lenient", "plateau"), ("lenient", "late")]
    assert run_experiment({"strict": strict, "lenient": lenient}, cases, tmp_path) == [
        ("lenient", "late", ITERATIONS), ("lenient", "plateau", ITERATIONS),  # never stopped early
        ("strict", "late", 7),     # below the study's best; best at 5, flat at 6 and 7
        ("strict", "plateau", ITERATIONS),  # the first trial leads an empty study: kept
        ("strict", "rising", ITERATIONS),   # ties the leader at 3, then leads
    ]
    assert len(strict.controllers) == 3 and len(lenient.controllers) == 2
    assert strict.stop_all() is False


def test_cost_aware_stops_right_after_warm_up_when_cheap_and_never_when_dear(local_ray, tmp_path,
                                                                               shipped_predictor):
    budget = ITERATIONS * TOKENS_PER_ITERATION
    stoppers = {"cheap": MetaStopStopper(cost_aware(shipped_predictor, 1e-9), budget=budget),
                "dear": MetaStopStopper(cost_aware(shipped_predictor, 1e30), budget=budget)}
    cases = [("cheap", "rising"), ("cheap", "plateau"), ("dear", "rising"), ("dear", "late")]
    finished = run_experiment(stoppers, cases, tmp_path)
    assert ("cheap", "plateau", 2) in finished  # below the finished 0.8 and cheap: 1 is warm-up
    assert ("cheap", "rising", ITERATIONS) in finished and ("dear", "rising", ITERATIONS) in finished


def test_one_controller_per_trial_and_missing_keys_are_skipped():
    stopper = MetaStopStopper(Patience(1), budget=3, metric="em", tokens="step")
    assert stopper("a", {"em": 0.5, "step": 1}) is False
    assert stopper("b", {"em": 0.1, "step": 1}) is False
    assert stopper("a", {"em": 0.4, "step": 2}) is False  # a leads the (empty) study
    assert stopper("a", {"em": 0.7, "step": 3}) is True   # its budget: a has finished
    assert stopper.study.incumbent == 0.7
    with pytest.warns(RuntimeWarning, match=r"'em'.*metrics present: \['loss', 'step'\]"):
        assert stopper("b", {"loss": 1.0, "step": 2}) is False
    assert sorted(stopper.controllers) == ["a", "b"]
    assert len(stopper.controllers["b"].decisions) == 1
    assert stopper("b", {"em": 0.05, "step": 3 - 1}) is True  # below the study's best: Patience decides


def test_finished_trials_carry_the_task_and_metric_into_the_study():
    stopper = MetaStopStopper(Patience(1), budget=2, metric="em", tokens="step", task="qa")
    stopper("a", {"em": 0.5, "step": 1})
    stopper("a", {"em": 0.6, "step": 2})  # its budget: a has finished
    (finished,) = stopper.study.finished.values()
    assert (finished.task, finished.metric) == ("qa", "em")
    assert stopper.controllers["a"].task == "qa"


def test_bad_arguments_are_rejected():
    with pytest.raises(ParameterError, match="direction must be one of"):
        MetaStopStopper(Patience(2), budget=10, direction="up")
    with pytest.raises(ParameterError, match="budget"):
        MetaStopStopper(Patience(2), budget=-1)
