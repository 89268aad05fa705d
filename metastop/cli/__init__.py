"""The ``metastop`` command: thin click wrappers that parse options, call the library and
print a table (or JSON with ``--json``). Library errors become one-line messages, exit 1.
"""

from __future__ import annotations

from .main import main

__all__ = ["main"]
