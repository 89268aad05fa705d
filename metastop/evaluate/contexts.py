"""Each curve's task memory for a backtest: its leave-one-run-out context, and a predictor
that predicts every curve with its own.

A curve's *context* (DESIGN.md, "Task memory") is the finished curves with the same ``task``
(and the same ``metric`` where the curve names one) from another run (``run_id``, else
``curve_id``): never its own run. ``leave_one_run_out_contexts`` takes them from a history
store when one is given, else from a pool of curves (by default the curves themselves), keeps
at most ``MAX_SIBLINGS`` of them (a sample seeded by the curve's id, as the model was trained
with) and resamples them once into a ``Context``. ``ContextPredictor`` then hands each curve's
context to the model by ``curve_id``, so that every policy built on it predicts with the
right context and a whole step of a replay stays one batched ``predict_many`` call.
``SiblingPredictor`` is the rule that learns nothing, as a predictor: the baseline a model
with task memory has to beat.

Example:
    >>> from metastop.curves import Curve
    >>> runs = [Curve(f"r{i}/em", [1, 2, 4], [0.1, 0.2 + i / 100, 0.3], task="t", run_id=f"r{i}")
    ...         for i in range(3)]
    >>> [len(c) for c in leave_one_run_out_contexts(runs)]
    [2, 2, 2]
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from ..predict.context import MAX_SIBLINGS, Context, as_context, leave_one_run_out, run_of
from ..predict.model import default_horizons
from ..predict.prediction import Prediction

NONE = "none"
LEAVE_ONE_RUN_OUT = "leave-one-run-out"
CONTEXT_MODES = (NONE, LEAVE_ONE_RUN_OUT)
"""How a backtest gives curves their context: none, or each its leave-one-run-out siblings."""


def check_context_mode(mode: str) -> str:
    """``mode`` when it is one of ``CONTEXT_MODES``, else a ``ParameterError`` naming it."""
    if mode not in CONTEXT_MODES:
        raise ParameterError(f"context must be one of {CONTEXT_MODES}, got context={mode!r}")
    return mode


def finished(curve: Curve) -> bool:
    """Whether a curve ran to its budget (only finished runs are context)."""
    return bool(curve.tokens[-1] >= curve.budget)


def leave_one_run_out_contexts(curves: Sequence[Curve], *, pool: Iterable[Curve] | None = None,
                               history: Any = None, max_siblings: int = MAX_SIBLINGS
                               ) -> list[Context | None]:
    """Each curve's context: its siblings from ``history`` (a ``HistoryStore`` or its URL)
    when given, else the finished curves of ``pool`` (default: ``curves``) of the same task
    and metric from another run. ``None`` for a curve with no sibling.

    At most ``max_siblings`` siblings are kept per curve, a sample seeded by its ``curve_id``
    (the same on every call and machine).
    """
    if max_siblings < 1:
        raise ParameterError(f"max_siblings must be >= 1, got {max_siblings=}")
    curves = list(curves)
    if history is not None:
        if pool is not None:
            raise ParameterError("pass pool or history, not both")
        siblings = history_siblings(curves, history)
    else:
        members = [c for c in (curves if pool is None else pool) if finished(c)]
        siblings = leave_one_run_out(curves, members)
    return [_context(c, s, max_siblings) for c, s in zip(curves, siblings)]


def history_siblings(curves: Sequence[Curve], history: Any) -> list[list[Curve]]:
    """Each curve's siblings in a history store (``HistoryStore.context_for``), reading each
    task and metric once."""
    from ..curves.history import HistoryStore, open_history

    store = open_history(history)
    try:
        by_key: dict[tuple, list[Curve]] = {}
        out = []
        for curve in curves:
            if curve.task is None:
                out.append([])
                continue
            key = (curve.task, curve.metric)
            if key not in by_key:
                by_key[key] = list(store.curves(task=curve.task, metric=curve.metric))
            out.append([s for s in by_key[key]
                        if run_of(s) != run_of(curve) and s.curve_id != curve.curve_id])
        return out
    finally:
        if not isinstance(history, HistoryStore):
            store.close()


def _context(curve: Curve, siblings: list[Curve], limit: int) -> Context | None:
    siblings = sorted(siblings, key=lambda s: s.curve_id)  # the same whatever the pool's order
    if len(siblings) > limit:
        seed = int(hashlib.sha256(curve.curve_id.encode("utf-8")).hexdigest()[:8], 16)
        pick = np.sort(np.random.default_rng(seed).choice(len(siblings), limit, replace=False))
        siblings = [siblings[int(i)] for i in pick]
    context = Context.of(curve, siblings)
    return context if len(context) else None


class ContextPredictor:
    """A predictor that predicts each curve with its own context, looked up by ``curve_id``.

    A context passed explicitly (``predict(..., context=)``) wins over the looked-up one.
    Everything else is the wrapped predictor's.

    Example:
        >>> contexts = leave_one_run_out_contexts(curves)  # doctest: +SKIP
        >>> model = ContextPredictor(Predictor.load(), {c.curve_id: x for c, x in zip(curves, contexts)})  # doctest: +SKIP
        >>> backtest(curves, CostAware(model)).em_loss_mean  # doctest: +SKIP
    """

    def __init__(self, predictor: Any, contexts: Mapping[str, Any]):
        self.predictor = predictor
        self.contexts = dict(contexts)

    @classmethod
    def of(cls, predictor: Any, curves: Sequence[Curve], contexts: Sequence[Any]) -> ContextPredictor:
        """``predictor`` with ``contexts`` aligned with ``curves`` (whose ids must be unique)."""
        curves, contexts = list(curves), list(contexts)
        if len(contexts) != len(curves):
            raise ParameterError(f"contexts must hold one entry per curve, got {len(contexts)} "
                                 f"for {len(curves)} curves")
        by_id = {c.curve_id: x for c, x in zip(curves, contexts)}
        if len(by_id) != len(curves):
            raise ParameterError("contexts need unique curve ids, but some curve_id appears twice")
        return cls(predictor, by_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict(self, curve: Curve, horizons: Any = None, context: Any = None) -> Any:
        return self.predict_many([curve], horizons=None if horizons is None else [horizons],
                                 contexts=None if context is None else [context])[0]

    def predict_many(self, curves: Sequence[Curve], horizons: Any = None, *,
                     fractions: Any = None, contexts: Sequence[Any] | None = None) -> list[Any]:
        given = [None] * len(curves) if contexts is None else list(contexts)
        if len(given) != len(curves):
            raise ParameterError(f"contexts must hold one entry per curve, got {len(given)} "
                                 f"for {len(curves)} curves")
        chosen = [g if g is not None else self.contexts.get(c.curve_id)
                  for c, g in zip(curves, given)]
        options: dict[str, Any] = {} if fractions is None else {"fractions": fractions}
        if any(x is not None for x in chosen):
            options["contexts"] = chosen
        return list(self.predictor.predict_many(curves, horizons, **options))


class SiblingPredictor:
    """Predicts from the siblings alone: the score now plus the siblings' change from the
    fraction seen to each horizon (``sibling_median_forecast`` at the median), its 0.1 and
    0.9 quantiles over the siblings as the interval. Without siblings: the last score, flat.

    Example:
        >>> from metastop.curves import Curve
        >>> sibs = [Curve(f"s{i}", [1, 2, 4], [0.1, 0.2, 0.3 + i / 5], run_id=f"r{i}") for i in range(3)]
        >>> p = SiblingPredictor().predict(Curve("c", [1, 2], [0.1, 0.2], budget=4), [4.0], sibs)
        >>> [round(float(x), 2) for x in p.scores[-1]]
        [0.34, 0.49, 0.65]
    """

    name = "sibling_median"
    quantiles = (0.1, 0.5, 0.9)

    def predict(self, curve: Curve, horizons: Any = None, context: Any = None) -> Prediction:
        h = default_horizons(curve) if horizons is None else np.atleast_1d(
            np.asarray(horizons, dtype=np.float64))
        found = as_context(curve, context)
        now = float(curve.scores[-1])
        if found is None or not len(found):
            scores = np.full((len(h), len(self.quantiles)), now)
        else:
            at = found.at(np.r_[curve.fraction_seen, h / curve.budget])
            change = at[:, 1:] - at[:, :1]
            scores = now + np.quantile(change, self.quantiles, axis=0).T
        low, high = curve.score_range()
        return Prediction(curve.curve_id, curve.last_tokens, h, self.quantiles,
                          np.clip(scores, low, high))

    def predict_many(self, curves: Sequence[Curve], horizons: Any = None, *,
                     contexts: Sequence[Any] | None = None) -> list[Prediction]:
        grids = [None] * len(curves) if horizons is None else list(horizons)
        given = [None] * len(curves) if contexts is None else list(contexts)
        return [self.predict(c, h, x) for c, h, x in zip(curves, grids, given)]
