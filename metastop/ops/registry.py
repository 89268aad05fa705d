"""Model versions under ``models/``: champion, challengers, atomic promotion and rollback.

Layout of a registry root::

    models/
      default/            the shipped model (LightGBM text files + manifest.json)
      20250101-120000-3fa2c1d0/   a retrained version, same layout
      current             JSON pointer: {"champion": name, "previous": [older champions]}
      history.jsonl       audit log, one line per promotion or rollback
      .lock               fcntl lock file: one writer (retrain, promote, rollback) at a time

The registry only trusts what it made: ``.lock``, ``history.jsonl`` and ``current`` are
opened with ``O_NOFOLLOW`` (a symbolic link there is refused, never written through), a
version folder that is a symbolic link is refused by ``promote`` and flagged by
``versions``, and any content of ``current`` (a folder, binary bytes) gives a ``ModelError``
naming it and what to do. Leftovers of killed writers (``.add-*`` folders, ``.current.*.tmp``
files) are removed by ``clean`` and at the start of every write.

Without a ``current`` file the champion is ``default``. The pointer holds the stack of
earlier champions itself, so promotion and rollback are each one ``os.replace`` of one small
file: a process killed at any moment leaves either the old or the new champion, never a mix.
A version is copied in through a hidden temporary folder and renamed into place only after
it loads and its SHA-256 checksums match, so half-copied versions are never visible.

Example:
    >>> reg = Registry("models")                      # doctest: +SKIP
    >>> name = reg.add("build/challenger")            # doctest: +SKIP
    >>> reg.promote(name, reason="MAE -3.1%")         # doctest: +SKIP
    >>> Predictor.load(reg.champion())                # doctest: +SKIP
    >>> reg.rollback()                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import MetastopError, ModelError, ParameterError
from ..predict.champion import (MANIFEST, POINTER, VERSION_NAME,
                                default_root, read_pointer)
# The model-folder rules live in predict.manifest; they are part of this module's API too.
from ..predict.manifest import (champion_folder, check_pointer,  # noqa: F401
                                manifest_checksums, read_manifest, read_plain, sha256_file,
                                verify_checksums)

log = logging.getLogger(__name__)

HISTORY = "history.jsonl"
LOCK = ".lock"
_NAME = VERSION_NAME
_RESERVED = {POINTER, HISTORY, LOCK}


class RegistryLockError(MetastopError):
    """Another process holds the registry lock (a retrain, promotion or rollback runs)."""


@dataclass(frozen=True)
class Version:
    """One model version in the registry, as listed by ``Registry.versions()``.

    Attributes:
        name: the folder name.
        path: the folder.
        champion: whether the pointer names it.
        created: the manifest's creation time, else the folder's modification time (ISO 8601).
        metrics: the ``metrics`` mapping of its manifest (empty if none).
        problem: why the version cannot be used (bad or missing manifest), else ``None``.
    """

    name: str
    path: Path
    champion: bool
    created: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "champion": self.champion,
                "created": self.created, "metrics": self.metrics, "problem": self.problem}


class Registry:
    """Model versions in folders under ``root``, with a champion pointer and a lock.

    Args:
        root: the registry folder (default: ``default_root()``).
        lock_timeout: seconds to wait for the lock before ``RegistryLockError``.
        verify: a function ``verify(path)`` raising ``ModelError`` if the model folder at
            ``path`` cannot be used; default: ``verify_model_dir`` (manifest SHA-256 check,
            then ``Predictor.load``).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, lock_timeout: float = 60.0,
                 verify: Callable[[Path], Any] | None = None):
        if lock_timeout < 0:
            raise ParameterError(f"lock_timeout cannot be negative, but got {lock_timeout=}")
        self.root = Path(root) if root is not None else default_root()
        self.lock_timeout = float(lock_timeout)
        self._verify = verify or verify_model_dir
        self._lock_depth = 0
        self._lock_file: Any = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- reading ------------------------------------------------------------------------
    def champion_name(self) -> str:
        """The name of the current champion (``default`` when there is no pointer file)."""
        return self._read_pointer()["champion"]

    def champion(self) -> Path:
        """The folder of the current champion; ``ModelError`` if it is missing or the
        pointer is unreadable."""
        return champion_folder(self.root)

    def pointer_problem(self) -> str | None:
        """Why the champion pointer cannot be read (to show beside ``versions``), else None."""
        try:
            self._read_pointer()
        except ModelError as error:
            return str(error)
        return None

    def path(self, name: str) -> Path:
        """The folder of version ``name``; ``ModelError`` if there is none or it is a
        symbolic link (the registry did not make it)."""
        _check_name(name)
        path = self.root / name
        if path.is_symlink():
            raise ModelError(f"file {path}: version {name!r} is a symbolic link; the registry "
                             f"only serves folders it copied in: add the target with "
                             f"Registry.add (`metastop retrain` does) and remove the link")
        if not path.is_dir():
            raise ModelError(f"no model version {name!r} under {self.root} "
                             f"(versions: {self.names()})")
        return path

    def names(self) -> list[str]:
        """Names of the version folders (hidden temporary folders excluded), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.name not in _RESERVED)

    def versions(self) -> list[Version]:
        """Every version with its manifest metrics; the champion is flagged (none is when the
        pointer cannot be read: see ``pointer_problem``)."""
        try:
            champion: str | None = self.champion_name()
        except ModelError as error:
            log.warning("no champion flagged: %s", error)
            champion = None
        return [self._describe(name, champion) for name in self.names()]

    def history(self) -> list[dict[str, Any]]:
        """The audit log of promotions and rollbacks, oldest first (unreadable lines skipped);
        ``ModelError`` if ``history.jsonl`` is a symbolic link or not a file."""
        path = self.root / HISTORY
        if not os.path.lexists(path):
            return []
        events = []
        text = read_plain(path, "the registry's history").decode(errors="replace")
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def verify(self, name: str) -> Path:
        """Check version ``name`` (checksums, loads); return its folder or raise ``ModelError``."""
        path = self.path(name)
        self._verify(path)
        return path

    # --- writing (under the lock) ---------------------------------------------------------
    def add(self, source: str | os.PathLike, *, name: str | None = None) -> str:
        """Copy a saved model folder in as a new version and return its name.

        The copy goes to a hidden temporary folder under ``root``, is verified (checksums,
        loads), then renamed into place, so a version either exists whole or not at all.

        Args:
            source: a folder written by ``Predictor.save``.
            name: the version name; default ``<UTC time>-<first 8 hex of the manifest SHA-256>``.
        """
        source = Path(source)
        _refuse_links(source)
        self._verify(source)
        name = _version_name(source) if name is None else name
        _check_name(name)
        with self.lock():
            self._remove_leftovers()
            target = self.root / name
            if os.path.lexists(target):
                raise ParameterError(f"name {name!r} is taken: {target} exists")
            tmp = Path(tempfile.mkdtemp(prefix=f".add-{name}-", dir=self.root))
            try:
                staged = tmp / name
                _copy_in(source, staged)
                self._verify(staged)
                os.rename(staged, target)
                _fsync_dir(self.root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("added model version %s from %s", name, source)
        return name

    def promote(self, name: str, *, reason: str = "") -> None:
        """Make version ``name`` the champion (verified first); the old one can be rolled
        back to."""
        with self.lock():
            self._remove_leftovers()
            self.verify(name)
            pointer = self._read_pointer()
            if pointer["champion"] == name:
                log.info("model version %s is already the champion", name)
                return
            previous = [*pointer["previous"], pointer["champion"]]
            self._check_history()
            self._write_pointer(name, previous, reason)
            self._append_history("promote", name, pointer["champion"], reason)
        log.info("promoted model version %s (was %s): %s", name, pointer["champion"], reason)

    def rollback(self, *, reason: str = "") -> str:
        """Go back to the previous champion; return its name. ``ModelError`` if there is none."""
        with self.lock():
            self._remove_leftovers()
            pointer = self._read_pointer()
            previous = list(pointer["previous"])
            while previous:
                candidate = previous.pop()
                try:
                    self.verify(candidate)
                except ModelError as error:
                    log.warning("rollback skips version %s: %s", candidate, error)
                    continue
                self._check_history()
                self._write_pointer(candidate, previous, reason or "rollback")
                self._append_history("rollback", candidate, pointer["champion"], reason)
                log.info("rolled back from %s to %s", pointer["champion"], candidate)
                return candidate
        raise ModelError(f"file {self.root / POINTER}: no earlier usable champion to roll back "
                         f"to from {pointer['champion']!r}")

    def clean(self) -> list[str]:
        """Remove temporary folders and pointer files left by killed processes (``.add-*``,
        ``.current.*.tmp``); return their names. Every write does this first, under the lock.

        Example:
            >>> Registry("models").clean()  # doctest: +SKIP
            ['.add-v2-1a2b3c', '.current.x1y2.tmp']
        """
        with self.lock():
            return self._remove_leftovers()

    @contextlib.contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the registry's exclusive lock (``root/.lock``, ``fcntl.flock``).

        Re-entrant within one ``Registry`` object, so a retrain can hold it throughout and
        still call ``add`` and ``promote``. Raises ``RegistryLockError`` after ``timeout``
        seconds (default: ``lock_timeout``), naming the holder recorded in the lock file.

        Hand-written rather than ``filelock``: the lock file must be opened with ``O_NOFOLLOW``
        (a symlinked ``.lock`` planted in the registry would otherwise be truncated through the
        link) and must record its holder, and ``filelock.FileLock`` opens the path itself,
        following links. ``flock`` is POSIX, as are the training hosts metastop runs on.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self._acquire(self.lock_timeout if timeout is None else timeout)
        self._lock_depth = 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._release()

    # --- internals -----------------------------------------------------------------------
    def _acquire(self, timeout: float) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        handle = os.fdopen(_open_own(path, os.O_RDWR, "the registry's lock file"), "r+")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(handle)
                    handle.close()
                    raise RegistryLockError(
                        f"file {path}: the model registry is locked by another process "
                        f"({holder}); waited {timeout:g} s. Wait for it to finish, or raise "
                        f"lock_timeout") from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": _now()}))
        handle.flush()
        self._lock_file = handle

    def _release(self) -> None:
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def _read_pointer(self) -> dict[str, Any]:
        check_pointer(self.root)
        return read_pointer(self.root)

    def _remove_leftovers(self) -> list[str]:
        """Remove ``.add-*`` and ``.current.*.tmp`` entries (links themselves, never their
        targets); call under the lock."""
        if not self.root.is_dir():
            return []
        stale = sorted(p for p in self.root.iterdir() if _is_leftover(p.name))
        for path in stale:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if stale:
            log.info("removed leftovers of killed writers: %s", [p.name for p in stale])
        return [p.name for p in stale]

    def _write_pointer(self, name: str, previous: list[str], reason: str) -> None:
        """Stage the new pointer in a hidden file, then swap it in with one ``os.replace``."""
        data = {"champion": name, "previous": previous[-50:], "since": _now(), "reason": reason}
        tmp = self._stage_pointer(data)
        try:
            os.replace(tmp, self.root / POINTER)
            _fsync_dir(self.root)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _stage_pointer(self, data: dict[str, Any]) -> str:
        """Write ``data`` to a hidden ``.current.*.tmp`` file, synced to disk; return its path
        (``clean`` removes such files left by a killed process)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{POINTER}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(data, indent=1) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    def _append_history(self, action: str, name: str, before: str, reason: str) -> None:
        event = {"time": _now(), "action": action, "champion": name, "before": before,
                 "reason": reason, "pid": os.getpid()}
        fd = _open_own(self.root / HISTORY, os.O_WRONLY | os.O_APPEND, "the registry's history")
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(event) + "\n")

    def _check_history(self) -> None:
        """Refuse before the pointer moves if the history cannot be appended to safely."""
        os.close(_open_own(self.root / HISTORY, os.O_WRONLY | os.O_APPEND,
                           "the registry's history"))

    def _describe(self, name: str, champion: str | None) -> Version:
        path = self.root / name
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))
        if path.is_symlink():
            return Version(name, path, name == champion, created, {},
                           f"{path} is a symbolic link to {os.readlink(path)}; the registry "
                           f"refuses versions it did not copy in")
        try:
            manifest = read_manifest(path)
        except ModelError as error:
            return Version(name, path, name == champion, created, {}, str(error))
        metrics = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
        created = str(manifest.get("created") or manifest.get("created_at") or created)
        return Version(name, path, name == champion, created, dict(metrics))


# --- model folder checks (the rules live in ``metastop.predict.manifest``) -----------------
def verify_model_dir(path: str | os.PathLike) -> None:
    """Raise ``ModelError`` unless the model folder's checksums match and it loads."""
    from ..predict.model import Predictor

    verify_checksums(path)
    Predictor.load(Path(path))


def folder_digest(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file in a folder, by relative name (to compare versions byte for byte)."""
    path = Path(path)
    return {str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*"))
            if p.is_file()}


# --- helpers -----------------------------------------------------------------------------
def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
        raise ParameterError(f"name must be letters, digits, '_', '.', '-' (not starting with "
                             f"'.' and not one of {sorted(_RESERVED)}), got name={name!r}")


def _version_name(source: Path) -> str:
    digest = sha256_file(source / MANIFEST)[:8]
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{digest}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_holder(handle: Any) -> str:
    try:
        handle.seek(0)
        data = json.loads(handle.read(4096) or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    if not isinstance(data, dict):
        return "holder unknown"
    return f"pid {data.get('pid', '?')} since {data.get('since', '?')}"


def _open_own(path: Path, flags: int, what: str) -> int:
    """Open (creating) one of the registry's own files, never through a symbolic link;
    ``ModelError`` naming it if it is a link or not a plain file."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o644)
    except OSError as error:
        problem = ("is a symbolic link; the registry never writes through one"
                   if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})")
        raise ModelError(f"file {path}: {problem} ({what}); remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelError(f"file {path}: is not a plain file ({what}); remove it")
    return fd


def _is_leftover(name: str) -> bool:
    return name.startswith(".add-") or (name.startswith(f".{POINTER}.") and name.endswith(".tmp"))


def _refuse_links(source: Path) -> None:
    """A model folder to copy in holds plain files and folders only."""
    links = [p for p in source.rglob("*") if p.is_symlink()] if source.is_dir() else []
    if links:
        raise ModelError(f"file {links[0]}: is a symbolic link; a model folder added to the "
                         f"registry must hold plain files only")


def _copy_in(source: Path, staged: Path) -> None:
    """Copy a model folder to its staging place and sync every file to disk."""
    shutil.copytree(source, staged)
    _fsync_tree(staged)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
