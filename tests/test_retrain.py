"""Batch retraining: gathering, the promotion rule, SIGKILL safety, the Dask path, and the
whole production loop on replayed real curves (fleet -> logs -> governor -> retrain)."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from metastop.cli.main import main
from metastop.ingest import read_curves
from conftest import start_paused
from metastop.curves.paths import shared_corpus
from metastop.curves import Curve, CurveSet
from metastop.errors import ParameterError
from metastop.ops.governor import Governor
from metastop.stop.policies import CostAware
from metastop.predict.model import Predictor
from metastop.stop.prices import Price, PriceBook
from metastop.ops.registry import Registry, folder_digest
from metastop.ops.report import fleet_report
from metastop.ops.gather import gather_curves
from metastop.ops.recipe import Recipe, TrainingSet
from metastop.ops.retrain import (Evaluation, heldout_mae, promotion_verdict, retrain,
                                  train_predictor)
from metastop.stop.controller import StopController, Reporting
from metastop.curves.splits import split_holdout

PYTHIA = shared_corpus("pythia_evals.parquet")
ROOT = Path(__file__).resolve().parent.parent
PARAMS = {"n_estimators": 40, "num_leaves": 15, "min_child_samples": 20, "num_threads": 1}
LOCAL = Recipe(corpora=(), params=PARAMS)  # only the curves a test gives, small boosters


@functools.lru_cache(maxsize=None)
def pythia(task: str) -> CurveSet:
    """Every accuracy curve of one Pythia task (real lm-eval-harness curves)."""
    frame = pd.read_parquet(PYTHIA, filters=[("task", "==", task), ("metric", "==", "acc")])
    return CurveSet.from_frame(frame.drop(columns=["step"]))


def write_table(curves, path: Path) -> Path:
    """Write curves as a long table (without the metric column: curves from decision logs
    have none, and a column mixing values and nulls is not readable back, see the report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    CurveSet(curves).to_frame().drop(columns=["metric"]).to_parquet(path, index=False)
    return path


def log_run(curve: Curve, predictor, price: Price, folder: Path, *, shadow: bool) -> Path:
    """Feed one curve point by point through a real StopController; return its log."""
    path = folder / (curve.curve_id.replace("/", "_") + ".jsonl")
    ctl = StopController(policy=CostAware(predictor, price=price), budget=curve.budget,
                         curve_id=curve.curve_id, run_id=curve.curve_id, task=curve.task,
                         reporting=Reporting(shadow=shadow, log_path=path))
    for tokens, value in zip(curve.tokens, curve.values):
        if ctl.observe(tokens, value).stop:
            break
    return path


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory):
    """A champion fitted on 12 training-side curves of another domain (nanoGPT validation
    losses): easy to beat on accuracy curves."""
    train, _ = split_holdout(read_curves(shared_corpus("nanogpt_speedrun.parquet")))
    return Predictor(**PARAMS).fit(train[:12]).save(tmp_path_factory.mktemp("weak") / "m")


@pytest.fixture()
def registry(tmp_path, weak_model):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(weak_model, root / "default")
    return Registry(root, lock_timeout=2.0)


# --- gathering --------------------------------------------------------------------------------
def test_gather_skips_bad_inputs_and_duplicates(tmp_path, weak_model):
    curves = [c for c in pythia("sciq") if c.curve_id.startswith("pythia-v1/")][:12]
    good = write_table(curves[:10], tmp_path / "in" / "good.parquet")
    shutil.copy(good, tmp_path / "in" / "again.parquet")  # the same ids: duplicates by id
    renamed = [Curve(f"copy/{c.curve_id}", c.tokens, c.values, budget=c.budget) for c in curves[:2]]
    write_table(renamed, tmp_path / "in" / "renamed.parquet")  # same points: duplicates by content
    (tmp_path / "in" / "corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp_path / "in" / "bad.csv").write_text(
        "curve_id,tokens,value\nok,1,0.1\nok,2,0.2\nok,3,0.3\nback,2,0.1\nback,1,0.2\nback,3,0.3\n"
        "short,1,0.1\nshort,2,0.2\n")
    runs = tmp_path / "runs"
    model = Predictor.load(weak_model)
    log_run(curves[10], model, Price.fraction_of_budget(1.0), runs, shadow=True)  # full curve
    cheap = Price.fraction_of_budget(1e-4)  # stops as soon as it may
    stopped = log_run(curves[11], model, cheap, runs, shadow=False)
    with open(stopped, "a") as handle:
        handle.write('{"tokens": 9, "val')  # a crash mid-line
    gathered = gather_curves([tmp_path / "in"], runs_dir=runs)
    ids = set(gathered.curves.ids)
    assert ids == {c.curve_id for c in curves[:11]} | {"ok"}
    assert gathered.curves[curves[10].curve_id].meta["source"] == "decision_log"
    assert len(gathered.curves[curves[10].curve_id]) == len(curves[10])
    skipped = "\n".join(map(str, gathered.skipped))
    assert "corrupt.parquet: ReadError" in skipped
    assert "bad.csv (curve 'short'): only 2 points" in skipped
    assert "curve 'back'" in skipped and "tokens must strictly increase" in skipped
    assert f"curve {curves[11].curve_id!r}): stopped by the controller" in skipped
    assert "1 line(s) not decision records" in skipped
    duplicates = "\n".join(map(str, gathered.duplicates))
    assert duplicates.count("duplicate curve_id") == 10
    assert duplicates.count("same points as curve") == 2
    assert [s["path"] for s in gathered.sources][0].endswith("again.parquet")
    with pytest.raises(ParameterError, match="no usable curves"):
        gather_curves([tmp_path / "in" / "corrupt.parquet"])


def test_minimize_direction_is_recovered_from_a_log(tmp_path, weak_model):
    loss = Curve("loss-run", np.arange(1, 9) * 1e6, [3.0, 2.5, 2.2, 2.0, 1.9, 1.85, 1.8, 1.78])
    path = tmp_path / "runs" / "loss.jsonl"
    ctl = StopController(policy=CostAware(Predictor.load(weak_model)), budget=8e6,
                         curve_id="loss-run", direction="minimize", reporting=Reporting(shadow=True, log_path=path))
    for t, v in zip(loss.tokens, loss.values):
        ctl.observe(t, v)
    [curve] = gather_curves([], runs_dir=path.parent).curves
    assert curve.direction == "minimize" and curve.values.tolist() == loss.values.tolist()


# --- the promotion rule -----------------------------------------------------------------------
E = Evaluation


@pytest.mark.parametrize("champion, challenger, force, promote, words", [
    (E(0.050, 9, .06, 60.0, .3, .01, 9), E(0.045, 9, .05, 60.0, .3, .01, 9), False, True, "is better"),
    (E(0.050, 9, .06, 60.0, .3, .01, 9), E(0.0498, 9, .05, 61.0, .3, .01, 9), False, False, "-0.4%"),
    (E(0.050, 9, .06, 60.0, .3, .01, 9), E(0.040, 9, .05, 59.9, .3, .01, 9), False, False, "-0.1 pt"),
    (E(0.050, 9, .06, 60.0, .3, .01, 9), E(0.060, 9, .07, 50.0, .3, .01, 9), True, True, "--force"),
    (None, E(0.060, 9, .07, 50.0, .3, .01, 9), False, True, "no usable champion"),
    (E(0.050, 9, .06, 60.0, .3, .01, 9), E(float("nan"), 0, .07, None, None, None, 9), False, False,
     "no held-out prediction"),
])
def test_promotion_rule(champion, challenger, force, promote, words):
    verdict = promotion_verdict(champion, challenger, force=force)
    assert verdict.promote is promote and words in verdict.reason
    assert "lower than the champion's by at least 1%" in verdict.rule


# --- SIGKILL during training and during promotion ---------------------------------------------
RETRAIN = """
import sys
from metastop.ops.registry import Registry
from metastop.ops.recipe import Recipe
from metastop.ops.retrain import retrain
params = {"n_estimators": 10, "num_leaves": 7, "min_child_samples": 10, "num_threads": 1}
retrain([sys.argv[2]], registry=Registry(sys.argv[1]), out=sys.argv[3], force=True,
        recipe=Recipe(corpora=(), params=params))
"""


@pytest.mark.parametrize("phase", ["retrain.train", "retrain.promote", "registry.pointer.written"])
def test_sigkill_leaves_the_champion_loadable_and_unchanged(registry, tmp_path, phase):
    data = write_table(list(pythia("piqa"))[:40], tmp_path / "curves.parquet")
    before = folder_digest(registry.champion())
    child = start_paused(RETRAIN, phase, [str(registry.root), str(data), str(tmp_path / "report")],
                         tmp_path / "marker")
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    after = Registry(registry.root, lock_timeout=2.0)
    assert after.champion_name() == "default"
    assert folder_digest(after.champion()) == before
    Predictor.load(after.champion())
    with after.lock(timeout=2.0):  # the dead retrain's lock is gone
        pass
    after.clean()
    assert [p.name for p in after.root.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []


# --- the Dask path ----------------------------------------------------------------------------
DASK_TASKS = ("sciq", "piqa", "arc_easy", "lambada_openai", "arc_challenge", "winogrande",
              "hendrycksTest-anatomy", "logiqa")


def test_dask_training_matches_single_machine(tmp_path):
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    train, test = split_holdout(CurveSet.concat(pythia(t) for t in DASK_TASKS))
    params = {**PARAMS, "n_estimators": 60}
    training = TrainingSet(train, np.ones(len(train)), CurveSet(), ())
    local = [train_predictor(training, params={**params, "random_state": s}) for s in (0, 1)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        dask = [train_predictor(training, params={**params, "random_state": s},
                                dask_scheduler=cluster.scheduler_address) for s in (0, 1)]
    reloaded = Predictor.load(dask[0].save(tmp_path / "dask"))
    assert type(reloaded) is Predictor
    np.testing.assert_allclose(reloaded.predict(test[0].prefix(4)).scores,
                               dask[0].predict(test[0].prefix(4)).scores, rtol=1e-6)
    mae_local = [heldout_mae(p, test) for p in local]
    mae_dask = [heldout_mae(p, test) for p in dask]
    print(f"held-out MAE over {len(test)} curves: local {mae_local}, dask {mae_dask}")
    assert abs(np.mean(mae_dask) / np.mean(mae_local) - 1) < 0.05
    assert all(abs(d / m - 1) < 0.10 for d, m in zip(mae_dask, mae_local))


# --- the whole loop on replayed real curves ---------------------------------------------------
def test_fleet_end_to_end(registry, tmp_path):
    """150 real Pythia curves replayed point by point through StopControllers, 20% in
    shadow mode; the governor fixes mispriced tasks; retrain promotes only a better model."""
    fleet = list(pythia("lambada_openai")) + list(pythia("arc_easy"))
    # lambada is priced far too cheaply (it stops early and loses EM that comes late);
    # arc_easy far too dearly (it never stops)
    book = PriceBook(Price.fraction_of_budget(0.05),
                     tasks={"lambada_openai": Price.fraction_of_budget(5e-4),
                            "arc_easy": Price.fraction_of_budget(1.0)})
    governor = Governor(book, loss_budget=0.5, shadow_fraction=0.2, min_runs=8)
    champion = Predictor.load(registry.champion())
    logs = tmp_path / "logs"
    shadow = {c.curve_id: governor.assign_shadow(c.curve_id) for c in fleet}
    for curve in fleet:
        log_run(curve, champion, governor.pricebook.price_for(task=curve.task), logs,
                shadow=shadow[curve.curve_id])
    assert len(list(logs.glob("*.jsonl"))) == 150
    assert 0.12 < sum(shadow.values()) / len(fleet) < 0.28
    report = fleet_report(logs)
    assert report.overall.runs == 150 and report.overall.shadow_runs == sum(shadow.values())
    lengths = {c.curve_id: len(c) for c in fleet}
    for run in report.runs:
        lines = (logs / (run.run_id.replace("/", "_") + ".jsonl")).read_text().splitlines()
        assert len(lines) == lengths[run.run_id] or (not run.shadow and run.stopped)

    # the governor: lambada's realized loss is far above budget, arc_easy's is zero
    new = governor.record_log(logs)
    assert len(new) == sum(shadow.values())
    changes = {c.task: c for c in governor.update()}
    assert changes["lambada_openai"].factor == 2.0 and changes["lambada_openai"].mean_loss > 0.5
    assert governor.pricebook.price_for(task="lambada_openai") == Price.fraction_of_budget(1e-3)
    assert changes["arc_easy"].factor == 0.5 and changes["arc_easy"].upper_bound < 0.25
    assert governor.pricebook.price_for(task="arc_easy") == Price.fraction_of_budget(0.5)

    # retrain on the fleet's finished runs plus more curves: a better model is promoted
    extra = write_table(list(pythia("sciq")) + list(pythia("piqa")), tmp_path / "extra.parquet")
    before = registry.champion_name()
    first = retrain([extra], runs_dir=logs, recipe=LOCAL, registry=registry, out=tmp_path / "r1")
    ev_champ, ev_chall = first.champion["evaluation"], first.challenger["evaluation"]
    print(f"retrain 1: {first.verdict.reason}")
    assert first.verdict.promote and not first.verdict.forced
    assert ev_chall["mae_25"] < 0.99 * ev_champ["mae_25"]
    assert registry.champion_name() == first.promoted_as != before
    assert first.data["n_skipped"] > 0  # runs the controller stopped are incomplete curves
    report_json = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report_json["promoted_as"] == first.promoted_as
    assert "Verdict: promote" in (tmp_path / "r1" / "report.md").read_text()

    # a challenger trained on far less data, judged on the same held-out curves: refused
    gathered = gather_curves([extra], runs_dir=logs)
    train, test = split_holdout(gathered.curves)
    small = write_table(list(test) + list(train)[:12], tmp_path / "small.parquet")
    promoted = folder_digest(registry.champion())
    second = retrain([small], recipe=LOCAL, registry=registry, out=tmp_path / "r2")
    print(f"retrain 2: {second.verdict.reason}")
    assert second.data["n_held_out"] == first.data["n_held_out"]
    assert not second.verdict.promote and second.promoted_as is None
    assert registry.champion_name() == first.promoted_as
    assert folder_digest(registry.champion()) == promoted


# --- the command line and the script ----------------------------------------------------------
def test_cli_retrain_and_script(registry, tmp_path):
    data = write_table(list(pythia("piqa"))[:40], tmp_path / "c.parquet")
    result = CliRunner().invoke(main, [
        "retrain", str(data), "--no-corpus", "--registry", str(registry.root), "--out",
        str(tmp_path / "out"), "--n-estimators", "10", "--num-threads", "1", "--force",
        "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "promoted as" in result.output and "MAE@25%" in result.output
    data_json = json.loads((tmp_path / "r.json").read_text())
    assert data_json["verdict"]["promote"] and data_json["challenger"]["params"]["n_estimators"] == 10
    assert registry.champion_name() == data_json["promoted_as"]
    rollback = CliRunner().invoke(main, ["models", "--root", str(registry.root), "rollback"])
    assert rollback.exit_code == 0 and "champion: default" in rollback.output
    script = subprocess.run([sys.executable, "scripts/retrain.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True)
    assert script.returncode == 0 and "--dask-scheduler" in script.stdout
