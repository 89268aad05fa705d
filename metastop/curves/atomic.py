"""Atomic file writes: a temporary file in the target's folder, renamed onto it on success."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class atomic_path:
    """Context manager yielding a temporary path that is renamed onto ``path`` on success.

    Nothing is left at ``path`` (or half-written) if the body raises.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.chmod(self.tmp, _target_mode(self.path))  # mkstemp creates files as 0600
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _target_mode(path: Path) -> int:
    """The mode the file keeps if it exists, else what ``open()`` would give it (0666 & ~umask)."""
    if path.exists():
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
