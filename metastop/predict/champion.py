"""Which model folder serves: the registry's champion pointer, read (never written) here.

The registry (``metastop.ops.registry``) writes the pointer file ``current`` atomically under
its lock; this module only reads it, so that ``Predictor.load()`` can serve the champion
without the prediction stage importing the operations stage.

An installed wheel has no registry (no ``models/`` folder): the default model is packaged
with metastop (``metastop/_model``, a link to ``models/default`` in a checkout) and serves
when the default registry holds no champion.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..curves.paths import MODELS_DIR
from ..errors import ModelError

DEFAULT_VERSION = "default"
POINTER = "current"
MANIFEST = "manifest.json"
ENV_ROOT = "METASTOP_MODELS"
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
"""A version name: a folder name inside the registry (``\\Z``: no trailing newline either)."""
PACKAGED_MODEL = (Path(__file__).resolve().parent.parent / "_model").resolve()
"""The default model shipped inside the package (the wheel's copy of ``models/default``)."""
MAX_POINTER_BYTES = 1 << 20
"""A champion pointer is a name, up to 50 earlier ones and a reason; larger is refused."""


def default_root() -> Path:
    """The registry root: ``$METASTOP_MODELS`` if set, else the project's ``models/`` folder."""
    env = os.environ.get(ENV_ROOT)
    return Path(env) if env else MODELS_DIR


def read_pointer(root: Path) -> dict[str, Any]:
    """The champion pointer under ``root``: ``{"champion": name, "previous": [...], ...}``.

    Without a pointer file the champion is ``default``. A plain-text pointer (one name) is
    accepted for older registries. The pointer is trusted in nothing: it must be a plain
    file (never read through a symbolic link), at most ``MAX_POINTER_BYTES``, UTF-8, and
    name a version (``VERSION_NAME``: a name inside the registry, never a path); names in
    ``previous`` that are not version names are dropped.

    Raises:
        ModelError: naming the pointer file, the rule it breaks and what to do; never
            another exception, whatever the pointer holds.
    """
    path = Path(root) / POINTER
    if not os.path.lexists(path):
        return {"champion": DEFAULT_VERSION, "previous": []}
    text = _pointer_text(path).strip()
    data: Any = {"champion": text, "previous": []}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise _pointer_error(path, f"the champion pointer is not valid JSON "
                                       f"({str(error)[:80]})") from None
    name = data.get("champion") if isinstance(data, dict) else None
    if not isinstance(name, str) or not VERSION_NAME.fullmatch(name):
        raise _pointer_error(path, f"the champion pointer names no valid version (got "
                                   f"{_brief(name)}); a version name is a folder name inside "
                                   f"the registry")
    previous = data.get("previous", [])
    if not isinstance(previous, list):
        raise _pointer_error(path, f"the champion pointer's 'previous' must be a list of "
                                   f"version names, got {_brief(previous)}")
    kept = [p for p in previous if isinstance(p, str) and VERSION_NAME.fullmatch(p)]
    return {**data, "champion": name, "previous": kept}


def _pointer_text(path: Path) -> str:
    """The pointer file's text: a plain file (not followed if a link), small, UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise _pointer_error(path, "is a symbolic link; it must be a plain file (the champion "
                             "pointer)" if error.errno == errno.ELOOP else
                             f"cannot be read ({error.strerror}) (the champion pointer)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _pointer_error(path, "is not a plain file (the champion pointer)")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_POINTER_BYTES + 1)
    if len(data) > MAX_POINTER_BYTES:
        raise _pointer_error(path, f"holds more than {MAX_POINTER_BYTES} bytes (the champion "
                                   f"pointer)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _pointer_error(path, "the champion pointer is not UTF-8 text") from None


def _pointer_error(path: Path, problem: str) -> ModelError:
    return ModelError(f"file {path}: {problem}; remove {path} (the champion is then "
                      f"{DEFAULT_VERSION!r}) and promote a version again")


def _brief(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def champion_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of the current champion under ``root`` (default: ``default_root()``).

    When the registry is the project's ``models/`` folder (no ``$METASTOP_MODELS``) and it
    holds neither a pointer nor the champion's folder (an installed wheel has no such
    folder), the model packaged with metastop serves (``PACKAGED_MODEL``).

    Raises:
        ModelError: the pointer cannot be read (``read_pointer``), the champion is a
            symbolic link, or it has no manifest (naming the pointer and what to do).
    """
    root = Path(root) if root is not None else default_root()
    fallback_allowed = not os.environ.get(ENV_ROOT) and root.absolute() == MODELS_DIR.absolute()
    name = read_pointer(root)["champion"]
    path = root / name
    if path.is_symlink():
        raise ModelError(f"file {path}: the champion is a symbolic link; the registry only "
                         f"serves folders it copied in: promote a version it holds")
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
