"""Thin adapters that turn a metastop ``Decision`` into each framework's stop signal, and drive
the levers of ``metastop.adapt`` from inside each training stack.

Nothing here imports a training framework until you use its adapter:

- ``metastop.integrations.hf.MetaStopCallback``: transformers ``Trainer`` callback.
- ``metastop.integrations.lightning.MetaStopCallback``: Lightning callback.
- ``metastop.integrations.optuna.MetaStopPruner``: Optuna pruner.
- ``metastop.integrations.ray.MetaStopStopper``: Ray Tune stopper.
- ``metastop.integrations.batchsize.hf_callback`` / ``lightning_callback``: let a
  ``metastop.adapt.BatchSizeController`` set the gradient accumulation while a run trains.
- ``metastop.integrations.freeze.hf_callback`` / ``lightning_callback``: let a
  ``metastop.adapt.Freezer`` (or ``FreezeOutSchedule``) freeze blocks while a run trains.

Example:
    >>> from metastop.integrations import MetaStopPruner  # doctest: +SKIP
"""

from __future__ import annotations

from metastop._lazy import lazy_exports

_EXPORTS = {"MetaStopPruner": "optuna", "MetaStopStopper": "ray"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(
    __name__, _EXPORTS, globals(),
    hint="; the two callbacks live in metastop.integrations.hf and .lightning")
