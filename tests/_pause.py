"""Test-side bootstrap: run Python with a pause injected at a named moment, to SIGKILL it there.

    python tests/_pause.py PHASE MARKER -- -c CODE [ARG ...]
    python tests/_pause.py PHASE MARKER -- -m MODULE [ARG ...]

Before running the code (as ``python -c`` / ``python -m`` would, with the working directory
first on ``sys.path``), this wraps one library function from the outside, so that at PHASE
the process writes PHASE to the file MARKER and sleeps for an hour: the test sees the marker
and kills the process at exactly that moment. Production code holds no hook for this.

Phases (the moments the SIGKILL tests kill at):

- ``registry.add.copied``: ``Registry.add`` has copied and synced the staged folder
  (``registry._copy_in``), not yet verified it or renamed it into place.
- ``registry.pointer.written``: the new champion pointer is written and synced to its hidden
  temporary file (``Registry._stage_pointer``), not yet swapped in by ``os.replace``.
- ``retrain.train``: ``retrain`` is about to train its first booster (``train_booster``, or
  the trainer ``dask_trainer`` makes), holding the registry lock.
- ``retrain.promote``: ``retrain`` has added the challenger to the registry and is about to
  promote it (``Registry.promote``, which ``retrain`` calls right after ``Registry.add``).
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Callable

SLEEP_S = 3600.0


def _before(function: Callable, pause: Callable[[], None]) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        pause()
        return function(*args, **kwargs)

    return wrapper


def _after(function: Callable, pause: Callable[[], None]) -> Callable:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        pause()
        return result

    return wrapper


def _wrap(owner: Any, name: str, how: Callable, pause: Callable[[], None]) -> None:
    setattr(owner, name, how(getattr(owner, name), pause))


def _pause_retrain_training(pause: Callable[[], None]) -> None:
    retrain = importlib.import_module("metastop.ops.retrain")
    _wrap(retrain, "train_booster", _before, pause)
    make_dask_trainer = retrain.dask_trainer
    retrain.dask_trainer = lambda client: _before(make_dask_trainer(client), pause)


def install(phase: str, marker: Path) -> None:
    """Wrap the function that marks ``phase``; ``SystemExit`` naming the phases if unknown."""
    registry = importlib.import_module("metastop.ops.registry")

    def pause() -> None:
        marker.write_text(phase)
        time.sleep(SLEEP_S)

    phases = {
        "registry.add.copied": lambda: _wrap(registry, "_copy_in", _after, pause),
        "registry.pointer.written": lambda: _wrap(registry.Registry, "_stage_pointer", _after,
                                                  pause),
        "retrain.train": lambda: _pause_retrain_training(pause),
        "retrain.promote": lambda: _wrap(registry.Registry, "promote", _before, pause),
    }
    if phase not in phases:
        raise SystemExit(f"tests/_pause.py: unknown phase {phase!r}; phases: {sorted(phases)}")
    phases[phase]()


def run(command: list[str]) -> None:
    """Run ``-c CODE ARGS...`` or ``-m MODULE ARGS...`` as the Python command line would."""
    if len(command) < 2 or command[0] not in ("-c", "-m"):
        raise SystemExit("usage: python tests/_pause.py PHASE MARKER -- (-c CODE | -m MODULE) "
                         f"[ARG ...]; got {command!r}")
    if command[0] == "-c":
        sys.argv = ["-c", *command[2:]]
        exec(compile(command[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[2] != "--":
        raise SystemExit("usage: python tests/_pause.py PHASE MARKER -- (-c CODE | -m MODULE) "
                         "[ARG ...]")
    sys.path[0] = os.getcwd()  # as ``python -c``/``-m`` do, not this file's folder
    install(argv[0], Path(argv[1]))
    run(argv[3:])


if __name__ == "__main__":
    main(sys.argv[1:])
