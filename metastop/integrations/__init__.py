"""Thin adapters that turn a metastop ``Decision`` into each framework's stop signal.

Nothing here imports a training framework until you use its adapter:

- ``metastop.integrations.hf.MetaStopCallback``: transformers ``Trainer`` callback.
- ``metastop.integrations.lightning.MetaStopCallback``: Lightning callback.
- ``metastop.integrations.optuna.MetaStopPruner``: Optuna pruner.
- ``metastop.integrations.ray.MetaStopStopper``: Ray Tune stopper.

Example:
    >>> from metastop.integrations import MetaStopPruner  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"MetaStopPruner": "optuna", "MetaStopStopper": "ray"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metastop.integrations' has no attribute {name!r}; "
                             f"the two callbacks live in metastop.integrations.hf and .lightning")
    return getattr(importlib.import_module(f".{module}", __name__), name)
