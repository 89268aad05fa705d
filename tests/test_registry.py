"""Model registry: versions, champion pointer, atomic promotion and rollback, the lock,
refusal of tampered models, and SIGKILL in the middle of a promotion."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import start_paused
from metastop.curves.paths import shared_corpus
from metastop.curves import CurveSet
from metastop.errors import ModelError, ParameterError
from metastop.predict.model import Predictor
from metastop.ops.registry import (Registry, RegistryLockError, folder_digest, verify_checksums)

PYTHIA = shared_corpus("pythia_evals.parquet")
ROOT = Path(__file__).resolve().parent.parent


def small_curves(n: int = 24, task: str = "lambada_openai") -> CurveSet:
    frame = pd.read_parquet(PYTHIA, filters=[("task", "==", task), ("metric", "==", "acc")])
    keep = sorted(frame["curve_id"].unique())[:n]
    return CurveSet.from_frame(frame[frame["curve_id"].isin(keep)].drop(columns=["step"]))


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Two small real models saved as folders (fit once for the module)."""
    base = tmp_path_factory.mktemp("models")
    curves = small_curves()
    a = Predictor(n_estimators=8, num_leaves=7, min_child_samples=10, num_threads=1).fit(curves)
    b = Predictor(n_estimators=12, num_leaves=7, min_child_samples=10, num_threads=1,
                  random_state=1).fit(curves)
    return a.save(base / "a"), b.save(base / "b")


@pytest.fixture()
def registry(tmp_path, saved_models):
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(saved_models[0], root / "default")
    return Registry(root, lock_timeout=0.5)


def test_champion_is_default_without_a_pointer(registry):
    assert registry.champion_name() == "default"
    assert registry.champion() == registry.root / "default"
    Predictor.load(registry.champion())
    [version] = registry.versions()
    assert version.name == "default" and version.champion and version.problem is None
    assert "coverage_outer_calibrated" in version.metrics


def test_missing_champion_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"default.*manifest.json.*champion 'default'"):
        Registry(tmp_path / "empty").champion()


def test_add_promote_rollback(registry, saved_models):
    name = registry.add(saved_models[1])
    assert (registry.root / name / "manifest.json").is_file()
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".add-")]
    assert folder_digest(registry.root / name) == folder_digest(saved_models[1])
    assert registry.champion_name() == "default"
    registry.promote(name, reason="better MAE")
    assert registry.champion() == registry.root / name
    assert {v.name: v.champion for v in registry.versions()} == {"default": False, name: True}
    second = registry.add(saved_models[0], name="v3")
    registry.promote(second)
    assert registry.rollback() == name
    assert registry.rollback(reason="bad") == "default"
    with pytest.raises(ModelError, match="no earlier usable champion"):
        registry.rollback()
    actions = [(e["action"], e["champion"]) for e in registry.history()]
    assert actions == [("promote", name), ("promote", "v3"), ("rollback", name),
                       ("rollback", "default")]
    with pytest.raises(ParameterError, match="is taken"):
        registry.add(saved_models[0], name="v3")


def test_plain_text_pointer_is_accepted(registry, saved_models):
    registry.add(saved_models[1], name="v2")
    (registry.root / "current").write_text("v2\n")
    assert registry.champion_name() == "v2"
    (registry.root / "current").write_text("{not json")
    with pytest.raises(ModelError, match="current: the champion pointer is not valid JSON"):
        registry.champion()


@pytest.mark.parametrize("name", ["../evil", ".hidden", "current", "a/b", ""])
def test_bad_version_names_are_rejected(registry, saved_models, name):
    with pytest.raises(ParameterError, match="name must be"):
        registry.add(saved_models[1], name=name)


# --- refusing tampered or truncated models ----------------------------------------------------
def _tamper(folder: Path, how: str) -> Path:
    target = folder / "quantile_0.5.txt"
    data = target.read_bytes()
    if how == "tampered":
        target.write_bytes(data.replace(b"learning_rate", b"learning_ratf", 1))
    elif how == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:
        target = folder / "manifest.json"
        target.write_text(target.read_text()[:200])
    return target


@pytest.mark.parametrize("how", ["tampered", "truncated", "manifest"])
def test_tampered_or_truncated_version_is_refused_naming_the_file(registry, saved_models,
                                                                    tmp_path, how):
    broken = tmp_path / "broken"
    shutil.copytree(saved_models[1], broken)
    bad_file = _tamper(broken, how)
    with pytest.raises(ModelError, match=str(bad_file)):
        registry.add(broken)
    assert registry.names() == ["default"]
    # a version damaged after it was added is refused at promotion, and loading names it too
    name = registry.add(saved_models[1], name="later")
    _tamper(registry.root / name, how)
    with pytest.raises(ModelError, match=f"{name}/{bad_file.name}"):
        registry.promote(name)
    assert registry.champion_name() == "default"
    with pytest.raises(ModelError, match=bad_file.name):
        Predictor.load(registry.root / name)
    [problem] = [v.problem for v in registry.versions() if v.name == name] if how == "manifest" else [None]
    assert how != "manifest" or "manifest.json" in problem


def test_verify_checksums_reads_the_predictor_manifest(saved_models):
    manifest = verify_checksums(saved_models[0])
    assert sorted(manifest["files"]) == ["quantile_0.1.txt", "quantile_0.5.txt", "quantile_0.9.txt"]


# --- the lock ---------------------------------------------------------------------------------
def test_lock_is_exclusive_reentrant_and_names_the_holder(registry):
    other = Registry(registry.root, lock_timeout=0.2)
    with registry.lock():
        with registry.lock():  # re-entrant in the same object
            pass
        started = time.monotonic()
        with pytest.raises(RegistryLockError, match=rf"\.lock.*pid {os.getpid()}.*waited 0.2 s"):
            with other.lock():
                pass
        assert time.monotonic() - started >= 0.2
    with other.lock():  # free again once released
        pass


def test_lock_held_by_another_process_times_out(registry):
    code = textwrap.dedent(f"""
        import sys, time
        from metastop.ops.registry import Registry
        with Registry({str(registry.root)!r}).lock():
            print("locked", flush=True)
            time.sleep(30)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryLockError, match=f"pid {child.pid}"):
            registry.promote("default")
    finally:
        child.kill()
        child.wait()
    registry.promote("default")  # the kernel released the dead holder's lock


# --- SIGKILL in the middle of a promotion -----------------------------------------------------
PROMOTE = """
import sys
from metastop.ops.registry import Registry
reg = Registry(sys.argv[1])
reg.promote(reg.add(sys.argv[2], name="challenger"))
"""


@pytest.mark.parametrize("phase", ["registry.add.copied", "registry.pointer.written"])
def test_sigkill_during_promotion_leaves_the_champion(registry, saved_models, tmp_path, phase):
    registry.promote(registry.add(saved_models[0], name="v1"))
    before = folder_digest(registry.champion())
    child = start_paused(PROMOTE, phase, [str(registry.root), str(saved_models[1])],
                         tmp_path / f"at-{phase}", timeout=120.0)
    child.send_signal(signal.SIGKILL)
    child.wait()
    fresh = Registry(registry.root, lock_timeout=1.0)
    assert fresh.champion_name() == "v1"
    assert folder_digest(fresh.champion()) == before
    Predictor.load(fresh.champion())
    assert ("challenger" in fresh.names()) == (phase == "registry.pointer.written")
    [leftover] = fresh.clean()  # the staged copy, or the unrenamed pointer file
    assert leftover.startswith(".add-challenger-" if "add" in phase else ".current.")
    fresh.promote(fresh.add(saved_models[1], name="after"))  # the lock is free again
    assert fresh.champion_name() == "after" and fresh.rollback() == "v1"


def test_the_pause_is_injected_by_the_tests_not_held_by_production_code(tmp_path):
    sources = "".join(p.read_text() for p in (ROOT / "metastop").rglob("*.py"))
    assert "pause_point" not in sources and "METASTOP_PAUSE" not in sources
    child = subprocess.run([sys.executable, str(ROOT / "tests" / "_pause.py"), "registry.nowhere",
                            str(tmp_path / "marker"), "--", "-c", "pass"], cwd=ROOT,
                           capture_output=True, text=True)
    assert child.returncode != 0 and "unknown phase 'registry.nowhere'" in child.stderr


def test_registry_checks_model_folders_by_the_predictor_manifest_rules():
    from metastop.ops import registry as module
    from metastop.predict import manifest

    assert module.read_manifest is manifest.read_manifest
    assert module.verify_checksums is manifest.verify_checksums


def test_predictor_load_serves_the_registry_champion(registry, saved_models, monkeypatch):
    monkeypatch.setenv("METASTOP_MODELS", str(registry.root))
    assert Predictor.load().get_params() == Predictor.load(saved_models[0]).get_params()
    registry.promote(registry.add(saved_models[1], name="v2"), reason="test")
    assert Predictor.load().get_params()["random_state"] == 1
    registry.rollback()
    assert Predictor.load().get_params()["random_state"] == 0
