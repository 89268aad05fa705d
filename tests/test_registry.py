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


# --- files the registry did not make: links, folders, bytes, leftovers --------------------------
@pytest.fixture()
def outside(tmp_path) -> Path:
    """A file outside the registry that no registry operation may touch."""
    path = tmp_path / "outside.txt"
    path.write_text("precious\n")
    return path


@pytest.mark.parametrize("name", [".lock", "history.jsonl"])
def test_symlinked_lock_or_history_is_refused_and_never_written_through(registry, saved_models,
                                                                         outside, name):
    registry.add(saved_models[1], name="v2")
    (registry.root / name).unlink(missing_ok=True)
    os.symlink(outside, registry.root / name)
    with pytest.raises(ModelError, match=rf"{name}: is a symbolic link; the registry never "
                                         rf"writes through one"):
        registry.promote("v2")
    assert outside.read_text() == "precious\n"
    assert registry.champion_name() == "default"  # refused before the pointer moved
    (registry.root / name).unlink()
    registry.promote("v2")
    assert registry.champion_name() == "v2"


def test_symlinked_history_is_refused_when_read(registry, outside):
    os.symlink(outside, registry.root / "history.jsonl")
    with pytest.raises(ModelError, match="history.jsonl: is a symbolic link"):
        registry.history()


@pytest.mark.parametrize("content", ["folder", b"\xff\xfe\x00garbage", "link", b'{"champion": 5}',
                                     b'{"champion": "default", "previous": 7}', b"{[" * 3000])
def test_any_content_of_current_is_a_model_error_and_models_still_lists(
        registry, saved_models, outside, monkeypatch, content):
    registry.add(saved_models[1], name="v2")
    pointer = registry.root / "current"
    if content == "folder":
        pointer.mkdir()
    elif content == "link":
        os.symlink(outside, pointer)
    else:
        pointer.write_bytes(content)
    for call in (registry.champion_name, registry.champion, lambda: registry.promote("v2"),
                 registry.rollback):
        with pytest.raises(ModelError, match=rf"{pointer}: .*"):
            call()
    monkeypatch.setenv("METASTOP_MODELS", str(registry.root))
    with pytest.raises(ModelError, match=str(pointer)):
        Predictor.load()
    assert [v.name for v in registry.versions()] == ["default", "v2"]
    assert not any(v.champion for v in registry.versions())
    assert str(pointer) in registry.pointer_problem()
    assert outside.read_text() == "precious\n"


def test_current_as_a_folder_says_what_to_do_and_the_commands_fail_cleanly(registry, tmp_path):
    from click.testing import CliRunner

    from metastop.cli.main import main

    (registry.root / "current").mkdir()
    with pytest.raises(ModelError, match=r"current: is not a plain file \(the champion pointer\); "
                                         r"remove .*current \(the champion is then 'default'\)"):
        registry.champion()
    runner = CliRunner()
    listing = runner.invoke(main, ["models", "--root", str(registry.root)])
    assert listing.exit_code == 0 and "default" in listing.output
    curves = tmp_path / "c.csv"
    curves.write_text("curve_id,tokens,value\na,1,0.1\na,2,0.2\na,3,0.3\n")
    for args in (["models", "--root", str(registry.root), "promote", "default"],
                 ["predict", str(curves), "--at-fraction", "0.5"]):
        result = runner.invoke(main, args, env={"METASTOP_MODELS": str(registry.root)})
        assert result.exit_code == 1 and "current" in result.output, result.output
        assert not isinstance(result.exception, (OSError, UnicodeDecodeError, AttributeError))


def test_a_version_folder_linked_from_outside_is_refused(registry, saved_models, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(saved_models[1], elsewhere)
    os.symlink(elsewhere, registry.root / "linked")
    with pytest.raises(ModelError, match=r"linked: version 'linked' is a symbolic link"):
        registry.promote("linked")
    assert registry.champion_name() == "default"
    [problem] = [v.problem for v in registry.versions() if v.name == "linked"]
    assert "symbolic link" in problem
    (registry.root / "current").write_text('{"champion": "linked", "previous": []}')
    with pytest.raises(ModelError, match=r"the champion is a symbolic link"):
        registry.champion()


def test_a_model_folder_holding_links_is_not_added(registry, saved_models, tmp_path, outside):
    source = tmp_path / "source"
    shutil.copytree(saved_models[1], source)
    os.symlink(outside, source / "notes.txt")
    with pytest.raises(ModelError, match=r"notes.txt: is a symbolic link; a model folder added"):
        registry.add(source)
    assert registry.names() == ["default"]


@pytest.mark.parametrize("write", ["add", "promote", "rollback", "clean"])
def test_leftovers_of_killed_writers_are_cleaned_by_the_next_write(registry, saved_models,
                                                                   tmp_path, write):
    registry.promote(registry.add(saved_models[1], name="v2"))
    outside_dir = tmp_path / "keep"
    outside_dir.mkdir()
    (outside_dir / "file").write_text("x")
    (registry.root / ".add-v3-abc123").mkdir()
    (registry.root / ".add-v3-abc123" / "manifest.json").write_text("{}")
    (registry.root / ".current.x1y2.tmp").write_text("{}")
    os.symlink(outside_dir, registry.root / ".add-link-1")
    actions = {"add": lambda: registry.add(saved_models[0], name="v3"),
               "promote": lambda: registry.promote("default"),
               "rollback": registry.rollback, "clean": registry.clean}
    actions[write]()
    assert not [p.name for p in registry.root.iterdir() if p.name.startswith((".add-", ".current."))]
    assert (outside_dir / "file").read_text() == "x"  # a link is removed, never its target
