"""Model folders under attack: ``Predictor.load`` on mutated copies of ``models/default``.

LightGBM text with a byte changed (its SHA-256 updated so the checksum cannot catch it),
manifests with fields of the wrong type, shape or depth, file names that leave the folder,
symbolic links, edited numbers under an unchanged ``manifest_sha256``. Loading runs in a
child process so that an abort (SIGABRT, SIGSEGV) fails the test instead of ending it: the
load must give a working model or a ``ModelError`` naming the file, never anything else.
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.fuzzing import Tally, fuzz_settings
from metastop.errors import ModelError
from metastop.predict.manifest import (DEFAULT_DIR, MANIFEST_SHA256, manifest_digest,
                                       sha256_bytes, verify_checksums)
from metastop.predict.model import Predictor

ROOT = Path(__file__).resolve().parent.parent
TALLY = Tally()
WORKER = r"""
import json, sys, traceback
import numpy as np
from metastop.curves import Curve
from metastop.errors import MetastopError
from metastop.predict.model import Predictor

curve = Curve("c", [1e9, 2e9, 4e9], [0.1, 0.2, 0.25], budget=1e10, metric="exact_match")
for line in sys.stdin:
    try:
        model = Predictor.load(json.loads(line)["dir"])
        scores = model.predict(curve).scores
        reply = {"outcome": "accepted", "finite": bool(np.isfinite(scores).all())}
    except MetastopError as error:
        reply = {"outcome": "refused", "type": type(error).__name__, "message": str(error)}
    except BaseException:
        reply = {"outcome": "traceback", "message": traceback.format_exc()}
    print(json.dumps(reply), flush=True)
"""


class LoaderChild:
    """A child Python that loads model folders one by one: its death is an abort."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER], cwd=ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)

    def load(self, directory: Path, timeout: float = 300.0) -> dict:
        self.process.stdin.write(json.dumps({"dir": str(directory)}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            code = self.process.wait()
            return {"outcome": "abort", "returncode": code,
                    "message": self.process.stderr.read()[-3000:]}
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def loader():
    child = LoaderChild()
    yield child
    child.close()
    TALLY.flush()


@pytest.fixture(scope="module")
def default_files() -> dict[str, bytes]:
    """Every file of the shipped model, by path inside its folder (sub-folders included)."""
    return {str(p.relative_to(DEFAULT_DIR)): p.read_bytes() for p in DEFAULT_DIR.rglob("*")
            if p.is_file()}


def write_folder(directory: Path, files: dict[str, bytes], manifest: dict, *,
                 reseal: bool = True) -> Path:
    """A model folder of ``files`` with ``manifest``, its file checksums (and, with
    ``reseal``, its own checksum) made to match, as a careful attacker would."""
    directory.mkdir(parents=True)
    for name, data in files.items():
        if name != "manifest.json":
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(data)
    if reseal and isinstance(manifest.get("files"), dict):
        for name, entry in manifest["files"].items():
            if isinstance(entry, dict) and name in files:
                entry.update(sha256=sha256_bytes(files[name]), bytes=len(files[name]))
    if reseal and MANIFEST_SHA256 in manifest:
        manifest[MANIFEST_SHA256] = manifest_digest(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return directory


def expect_clean_outcome(reply: dict, target: str, directory: Path) -> None:
    assert reply["outcome"] in ("accepted", "refused"), reply.get("message")
    if reply["outcome"] == "refused":
        assert reply["type"] == "ModelError", reply
        assert reply["message"].startswith(f"file {directory}/"), reply["message"]
    else:
        assert reply["finite"]
    TALLY.record(target, reply["outcome"])


# --- reproductions ---------------------------------------------------------------------------
def _truncate(text: bytes) -> bytes:
    return text[: len(text) // 2]


def _cut_chunk(text: bytes) -> bytes:
    middle = len(text) // 3
    return text[:middle] + text[middle + 150:]


CORRUPTIONS = {
    "truncated": _truncate,
    "chunk deleted": _cut_chunk,
    "child index out of range": lambda t: t.replace(b"\nright_child=", b"\nright_child=9999 ", 1),
    "tree_sizes shifted": lambda t: t.replace(b"tree_sizes=", b"tree_sizes=1", 1),
    "num_leaves changed": lambda t: t.replace(b"\nnum_leaves=", b"\nnum_leaves=9", 1),
    "categorical split without categories": lambda t: t.replace(b"decision_type=2", b"decision_type=3", 1),
    "line without '='": lambda t: t.replace(b"\nis_linear=0", b"\nis_linear", 1),
    "parameters line broken": lambda t: t.replace(b"[boosting: gbdt]", b'[boosting: "gbdt]', 1),
    "pandas_categorical not JSON": lambda t: t.replace(b"pandas_categorical:null", b"pandas_categorical:nul", 1),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupted_lightgbm_text_with_updated_sha_is_a_model_error_not_an_abort(
        loader, default_files, tmp_path, how):
    files = dict(default_files)
    files["quantile_0.5.txt"] = CORRUPTIONS[how](files["quantile_0.5.txt"])
    assert files["quantile_0.5.txt"] != default_files["quantile_0.5.txt"]
    folder = write_folder(tmp_path / "m", files, json.loads(files["manifest.json"]))
    reply = loader.load(folder)
    assert reply["outcome"] == "refused", reply
    assert reply["message"].startswith(f"file {folder}/quantile_0.5.txt: line "), reply["message"]


def _training_data(kind: str):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5))
    y = 3 * X[:, 0] + rng.normal(size=600)
    if kind == "missing and infinite features":
        X[rng.random(X.shape) < 0.2] = np.nan
        X[rng.random(X.shape) < 0.05] = np.inf
    if kind == "categorical feature":
        X[:, 1] = rng.integers(0, 12, 600)
        y = y + X[:, 1] % 3
    return X, {"constant target": np.ones(600), "huge target": y * 1e300}.get(kind, y)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("kind, params", [
    ("constant target", {}), ("missing and infinite features", {"objective": "quantile"}),
    ("categorical feature", {}), ("huge target", {}),
    ("plain", {"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}),
    ("plain", {"objective": "multiclass", "num_class": 3}),
])
def test_lightgbm_texts_of_many_kinds_pass_the_check(kind, params):
    """One-leaf trees, inf thresholds and gains, categorical splits, average_output: what
    LightGBM writes must pass, or valid models would be refused."""
    import lightgbm as lgb

    from metastop.predict.booster_text import check_booster_text

    X, y = _training_data(kind)
    if params.get("objective") == "multiclass":
        y = (y > 0).astype(int) + (y > 2)
    data = lgb.Dataset(X, y, categorical_feature=[1] if "categorical" in kind else "auto")
    booster = lgb.train({"verbosity": -1, "num_iterations": 8, **params}, data)
    check_booster_text(booster.model_to_string().encode(), Path("m.txt"), n_features=5)


def test_a_broken_number_line_is_refused_fast(default_files):
    """A letter after a long run of numbers fails in linear time (no regex backtracking)."""
    import time

    from metastop.predict.booster_text import check_booster_text

    text = default_files["quantile_0.5.txt"]
    start = text.index(b"\ninternal_weight=") + len(b"\ninternal_weight=")
    end = text.index(b"\n", start)
    ones = (b"11 " * (end - start))[: end - start - 1] + b"x"  # same length: tree_sizes hold
    broken = text[:start] + ones + text[end:]
    n_features = len(json.loads(default_files["manifest.json"])["feature_names"])
    began = time.monotonic()
    with pytest.raises(ModelError, match=r"line \d+: internal_weight must be numbers separated"):
        check_booster_text(broken, Path("q.txt"), n_features=n_features)
    assert time.monotonic() - began < 5.0


def _manifest(default_files) -> dict:
    return json.loads(default_files["manifest.json"])


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


MANIFEST_EDITS = {
    "files as a list": (lambda m: m.update(files=[{"name": n, **e} for n, e in m["files"].items()]),
                        r"field 'files' must be a JSON object"),
    "quantiles a number": (lambda m: m.update(quantiles=0.5), r"field 'quantiles' must be a list"),
    "nested 500 deep": (lambda m: m["training"].update(notes=_deep(500)), r"nested deeper than"),
    "NaN calibration factor": (lambda m: m["calibration"]["factors"][0][0].__setitem__(0, math.nan),
                               r"field 'calibration.factors\[0\]\[0\]\[0\]' must be a finite number, got nan"),
    "text calibration factor": (lambda m: m["calibration"]["factors"][3][0].__setitem__(1, "0.1"),
                                r"field 'calibration.factors\[3\]\[0\]\[1\]' must be a finite number, got '0.1'"),
    "true as a prior gain": (lambda m: m["prior"]["gain_quantiles"][0][0].__setitem__(0, True),
                             r"field 'prior.gain_quantiles\[0\]\[0\]\[0\]' must be a finite number"),
    "file entry a string": (lambda m: m["files"].update({"quantile_0.5.txt": "abc"}),
                            r"field 'files.quantile_0.5.txt' must be an object"),
    "sha256 not hex": (lambda m: m["files"]["quantile_0.1.txt"].update(sha256=12),
                       r"field 'files.quantile_0.1.txt.sha256' must be 64 hex digits"),
    "params a list": (lambda m: m.update(params=[1, 2]), r"field 'params' must be a JSON object"),
    "param a dict": (lambda m: m["params"].update(learning_rate={"a": 1}),
                     r"field 'params.learning_rate' must be a number"),
    "newer format": (lambda m: m.update(format_version=99), r"field 'format_version' must be an integer"),
}


@pytest.mark.parametrize("how", sorted(MANIFEST_EDITS))
def test_malformed_manifests_are_model_errors_naming_the_field(default_files, tmp_path, how):
    edit, message = MANIFEST_EDITS[how]
    manifest = _manifest(default_files)
    edit(manifest)
    folder = write_folder(tmp_path / "m", default_files, manifest, reseal=False)
    with pytest.raises(ModelError, match=rf"file {folder}/manifest.json: .*{message}"):
        Predictor.load(folder)


def test_manifest_nested_past_the_json_parser_is_a_model_error(default_files, tmp_path):
    folder = write_folder(tmp_path / "m", default_files, _manifest(default_files))
    text = (folder / "manifest.json").read_text().rstrip()[:-1]
    (folder / "manifest.json").write_text(text + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelError, match=r"manifest.json: nested deeper than 24 levels"):
        Predictor.load(folder)


def test_file_names_must_stay_inside_the_model_folder(default_files, tmp_path):
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "quantile_0.1.txt").write_bytes(default_files["quantile_0.1.txt"])
    manifest = _manifest(default_files)
    manifest["files"]["../x/quantile_0.1.txt"] = manifest["files"].pop("quantile_0.1.txt")
    folder = write_folder(tmp_path / "m", default_files, manifest)
    for load in (Predictor.load, verify_checksums):
        with pytest.raises(ModelError, match=r"file name '\.\./x/quantile_0\.1\.txt' must be a "
                                             r"plain name inside the model folder"):
            load(folder)


@pytest.mark.parametrize("name", ["/etc/passwd", "sub/quantile_0.1.txt", ".hidden", "..", "a\\b"])
def test_file_names_with_separators_or_dots_are_refused(default_files, tmp_path, name):
    manifest = _manifest(default_files)
    manifest["files"][name] = manifest["files"].pop("quantile_0.1.txt")
    folder = write_folder(tmp_path / "m", default_files, manifest)
    with pytest.raises(ModelError, match="must be a plain name inside the model folder"):
        Predictor.load(folder)


@pytest.mark.parametrize("name", ["../x", "/tmp/plain", "plain/../..", ".plain", "a\\b"])
def test_the_plain_twin_name_follows_the_file_name_rule(default_files, tmp_path, name):
    manifest = _manifest(default_files)
    manifest["plain_model"] = name
    folder = write_folder(tmp_path / "m", default_files, manifest)
    with pytest.raises(ModelError, match=rf"^file {folder}/manifest.json: file name .* must be "
                                         rf"a plain name inside the model folder"):
        Predictor.load(folder)


def test_the_plain_twin_must_be_a_folder_inside_the_model(default_files, tmp_path):
    folder = write_folder(tmp_path / "m", default_files, _manifest(default_files))
    shutil.move(folder / "plain", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", folder / "plain")
    with pytest.raises(ModelError, match=rf"^file {folder}/plain: the plain model must be a "
                                         rf"folder inside the model folder, not a symbolic link"):
        Predictor.load(folder)
    (folder / "plain").unlink()
    (folder / "plain").write_text("a file")
    with pytest.raises(ModelError, match=r"the plain model must be a folder"):
        Predictor.load(folder)


def test_the_plain_twin_lists_only_files_inside_its_folder(default_files, tmp_path):
    twin = json.loads(default_files["plain/manifest.json"])
    twin["files"]["../quantile_0.1.txt"] = twin["files"].pop("quantile_0.1.txt")
    twin[MANIFEST_SHA256] = manifest_digest(twin)
    files = {**default_files, "plain/manifest.json": json.dumps(twin).encode()}
    folder = write_folder(tmp_path / "m", files, _manifest(default_files))
    with pytest.raises(ModelError, match=rf"^file {folder}/plain/manifest.json: file name "
                                         rf"'\.\./quantile_0\.1\.txt' must be a plain name"):
        Predictor.load(folder)


def test_symlinked_model_files_and_manifest_are_refused(default_files, tmp_path):
    folder = write_folder(tmp_path / "m", default_files, _manifest(default_files))
    real = tmp_path / "elsewhere.txt"
    shutil.move(folder / "quantile_0.9.txt", real)
    os.symlink(real, folder / "quantile_0.9.txt")
    for load in (Predictor.load, verify_checksums):
        with pytest.raises(ModelError, match=r"quantile_0\.9\.txt: is a symbolic link"):
            load(folder)
    (folder / "quantile_0.9.txt").unlink()
    shutil.move(real, folder / "quantile_0.9.txt")
    shutil.move(folder / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", folder / "manifest.json")
    with pytest.raises(ModelError, match=r"manifest.json: is a symbolic link"):
        Predictor.load(folder)


def test_the_manifest_checksum_catches_an_edited_number(default_files, tmp_path):
    manifest = _manifest(default_files)
    assert manifest[MANIFEST_SHA256] == manifest_digest(manifest)  # the shipped model has one
    manifest["calibration"]["factors"][0][0][0] += 0.5
    folder = write_folder(tmp_path / "edited", default_files, manifest, reseal=False)
    with pytest.raises(ModelError, match=r"manifest.json: manifest_sha256 does not match"):
        Predictor.load(folder)
    with pytest.raises(ModelError, match=r"manifest_sha256 does not match"):
        verify_checksums(folder)
    del manifest[MANIFEST_SHA256]  # saved by an older metastop: still loads
    older = write_folder(tmp_path / "older", default_files, manifest, reseal=False)
    assert Predictor.load(older).calibration_["factors"][0][0][0] == \
        manifest["calibration"]["factors"][0][0][0]


def test_saved_models_carry_their_manifest_checksum(tmp_path):
    saved = Predictor.load().save(tmp_path / "again")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest[MANIFEST_SHA256] == manifest_digest(manifest)
    Predictor.load(saved)


# --- fuzzing ---------------------------------------------------------------------------------
MUTATION = st.tuples(st.sampled_from(["flip", "digit", "space", "newline", "delete", "insert",
                                      "truncate", "drop line", "repeat line"]),
                     st.floats(0, 1, exclude_max=True), st.integers(0, 255))


def mutate_text(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, where, byte in mutations:
        if not data:
            break
        i = int(where * len(data))
        if kind == "flip":
            data[i] ^= 1 << (byte % 8)
        elif kind in ("digit", "space", "newline"):
            data[i] = {"digit": ord("0") + byte % 10, "space": 32, "newline": 10}[kind]
        elif kind == "delete":
            del data[i:i + 1 + byte]
        elif kind == "insert":
            data[i:i] = str(byte).encode()
        elif kind == "truncate":
            del data[i:]
        else:
            start = data.rfind(b"\n", 0, i) + 1
            end = data.find(b"\n", i) + 1 or len(data)
            data[start:end] = b"" if kind == "drop line" else data[start:end] * 2
    return bytes(data)


@fuzz_settings(10, share=0.1)
@given(which=st.sampled_from(["quantile_0.1.txt", "quantile_0.5.txt", "quantile_0.9.txt"]),
       mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_lightgbm_text_mutants_load_or_are_refused(loader, default_files, tmp_path_factory,
                                                   which, mutations):
    files = dict(default_files)
    files[which] = mutate_text(files[which], mutations)
    folder = write_folder(tmp_path_factory.mktemp("text") / "m", files,
                          json.loads(files["manifest.json"]))
    expect_clean_outcome(loader.load(folder), "models/lightgbm-text", folder)


JSON_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(["../x/quantile_0.1.txt", "/etc/passwd", "NaN", ""]),
    st.lists(st.floats(allow_nan=True), max_size=3), st.just(_deep(60)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def edit_at(manifest: dict, steps: list[int], value, delete: bool) -> None:
    """Walk ``steps`` (each an index into the keys or items at that level) and replace (or
    delete) what is found there."""
    node, key = manifest, None
    for step in steps:
        children = list(node) if isinstance(node, dict) else range(len(node))
        if not children:
            break
        key = children[step % len(children)]
        if not isinstance(node[key], (dict, list)) or step == steps[-1]:
            break
        node = node[key]
    if key is None:
        return
    if delete and isinstance(node, dict):
        del node[key]
    else:
        node[key] = value


@fuzz_settings(20, share=0.25)
@given(steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=5), value=JSON_JUNK,
       delete=st.booleans(), reseal=st.booleans())
def test_manifest_field_mutants_load_or_are_refused(loader, default_files, tmp_path_factory,
                                                    steps, value, delete, reseal):
    manifest = _manifest(default_files)
    edit_at(manifest, steps, value, delete)
    folder = write_folder(tmp_path_factory.mktemp("fields") / "m", default_files, manifest,
                          reseal=reseal)
    expect_clean_outcome(loader.load(folder), "models/manifest-fields", folder)


@fuzz_settings(10, share=0.1)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_manifest_byte_mutants_load_or_are_refused(loader, default_files, tmp_path_factory,
                                                   mutations):
    folder = tmp_path_factory.mktemp("bytes") / "m"
    for name, data in default_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(mutate_text(data, mutations) if name == "manifest.json"
                                    else data)
    expect_clean_outcome(loader.load(folder), "models/manifest-bytes", folder)
