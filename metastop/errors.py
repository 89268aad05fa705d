"""One exception hierarchy for everything metastop raises on purpose.

Every error that reaches a user says where (file, curve, row, parameter) and which rule
was broken, so it can be fixed without reading metastop's code.
"""

from __future__ import annotations


class MetastopError(Exception):
    """Base class of every error metastop raises deliberately."""


class CurveError(MetastopError, ValueError):
    """A curve or curve table breaks the schema.

    Args:
        rule: the rule that was broken, in words.
        source: the file (or other origin) the data came from, if known.
        curve: the ``curve_id`` concerned, if known.
        row: the 0-based row of the input table, if known.
    """

    def __init__(self, rule: str, *, source: str | None = None, curve: str | None = None,
                 row: int | None = None):
        self.rule = rule
        self.source = source
        self.curve = curve
        self.row = row
        where = []
        if source is not None:
            where.append(f"file {source}")
        if curve is not None:
            where.append(f"curve {curve!r}")
        if row is not None:
            where.append(f"row {row}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {rule}" if prefix else rule)


class ReadError(MetastopError):
    """A file could not be read at all (missing, unreadable, truncated, unknown format)."""


class ParameterError(MetastopError, ValueError):
    """A parameter given by the user is out of its allowed range."""


class ModelError(MetastopError):
    """A saved model is missing, tampered with, truncated or incompatible."""


class NotFittedError(MetastopError):
    """A model was used before ``fit`` was called."""
