"""Model folders on disk: the manifest, the SHA-256 of every model file, reading boosters.

A model folder holds one LightGBM text file per quantile level and ``manifest.json``
(features, feature version, quantiles, calibration, prior, training data, metrics, library
versions and the SHA-256 and size of every model file). This module is the one home of the
rules for those folders: ``Predictor.save`` and ``Predictor.load`` use it, and so does the
model registry (``metastop.ops.registry``) when it copies, verifies and lists versions.
Nothing is pickled.

Example:
    >>> manifest = verify_checksums("models/default")  # doctest: +SKIP
    >>> sorted(manifest["files"])  # doctest: +SKIP
    ['quantile_0.1.txt', 'quantile_0.5.txt', 'quantile_0.9.txt']
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..curves import atomic_path
from ..curves.paths import MODELS_DIR
from ..errors import ModelError
from .champion import MANIFEST
from .context import CONTEXT_NAMES
from .features import FEATURE_NAMES, FEATURE_VERSION
from .kinds import BUCKET_EDGES, N_BASE_CELLS, N_CELLS, N_KINDS, PRIOR_EDGES

FORMAT = "metastop-predictor"
FORMAT_VERSION = 1
DEFAULT_DIR = MODELS_DIR / "default"
"""The shipped default model (``models/default`` in the repository)."""


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


def verified_bytes(path: Path, sha256: Any, size: Any = None) -> bytes:
    """The bytes of a file listed in a manifest; ``ModelError`` if missing or its SHA-256
    differs (called truncated when shorter than the listed ``size``)."""
    if not path.is_file():
        raise ModelError(f"file {path}: missing (listed in {MANIFEST})")
    data = path.read_bytes()
    if sha256_bytes(data) != sha256:
        what = "truncated" if len(data) < (size or 0) else "tampered with or replaced"
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
    """Check every file listed in the manifest against its SHA-256; return the manifest.

    Raises:
        ModelError: naming the first missing or mismatching file, or a manifest that lists
            no checksums.
    """
    path = Path(path)
    manifest = read_manifest(path)
    checksums = manifest_checksums(manifest)
    if not checksums:
        raise ModelError(f"file {path / MANIFEST}: lists no SHA-256 checksums of model files")
    sizes = _listed_sizes(manifest)
    for name, expected in sorted(checksums.items()):
        verified_bytes(path / name, expected, sizes.get(name))
    return manifest


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
    if not path.is_file():
        hint = " (run scripts/train_default.py to build it)" if directory == DEFAULT_DIR else ""
        raise ModelError(f"file {path}: missing; a model directory needs {MANIFEST}{hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"file {path}: not a valid JSON manifest (truncated or edited?): "
                         f"{error}") from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a model folder, whatever it describes; ``ModelError``
    naming the file if it is missing, not JSON or not a JSON object."""
    data = _load_json(Path(path))
    if not isinstance(data, dict):
        raise ModelError(f"file {Path(path) / MANIFEST}: must hold a JSON object, got "
                         f"{type(data).__name__}")
    return data


def read_predictor_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a ``Predictor`` folder, checked against what this metastop computes
    (format, feature version and names, entries, table layouts); ``ModelError`` if not."""
    path = directory / MANIFEST
    manifest = _load_json(directory)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"file {path}: not a {FORMAT} manifest (format="
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("feature_version") != FEATURE_VERSION or manifest.get("feature_names") not in (
            list(FEATURE_NAMES), list(FEATURE_NAMES) + list(CONTEXT_NAMES)):
        raise ModelError(f"file {path}: incompatible feature version "
                         f"{manifest.get('feature_version')!r}; this metastop computes feature "
                         f"version {FEATURE_VERSION!r} ({len(FEATURE_NAMES)} features): retrain")
    for key in ("quantiles", "calibration", "prior", "files", "params"):
        if key not in manifest:
            raise ModelError(f"file {path}: manifest lacks the {key!r} entry")
    _check_layout(manifest, path)
    return manifest


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
    """The LightGBM booster in ``directory / name``, its SHA-256 checked against ``entry``."""
    import lightgbm as lgb

    path = directory / name
    data = verified_bytes(path, entry.get("sha256"), entry.get("bytes"))
    try:
        booster = lgb.Booster(model_str=data.decode("utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError) as error:
        raise ModelError(f"file {path}: not a readable LightGBM text model: {error}") from None
    if booster.num_feature() != len(manifest["feature_names"]):
        raise ModelError(f"file {path}: model expects {booster.num_feature()} features, "
                         f"{MANIFEST} lists {len(manifest['feature_names'])}")
    return booster


def write_model_dir(directory: Path, manifest: dict[str, Any],
                    models: Iterable[tuple[float, bytes]]) -> None:
    """Write each ``(quantile, LightGBM text)`` as ``quantile_<q>.txt``, then ``manifest``
    with a ``files`` entry listing their levels, SHA-256 and sizes; each file atomically."""
    files = {}
    for q, text in models:
        name = f"quantile_{q:g}.txt"
        with atomic_path(directory / name) as tmp:
            tmp.write_bytes(text)
        files[name] = {"quantile": q, "sha256": sha256_bytes(text), "bytes": len(text)}
    with atomic_path(directory / MANIFEST) as tmp:
        tmp.write_text(json.dumps({**manifest, "files": files}, indent=2, sort_keys=False) + "\n")
