"""Backtest arithmetic on hand-computed tiny cases, and the replay's no-peeking guarantee.

Covers ``metastop.evaluate``: outcomes, frontiers, ab, quality, contract and suite."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from metastop.curves import Curve
from metastop.errors import ParameterError
from metastop.evaluate.ab import Comparison, compare, hull_gap
from metastop.evaluate.common import p95
from metastop.evaluate.contract import contract_problems, report_json
from metastop.evaluate.frontiers import (
    Frontier, FrontierPoint, frontier, frontier_from_reports, oracle_frontier,
)
from metastop.evaluate.outcomes import (
    CurveOutcome, PolicyReport, backtest, never_stop, oracle, oracle_stop, outcome, replay,
)
from metastop.evaluate.quality import prediction_report
from metastop.evaluate.suite import make_policy, run_suite
from metastop.predict.prediction import Prediction
from metastop.stop.decision import Decision, Reason
from metastop.stop.prices import POINT, Price, to_points


def per_budget(k: float) -> Price:
    """The price at which a run's full budget is worth ``k`` points."""
    return Price.fraction_of_budget(1 / k)


def _decision(curve: Curve, stop: bool) -> Decision:
    return Decision(stop=stop, reason=Reason.GAIN_BELOW_COST if stop else Reason.IMPROVING,
                    message="test", tokens=float(curve.tokens[-1]),
                    value=float(curve.values[-1]), best=curve.best)


class StopAt:
    """Stops once the curve has ``k`` points (after point ``k - 1``)."""

    def __init__(self, k: int):
        self.k = k
        self.name = f"stop-at-{k}"
        self.params = {"k": k}

    def decide(self, curve: Curve) -> Decision:
        return _decision(curve, len(curve) >= self.k)


class SimplePatience:
    """Stops after ``patience`` evaluations without a new best score (test stand-in)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.name = "patience"
        self.params = {"patience": patience}

    def decide(self, curve: Curve) -> Decision:
        since_best = len(curve) - 1 - curve.best_index
        return _decision(curve, since_best >= self.patience)


class Recorder:
    """Records the prefix lengths it is shown; stops never; counts batched calls."""

    def __init__(self):
        self.name, self.params = "recorder", {}
        self.seen: dict[str, list[int]] = {}
        self.batches = 0

    def decide(self, curve: Curve) -> Decision:
        self.seen.setdefault(curve.curve_id, []).append(len(curve))
        return _decision(curve, False)

    def decide_many(self, curves):
        self.batches += 1
        return [self.decide(c) for c in curves]


CURVE = Curve("c", tokens=[10, 20, 30, 40, 50], values=[0.1, 0.4, 0.3, 0.35, 0.5], task="t")


# --- one curve -----------------------------------------------------------------------------
@pytest.mark.parametrize("stop, savings, best_loss, last_loss", [
    (0, 0.8, 0.4, 0.4),
    (1, 0.6, 0.1, 0.1),
    (2, 0.4, 0.1, 0.2),     # keep-best restores 0.4; keep-last delivers 0.3
    (3, 0.2, 0.1, 0.15),
    (4, 0.0, 0.0, 0.0),
])
def test_outcome_savings_and_losses(stop, savings, best_loss, last_loss):
    best = outcome(CURVE, stop, keep="best")
    last = outcome(CURVE, stop, keep="last")
    assert best.token_savings == pytest.approx(savings)
    assert best.em_loss == pytest.approx(best_loss)
    assert last.em_loss == pytest.approx(last_loss)
    assert best.stopped == (stop < 4)


def test_keep_last_loss_can_be_negative_and_keep_best_never_is():
    falls = Curve("f", tokens=[1, 2, 3], values=[0.2, 0.6, 0.5])
    assert outcome(falls, 1, keep="last").em_loss == pytest.approx(-0.1)
    assert all(outcome(falls, s).em_loss >= 0 for s in range(3))


def test_minimize_metric_loss_is_in_metric_units_and_non_negative():
    loss = Curve("l", tokens=[1, 2, 3, 4], values=[5.0, 3.0, 3.5, 2.0], direction="minimize")
    o = outcome(loss, 2)
    assert o.em_loss == pytest.approx(1.0)        # delivered 3.0 against the best 2.0
    assert outcome(loss, 2, keep="last").em_loss == pytest.approx(1.5)


@pytest.mark.parametrize("k, keep, expected", [
    (1e-9, "best", 4),      # (almost) free tokens: run to the best point
    (10.0, "best", 4),      # U = 6, 36, 34, 27, 40
    (40.0, "best", 1),      # U = 2, 24, 16, 8, 10
    (1000.0, "best", 0),    # tokens cost more than any gain
    (40.0, "last", 1),
])
def test_oracle_stop_index(k, keep, expected):
    assert oracle_stop(CURVE, per_budget(k), keep=keep) == expected


def test_utility_formula_is_in_points():
    o = outcome(CURVE, 1)
    assert o.utility(per_budget(40)) == pytest.approx(100 * 0.4 - 40 * 0.4)
    assert o.utility(per_budget(40)) == pytest.approx(to_points(0.4) - 40 * 0.4)
    assert POINT == 0.01


def test_oracle_beats_every_stop_index_in_utility():
    rng = np.random.default_rng(3)
    for i in range(20):
        c = Curve(f"r{i}", tokens=np.arange(1, 12), values=rng.random(11))
        best = oracle_stop(c, per_budget(15))
        utilities = [outcome(c, s).utility(per_budget(15)) for s in range(len(c))]
        assert utilities[best] == pytest.approx(max(utilities))


def test_bad_parameters_are_rejected():
    with pytest.raises(ParameterError, match="keep must be one of"):
        outcome(CURVE, 1, keep="median")
    with pytest.raises(ParameterError, match="stop_index must be in"):
        outcome(CURVE, 5)
    with pytest.raises(ParameterError, match="price must be a Price"):
        oracle_stop(CURVE, "cheap")


# A bare number once meant a share of the budget (CLI, as_price) in some places and EM points
# per full budget (oracle_stop, utility) in others: every one of them now refuses it.
BARE_PRICE = [
    ("oracle", lambda: oracle(CURVES, 5.0)),
    ("oracle_stop", lambda: oracle_stop(CURVE, 40.0)),
    ("utility", lambda: outcome(CURVE, 1).utility(40.0)),
    ("utility_mean", lambda: backtest(CURVES, StopAt(2)).utility_mean(0.1)),
    ("oracle_frontier", lambda: oracle_frontier(CURVES, [0.05, 0.1])),
    ("run_suite", lambda: run_suite(CURVES, None, policies=("patience-3",), price=0.1)),
    ("make_policy", lambda: make_policy("metastop", LastValuePredictor(), price=0.05)),
    ("make_policy patience", lambda: make_policy("patience-5", price=20.0)),
]


@pytest.mark.parametrize("where, call", BARE_PRICE, ids=[w for w, _ in BARE_PRICE])
def test_a_bare_number_is_not_a_price(where, call):
    with pytest.raises(ParameterError,
                       match=r"price must be a Price \(metastop.stop.prices\), got price=.*"
                             r"Price.fraction_of_budget\(.*points per full budget"):
        call()

# --- summaries -------------------------------------------------------------------------------
def test_p95_matches_hand_computation():
    values = np.arange(21, dtype=float)          # 0..20: 95th percentile at rank 19
    assert p95(values) == pytest.approx(19.0)
    assert p95(np.array([0.0, 0.0, 0.0, 1.0])) == pytest.approx(0.85)
    assert math.isnan(p95(np.array([])))


def test_report_means_and_p95():
    outcomes = [CurveOutcome(f"c{i}", None, 5, 1, 0.5, 0.5 - loss, 0.5, tokens_final=8.0, budget=8.0)
                for i, loss in enumerate([0.0, 0.0, 0.0, 0.1])]
    report = PolicyReport.from_outcomes("p", {"x": 1}, outcomes)
    assert report.token_savings_mean == pytest.approx(0.5)
    assert report.em_loss_mean == pytest.approx(0.025)
    assert report.em_loss_p95 == pytest.approx(0.085)
    assert report.n_curves == 4
    assert report.utility_mean(per_budget(10)) == pytest.approx(100 * (0.5 - 0.025) - 5.0)


CURVES = [
    CURVE,
    Curve("flat", tokens=[1, 2, 3, 4, 5, 6], values=[0.5, 0.5, 0.5, 0.5, 0.5, 0.5], task="t"),
    Curve("late", tokens=[1, 2, 3, 4, 5, 6], values=[0.1, 0.2, 0.2, 0.2, 0.2, 0.9], task="u"),
    Curve("one", tokens=[7], values=[0.3], task="u"),
]


def test_backtest_with_patience_by_hand():
    report = backtest(CURVES, SimplePatience(2))
    stops = {o.curve_id: o.stop_index for o in report.outcomes}
    # CURVE: best at 1, stop when 2 points since -> index 3; flat: best at 0 -> index 2;
    # late: best first reached at 1 -> index 3; one: a single point never stops.
    assert stops == {"c": 3, "flat": 2, "late": 3, "one": 0}
    losses = {o.curve_id: o.em_loss for o in report.outcomes}
    assert losses == pytest.approx({"c": 0.1, "flat": 0.0, "late": 0.7, "one": 0.0})
    assert report.token_savings_mean == pytest.approx((0.2 + 0.5 + 2 / 6 + 0.0) / 4)
    assert report.params == {"patience": 2}
    assert {o.reason for o in report.outcomes} == {Reason.GAIN_BELOW_COST.value, None}


def test_by_task_breakdown():
    tasks = backtest(CURVES, SimplePatience(2)).by_task()
    assert set(tasks) == {"t", "u"}
    assert tasks["t"].n_curves == 2 and tasks["u"].n_curves == 2
    assert tasks["u"].em_loss_mean == pytest.approx(0.35)


def test_policy_never_receives_more_points_than_the_step():
    recorder = Recorder()
    backtest(CURVES, recorder)
    for curve in CURVES:
        assert recorder.seen.get(curve.curve_id, []) == list(range(1, len(curve)))
    assert recorder.batches == max(len(c) for c in CURVES) - 1   # one batch per step index


def test_stopped_curves_are_not_asked_again():
    class Counting(StopAt):
        calls = 0

        def decide(self, curve):
            Counting.calls += 1
            return super().decide(curve)

    backtest(CURVES, Counting(2))
    assert Counting.calls == 6   # three curves of more than one point, asked at steps 0 and 1 only


def test_progress_reaches_the_total():
    seen = []
    backtest(CURVES, SimplePatience(2), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == sum(len(c) - 1 for c in CURVES)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_replay_without_decide_many_uses_decide():
    stops = replay(CURVES, StopAt(3))
    assert [s for s, _ in stops] == [2, 2, 2, 0]


def test_oracle_and_never_reports():
    o = oracle(CURVES, per_budget(40))
    assert o.name == "oracle" and o.params == {"price": per_budget(40).to_dict()}
    assert [x.stop_index for x in o.outcomes][0] == 1
    never = never_stop(CURVES)
    assert never.token_savings_mean == 0.0 and never.em_loss_mean == 0.0
    for policy in (SimplePatience(1), SimplePatience(3), StopAt(2)):
        price = per_budget(40)
        assert oracle(CURVES, price).utility_mean(price) >= backtest(CURVES, policy).utility_mean(price)


# --- frontier ---------------------------------------------------------------------------------
def test_frontier_bookkeeping_is_monotone():
    f = frontier(CURVES, SimplePatience, [1, 2, 3, 4], name="patience")
    assert f.name == "patience" and [p.params["patience"] for p in f.points] == [1, 2, 3, 4]
    savings = [p.token_savings_mean for p in f.points]
    losses = [p.em_loss_mean for p in f.points]
    # more patience never saves more and never loses more EM (keep-best)
    assert savings == sorted(savings, reverse=True)
    assert losses == sorted(losses, reverse=True)
    pareto = f.pareto()
    xs = [p.token_savings_mean for p in pareto]
    ys = [p.em_loss_mean for p in pareto]
    assert xs == sorted(xs) and ys == sorted(ys)


def test_frontier_pareto_and_dominance():
    pts = [FrontierPoint({"v": v}, s, l, l, 10) for v, (s, l) in
           enumerate([(0.1, 0.0), (0.3, 0.01), (0.2, 0.02), (0.5, 0.05)])]
    f = Frontier("x", tuple(pts))
    assert [p.params["v"] for p in f.pareto()] == [0, 1, 3]     # (0.2, 0.02) is dominated
    assert f.loss_at(0.05) == 0.0
    assert f.loss_at(0.4) == pytest.approx(0.03)                 # halfway from 0.01 to 0.05
    assert f.loss_at(0.6) == math.inf
    assert f.dominates(0.2, 0.02) and not f.dominates(0.5, 0.04)


def test_frontier_loss_is_read_off_the_lower_convex_hull():
    """A Pareto point above the chord of its neighbours is beaten by mixing them at random."""
    pts = [FrontierPoint({"v": v}, s, l, l, 10) for v, (s, l) in
           enumerate([(0.1, 0.0), (0.2, 0.04), (0.3, 0.05)])]
    f = Frontier("x", tuple(pts))
    assert [p.params["v"] for p in f.pareto()] == [0, 1, 2]     # all three are Pareto points
    assert f.loss_at(0.2) == pytest.approx(0.025)                # half of each neighbour
    assert f.dominates(0.2, 0.03) and not f.dominates(0.2, 0.02)


def _report(name: str, pairs) -> PolicyReport:
    """A report whose curve i saved ``pairs[i][0]`` of its tokens and lost ``pairs[i][1]``."""
    return PolicyReport.from_outcomes(name, {"name": name}, [
        CurveOutcome(f"c{i}", None, 10, 5, 1.0 - s, 0.5 - loss, 0.5)
        for i, (s, loss) in enumerate(pairs)])


def test_hull_gap_mixes_the_two_settings_around_the_rivals_savings():
    """Never stopping (0, 0) and stopping early (0.8, 0.2): at the rival's savings of 0.4 the
    half-and-half mix loses 0.1; the rival loses 0.05 on average, so the gap is 0.05."""
    front = frontier_from_reports("m", [_report("never", [(0.0, 0.0)] * 60),
                                        _report("early", [(0.8, 0.2)] * 60)])
    rival = _report("rival", [(0.4, loss) for loss in np.tile([0.0, 0.05, 0.1], 20)])
    assert front.segment_at(0.4) == (0, 1) and front.segment_at(0.9) is None
    gap, (low, high) = hull_gap(front, rival)
    assert gap == pytest.approx(0.05)
    assert low < 0.05 < high and high - low < 0.03     # the rival's spread makes the interval
    assert hull_gap(front, rival, seed=1) != hull_gap(front, rival, seed=2)
    assert hull_gap(front, _report("far", [(0.9, 0.0)] * 60)) is None


def test_hull_gap_refuses_reports_on_other_curves():
    front = frontier_from_reports("m", [_report("a", [(0.0, 0.0)] * 3), _report("b", [(1.0, 0.2)] * 3)])
    with pytest.raises(ParameterError, match="must cover the same curves"):
        hull_gap(front, _report("r", [(0.5, 0.1)] * 4))


# --- paired comparison ---------------------------------------------------------------------
def test_compare_is_paired_and_reproducible_with_seed():
    rng = np.random.default_rng(0)
    curves = [Curve(f"r{i}", tokens=np.arange(1, 16), values=np.cumsum(rng.random(15)) / 15)
              for i in range(40)]
    a, b = backtest(curves, StopAt(5)), backtest(curves, StopAt(10))
    c1, c2 = compare(a, b, seed=7), compare(a, b, seed=7)
    assert isinstance(c1, Comparison) and c1 == c2
    assert c1.savings_diff == pytest.approx(a.token_savings_mean - b.token_savings_mean)
    assert c1.loss_diff == pytest.approx(a.em_loss_mean - b.em_loss_mean)
    assert c1.savings_ci[0] <= c1.savings_diff <= c1.savings_ci[1]
    assert c1.loss_ci[0] <= c1.loss_diff <= c1.loss_ci[1]
    assert compare(a, b, seed=8).loss_ci != c1.loss_ci
    assert compare(a, a).loss_ci == (0.0, 0.0)


def test_compare_rejects_different_curves():
    a = backtest(CURVES, StopAt(2))
    b = backtest(CURVES[:2], StopAt(2))
    with pytest.raises(ParameterError, match="same curves"):
        compare(a, b)


# --- prediction quality and the JSON contract ----------------------------------------------
class LastValuePredictor:
    """Predicts the last seen score everywhere, with a fixed +-0.1 band."""

    def predict(self, curve, horizons=None):
        horizons = np.asarray(horizons if horizons is not None else [curve.budget], float)
        last = float(curve.scores[-1])
        scores = np.tile([last - 0.1, last, last + 0.1], (len(horizons), 1))
        return Prediction(curve.curve_id, float(curve.tokens[-1]), horizons, (0.1, 0.5, 0.9), scores)


def test_prediction_report_by_hand():
    c = Curve("c", tokens=[10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
              values=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6, 0.65])
    r = prediction_report([c], LastValuePredictor())
    # f=0.1: seen [0.0] -> |0 - 0.65|; f=0.25: [.., 0.1]; f=0.5: [.., 0.4]
    assert r.mae_at == pytest.approx({0.1: 0.65, 0.25: 0.55, 0.5: 0.25})
    assert r.coverage_80 == 0.0
    assert r.to_dict()["mae_at"].keys() == {"0.1", "0.25", "0.5"}


def test_report_json_has_the_contract_keys():
    reports = [backtest(CURVES, SimplePatience(p)) for p in (1, 2)]
    data = report_json(n_curves=len(CURVES), prediction=prediction_report(CURVES, LastValuePredictor()),
                       policies=reports + [oracle(CURVES, per_budget(20))],
                       frontiers={"patience": frontier(CURVES, SimplePatience, [1, 2])})
    assert contract_problems(data) == []
    assert data["n_curves"] == 4
    assert data["policies"][2]["name"] == "oracle"
    assert set(data["frontier"]["patience"][0]) >= {"params", "token_savings_mean", "em_loss_mean"}
    with pytest.raises(ParameterError, match="contract key"):
        report_json(n_curves=1, prediction=None, policies=[], frontiers={}, extra={"policies": 1})
    assert contract_problems({"n_curves": 1}) == ["prediction", "policies", "frontier",
                                                  "prediction.mae_at", "prediction.coverage_80",
                                                  "prediction.mae_at.0.1", "prediction.mae_at.0.25",
                                                  "prediction.mae_at.0.5"]


# --- prices, the policy names and the suite --------------------------------------------------
def test_the_full_run_is_charged_at_what_its_tokens_are_worth():
    # a token price: one point is worth 10 tokens, the run's 50 tokens are worth 5 points
    assert Price.tokens(10).points_for(50, budget=50) == 5.0
    assert oracle_stop(CURVE, Price.tokens(10)) == oracle_stop(CURVE, per_budget(5))
    o = outcome(CURVE, 1)
    assert o.utility(Price.tokens(10)) == pytest.approx(100 * 0.4 - 5 * 0.4)
    # a share of the budget: a run that stopped at half its budget is charged on what it ran
    half = Curve("h", tokens=[10, 20, 30, 40, 50], values=CURVE.values, budget=100)
    assert Price.fraction_of_budget(0.025).points_for(50, budget=100) == pytest.approx(20.0)
    assert outcome(half, 1).utility(per_budget(40)) == pytest.approx(100 * 0.4 - 20 * 0.4)


def test_make_policy_names():
    from metastop.stop.policies import DEFAULT_RISK, CostAware, ImprovementProbability
    from metastop.stop.prices import DEFAULT_PRICE
    from metastop.stop.rules import Patience

    assert isinstance(make_policy("patience-10"), Patience)
    metastop = make_policy("metastop", LastValuePredictor())
    assert isinstance(metastop, CostAware)
    assert metastop.price == DEFAULT_PRICE and metastop.risk == DEFAULT_RISK
    assert isinstance(make_policy("improvement-probability", LastValuePredictor()),
                      ImprovementProbability)
    with pytest.raises(ParameterError, match="unknown policy 'median'"):
        make_policy("median")
    with pytest.raises(ParameterError, match="whole number"):
        make_policy("patience-x")


def test_caching_predictor_asks_once_per_prefix():
    from metastop.evaluate.suite import CachingPredictor

    class Counting(LastValuePredictor):
        calls = 0

        def predict(self, curve, horizons=None):
            Counting.calls += 1
            return super().predict(curve, horizons)

    cached = CachingPredictor(Counting())
    h = np.array([50.0])
    first = cached.predict_many([CURVE.prefix(2), CURVE.prefix(3)], horizons=[h, h])
    again = cached.predict_many([CURVE.prefix(3), CURVE.prefix(2)], horizons=[h, h])
    assert Counting.calls == 2 and again[0] is first[1]
    cached.predict(CURVE.prefix(2), horizons=np.array([40.0, 50.0]))   # new horizons: new call
    assert Counting.calls == 3 and (cached.hits, cached.misses) == (2, 3)


def test_run_suite_json_and_utility():
    from metastop.evaluate.suite import STANDARD_POLICIES, metastop_sweep

    rng = np.random.default_rng(1)
    curves = [Curve(f"r{i}", tokens=np.arange(1, 21) * 1e6,
                    values=np.clip(np.cumsum(rng.random(20)) / 20 + rng.normal(0, 0.01, 20), 0, 1),
                    task=f"t{i % 2}") for i in range(12)]
    progress = []
    suite = run_suite(curves, LastValuePredictor(), progress=lambda d, t: progress.append((d, t)))
    data = suite.to_json()
    assert contract_problems(data) == []
    assert [p["name"] for p in data["policies"]] == list(STANDARD_POLICIES)
    assert set(data["frontier"]) == {"metastop", "patience", "improvement-probability", "oracle"}
    assert len(data["frontier"]["patience"]) == 9 and len(data["frontier"]["metastop"]) == 21
    swept = [(p["params"]["price"]["amount"], p["params"]["risk"], p["params"]["min_fraction"])
             for p in data["frontier"]["metastop"]]
    assert swept == [(p.amount, r, m) for p, r, m in metastop_sweep()]
    assert swept[0] == (0.0005, 0.9, 0.02)
    assert all(p.kind == "fraction_of_budget" for p, _, _ in metastop_sweep())
    oracle_prices = [p["params"]["price"]["amount"] for p in data["frontier"]["oracle"]]
    assert oracle_prices == [price for price, _, _ in swept]
    utility = data["utility"]["policies"]
    assert utility["oracle"]["share_of_oracle_gain"] == pytest.approx(1.0)
    for name in STANDARD_POLICIES:
        assert utility[name]["utility_mean"] <= utility["oracle"]["utility_mean"] + 1e-9
    assert progress[-1][0] == progress[-1][1]
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_make_policy_builds_a_confirmed_metastop():
    from metastop.stop.compose import Confirmed
    from metastop.stop.policies import CostAware

    policy = make_policy("metastop-confirmed-3", LastValuePredictor())
    assert isinstance(policy, Confirmed) and policy.n == 3 and isinstance(policy.policy, CostAware)
    with pytest.raises(ParameterError, match="N must be a whole number"):
        make_policy("metastop-confirmed-x", LastValuePredictor())


# --- task memory: contexts through replay, backtest, the suite and the quality report ---------
class ContextRecorder:
    """Never stops; records, per curve id, the context it was decided with (``with_context``
    returns a twin sharing the record), and counts batched calls."""

    def __init__(self, context=None, seen=None, batches=None):
        self.name, self.params = "context-recorder", {}
        self.context = context
        self.seen = {} if seen is None else seen
        self.batches = [] if batches is None else batches

    def with_context(self, context):
        return ContextRecorder(context, self.seen, self.batches)

    def decide(self, curve):
        self.seen.setdefault(curve.curve_id, []).append(self.context)
        return _decision(curve, False)

    def decide_many(self, curves):
        self.batches.append(self.context)
        return [self.decide(c) for c in curves]


class ContextShiftPredictor(LastValuePredictor):
    """Predicts the last score minus 0.1 per sibling; records every batch it is asked."""

    def __init__(self):
        self.calls = []

    def predict(self, curve, horizons=None, context=None):
        return self.predict_many([curve], None if horizons is None else [horizons],
                                 contexts=None if context is None else [context])[0]

    def predict_many(self, curves, horizons=None, *, contexts=None):
        contexts = [None] * len(curves) if contexts is None else list(contexts)
        self.calls.append(len(curves))
        out = []
        for i, (curve, context) in enumerate(zip(curves, contexts)):
            p = LastValuePredictor.predict(self, curve, None if horizons is None else horizons[i])
            shift = -0.1 * (0 if context is None else len(context))
            out.append(Prediction(p.curve_id, p.tokens_now, p.horizons, p.quantiles, p.scores + shift))
        return out


def _runs(task: str, n: int, *, metric: str = "acc", budget: float | None = None) -> list[Curve]:
    rng = np.random.default_rng(len(task) + n)
    return [Curve(f"{task}/r{i}/{metric}", tokens=np.arange(1, 11) * 10.0,
                  values=np.clip(np.linspace(0.1, 0.6, 10) + rng.normal(0, 0.02, 10), 0, 1),
                  task=task, metric=metric, run_id=f"{task}/r{i}", budget=budget)
            for i in range(n)]


def test_replay_decides_each_curve_with_its_own_context():
    policy = ContextRecorder()
    a, b = ["sibling"], ["other"]
    replay(CURVES, policy, contexts=[a, None, b, a])
    assert all(x is a for x in policy.seen["c"]) and len(policy.seen["c"]) == len(CURVES[0]) - 1
    assert policy.seen["flat"] == [None] * (len(CURVES[1]) - 1)
    assert all(x is b for x in policy.seen["late"])
    assert "one" not in policy.seen                    # a single point: never asked
    # one batch per step and distinct context (the curves sharing one are asked together)
    assert sum(x is a for x in policy.batches) == len(CURVES[0]) - 1
    with pytest.raises(ParameterError, match="one entry per curve"):
        replay(CURVES, policy, contexts=[a])


def test_backtest_with_contexts_is_the_suite_with_contexts_and_stays_batched():
    from metastop.stop.policies import CostAware

    curves = _runs("t", 6)
    contexts = [None, [1], [1, 2], [1, 2, 3], None, [1]]
    alone = backtest(curves, CostAware(ContextShiftPredictor()), contexts=contexts)
    predictor = ContextShiftPredictor()
    suite = run_suite(curves, predictor, policies=("metastop",), sweeps=False, predict=False,
                      contexts=contexts)
    assert [o.stop_index for o in suite.report("metastop").outcomes] == \
           [o.stop_index for o in alone.outcomes]
    stops = [o.stopped for o in alone.outcomes]   # a context lowers the forecast: stop
    assert stops == [x is not None for x in contexts]
    # one predict_many call per replay step, however many contexts there are
    assert len(predictor.calls) <= len(curves[0]) - 1
    data = suite.to_json()
    assert data["context"] == "leave-one-run-out" and data["n_curves_with_context"] == 4
    assert contract_problems(data) == []
    assert run_suite(curves, None, policies=("patience-3",), sweeps=False).to_json()["context"] == "none"


def test_prediction_report_predicts_with_the_contexts():
    c = Curve("c", tokens=[10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
              values=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6, 0.65])
    plain_report = prediction_report([c], ContextShiftPredictor())
    with_context = prediction_report([c], ContextShiftPredictor(), contexts=[[1, 2]])
    assert plain_report.mae_at == pytest.approx({0.1: 0.65, 0.25: 0.55, 0.5: 0.25})
    assert with_context.mae_at == pytest.approx({0.1: 0.85, 0.25: 0.75, 0.5: 0.45})
    with pytest.raises(ParameterError, match="one entry per curve"):
        prediction_report([c], ContextShiftPredictor(), contexts=[])


def test_caching_predictor_tells_contexts_apart():
    from metastop.evaluate.suite import CachingPredictor

    inner = ContextShiftPredictor()
    cached = CachingPredictor(inner)
    h = np.array([50.0])
    a, b = [1], [1, 2]
    first = cached.predict(CURVE.prefix(2), h, context=a)
    assert cached.predict(CURVE.prefix(2), h, context=a) is first
    assert cached.predict(CURVE.prefix(2), h, context=b).median[-1] == pytest.approx(first.median[-1] - 0.1)
    assert cached.predict(CURVE.prefix(2), h).median[-1] == pytest.approx(first.median[-1] + 0.1)
    assert (cached.hits, cached.misses) == (1, 3)


def test_leave_one_run_out_contexts_never_hold_the_curves_own_run():
    from metastop.evaluate.contexts import leave_one_run_out_contexts

    mine = _runs("t", 3)
    same_run = dataclasses.replace(mine[1], curve_id="t/r0/other-eval", run_id="t/r0")
    other_metric = _runs("t", 2, metric="loss")
    unfinished = _runs("t", 1, budget=1000.0)[0]
    unfinished = dataclasses.replace(unfinished, curve_id="t/r9/acc", run_id="t/r9")
    other_task = _runs("u", 2)
    curves = [*mine, same_run, *other_metric, unfinished, *other_task]
    contexts = leave_one_run_out_contexts(curves)
    runs = {c.curve_id: (None if x is None else sorted(x.runs)) for c, x in zip(curves, contexts)}
    assert runs["t/r0/acc"] == ["t/r1", "t/r2"]            # not its own run's other curve
    assert runs["t/r0/other-eval"] == ["t/r1", "t/r2"]
    assert runs["t/r1/acc"] == ["t/r0", "t/r0", "t/r2"]    # both curves of run r0
    assert runs["t/r0/loss"] == ["t/r1"]                   # the same metric only
    assert runs["t/r9/acc"] == ["t/r0", "t/r0", "t/r1", "t/r2"]  # unfinished: has, is no context
    assert runs["u/r0/acc"] == ["u/r1"]
    # each task with one run: no curve has a context
    one_run = [dataclasses.replace(c, run_id=c.task) for c in curves]
    assert leave_one_run_out_contexts(one_run) == [None] * len(one_run)


def test_leave_one_run_out_contexts_keep_a_seeded_sample_of_siblings():
    from metastop.evaluate.contexts import leave_one_run_out_contexts

    curves = _runs("t", 12)
    first = leave_one_run_out_contexts(curves, max_siblings=5)
    again = leave_one_run_out_contexts(list(reversed(curves)), max_siblings=5)[::-1]
    assert all(len(x) == 5 for x in first)
    assert [x.runs for x in first] == [x.runs for x in again]
    assert all(c.run_id not in x.runs for c, x in zip(curves, first))
    with pytest.raises(ParameterError, match="max_siblings"):
        leave_one_run_out_contexts(curves, max_siblings=0)


def test_history_contexts_are_the_pools(tmp_path):
    from metastop.curves.history import HistoryStore
    from metastop.evaluate.contexts import leave_one_run_out_contexts

    curves = [*_runs("t", 4), *_runs("u", 2), *_runs("t", 2, metric="loss")]
    url = f"sqlite:///{tmp_path / 'history.db'}"
    with HistoryStore(url) as store:
        store.add(curves)
    from_store = leave_one_run_out_contexts(curves[:3], history=url)
    from_pool = leave_one_run_out_contexts(curves[:3], pool=curves)
    assert [sorted(x.runs) for x in from_store] == [sorted(x.runs) for x in from_pool]
    assert all(np.allclose(np.sort(a.finals), np.sort(b.finals)) for a, b in zip(from_store, from_pool))
    with pytest.raises(ParameterError, match="pool or history"):
        leave_one_run_out_contexts(curves, pool=curves, history=url)


def test_sibling_predictor_is_the_sibling_median_rule():
    from metastop.evaluate.contexts import SiblingPredictor
    from metastop.predict.context import Context, sibling_median_forecast

    curves = _runs("t", 5)
    prefix = curves[0].prefix(3)
    context = Context.of(curves[0], curves[1:])
    p = SiblingPredictor().predict(prefix, [curves[0].budget], context)
    assert curves[0].to_metric(p.final_median) == pytest.approx(sibling_median_forecast(prefix, context))
    assert p.low[-1] <= p.final_median <= p.high[-1]
    flat = SiblingPredictor().predict(prefix, [50.0, 100.0])
    assert np.all(flat.scores == prefix.scores[-1])


def test_savings_at_loss_reads_the_hull():
    from metastop.evaluate.suite import savings_at_loss

    f = Frontier("x", (FrontierPoint({}, 0.0, 0.0, 0.0, 9), FrontierPoint({}, 0.5, 0.01, 0.1, 9),
                       FrontierPoint({}, 0.8, 0.05, 0.1, 9)))
    assert savings_at_loss(f, 0.005) == pytest.approx(0.25)
    assert savings_at_loss(f, 0.03) == pytest.approx(0.65)
    assert savings_at_loss(f, 1.0) == pytest.approx(0.8)
    assert savings_at_loss(Frontier("y", (FrontierPoint({}, 0.3, 0.02, 0.1, 9),)), 0.01) == 0.0


def test_context_key_is_optional_in_the_contract():
    data = report_json(n_curves=0, prediction=None, policies=[], frontiers={})
    assert data["context"] == "none" and contract_problems(data) == []
    old = {k: v for k, v in data.items() if k != "context"}     # files written before it
    assert contract_problems(old) == []
    assert contract_problems({**data, "context": "all"}) == [
        "context (one of ['none', 'leave-one-run-out'], got 'all')"]
    with pytest.raises(ParameterError, match="context must be one of"):
        report_json(n_curves=0, prediction=None, policies=[], frontiers={}, context="all")


def test_contract_accepts_an_optional_by_run_section_and_checks_its_keys():
    base = {"n_curves": 0, "prediction": {"mae_at": {"0.1": None, "0.25": None, "0.5": None},
                                          "coverage_80": None}, "policies": [], "frontier": {}}
    entry = {"name": "metastop", "params": {}, "n_runs": 2, "token_savings_mean": 0.2,
             "weighted_loss_mean": 0.0, "weighted_loss_p95": 0.0, "task_loss_mean": 0.0}
    assert contract_problems(base) == []
    assert contract_problems({**base, "by_run": [entry]}) == []
    assert contract_problems({**base, "by_run": [{"name": "x"}]})[0] == "by_run[0].params"
    assert contract_problems({**base, "by_run": {}}) == ["by_run (a list, got dict)"]
