"""The standard comparison behind ``metastop backtest``: named policies, their frontiers, the
hindsight oracle and prediction quality, on one set of curves.

Policies are named as in reports: ``metastop`` (``CostAware`` at the shipped defaults),
``metastop-confirmed-N``, ``patience-N``, ``improvement-probability`` and ``oracle``. Prices
are ``Price`` values throughout; the sweeps below list shares of the budget per point and
turn them into prices in one place (``metastop_sweep``).

Example:
    >>> from metastop.evaluate.suite import run_suite
    >>> suite = run_suite(curves, Predictor.load(), price=Price.fraction_of_budget(0.05))  # doctest: +SKIP
    >>> suite.report("metastop").token_savings_mean  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..stop.compose import Confirmed
from ..stop.policies import (
    DEFAULT_MIN_FRACTION,
    DEFAULT_RISK,
    CostAware,
    ImprovementProbability,
)
from ..stop.prices import DEFAULT_PRICE, Price, check_price
from ..stop.rules import Patience
from .ab import hull_gap
from .common import (
    ORACLE,
    Policy,
    Progress,
    check_keep,
    json_float,
    plain,
    predict_batch,
    sub_progress,
)
from .contexts import LEAVE_ONE_RUN_OUT, NONE, ContextPredictor
from .contract import report_json
from .frontiers import Frontier, frontier, oracle_frontier
from .outcomes import PolicyReport, backtest, never_stop, oracle
from .quality import PredictionReport, prediction_report

METASTOP = "metastop"
IMPROVEMENT_PROBABILITY = "improvement-probability"
STANDARD_POLICIES = (METASTOP, "patience-3", "patience-5", "patience-10",
                     IMPROVEMENT_PROBABILITY, ORACLE)
PRICE_SWEEP = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0)
"""Prices swept for the metastop frontier (at the shipped risk and min_fraction), as the
share of the budget one point is worth (``Price.fraction_of_budget``)."""
FRONTIER_ENDS = ((0.0005, 0.9, 0.02), (0.001, 0.9, 0.02),
                 (5.0, 0.95, 0.1), (20.0, 0.99, 0.1),
                 (100.0, 0.999, 0.3), (100.0, 0.999, 0.6), (100.0, 0.999, 0.85),
                 (100.0, 0.999, 1.0))
"""``(share of the budget per point, risk, min_fraction)`` settings that extend the metastop
frontier past the ends of ``PRICE_SWEEP``, where the price alone stops moving the policy: at
the cheap end it may stop from 2% of the budget on; at the cautious end (a point worth 5 to
100 budgets) it judges the gain by a higher quantile and waits for a larger share of the
budget, up to never stopping before the budget (``min_fraction`` 1: no savings, no loss)."""
PATIENCE_SWEEP = (1, 2, 3, 4, 5, 7, 10, 15, 20)
PROBABILITY_SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35)


class CachingPredictor:
    """Wraps a predictor and remembers its predictions per (curve, prefix length, horizons,
    context).

    A policy's predictions do not depend on its price, so a price sweep over the same curves
    asks the model only once per prefix. Curve ids must be unique among the curves seen.
    A context passed in is told apart by identity (and kept alive with the prediction).

    Example:
        >>> cached = CachingPredictor(Predictor.load())  # doctest: +SKIP
        >>> run_suite(curves, cached).report("metastop")  # doctest: +SKIP
    """

    def __init__(self, predictor: Any):
        self.predictor = predictor
        self._cache: dict[tuple, tuple[Any, Any]] = {}
        self.hits = self.misses = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    @staticmethod
    def _key(curve: Curve, horizons: Any, context: Any) -> tuple:
        h = None if horizons is None else np.asarray(horizons, dtype=np.float64).tobytes()
        return curve.curve_id, len(curve), float(curve.tokens[-1]), h, id(context)

    def predict(self, curve: Curve, horizons: Any = None, context: Any = None) -> Any:
        return self.predict_many([curve], horizons=None if horizons is None else [horizons],
                                 contexts=None if context is None else [context])[0]

    def predict_many(self, curves: Sequence[Curve], horizons: Any = None, *,
                     contexts: Sequence[Any] | None = None) -> list[Any]:
        per_curve = _per_curve_horizons(horizons, len(curves))
        given = [None] * len(curves) if contexts is None else list(contexts)
        keys = [self._key(c, h, x) for c, h, x in zip(curves, per_curve, given)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = _predict_fresh(self.predictor, [curves[i] for i in todo],
                                   [per_curve[i] for i in todo], [given[i] for i in todo])
            for i, prediction in zip(todo, fresh):
                self._cache[keys[i]] = (prediction, given[i])
        return [self._cache[k][0] for k in keys]


def _predict_fresh(predictor: Any, curves: list[Curve], horizons: list[Any],
                   contexts: list[Any]) -> list[Any]:
    """``predict_batch``, passing the contexts along when there are any."""
    if all(x is None for x in contexts):
        return predict_batch(predictor, curves, horizons)
    many = getattr(predictor, "predict_many", None)
    if many is None:
        return [predictor.predict(c, horizons=h, context=x)
                for c, h, x in zip(curves, horizons, contexts)]
    grids = None if all(h is None for h in horizons) else horizons
    return list(many(curves, horizons=grids, contexts=contexts))


def _per_curve_horizons(horizons: Any, n: int) -> list[Any]:
    """``None``, one grid for every curve, or one grid per curve -> one entry per curve."""
    if horizons is None:
        return [None] * n
    if isinstance(horizons, np.ndarray) and horizons.ndim == 1:
        return [horizons] * n
    horizons = list(horizons)
    if horizons and np.ndim(horizons[0]) == 0:
        return [np.asarray(horizons, dtype=np.float64)] * n
    if len(horizons) != n:
        raise ParameterError(f"horizons must give one grid per curve ({n}), got {len(horizons)}")
    return horizons


def make_policy(name: str, predictor: Any = None, *, price: Price = DEFAULT_PRICE,
                risk: float | None = None, min_fraction: float | None = None) -> Policy:
    """A policy by its report name: ``metastop`` (CostAware at ``price``, and at the shipped
    ``risk`` / ``min_fraction`` unless given), ``metastop-confirmed-N`` (the same, stopping
    only after N stop verdicts in a row), ``patience-N``, ``improvement-probability``.

    Example:
        >>> make_policy("patience-5").params["patience"]
        5
    """
    check_price("price", price)
    if name.startswith("patience-"):
        return Patience(_count(name, "patience-", "patience must be a whole number, e.g. patience-5"))
    if name == METASTOP:
        given = {"risk": risk, "min_fraction": min_fraction}
        return CostAware(predictor, price=price, **{k: v for k, v in given.items() if v is not None})
    if name.startswith(f"{METASTOP}-confirmed-"):
        n = _count(name, f"{METASTOP}-confirmed-", "N must be a whole number, e.g. metastop-confirmed-2")
        return Confirmed(make_policy(METASTOP, predictor, price=price, risk=risk,
                                     min_fraction=min_fraction), n=n)
    if name == IMPROVEMENT_PROBABILITY:
        return ImprovementProbability(predictor)
    raise ParameterError(f"unknown policy {name!r}; known: {list(STANDARD_POLICIES)}, "
                         f"metastop-confirmed-N or patience-N for any N >= 1")


def _count(name: str, prefix: str, rule: str) -> int:
    """The whole number after ``prefix`` in a policy name, else an error stating ``rule``."""
    text = name.removeprefix(prefix)
    if not text.isdigit():
        raise ParameterError(f"policy {name!r}: {rule}")
    return int(text)


def metastop_sweep() -> list[tuple[Price, float, float]]:
    """The metastop frontier's settings ``(price, risk, min_fraction)``, by increasing price:
    ``PRICE_SWEEP`` at the shipped risk and min_fraction, plus ``FRONTIER_ENDS``."""
    standard = [(f, DEFAULT_RISK, DEFAULT_MIN_FRACTION) for f in PRICE_SWEEP]
    return [(Price.fraction_of_budget(f), risk, min_fraction)
            for f, risk, min_fraction in sorted(standard + list(FRONTIER_ENDS))]


@dataclass(frozen=True)
class Suite:
    """The standard comparison on one set of curves: named policies, frontiers, the oracle,
    prediction quality. ``to_json()`` is DESIGN.md's backtest JSON; utilities are in points.

    Example:
        >>> suite = run_suite(curves, Predictor.load())  # doctest: +SKIP
        >>> suite.utility()["policies"]["metastop"]["share_of_oracle_gain"]  # doctest: +SKIP
    """

    n_curves: int
    price: Price
    keep: str
    reports: tuple[PolicyReport, ...]
    frontiers: Mapping[str, Frontier]
    prediction: PredictionReport | None
    never: PolicyReport
    oracle: PolicyReport
    context: str = NONE
    n_with_context: int = 0

    def report(self, name: str) -> PolicyReport:
        for report in self.reports:
            if report.name == name:
                return report
        raise KeyError(f"no policy {name!r} in this suite; have {[r.name for r in self.reports]}")

    def utility(self) -> dict[str, Any]:
        """Mean utility of each policy at the suite's price, and its share of the oracle's
        gain over never stopping: ``(U - U_never) / (U_oracle - U_never)``."""
        oracle_u = self.oracle.utility_mean(self.price)
        never_u = self.never.utility_mean(self.price)
        out: dict[str, Any] = {"price": plain(self.price), "never": json_float(never_u),
                               "oracle": json_float(oracle_u), "policies": {}}
        for report in self.reports:
            u = report.utility_mean(self.price)
            out["policies"][report.name] = {
                "utility_mean": json_float(u),
                "share_of_oracle_gain": json_float(_share(u, never_u, oracle_u)),
                "ratio_to_oracle": json_float(u / oracle_u if oracle_u else math.nan)}
        return out

    def frontier_utility(self, name: str = METASTOP) -> list[dict[str, Any]]:
        """Each point of a price-swept frontier: its utility's share of the oracle's gain
        over never stopping, both at that point's own price."""
        front, best = self.frontiers.get(name), self.frontiers.get(ORACLE)
        if front is None or best is None or len(front.reports) != len(best.reports):
            return []
        out = []
        for mine, theirs in zip(front.reports, best.reports):
            price = Price.from_dict(mine.params["price"])
            u, o, n = (r.utility_mean(price) for r in (mine, theirs, self.never))
            out.append({"params": plain(mine.params), "utility_mean": json_float(u),
                        "oracle_utility_mean": json_float(o),
                        "share_of_oracle_gain": json_float(_share(u, n, o))})
        return out

    def oracle_savings_share(self, loss: float, name: str = METASTOP) -> dict[str, Any]:
        """What the ``name`` frontier saves at mean loss ``loss`` (``savings_at_loss``), and its
        share of what the oracle's frontier saves at the same mean loss."""
        front, best = self.frontiers.get(name), self.frontiers.get(ORACLE)
        mine = savings_at_loss(front, loss) if front is not None else math.nan
        theirs = savings_at_loss(best, loss) if best is not None else math.nan
        return {"em_loss_mean": loss, "token_savings_mean": json_float(mine),
                "oracle_token_savings_mean": json_float(theirs),
                "share_of_oracle_savings": json_float(mine / theirs if theirs > 0 else math.nan)}

    def dominated(self, name: str = METASTOP, baseline: str = "patience") -> list[dict[str, Any]]:
        """The points of the ``baseline`` frontier (and the ``baseline-N`` policies) that the
        ``name`` frontier does not dominate (reach at least their savings with at most their
        mean loss, interpolating between its Pareto points), each with ``loss_gap_ci95``: the
        95% interval of how much more the frontier loses there (``hull_gap``); an interval
        holding 0 means the two cannot be told apart on these curves."""
        front = self.frontiers.get(name)
        if front is None:
            return []
        return [_gap_entry(front, r) for r in self._rivals(baseline)
                if not front.dominates(r.token_savings_mean, r.em_loss_mean)]

    def _rivals(self, baseline: str) -> list[PolicyReport]:
        """The ``baseline`` frontier's reports, then the ``baseline-N`` policies not swept."""
        rivals = list(getattr(self.frontiers.get(baseline), "reports", ()))
        swept = [r.params for r in rivals]
        return rivals + [r for r in self.reports
                         if r.name.startswith(f"{baseline}-") and r.params not in swept]

    def to_json(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        more = {"keep": self.keep, "price": plain(self.price), "utility": self.utility(),
                "n_curves_with_context": self.n_with_context, **(extra or {})}
        if self.frontier_utility():
            more["utility"]["frontier"] = {METASTOP: self.frontier_utility()}
        return report_json(n_curves=self.n_curves, prediction=self.prediction,
                           policies=self.reports, frontiers=self.frontiers,
                           context=self.context, extra=more)


def savings_at_loss(front: Frontier, loss: float) -> float:
    """The largest mean savings the frontier's hull reaches with a mean loss of at most
    ``loss`` (``Frontier.loss_at`` inverted; 0 when no setting's loss is that low)."""
    points = front.pareto()
    if not points or min(p.em_loss_mean for p in points) > loss + 1e-12:
        return 0.0
    low, high = 0.0, max(p.token_savings_mean for p in points)
    if front.loss_at(high) <= loss:
        return high
    for _ in range(60):  # loss_at is non-decreasing in savings: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if front.loss_at(middle) <= loss else (low, middle)
    return low


def _gap_entry(front: Frontier, rival: PolicyReport) -> dict[str, Any]:
    gap = hull_gap(front, rival)
    return {"params": plain(rival.params), "token_savings_mean": json_float(rival.token_savings_mean),
            "em_loss_mean": json_float(rival.em_loss_mean),
            "metastop_loss_at_same_savings": json_float(front.loss_at(rival.token_savings_mean)),
            "loss_gap_ci95": None if gap is None else [json_float(x) for x in gap[1]]}


def _share(u: float, never_u: float, oracle_u: float) -> float:
    gap = oracle_u - never_u
    return (u - never_u) / gap if gap > 1e-12 else math.nan


def run_suite(curves: Sequence[Curve], predictor: Any, *,
              policies: Sequence[str] = STANDARD_POLICIES, price: Price = DEFAULT_PRICE,
              keep: str = "best", sweeps: bool = True, predict: bool = True,
              contexts: Sequence[Any] | None = None,
              progress: Progress | None = None) -> Suite:
    """Backtest the named policies (plus the hindsight oracle at ``price``), sweep the
    frontiers (metastop over ``metastop_sweep()``, patience over ``PATIENCE_SWEEP``,
    improvement-probability over ``PROBABILITY_SWEEP``, the oracle over the same prices as
    metastop) and measure prediction quality.

    Predictions are cached across policies (``CachingPredictor``), so the first model-based
    policy pays for the model and sweeps are cheap. ``price`` is a ``Price`` (default: the
    shipped ``DEFAULT_PRICE``).

    ``contexts``: per curve, its leave-one-run-out context (``leave_one_run_out_contexts``;
    ``None`` for a curve without one). Every model-based policy and the prediction quality
    then predict each curve with its own context, still one batch per replay step
    (``ContextPredictor``); the JSON says ``"context": "leave-one-run-out"``.
    """
    check_keep(keep)
    check_price("price", price)
    curves = list(curves)
    model = predictor
    if contexts is not None and predictor is not None:
        model = ContextPredictor.of(predictor, curves, contexts)
    cached = CachingPredictor(model) if model is not None else None
    jobs = _suite_jobs(curves, cached, policies, price, keep, sweeps, predict)
    results: dict[str, Any] = {}
    for i, (key, job) in enumerate(jobs):
        results[key] = job(sub_progress(progress, i, len(jobs)))
    if progress is not None:
        progress(1000 * len(jobs), 1000 * len(jobs))
    reports = tuple(results[f"policy:{n}"] for n in policies)
    frontiers = {k.removeprefix("frontier:"): v for k, v in results.items()
                 if k.startswith("frontier:")}
    best = results.get(f"policy:{ORACLE}") or oracle(curves, price, keep=keep)
    mode = NONE if contexts is None else LEAVE_ONE_RUN_OUT
    with_context = 0 if contexts is None else sum(x is not None for x in contexts)
    return Suite(len(curves), price, keep, reports, frontiers, results.get("prediction"),
                 never_stop(curves, keep=keep), best, mode, with_context)


Job = tuple[str, Callable[[Any], Any]]
"""``(key, job(progress))``: one piece of the suite's work and where its result goes."""


def _suite_jobs(curves: list[Curve], predictor: Any, names: Sequence[str], price: Price,
                keep: str, sweeps: bool, predict: bool) -> list[Job]:
    """The suite's work, in the order it runs: the policies, the sweeps, the predictions."""
    jobs = [_policy_job(curves, predictor, name, price, keep) for name in names]
    if sweeps:
        jobs += _sweep_jobs(curves, predictor, names, keep)
    if predict and predictor is not None:
        jobs.append(("prediction", lambda p: prediction_report(curves, predictor, progress=p)))
    return jobs


def _policy_job(curves: list[Curve], predictor: Any, name: str, price: Price, keep: str) -> Job:
    if name == ORACLE:
        return f"policy:{name}", lambda p: oracle(curves, price, keep=keep)
    policy = make_policy(name, predictor, price=price)
    return f"policy:{name}", lambda p: backtest(curves, policy, keep=keep, name=name, progress=p)


def _sweep_jobs(curves: list[Curve], predictor: Any, names: Sequence[str], keep: str) -> list[Job]:
    """The frontier sweeps of the named policies that have one."""
    def metastop_at(setting: tuple[Price, float, float]) -> Policy:
        price, risk, min_fraction = setting
        return make_policy(METASTOP, predictor, price=price, risk=risk, min_fraction=min_fraction)

    sweeps: dict[str, Callable[[Any], Any]] = {}
    if METASTOP in names:
        sweeps[METASTOP] = lambda p: frontier(curves, metastop_at, metastop_sweep(), name=METASTOP,
                                              keep=keep, progress=p)
    if any(n.startswith("patience-") for n in names):
        sweeps["patience"] = lambda p: frontier(curves, Patience, PATIENCE_SWEEP, name="patience",
                                                keep=keep, progress=p)
    if IMPROVEMENT_PROBABILITY in names:
        sweeps[IMPROVEMENT_PROBABILITY] = lambda p: frontier(
            curves, lambda q: ImprovementProbability(predictor, p=q), PROBABILITY_SWEEP,
            name=IMPROVEMENT_PROBABILITY, keep=keep, progress=p)
    if ORACLE in names:
        sweeps[ORACLE] = lambda p: oracle_frontier(
            curves, [price for price, _, _ in metastop_sweep()], keep=keep)
    return [(f"frontier:{name}", job) for name, job in sweeps.items()]
