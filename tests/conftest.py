"""Shared fixtures: the shipped default model, loaded once per test session."""

from __future__ import annotations

import pytest

from metastop.policies import CostAware
from metastop.predictor import Predictor
from metastop.prices import Price


@pytest.fixture(scope="session")
def shipped_predictor() -> Predictor:
    """The shipped default model (``models/default``); a missing or broken model fails."""
    return Predictor.load()


def cost_aware(predictor: Predictor, tokens_per_point: float) -> CostAware:
    """CostAware with one point worth ``tokens_per_point`` tokens."""
    return CostAware(predictor, price=Price.tokens(tokens_per_point))
