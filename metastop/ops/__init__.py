"""The operations stage: what runs around many training runs, over time.

The model registry (versions, champion, atomic promotion), batch retraining that folds
finished runs back in (by the one training recipe), the governor that tunes prices from shadow
runs, and the fleet report over decision logs.

Example:
    >>> from metastop.ops import Registry  # doctest: +SKIP
    >>> Registry().champion_name()  # doctest: +SKIP
    'default'
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"Registry": "registry", "retrain": "retrain", "Governor": "governor",
            "fleet_report": "report"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
