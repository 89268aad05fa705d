"""Which model folder serves: the registry's champion pointer, read (never written) here.

The registry (``metastop.ops.registry``) writes the pointer file ``current`` atomically under
its lock; this module only reads it, so that ``Predictor.load()`` can serve the champion
without the prediction stage importing the operations stage.

An installed wheel has no registry (no ``models/`` folder): the default model is packaged
with metastop (``metastop/_model``, a link to ``models/default`` in a checkout) and serves
when the default registry holds no champion.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..curves.paths import MODELS_DIR
from ..errors import ModelError

DEFAULT_VERSION = "default"
POINTER = "current"
MANIFEST = "manifest.json"
ENV_ROOT = "METASTOP_MODELS"
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
PACKAGED_MODEL = (Path(__file__).resolve().parent.parent / "_model").resolve()
"""The default model shipped inside the package (the wheel's copy of ``models/default``)."""


def default_root() -> Path:
    """The registry root: ``$METASTOP_MODELS`` if set, else the project's ``models/`` folder."""
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else MODELS_DIR


def read_pointer(root: Path) -> dict[str, Any]:
    """The champion pointer under ``root``: ``{"champion": name, "previous": [...], ...}``.

    Without a pointer file the champion is ``default``. A plain-text pointer (one name) is
    accepted for older registries.

    Raises:
        ModelError: the pointer is not valid JSON or names no valid version.
    """
    path = root / POINTER
    if not path.exists():
        return {"champion": DEFAULT_VERSION, "previous": []}
    text = path.read_text().strip()
    if not text.startswith("{"):
        data: dict[str, Any] = {"champion": text, "previous": []}
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelError(f"file {path}: the champion pointer is not valid JSON "
                             f"({error})") from None
    name = data.get("champion")
    if not isinstance(name, str) or not VERSION_NAME.match(name):
        raise ModelError(f"file {path}: the champion pointer names no valid version "
                         f"(got {name!r})")
    previous = [p for p in data.get("previous", []) if isinstance(p, str) and VERSION_NAME.match(p)]
    return {**data, "champion": name, "previous": previous}


def champion_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of the current champion under ``root`` (default: ``default_root()``).

    When the registry is the project's ``models/`` folder (no ``$METASTOP_MODELS``) and it
    holds neither a pointer nor the champion's folder (an installed wheel has no such
    folder), the model packaged with metastop serves (``PACKAGED_MODEL``).

    Raises:
        ModelError: the champion has no manifest (naming the pointer and what to do).
    """
    root = Path(root) if root is not None else default_root()
    fallback_allowed = not os.environ.get(ENV_ROOT) and root.absolute() == MODELS_DIR.absolute()
    name = read_pointer(root)["champion"]
    path = root / name
    if (path / MANIFEST).is_file():
        return path
    no_registry = not (root / POINTER).exists() and not path.exists()
    if fallback_allowed and no_registry and (PACKAGED_MODEL / MANIFEST).is_file():
        return PACKAGED_MODEL
    where = root / POINTER if (root / POINTER).exists() else "the default"
    todo = ("there is no model registry there and no model packaged with metastop: reinstall "
            "metastop (its wheel ships the default model), set $METASTOP_MODELS to a registry "
            "folder or pass a model folder to Predictor.load()") if no_registry else (
            "run `metastop models rollback` or promote another version")
    raise ModelError(f"file {path / MANIFEST}: champion {name!r} (named by {where}) "
                     f"has no manifest; {todo}")
