"""Stopping policies: table-driven stop indices, the rules themselves, and one contract test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metastop.curves import Curve
from metastop.stop.decision import Decision, Reason
from metastop.errors import ParameterError
from metastop.predict.prediction import Prediction
from metastop.stop.compose import AllOf, AnyOf, Confirmed
from metastop.stop.policies import (
    DEFAULT_RISK, CostAware, ImprovementProbability, StoppingPolicy, evaluation_horizons,
    probability_above,
)
from metastop.stop.prices import DEFAULT_PRICE, Price
from metastop.stop.rules import Patience, Threshold
from metastop.stop.controller import StopController

ROOT = Path(__file__).resolve().parents[1]


class LinearPredictor:
    """Deterministic stand-in for ``Predictor``: continues the curve's last slope.

    At horizon ``h`` the median score is ``last + slope * (h - now)``; the 0.1 / 0.9 quantiles
    are ``median -/+ spread * (h - now) / (budget - now)``, so the spread reaches ``spread``
    at the budget.
    """

    quantiles = (0.1, 0.5, 0.9)

    def __init__(self, spread: float = 0.0):
        self.spread = spread
        self.batches = 0

    def predict(self, curve: Curve, horizons=None) -> Prediction:
        t, s = curve.tokens, curve.scores
        h = np.asarray([curve.budget] if horizons is None else horizons, dtype=float)
        slope = (s[-1] - s[-2]) / (t[-1] - t[-2]) if len(s) > 1 else 0.0
        ahead = h - t[-1]
        median = s[-1] + slope * ahead
        width = self.spread * ahead / max(curve.budget - t[-1], 1e-12)
        scores = np.stack([median - width, median, median + width], axis=1)
        return Prediction(curve.curve_id, float(t[-1]), h, self.quantiles, scores)

    def predict_many(self, curves, horizons=None):
        self.batches += 1
        if horizons is None or np.ndim(horizons[0]) == 0:
            horizons = [horizons] * len(curves)
        return [self.predict(c, h) for c, h in zip(curves, horizons)]


def curve_of(values, *, step=100.0, budget=1000.0, direction="maximize") -> Curve:
    tokens = step * np.arange(1, len(values) + 1)
    return Curve("c", tokens, values, direction=direction, budget=budget)


def stop_index(policy: StoppingPolicy, curve: Curve) -> int | None:
    """The first point after which ``policy`` stops, replaying the curve point by point."""
    for i in range(len(curve)):
        if policy.decide(curve.prefix(i + 1)).stop:
            return i
    return None


# --- table-driven: (policy, values, options of the curve, expected stop index) -----------
RISING_SLOWER = [0.1, 0.15, 0.19, 0.22, 0.24, 0.25, 0.255]  # increments .05 .04 .03 .02 .01 .005

CASES = [
    ("patience-plateau", lambda: Patience(2), [0.1, 0.2, 0.3, 0.3, 0.3, 0.4], {}, 4),
    ("patience-min_delta", lambda: Patience(2, min_delta=0.05), [0.1, 0.2, 0.22, 0.24, 0.3], {}, 3),
    ("patience-warmup", lambda: Patience(2, warmup=3), [0.5, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2], {}, 6),
    ("patience-no-warmup", lambda: Patience(2), [0.5, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2], {}, 2),
    ("patience-minimize", lambda: Patience(2), [1.0, 0.8, 0.9, 0.85], {"direction": "minimize"}, 3),
    ("patience-rising", lambda: Patience(1), [0.1, 0.2, 0.3, 0.4], {}, None),
    ("threshold-target", lambda: Threshold(target=0.5), [0.1, 0.3, 0.5, 0.6], {}, 2),
    ("threshold-target-0", lambda: Threshold(target=0.0), [-0.2, -0.1, 0.0], {}, 2),
    ("threshold-target-minimize", lambda: Threshold(target=0.5), [1.0, 0.7, 0.5],
     {"direction": "minimize"}, 2),
    ("threshold-diverge-below", lambda: Threshold(diverge_below=0.05), [0.2, 0.1, 0.04], {}, 2),
    ("threshold-diverge-above", lambda: Threshold(diverge_above=5.0), [2.0, 1.5, 6.0],
     {"direction": "minimize"}, 2),
    ("threshold-never", lambda: Threshold(target=0.9, diverge_below=0.0), [0.1, 0.5, 0.8], {}, None),
    # gain per point of tokens: slope * price / 0.01 vs 1 -> stops when increment * 40 < 1
    ("cost-aware-median", lambda: CostAware(LinearPredictor(), price=Price.tokens(40), risk=0.5),
     RISING_SLOWER, {}, 4),
    ("cost-aware-cheap-points", lambda: CostAware(LinearPredictor(), price=Price.tokens(10)),
     RISING_SLOWER, {}, 1),
    ("cost-aware-dear-points", lambda: CostAware(LinearPredictor(), price=Price.tokens(1e4)),
     RISING_SLOWER, {}, None),
    ("cost-aware-budget", lambda: CostAware(LinearPredictor(), price=Price.tokens(1e4)),
     RISING_SLOWER, {"budget": 700.0}, 6),
    ("cost-aware-min_fraction", lambda: CostAware(LinearPredictor(), price=Price.tokens(10),
                                                  min_fraction=0.5), RISING_SLOWER, {}, 4),
    ("improvement-probability-drop", lambda: ImprovementProbability(LinearPredictor(spread=0.05)),
     [0.1, 0.2, 0.3, 0.35, 0.36, 0.34, 0.33], {}, 5),
    ("improvement-probability-rising", lambda: ImprovementProbability(LinearPredictor(spread=0.05)),
     [0.1, 0.2, 0.3, 0.35, 0.36, 0.37], {}, None),
    ("any-of", lambda: AnyOf(Patience(5), Threshold(target=0.3)), [0.1, 0.2, 0.3, 0.3], {}, 2),
    ("all-of", lambda: AllOf(Patience(1), Threshold(diverge_below=0.15)),
     [0.3, 0.2, 0.35, 0.1, 0.3], {}, 3),
    ("confirmed-waits-one-more", lambda: Confirmed(Patience(2), n=2), [0.1, 0.2, 0.3, 0.3, 0.3, 0.3], {}, 5),
    ("confirmed-noise-spike", lambda: Confirmed(Threshold(diverge_below=0.15), n=2),
     [0.3, 0.1, 0.3, 0.1, 0.1, 0.3], {}, 4),
    ("confirmed-n1-is-the-policy", lambda: Confirmed(Patience(2), n=1), [0.1, 0.2, 0.3, 0.3, 0.3], {}, 4),
    ("confirmed-budget-at-once", lambda: Confirmed(CostAware(LinearPredictor(), price=Price.tokens(1e4)), n=3),
     RISING_SLOWER, {"budget": 700.0}, 6),
]


@pytest.mark.parametrize("make, values, options, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_stop_index(make, values, options, expected):
    assert stop_index(make(), curve_of(values, **options)) == expected


# --- the cost-aware rule itself -----------------------------------------------------------
def test_cost_aware_rule_gain_against_price():
    """Half-way through, the curve is predicted to gain 0.02 (2 points) by the budget, linearly.

    Every later point h gains 2 * (h - 500) / 500 points for h - 500 tokens, so the run is
    worth continuing exactly when a point is worth more than 250 tokens.
    """
    curve = Curve("c", [400.0, 500.0], [0.496, 0.50], budget=1000.0)  # +0.004 per 100 tokens
    predictor = LinearPredictor()
    stop = CostAware(predictor, price=Price.tokens(240)).decide(curve)
    go = CostAware(predictor, price=Price.tokens(260)).decide(curve)
    assert stop.stop and stop.reason is Reason.GAIN_BELOW_COST
    assert not go.stop and go.reason is Reason.CONTINUE_WORTH_IT
    assert stop.expected_gain is not None and stop.projected_cost is not None
    assert stop.expected_gain == pytest.approx(stop.projected_cost / 250.0)
    assert stop.message.startswith("stop: best possible gain")
    assert "< " in stop.message and ">= " in go.message


def test_cost_aware_judges_by_the_risk_quantile():
    """With a spread, the upper quantile keeps a run going that the median would stop."""
    curve = curve_of(RISING_SLOWER[:5])  # last increment 0.02
    predictor = LinearPredictor(spread=0.05)
    price = Price.tokens(40)  # median: 0.02 * 40 = 0.8 < 1 -> stop; q0.9 adds 0.05 over 600
    assert CostAware(predictor, price=price, risk=0.5).decide(curve).stop
    assert not CostAware(predictor, price=price, risk=0.9).decide(curve).stop


def test_cost_aware_risk_beyond_the_top_quantile_is_more_cautious():
    """risk 0.99 extrapolates past the stored 0.9 quantile instead of being clamped to it."""
    curve = curve_of([0.5] * 5)  # flat: the gain is all spread, 5 pt at the budget
    predictor = LinearPredictor(spread=0.05)
    price = Price.tokens(90)  # worth / cost = 0.9 at q0.9, 0.9 * (1 + 0.09 / 0.4) at q0.99
    assert CostAware(predictor, price=price, risk=0.9).decide(curve).stop
    assert not CostAware(predictor, price=price, risk=0.99).decide(curve).stop


def test_cost_aware_fraction_of_budget_price_scales_with_budget():
    values = [0.496, 0.50]
    small = Curve("c", [400.0, 500.0], values, budget=1000.0)
    policy = CostAware(LinearPredictor(), price=Price.fraction_of_budget(0.24))
    assert policy.decide(small).stop  # 0.24 * 1000 = 240 tokens per point < 250


def test_cost_aware_reports_metric_units_for_minimize():
    curve = Curve("c", [100.0, 200.0], [2.0, 1.9], direction="minimize", budget=1000.0)
    decision = CostAware(LinearPredictor(spread=0.2), price=Price.tokens(1e4)).decide(curve)
    assert decision.predicted_final is not None and decision.interval is not None
    assert decision.predicted_final == pytest.approx(1.9 - 0.1 * 8)
    low, high = decision.interval
    assert low < decision.predicted_final < high
    assert decision.best == 1.9


def test_evaluation_horizons_continue_spacing_to_budget():
    curve = Curve("c", [100.0, 200.0, 300.0], [0.1, 0.2, 0.3], budget=1000.0)
    assert evaluation_horizons(curve).tolist() == [400, 500, 600, 700, 800, 900, 1000]
    odd = Curve("c", [100.0, 300.0], [0.1, 0.2], budget=1000.0)
    assert evaluation_horizons(odd).tolist() == [500, 700, 900, 1000]
    dense = Curve("c", [1.0, 2.0], [0.1, 0.2], budget=1e6)
    grid = evaluation_horizons(dense, limit=16)
    assert len(grid) == 16 and grid[0] == 3.0 and grid[-1] == 1e6
    assert np.all(np.diff(grid) > 0)


# --- the improvement-probability rule ----------------------------------------------------
@pytest.mark.parametrize("x, expected", [
    (1.0, 0.5), (0.5, 0.7), (2.0, 0.1), (2.1, 0.06), (3.0, 0.0), (-0.1, 0.94), (-1.0, 1.0),
])
def test_probability_above_interpolates_and_extrapolates(x, expected):
    assert probability_above(x, (0.1, 0.5, 0.9), (0.0, 1.0, 2.0)) == pytest.approx(expected)


def test_probability_above_zero_width_tail_is_clamped():
    assert probability_above(1.5, (0.1, 0.5, 0.9), (0.0, 1.0, 1.0)) == 0.0
    assert probability_above(-0.5, (0.1, 0.5, 0.9), (0.0, 0.0, 1.0)) == 1.0


def test_improvement_probability_threshold_p():
    curve = curve_of([0.1, 0.2, 0.3, 0.35, 0.36, 0.359])  # slightly down: median below best
    predictor = LinearPredictor(spread=0.05)
    chance = probability_above(0.36, (0.1, 0.5, 0.9), predictor.predict(curve).scores[-1])
    assert 0.05 < chance < 0.5
    assert ImprovementProbability(predictor, p=chance + 0.01).decide(curve).stop
    decision = ImprovementProbability(predictor, p=chance - 0.01).decide(curve)
    assert not decision.stop and decision.reason is Reason.IMPROVEMENT_LIKELY
    assert f"{chance:.3f}" in decision.message


# --- composition --------------------------------------------------------------------------
def test_any_of_returns_the_stopping_members_decision():
    curve = curve_of([0.1, 0.2, 0.3])
    decision = AnyOf(Patience(5), Threshold(target=0.3)).decide(curve)
    assert decision.stop and decision.policy == "threshold"
    assert AnyOf(Patience(5)).decide(curve).reason is Reason.IMPROVING


def test_all_of_joins_messages_when_all_stop():
    curve = curve_of([0.3, 0.2, 0.1])
    decision = AllOf(Patience(2), Threshold(diverge_below=0.15)).decide(curve)
    assert decision.stop and decision.reason is Reason.PATIENCE_EXHAUSTED
    assert "no improvement" in decision.message and "fell below" in decision.message


def test_decide_many_batches_predictions():
    predictor = LinearPredictor()
    policy = CostAware(predictor, price=Price.tokens(40))
    curves = [curve_of(RISING_SLOWER[:n]) for n in range(1, 8)]
    batched = policy.decide_many(curves)
    assert predictor.batches == 1
    assert [d.to_dict() for d in batched] == [policy.decide(c).to_dict() for c in curves]


# --- one contract for every policy --------------------------------------------------------
POLICIES = {
    "cost_aware": (lambda: CostAware(LinearPredictor(spread=0.02), price=Price.tokens(40)),
                   lambda: CostAware(LinearPredictor(), risk=1.5), r"risk must be in \(0.0, 1.0\), got risk=1.5"),
    "improvement_probability": (lambda: ImprovementProbability(LinearPredictor(spread=0.05), p=0.1),
                                lambda: ImprovementProbability(LinearPredictor(), delta=-0.1),
                                r"delta must be >= 0, got delta=-0.1"),
    "patience": (lambda: Patience(2, min_delta=0.001), lambda: Patience(0),
                 r"patience must be an integer >= 1, got patience=0"),
    "threshold": (lambda: Threshold(target=0.36, diverge_below=0.05), lambda: Threshold(),
                  r"at least one of target, diverge_below, diverge_above"),
    "any_of": (lambda: AnyOf(Patience(3), Threshold(target=0.36)), lambda: AnyOf(),
               r"AnyOf needs at least one policy"),
    "all_of": (lambda: AllOf(Patience(1), Threshold(diverge_below=0.345)), lambda: AllOf(object()),
               r"policies\[0\] must have a decide\(curve\) method"),
    "confirmed": (lambda: Confirmed(Patience(1), n=2), lambda: Confirmed(Patience(1), n=0),
                  r"n must be an integer >= 1, got n=0"),
}
CONTRACT_CURVE = curve_of([0.1, 0.2, 0.3, 0.35, 0.36, 0.34, 0.33, 0.37, 0.36, 0.35])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_contract(name):
    make, make_bad, message = POLICIES[name]
    policy = make()
    assert policy.name == name and isinstance(policy.params, dict)
    json.dumps(policy.params)
    prefixes = [CONTRACT_CURVE.prefix(n) for n in range(1, len(CONTRACT_CURVE) + 1)]
    decisions = [policy.decide(c) for c in prefixes]
    for curve, decision in zip(prefixes, decisions):
        assert isinstance(decision, Decision) and isinstance(decision.reason, Reason)
        assert decision.message and isinstance(decision.stop, bool)
        assert decision.tokens == curve.last_tokens and decision.best == curve.best
        data = json.loads(json.dumps(decision.to_dict()))
        assert Decision.from_dict(data).to_dict() == decision.to_dict()
    # repeatable: the same input gives the same decision, alone or in a batch
    assert [policy.decide(c).to_dict() for c in prefixes] == [d.to_dict() for d in decisions]
    assert [d.to_dict() for d in make().decide_many(prefixes)] == [d.to_dict() for d in decisions]
    assert any(d.stop for d in decisions), "the contract curve should make every policy stop"
    # state round-trip: a run resumed from state_dict decides exactly as an unbroken one
    whole = StopController(policy=make(), budget=CONTRACT_CURVE.budget)
    for t, v in zip(CONTRACT_CURVE.tokens, CONTRACT_CURVE.values):
        whole.observe(t, v)
    first = StopController(policy=make(), budget=CONTRACT_CURVE.budget)
    for t, v in zip(CONTRACT_CURVE.tokens[:4], CONTRACT_CURVE.values[:4]):
        first.observe(t, v)
    resumed = StopController(policy=make(), budget=CONTRACT_CURVE.budget)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for t, v in zip(CONTRACT_CURVE.tokens[4:], CONTRACT_CURVE.values[4:]):
        resumed.observe(t, v)
    assert [d.to_dict() for d in resumed.decisions] == [d.to_dict() for d in whole.decisions]
    # bad parameters are rejected with a message naming them
    with pytest.raises(ParameterError, match=message):
        make_bad()


@pytest.mark.parametrize("make, message", [
    (lambda: Patience(2.5), r"patience=2\.5"),
    (lambda: Patience(3, min_delta=-0.01), r"min_delta must be >= 0, got min_delta=-0.01"),
    (lambda: Patience(3, warmup=-1), r"warmup must be an integer >= 0, got warmup=-1"),
    (lambda: CostAware(None), r"predictor must have a predict"),
    (lambda: CostAware(LinearPredictor(), price=0.05),
     r"price must be a Price \(metastop.stop.prices\), got price=0.05; .*Price.fraction_of_budget\(0.05\)"),
    (lambda: CostAware(LinearPredictor(), min_fraction=1.5), r"min_fraction=1.5"),
    (lambda: CostAware(LinearPredictor(), risk=float("nan")), r"risk must be finite"),
    (lambda: ImprovementProbability(LinearPredictor(), p=0.0), r"p must be in \(0.0, 1.0\), got p=0.0"),
    (lambda: Threshold(target="high"), r"target must be a number, got target='high'"),
    (lambda: Threshold(diverge_below=0.5, diverge_above=0.4), r"diverge_below must be < diverge_above"),
])
def test_bad_parameters_name_themselves(make, message):
    with pytest.raises(ParameterError, match=message):
        make()


def test_shipped_defaults():
    policy = CostAware(LinearPredictor())
    assert policy.price == DEFAULT_PRICE and policy.risk == DEFAULT_RISK
    assert DEFAULT_RISK > 0.5, "DESIGN: judge the gain by an upper quantile, not the median"
    assert policy.params["price"] == DEFAULT_PRICE.to_dict()


# --- the real shipped predictor (no stand-ins) ---------------------------------------------


def saturating(n: int, *, budget_points: int = 20, rate: float = 0.6, top: float = 0.6,
               seed: int = 0) -> Curve:
    """``n`` of ``budget_points`` evaluations of an EM curve rising to ``top``, with noise."""
    tokens = 1e8 * np.arange(1, n + 1)
    noise = np.random.default_rng(seed).normal(0, 0.003, n)
    values = np.clip(top * (1 - np.exp(-rate * np.arange(1, n + 1))) + noise, 0, 1)
    return Curve("synthetic/em", tokens, values, budget=1e8 * budget_points)


def test_shipped_predictor_stops_a_flat_curve_and_keeps_a_rising_one():
    from metastop.predict.model import Predictor

    policy = CostAware(Predictor.load())
    flat = policy.decide(saturating(16, rate=1.5))  # long since saturated, 80% of the budget
    rising = policy.decide(saturating(4, rate=0.08))  # 20% in, climbing ~0.04 per evaluation
    assert flat.stop and flat.reason is Reason.GAIN_BELOW_COST, flat.message
    assert not rising.stop and rising.reason is Reason.CONTINUE_WORTH_IT, rising.message
    for decision in (flat, rising):
        assert decision.predicted_final is not None and decision.interval is not None
        assert decision.interval[0] <= decision.predicted_final <= decision.interval[1]
        assert decision.expected_gain is not None and decision.expected_gain >= 0


def test_shipped_predictor_batched_equals_one_by_one():
    from metastop.predict.model import Predictor

    predictor = Predictor.load()
    curves = [saturating(n, rate=r, seed=n) for n in (1, 3, 6, 12) for r in (0.1, 0.5, 1.5)]
    for policy in (CostAware(predictor), ImprovementProbability(predictor, p=0.1)):
        batched = [d.to_dict() for d in policy.decide_many(curves)]
        single = [policy.decide(c).to_dict() for c in curves]
        assert_same_decisions(batched, single)


def assert_same_decisions(a: list[dict], b: list[dict]) -> None:
    """Decisions equal up to float rounding of batched vs single LightGBM calls."""
    for x, y in zip(a, b, strict=True):
        assert x["stop"] == y["stop"] and x["reason"] == y["reason"]
        for key in ("predicted_final", "expected_gain", "projected_cost"):
            assert (x[key] is None) == (y[key] is None)
            if x[key] is not None:
                assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9)
