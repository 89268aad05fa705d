"""Model folders on disk: the manifest, the SHA-256 of every model file, reading boosters.

A model folder holds one LightGBM text file per quantile level and ``manifest.json``
(features, feature version, quantiles, calibration, prior, training data, metrics, library
versions and the SHA-256 and size of every model file). This module is the one home of the
rules for those folders: ``Predictor.save`` and ``Predictor.load`` use it, and so does the
model registry (``metastop.ops.registry``) when it copies, verifies and lists versions.
Nothing is pickled.

Nothing in a folder is trusted before it is checked, in this order: files are read without
following symbolic links (``read_plain``); the manifest nests at most ``MAX_DEPTH`` levels,
every entry this metastop reads has its type and shape, every table number is finite, and
``manifest_sha256`` (``manifest_digest``; older manifests lack it) matches its content; file
names stay inside the folder (``check_file_name``); each model file matches its SHA-256 and
passes ``check_booster_text`` before LightGBM parses it. Any failure is a ``ModelError``
naming the file, the field or line, and the rule. The champion pointer is checked the same
way (``check_pointer``, ``champion_folder``).

Example:
    >>> manifest = verify_checksums("models/default")  # doctest: +SKIP
    >>> sorted(manifest["files"])  # doctest: +SKIP
    ['quantile_0.1.txt', 'quantile_0.5.txt', 'quantile_0.9.txt']
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..curves import atomic_path
from ..curves.paths import MODELS_DIR
from ..errors import ModelError
from .booster_text import check_booster_text
from .champion import MANIFEST, champion_dir, default_root, read_pointer
from .context import CONTEXT_NAMES
from .features import FEATURE_NAMES, FEATURE_VERSION
from .kinds import BUCKET_EDGES, N_BASE_CELLS, N_CELLS, N_KINDS, PRIOR_EDGES

FORMAT = "metastop-predictor"
FORMAT_VERSION = 1
DEFAULT_DIR = MODELS_DIR / "default"
"""The shipped default model (``models/default`` in the repository)."""
MANIFEST_SHA256 = "manifest_sha256"
"""The manifest's own checksum entry (``manifest_digest``); older manifests lack it."""
MAX_DEPTH = 24
"""No manifest nests deeper than this; deeper JSON is refused before anything reads it."""
MAX_FILE_BYTES = 1 << 30
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOO_DEEP = object()

log = logging.getLogger(__name__)


# --- SHA-256 ---------------------------------------------------------------------------------
def sha256_bytes(data: bytes) -> str:
    """The SHA-256 of ``data``, as hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as hex, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The manifest's own checksum: the SHA-256 of its canonical JSON (sorted keys, no
    spaces) without the ``manifest_sha256`` entry that records it."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def read_plain(path: Path, what: str, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a plain file, never through a symbolic link (``O_NOFOLLOW``);
    ``ModelError`` naming the file if it is missing, a link, not a file or over ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ModelError(f"file {path}: missing ({what})") from None
    except OSError as error:
        problem = ("is a symbolic link; it must be a plain file inside its folder"
                   if error.errno == errno.ELOOP else f"cannot be read ({error.strerror})")
        raise ModelError(f"file {path}: {problem} ({what})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        problem = ("is not a plain file" if not stat.S_ISREG(info.st_mode) else
                   f"holds {info.st_size} bytes, more than {limit}")
        raise ModelError(f"file {path}: {problem} ({what})")
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1)


def verified_bytes(path: Path, sha256: Any, size: Any = None) -> bytes:
    """The bytes of a file listed in a manifest; ``ModelError`` if missing, a symbolic link,
    or its SHA-256 differs (called truncated when shorter than the listed ``size``)."""
    data = read_plain(path, f"listed in {MANIFEST}")
    if sha256_bytes(data) != sha256:
        what = "truncated" if isinstance(size, int) and len(data) < size else \
            "tampered with or replaced"
        expected = f", expected {size}" if size is not None else ""
        raise ModelError(f"file {path}: SHA-256 does not match {MANIFEST} (file {what}: "
                         f"{len(data)} bytes{expected})")
    return data


def manifest_checksums(manifest: dict[str, Any]) -> dict[str, str]:
    """``{file name: sha256 hex}`` from a manifest, whichever common layout it uses.

    Accepted: ``{"sha256": {name: hex}}``, ``{"files": {name: hex}}``,
    ``{"files": {name: {"sha256": hex}}}`` and ``{"files": [{"name"/"path": .., "sha256": ..}]}``.
    """
    found: dict[str, str] = {}
    for key in ("sha256", "files", "checksums"):
        entry = manifest.get(key)
        if isinstance(entry, dict):
            for name, value in entry.items():
                digest = value.get("sha256") if isinstance(value, dict) else value
                if isinstance(digest, str):
                    found[str(name)] = digest
        elif isinstance(entry, list):
            for item in entry:
                if isinstance(item, dict) and isinstance(item.get("sha256"), str):
                    name = item.get("name") or item.get("path") or item.get("file")
                    found[str(name)] = item["sha256"]
    return found


def verify_checksums(path: str | os.PathLike) -> dict[str, Any]:
    """Check the manifest's own checksum (where it has one) and every file it lists against
    its SHA-256; return the manifest.

    Raises:
        ModelError: naming the first missing, linked or mismatching file, a file name that
            leaves the folder, or a manifest that lists no checksums.
    """
    path = Path(path)
    manifest = read_manifest(path)
    checksums = manifest_checksums(manifest)
    if not checksums:
        raise ModelError(f"file {path / MANIFEST}: lists no SHA-256 checksums of model files")
    check_manifest_sha256(manifest, path / MANIFEST)
    sizes = _listed_sizes(manifest)
    for name, expected in sorted(checksums.items()):
        check_file_name(name, path / MANIFEST)
        verified_bytes(path / name, expected, sizes.get(name))
    return manifest


def check_manifest_sha256(manifest: dict[str, Any], path: Path) -> None:
    """``ModelError`` unless ``manifest_sha256`` matches the manifest's content; manifests
    saved before metastop recorded it have none and are accepted (logged)."""
    recorded = manifest.get(MANIFEST_SHA256)
    if recorded is None:
        log.info("%s: no %s (saved by an older metastop); its content is not checksummed",
                 path, MANIFEST_SHA256)
        return
    if not isinstance(recorded, str) or not _HEX64.fullmatch(recorded):
        raise _field_error(path, MANIFEST_SHA256, "must be 64 hex digits", recorded)
    if recorded != manifest_digest(manifest):
        raise ModelError(f"file {path}: {MANIFEST_SHA256} does not match the manifest's content "
                         f"(edited after it was saved?); restore the folder or retrain")


def check_file_name(name: Any, manifest_path: Path) -> None:
    """A listed file must be a plain name inside the model folder: no path separator,
    no ``..``, not absolute, not hidden."""
    if not isinstance(name, str) or not name or name.startswith(".") or \
            any(c in name for c in "/\\\0") or os.path.isabs(name):
        raise ModelError(f"file {manifest_path}: file name {name!r} must be a plain name "
                         f"inside the model folder (no '/', '\\', '..', leading '.', or "
                         f"absolute path)")


def _listed_sizes(manifest: dict[str, Any]) -> dict[str, Any]:
    """``{file name: bytes}`` where the manifest's ``files`` entries give sizes."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        return {}
    return {str(name): entry.get("bytes") for name, entry in files.items()
            if isinstance(entry, dict)}


# --- reading the manifest --------------------------------------------------------------------
def _load_json(directory: Path) -> Any:
    path = directory / MANIFEST
    if not os.path.lexists(path):
        hint = " (run scripts/train_default.py to build it)" if directory == DEFAULT_DIR else ""
        raise ModelError(f"file {path}: missing; a model directory needs {MANIFEST}{hint}")
    data = read_plain(path, "the model's manifest")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"file {path}: not a valid JSON manifest (truncated or edited?): "
                         f"{error}") from None
    except RecursionError:  # nested too deep for the parser itself
        value = _TOO_DEEP
    if value is _TOO_DEEP or not _depth_ok(value):
        raise ModelError(f"file {path}: nested deeper than {MAX_DEPTH} levels; a manifest is "
                         f"never that deep (edited or corrupted?)")
    return value


def _depth_ok(value: Any) -> bool:
    """Whether JSON nests at most ``MAX_DEPTH`` levels (checked without recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return True


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a model folder, whatever it describes; ``ModelError``
    naming the file if it is missing, a link, not JSON, too deep or not a JSON object."""
    data = _load_json(Path(path))
    if not isinstance(data, dict):
        raise ModelError(f"file {Path(path) / MANIFEST}: must hold a JSON object, got "
                         f"{type(data).__name__}")
    return data


def read_predictor_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a ``Predictor`` folder, checked against what this metastop computes
    (format, feature version and names, entries and their types, table layouts and numbers,
    the manifest's own checksum); ``ModelError`` naming the field and the rule if not."""
    path = directory / MANIFEST
    manifest = _load_json(directory)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"file {path}: not a {FORMAT} manifest (format="
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("feature_version") != FEATURE_VERSION or manifest.get("feature_names") not in (
            list(FEATURE_NAMES), list(FEATURE_NAMES) + list(CONTEXT_NAMES)):
        raise ModelError(f"file {path}: incompatible feature version "
                         f"{_brief(manifest.get('feature_version'))}; this metastop computes "
                         f"feature version {FEATURE_VERSION!r} ({len(FEATURE_NAMES)} features): "
                         f"retrain")
    for key in ("quantiles", "calibration", "prior", "files", "params"):
        if key not in manifest:
            raise ModelError(f"file {path}: manifest lacks the {key!r} entry")
    _check_fields(manifest, path)
    _check_layout(manifest, path)
    _check_tables(manifest, path)
    check_manifest_sha256(manifest, path)
    return manifest


def _field_error(path: Path, field: str, rule: str, value: Any) -> ModelError:
    return ModelError(f"file {path}: field {field!r} {rule}, got {_brief(value)}")


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(value: Any) -> bool:
    """A finite JSON number (``true``/``false`` are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_fields(manifest: dict[str, Any], path: Path) -> None:
    """The type of every entry this metastop reads."""
    version = manifest.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or \
            not 1 <= version <= FORMAT_VERSION:
        raise _field_error(path, "format_version", f"must be an integer in [1, "
                           f"{FORMAT_VERSION}] (a newer metastop wrote it?)", version)
    quantiles = manifest["quantiles"]
    if not isinstance(quantiles, list) or not quantiles or \
            not all(_is_number(q) and 0 < q < 1 for q in quantiles) or \
            any(b <= a for a, b in zip(quantiles, quantiles[1:])):
        raise _field_error(path, "quantiles", "must be a list of increasing numbers in (0, 1)",
                           quantiles)
    for key in ("params", "calibration", "prior", "files", "training", "metrics", "versions"):
        if key in manifest and not isinstance(manifest[key], dict):
            raise _field_error(path, key, "must be a JSON object", manifest[key])
    for key, value in manifest["params"].items():
        scalar = value is None or isinstance(value, (str, bool)) or _is_number(value)
        numbers = isinstance(value, list) and all(_is_number(v) for v in value)
        if not scalar and not numbers:
            raise _field_error(path, f"params.{key}", "must be a number, text, true/false, "
                               "null or a list of numbers", value)
    _check_files(manifest["files"], quantiles, path)


def _check_files(files: dict[str, Any], quantiles: list, path: Path) -> None:
    """``files``: name -> {quantile, sha256, bytes}, one file per quantile level."""
    seen: set[float] = set()
    for name, entry in files.items():
        check_file_name(name, path)
        where = f"files.{name}"
        if not isinstance(entry, dict):
            raise _field_error(path, where, "must be an object {quantile, sha256, bytes}", entry)
        if entry.get("quantile") not in quantiles or entry["quantile"] in seen:
            raise _field_error(path, f"{where}.quantile", f"must be one of the quantiles "
                               f"{quantiles}, each listed once", entry.get("quantile"))
        seen.add(entry["quantile"])
        if not isinstance(entry.get("sha256"), str) or not _HEX64.fullmatch(entry["sha256"]):
            raise _field_error(path, f"{where}.sha256", "must be 64 hex digits",
                               entry.get("sha256"))
        size = entry.get("bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _field_error(path, f"{where}.bytes", "must be an integer >= 0", size)


def _check_layout(manifest: dict[str, Any], path: Path) -> None:
    """The calibration and prior tables must have the shapes this metastop indexes."""
    n_pairs = len(manifest["quantiles"]) // 2
    prior_shape = (N_KINDS, len(PRIOR_EDGES) + 1, len(manifest["quantiles"]))
    cells = N_CELLS if _has_context(manifest) else N_BASE_CELLS
    expected = {"calibration": (list(BUCKET_EDGES), "factors", (cells, n_pairs, 2)),
                "prior": (list(PRIOR_EDGES), "gain_quantiles", prior_shape)}
    for key, (edges, table, shape) in expected.items():
        entry = manifest[key]
        got = _shape(entry.get(table)) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("bucket_edges") != edges or got != shape:
            raise ModelError(f"file {path}: incompatible {key} table (bucket edges "
                             f"{entry.get('bucket_edges') if isinstance(entry, dict) else None}, "
                             f"shape {got}); this metastop expects edges {edges} and shape "
                             f"{shape}: retrain")
    by_metric = manifest["prior"].get("by_metric", {})
    bad = ([] if not isinstance(by_metric, dict) else
           [name for name, table in by_metric.items() if _shape(table) != prior_shape])
    if not isinstance(by_metric, dict) or bad:
        raise ModelError(f"file {path}: prior.by_metric must map metric names to tables of shape "
                         f"{prior_shape}; wrong: {bad or type(by_metric).__name__}: retrain")


def _has_context(manifest: dict[str, Any]) -> bool:
    """Whether the model reads context features (task memory): its feature names say."""
    names = manifest.get("feature_names")
    return isinstance(names, list) and any(str(n).startswith("ctx_") for n in names)


def _shape(table: Any) -> tuple[int, ...] | None:
    """The shape of a nested list, or None where it is ragged."""
    try:
        return np.shape(table)
    except ValueError:
        return None


def _check_tables(manifest: dict[str, Any], path: Path) -> None:
    """Every entry of the calibration and prior tables is a finite number."""
    tables = {"calibration.factors": manifest["calibration"]["factors"],
              "prior.gain_quantiles": manifest["prior"]["gain_quantiles"]}
    by_metric = manifest["prior"].get("by_metric", {})
    tables.update({f"prior.by_metric.{name}": table for name, table in by_metric.items()})
    for field, table in tables.items():
        array = np.empty(np.shape(table), dtype=object)
        array[...] = table
        for index in np.ndindex(array.shape):
            if not _is_number(array[index]):
                cell = "".join(f"[{i}]" for i in index)
                raise _field_error(path, field + cell, "must be a finite number",
                                   array[index])




# --- model files -----------------------------------------------------------------------------
def model_files(manifest: dict[str, Any], directory: Path) -> list[tuple[str, dict]]:
    """``(file name, entry)`` of the model file of each quantile level, in level order."""
    by_quantile = {entry.get("quantile"): (name, entry)
                   for name, entry in manifest["files"].items()}
    missing = [q for q in manifest["quantiles"] if q not in by_quantile]
    if missing:
        raise ModelError(f"file {directory / MANIFEST}: lists no model file for quantiles "
                         f"{missing}")
    return [by_quantile[q] for q in manifest["quantiles"]]


def read_booster(directory: Path, name: str, entry: dict, manifest: dict) -> Any:
    """The LightGBM booster in ``directory / name``, its SHA-256 checked against ``entry`` and
    its text against LightGBM's format (``check_booster_text``) before LightGBM reads it."""
    import lightgbm as lgb

    path = directory / name
    data = verified_bytes(path, entry.get("sha256"), entry.get("bytes"))
    check_booster_text(data, path, n_features=len(manifest["feature_names"]))
    try:
        booster = lgb.Booster(model_str=data.decode("ascii"))
    except (lgb.basic.LightGBMError, ValueError) as error:
        raise ModelError(f"file {path}: not a readable LightGBM text model: {error}") from None
    if booster.num_feature() != len(manifest["feature_names"]):
        raise ModelError(f"file {path}: model expects {booster.num_feature()} features, "
                         f"{MANIFEST} lists {len(manifest['feature_names'])}")
    return booster


def write_model_dir(directory: Path, manifest: dict[str, Any],
                    models: Iterable[tuple[float, bytes]]) -> None:
    """Write each ``(quantile, LightGBM text)`` as ``quantile_<q>.txt``, then ``manifest``
    with a ``files`` entry listing their levels, SHA-256 and sizes and its own checksum
    (``manifest_sha256``); each file atomically."""
    files = {}
    for q, text in models:
        name = f"quantile_{q:g}.txt"
        with atomic_path(directory / name) as tmp:
            tmp.write_bytes(text)
        files[name] = {"quantile": q, "sha256": sha256_bytes(text), "bytes": len(text)}
    full = {k: v for k, v in manifest.items() if k != MANIFEST_SHA256} | {"files": files}
    full[MANIFEST_SHA256] = manifest_digest(full)
    with atomic_path(directory / MANIFEST) as tmp:
        tmp.write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")


# --- the champion pointer --------------------------------------------------------------------
def check_pointer(root: Path) -> None:
    """``ModelError`` naming ``root/current`` and what to do unless it is absent or a pointer
    ``champion.read_pointer`` accepts (a plain UTF-8 file, not a link or folder, naming a
    version); kept for the registry, which checks before it reads."""
    read_pointer(root)


def champion_folder(root: str | os.PathLike | None = None) -> Path:
    """The champion's folder (``champion.champion_dir``, which checks the pointer and
    refuses a linked champion): ``ModelError``, never another exception, for any pointer."""
    return champion_dir(Path(root) if root is not None else default_root())
