"""Fuzzing the model registry: a registry folder sabotaged in random ways (links to files
outside it, a ``current`` of any content, leftovers of killed writers, linked or broken
version folders), then random operations. Each operation ends normally or with a metastop
error; nothing outside the registry is ever written; listing versions always works; after
any write succeeds, no leftover of a killed writer remains."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.fuzzing import Tally, fuzz_settings
from metastop.curves import Curve, CurveSet
from metastop.errors import MetastopError, ModelError
from metastop.ops.registry import Registry
from metastop.predict.model import Predictor

TALLY = Tally()
POINTER_JUNK = st.one_of(
    st.binary(max_size=40), st.text(max_size=20).map(str.encode),
    st.sampled_from([b"default", b"v1\n", b"../v1", b"{", b"{}", b'{"champion": 5}',
                     b'{"champion": "v1", "previous": 5}', b'{"champion": "v1", "previous": "ab"}',
                     b'{"champion": "v1", "previous": [null, 3, "default"]}', b"[" * 5000,
                     b'{"champion": "missing"}', b"\xff\xfe", b"{" + b"[" * 3000 + b"}"]))
SABOTAGE = st.one_of(
    st.tuples(st.just("link"), st.sampled_from([".lock", "history.jsonl", "current", "v9"])),
    st.tuples(st.just("folder"), st.sampled_from([".lock", "history.jsonl", "current"])),
    st.tuples(st.just("current"), POINTER_JUNK),
    st.tuples(st.just("history"), st.binary(max_size=60)),
    st.tuples(st.just("leftover"), st.sampled_from([".add-v5-x1", ".current.ab.tmp", ".add-link"])),
    st.tuples(st.just("version"), st.sampled_from(["file", "empty", "linked-model-file",
                                                   "no-manifest"])))
OPERATIONS = st.lists(st.sampled_from(["versions", "champion_name", "champion", "history",
                                       "add", "promote v1", "promote default", "promote v9",
                                       "rollback", "clean", "load champion"]),
                      min_size=1, max_size=5)
LEFTOVER = (".add-", ".current.")


def tiny_curves() -> CurveSet:
    rng = np.random.default_rng(0)
    curves = []
    for i in range(24):
        tokens = np.arange(1, 7) * 1000.0
        values = 0.6 * (1 - np.exp(-tokens / (2000.0 + 300 * i))) + rng.normal(0, 0.01, 6)
        curves.append(Curve(f"c{i}", tokens, values, budget=8000.0, run_id=f"r{i}",
                            metric="exact_match"))
    return CurveSet(curves)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    model = Predictor(n_estimators=3, num_leaves=4, min_child_samples=5, max_prefixes=3,
                      max_horizons=2, context=False).fit(tiny_curves())
    return model.save(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    TALLY.flush()


def sabotage(root: Path, action: tuple, model: Path, outside: Path) -> None:
    kind, what = action
    path = root / what if isinstance(what, str) and kind in ("link", "folder", "leftover") else None
    if path is not None and os.path.lexists(path):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if kind == "link":
        os.symlink(outside / ("model" if what == "v9" else "file.txt"), path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "current":
        _replace(root / "current", what)
    elif kind == "history":
        _replace(root / "history.jsonl", what)
    elif kind == "leftover":
        if what == ".add-link":
            os.symlink(outside, path)
        elif what.endswith(".tmp"):
            path.write_text("{}")
        else:
            shutil.copytree(model, path)
    else:
        _broken_version(root / f"bad-{what}", what, model, outside)


def _replace(path: Path, data: bytes) -> None:
    if os.path.lexists(path):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    path.write_bytes(data)


def _broken_version(path: Path, how: str, model: Path, outside: Path) -> None:
    if os.path.lexists(path):
        return
    if how == "file":
        path.write_text("not a folder")
    elif how == "empty":
        path.mkdir()
    else:
        shutil.copytree(model, path)
        if how == "no-manifest":
            (path / "manifest.json").unlink()
        else:
            (path / "quantile_0.5.txt").unlink()
            os.symlink(outside / "model" / "quantile_0.5.txt", path / "quantile_0.5.txt")


def operate(registry: Registry, operation: str, model: Path) -> bool:
    """Run one operation; True if it was a write that succeeded."""
    calls = {"versions": registry.versions, "champion_name": registry.champion_name,
             "champion": registry.champion, "history": registry.history,
             "add": lambda: registry.add(model), "rollback": registry.rollback,
             "clean": registry.clean, "load champion": lambda: Predictor.load(registry.champion())}
    if operation.startswith("promote"):
        calls[operation] = lambda: registry.promote(operation.split()[1])
    calls[operation]()
    return operation in ("add", "rollback", "clean") or operation.startswith("promote")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@fuzz_settings(25, share=0.1)
@given(actions=st.lists(SABOTAGE, min_size=1, max_size=4), operations=OPERATIONS)
def test_a_sabotaged_registry_only_gives_metastop_errors(tmp_path_factory, tiny_model, actions,
                                                         operations):
    work = tmp_path_factory.mktemp("reg")
    outside = work / "outside"
    shutil.copytree(tiny_model, outside / "model")
    (outside / "file.txt").write_text("precious\n")
    before = snapshot(outside)
    root = work / "models"
    root.mkdir()
    shutil.copytree(tiny_model, root / "default")
    shutil.copytree(tiny_model, root / "v1")
    for action in actions:
        sabotage(root, action, tiny_model, outside)
    registry = Registry(root, lock_timeout=0.1)
    for operation in operations:
        try:
            wrote = operate(registry, operation, tiny_model)
        except MetastopError as error:
            assert str(root) in str(error) or "name" in str(error), str(error)
            TALLY.record("registry", "refused")
            continue
        TALLY.record("registry", "accepted")
        if wrote:
            assert not [p.name for p in root.iterdir() if p.name.startswith(LEFTOVER)]
    assert snapshot(outside) == before
    registry.versions()  # listing always works


# --- the pointer read directly: champion.read_pointer and champion_dir ------------------------
def _pointer(root: Path, content: bytes | str) -> None:
    """Make ``root/current`` hold ``content``: bytes, or 'folder', 'link', 'fifo', 'huge'."""
    path = root / "current"
    if content == "folder":
        path.mkdir()
    elif content == "link":
        (root / "elsewhere.txt").write_text("default\n")
        os.symlink(root / "elsewhere.txt", path)
    elif content == "fifo":
        os.mkfifo(path)
    elif content == "huge":
        path.write_bytes(b'{"champion": "default", "reason": "' + b"x" * (2 << 20) + b'"}')
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("content, rule", [
    ("folder", "is not a plain file"), ("link", "is a symbolic link"), ("fifo", "is not a plain file"),
    ("huge", "holds more than 1048576 bytes"), (b"\xff\xfe", "is not UTF-8 text"),
    (b"{" + b"[" * 100_000 + b"}", "is not valid JSON"), (b"../default", "names no valid version"),
    (b'{"champion": "default\\n"}', "names no valid version"),
    (b'{"champion": "/etc"}', "names no valid version"), (b'{"champion": 5}', "names no valid version"),
    (b'{"champion": "default", "previous": 5}', "'previous' must be a list"),
], ids=["folder", "link", "fifo", "huge", "not-utf8", "deep", "dotdot", "newline", "absolute",
        "number", "previous"])
def test_read_pointer_refuses_any_bad_pointer_with_a_model_error(tmp_path, content, rule):
    from metastop.predict.champion import champion_dir, read_pointer

    _pointer(tmp_path, content)
    for read in (read_pointer, champion_dir):
        with pytest.raises(ModelError, match=rf"^file {tmp_path}/current: .*{rule}.*; remove "
                                                rf"{tmp_path}/current \(the champion is then"):
            read(tmp_path)


def test_a_linked_champion_folder_is_refused(tmp_path, tiny_model):
    from metastop.predict.champion import champion_dir

    os.symlink(tiny_model, tmp_path / "v1")
    _pointer(tmp_path, b'{"champion": "v1", "previous": []}')
    with pytest.raises(ModelError, match="the champion is a symbolic link"):
        champion_dir(tmp_path)


@fuzz_settings(60, share=0.2)
@given(content=POINTER_JUNK)
def test_read_pointer_gives_a_version_name_or_a_model_error(tmp_path_factory, content):
    from metastop.predict.champion import VERSION_NAME, read_pointer

    root = tmp_path_factory.mktemp("pointer")
    _pointer(root, content)
    try:
        pointer = read_pointer(root)
    except ModelError as error:
        assert str(error).startswith(f"file {root}/current: "), str(error)
        assert "champion pointer" in str(error) and "; remove " in str(error), str(error)
        TALLY.record("read_pointer", "refused")
        return
    assert VERSION_NAME.fullmatch(pointer["champion"]) and "/" not in pointer["champion"]
    assert all(VERSION_NAME.fullmatch(p) for p in pointer["previous"])
    TALLY.record("read_pointer", "accepted")
