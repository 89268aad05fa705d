"""Shared test helpers: the shipped default model, and children paused at a named phase."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from metastop.stop.policies import CostAware
from metastop.predict.model import Predictor
from metastop.stop.prices import Price


@pytest.fixture(scope="session")
def shipped_predictor() -> Predictor:
    """The shipped default model (``models/default``); a missing or broken model fails."""
    return Predictor.load()


def cost_aware(predictor: Predictor, tokens_per_point: float) -> CostAware:
    """CostAware with one point worth ``tokens_per_point`` tokens."""
    return CostAware(predictor, price=Price.tokens(tokens_per_point))


PAUSE = Path(__file__).resolve().parent / "_pause.py"


def start_paused(code: str, phase: str, args: list[str], marker: Path,
                 timeout: float = 180.0) -> subprocess.Popen:
    """Run ``code`` in a child Python that pauses at ``phase`` (a moment ``tests/_pause.py``
    injects by wrapping a library function); return once it is there, so a test can kill it
    at exactly that moment."""
    child = subprocess.Popen([sys.executable, str(PAUSE), phase, str(marker), "--", "-c", code,
                              *args], cwd=PAUSE.parent.parent, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"child ended before {phase}: "
                                 f"{child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"child never reached {phase}")
        time.sleep(0.05)
    return child
