"""The ``metastop`` command: thin click wrappers that parse options, call the library and
print a table (or JSON with ``--json``). Library errors become one-line messages, exit 1.

``main`` (the group and the helpers every command shares) is in ``main``; each command
family has a module of its own, registered on ``main`` when this package is imported.
"""

from __future__ import annotations

from . import analysis, backtest, ingest, models, ops  # noqa: F401 (registers the commands)
from .history import history
from .main import main

main.add_command(history)

__all__ = ["main"]
