"""Task memory: what the finished runs of the same task say about the rest of a curve.

A curve's *context* is the finished curves of its task (same ``task``, and the same ``metric``
where the curve names one) from other runs: never its own. Siblings are aligned by budget
fraction: each is resampled once onto a fixed log-spaced grid of fractions, so that "its value
when it had seen 25% of its budget" is one interpolation. From them the context features
(``CONTEXT_NAMES``) describe, per prefix and horizon, in the curve's own relative units:

- ``ctx_n``: how many siblings (``log1p``), 0 without context (the other features are NaN);
- ``ctx_delta_q10/q50/q90_at_h``: quantiles of the siblings' change from the curve's fraction
  seen to the horizon, ``(s(h) - s(f)) / S``;
- ``ctx_sibmed_at_h``: the sibling-median forecast, the recent mean plus the median change;
- ``ctx_nn_at_h`` and ``ctx_nn_dist``: the same from the 3 siblings whose prefixes are nearest
  to the curve's, and how near they are;
- ``ctx_final_rel``: the siblings' median final score relative to the curve's best;
- ``ctx_rank`` and ``ctx_z``: where the curve stands among its siblings at the same fraction;
- ``ctx_budget_ratio``: the siblings' median budget relative to this one (log).

Example:
    >>> from metastop.curves import Curve
    >>> sibs = [Curve(f"s{i}", [1, 2, 4], [0.1, 0.3 + i / 100, 0.5], run_id=f"r{i}") for i in range(3)]
    >>> ctx = Context.of(Curve("c", [1, 2], [0.1, 0.2], budget=4, run_id="me"), sibs)
    >>> len(ctx), round(sibling_median_forecast(Curve("c", [1, 2], [0.1, 0.2], budget=4), ctx), 2)
    (3, 0.39)
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..curves import Curve, metric_range
from ..errors import ParameterError
from .features import REL_CLIP, PrefixBatch, _last_mean

logger = logging.getLogger(__name__)

GRID = np.geomspace(1e-3, 1.0, 64)
"""Budget fractions every sibling is resampled onto (log-spaced)."""
_LOG_GRID = np.log(GRID)
MAX_SIBLINGS = 64
"""At most this many siblings are used per curve (a seeded sample beyond it)."""
N_NEAREST = 3
_NN_POINTS = 8
CONTEXT_NAMES = ("ctx_n", "ctx_delta_q10_at_h", "ctx_delta_q50_at_h", "ctx_delta_q90_at_h",
                 "ctx_sibmed_at_h", "ctx_nn_at_h", "ctx_nn_dist", "ctx_final_rel", "ctx_rank",
                 "ctx_z", "ctx_budget_ratio")
_HORIZON_FEATURES = 6  # the first features after ctx_n depend on the horizon


@dataclass(frozen=True, eq=False)
class Context:
    """Sibling curves of one curve, resampled onto ``GRID`` as scores (higher is better).

    Attributes:
        grid: ``(k, len(GRID))`` scores of each sibling at each grid fraction.
        finals: ``(k,)`` each sibling's last score.
        budgets: ``(k,)`` each sibling's budget.
        runs: each sibling's run (``run_id``, else ``curve_id``).
    """

    grid: np.ndarray
    finals: np.ndarray
    budgets: np.ndarray
    runs: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.runs)

    @classmethod
    def empty(cls) -> Context:
        return cls(np.zeros((0, len(GRID))), np.zeros(0), np.zeros(0), ())

    @classmethod
    def of(cls, curve: Curve, siblings: Iterable[Curve]) -> Context:
        """The context of ``curve`` from ``siblings``: its own run and siblings that break a
        rule (another direction, another metric, a value off the curve's scale) are left out,
        the latter two with a warning naming the sibling."""
        kept = [s for s in siblings if _usable(curve, s)]
        if not kept:
            return cls.empty()
        if len(kept) > MAX_SIBLINGS:  # a seeded sample: the same curve gets the same siblings
            seed = int(hashlib.sha256(curve.curve_id.encode()).hexdigest()[:8], 16)
            chosen = np.random.default_rng(seed).choice(len(kept), MAX_SIBLINGS, replace=False)
            kept = [kept[i] for i in np.sort(chosen)]
        return cls(np.stack([resample(s) for s in kept]),
                   np.array([float(s.scores[-1]) for s in kept]),
                   np.array([float(s.budget) for s in kept]),
                   tuple(run_of(s) for s in kept))

    def take(self, index: np.ndarray) -> Context:
        """The siblings at ``index``."""
        return Context(self.grid[index], self.finals[index], self.budgets[index],
                       tuple(self.runs[i] for i in index))

    def at(self, fractions: np.ndarray) -> np.ndarray:
        """Each sibling's score at budget ``fractions``: shape ``(k, len(fractions))``."""
        lo, w = _grid_weights(np.asarray(fractions, dtype=np.float64))
        return self.grid[:, lo] * (1.0 - w) + self.grid[:, lo + 1] * w


SIBLING_COUNTS = (0, 1, 3, 10, MAX_SIBLINGS)
"""Training prefixes see this many siblings (one count drawn per prefix; fewer where fewer
exist), so the model learns how far to trust them, and to do without."""


@dataclass(frozen=True, eq=False)
class SiblingPool:
    """Every training curve resampled once, with each curve's leave-one-run-out siblings.

    Example:
        >>> pool = SiblingPool.of(curves)  # doctest: +SKIP
        >>> pool.draw(0, np.random.default_rng(0))  # doctest: +SKIP
    """

    everything: Context
    siblings: tuple[np.ndarray, ...]

    @classmethod
    def of(cls, curves: Sequence[Curve]) -> SiblingPool:
        everything = Context(np.stack([resample(c) for c in curves]) if curves else
                             np.zeros((0, len(GRID))),
                             np.array([float(c.scores[-1]) for c in curves]),
                             np.array([float(c.budget) for c in curves]),
                             tuple(run_of(c) for c in curves))
        groups: dict[tuple, list[int]] = {}
        for i, curve in enumerate(curves):
            key = context_key(curve)
            if key is not None:
                groups.setdefault((*key, curve.direction), []).append(i)
        runs = np.array(everything.runs, dtype=object)
        siblings = []
        for curve, run in zip(curves, runs):
            key = context_key(curve)
            members = np.array(groups[(*key, curve.direction)] if key is not None else [], dtype=int)
            siblings.append(members[runs[members] != run] if len(members) else members)
        return cls(everything, tuple(siblings))

    def draw(self, i: int, rng: np.random.Generator) -> Context | None:
        """A random context of curve ``i``: ``SIBLING_COUNTS`` drawn, then that many siblings."""
        count = min(int(rng.choice(SIBLING_COUNTS)), len(self.siblings[i]))
        if count == 0:
            return None
        return self.everything.take(np.sort(rng.choice(self.siblings[i], size=count, replace=False)))


def as_context(curve: Curve, context: Any) -> Context | None:
    """``context`` as a ``Context`` of ``curve``: a ``Context`` as it is, an iterable of
    ``Curve`` resampled (its own run and rule-breakers left out), ``None`` for none."""
    if context is None or isinstance(context, Context):
        return context
    if isinstance(context, (str, bytes)) or not isinstance(context, Iterable):
        raise ParameterError(f"context of curve {curve.curve_id!r} must be a Context or "
                             f"curves of the same task, got {type(context).__name__}")
    siblings = list(context)
    bad = next((s for s in siblings if not isinstance(s, Curve)), None)
    if bad is not None:
        raise ParameterError(f"context of curve {curve.curve_id!r} must hold Curve objects, "
                             f"got {type(bad).__name__}")
    return Context.of(curve, siblings)


def run_of(curve: Curve) -> str:
    """The run a curve belongs to: its ``run_id``, else its ``curve_id``."""
    return curve.run_id if curve.run_id is not None else curve.curve_id


def context_key(curve: Curve) -> tuple[str, str] | None:
    """What makes two curves siblings: the task and the metric (``None``: no task, no context)."""
    return None if curve.task is None else (curve.task, curve.metric or "")


def leave_one_run_out(curves: Sequence[Curve], pool: Sequence[Curve] | None = None
                      ) -> list[list[Curve]]:
    """Each curve's siblings in ``pool`` (default: ``curves``): the same task and metric,
    another run."""
    pool = curves if pool is None else pool
    by_key: dict[tuple[str, str], list[Curve]] = {}
    for curve in pool:
        key = context_key(curve)
        if key is not None:
            by_key.setdefault(key, []).append(curve)
    return [[s for s in by_key.get(context_key(c), []) if run_of(s) != run_of(c)]
            if context_key(c) is not None else [] for c in curves]


def resample(curve: Curve) -> np.ndarray:
    """A curve's scores at every ``GRID`` fraction (linear in log-fraction; flat beyond its
    first and last points). Of points before the grid's start only the last counts."""
    x = np.log(np.maximum(curve.tokens / curve.budget, GRID[0]))
    keep = np.r_[x[1:] > x[:-1], True]
    return np.interp(_LOG_GRID, x[keep], curve.scores[keep])


def sibling_median_forecast(prefix: Curve, context: Context, fraction: float = 1.0) -> float:
    """The rule that learns nothing: the value now plus the siblings' median change from the
    fraction seen to ``fraction`` (metric units; the last value without siblings)."""
    if len(context) == 0:
        return float(prefix.values[-1])
    at = context.at(np.array([prefix.fraction_seen, fraction]))
    return float(prefix.to_metric(prefix.scores[-1] + np.median(at[:, 1] - at[:, 0])))


def context_matrix(batch: PrefixBatch, xh: np.ndarray, contexts: Sequence[Context | None],
                   *, block: int = 1024) -> np.ndarray:
    """The context features of ``n`` prefixes at ``H`` horizons: ``(n, H, len(CONTEXT_NAMES))``.

    Prefixes without context get ``ctx_n`` 0 and NaN elsewhere (LightGBM's missing value).
    Prefixes with context are computed in blocks, their siblings padded with NaN.
    """
    n, width = xh.shape
    out = np.full((n, width, len(CONTEXT_NAMES)), np.nan)
    out[:, :, 0] = 0.0
    rows = np.array([r for r, c in enumerate(contexts) if c is not None and len(c)], dtype=int)
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        out[chunk] = _block_features(batch, chunk, xh[chunk], [contexts[r] for r in chunk])
    return out


def _block_features(batch: PrefixBatch, rows: np.ndarray, xh: np.ndarray,
                    contexts: list[Context]) -> np.ndarray:
    """Context features of the prefixes ``rows`` (each with at least one sibling)."""
    grid, count = _padded(contexts, "grid")
    scale, best, y_last = batch.scale[rows], batch.best[rows], batch.y_last[rows]
    valid = np.isfinite(xh)
    query = np.concatenate([batch.x_last[rows, None], np.where(valid, xh, 1.0)], axis=1)
    at = _at(grid, query)  # (m, K, 1 + H), NaN for padding
    now = at[:, :, 0]
    delta = (at[:, :, 1:] - now[:, :, None]) / scale[:, None, None]
    q10, q50, q90 = (_order_stat(delta, count, q) for q in (0.1, 0.5, 0.9))
    start = ((_last_mean(batch, 3)[rows] - best) / scale)[:, None]
    nn_delta, nn_gap = _nearest_delta(batch, rows, grid, delta, count)
    finals, budgets = _padded(contexts, "finals")[0], _padded(contexts, "budgets")[0]
    standing = np.where(now < y_last[:, None], 1.0, np.where(now == y_last[:, None], 0.5, 0.0))
    fixed = np.stack([
        np.nanmean(nn_gap, axis=1),
        (_order_stat(finals[:, :, None], count, 0.5)[:, 0] - best) / scale,
        np.nanmean(np.where(np.isnan(now), np.nan, standing), axis=1),
        (y_last - np.nanmean(now, axis=1)) / (np.nanstd(now, axis=1) + 0.1 * scale),
        _order_stat(np.log(budgets / batch.budget[rows, None])[:, :, None], count, 0.5)[:, 0],
    ], axis=1)
    out = np.empty(xh.shape + (len(CONTEXT_NAMES),))
    out[:, :, 0] = np.log1p(count)[:, None]
    horizon = np.stack([q10, q50, q90, start + q50, start + nn_delta], axis=2)
    out[:, :, 1:_HORIZON_FEATURES] = np.clip(horizon, -REL_CLIP, REL_CLIP)
    out[:, :, _HORIZON_FEATURES:] = np.clip(fixed, -REL_CLIP, REL_CLIP)[:, None, :]
    out[~valid] = np.nan
    return out


def _padded(contexts: list[Context], name: str) -> tuple[np.ndarray, np.ndarray]:
    """One field of every context stacked along a sibling axis padded with NaN, and counts."""
    count = np.array([len(c) for c in contexts])
    first = getattr(contexts[0], name)
    out = np.full((len(contexts), int(count.max())) + first.shape[1:], np.nan)
    for i, context in enumerate(contexts):
        out[i, :count[i]] = getattr(context, name)
    return out, count


def _at(grid: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Siblings' scores ``(m, K, G)`` at per-row budget ``fractions`` ``(m, Q)``: ``(m, K, Q)``."""
    lo, w = _grid_weights(fractions)
    left = np.take_along_axis(grid, lo[:, None, :], axis=2)
    right = np.take_along_axis(grid, lo[:, None, :] + 1, axis=2)
    return left * (1.0 - w[:, None, :]) + right * w[:, None, :]


def _order_stat(values: np.ndarray, count: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile (linear) along axis 1 of ``values`` ``(m, K, H)`` whose first
    ``count`` entries per row are real (the rest NaN): ``(m, H)``."""
    ordered = np.sort(values, axis=1)  # NaN sort last
    pos = q * (count - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, count - 1)
    frac = (pos - lo)[:, None]
    low = np.take_along_axis(ordered, lo[:, None, None], axis=1)[:, 0]
    high = np.take_along_axis(ordered, hi[:, None, None], axis=1)[:, 0]
    return low * (1.0 - frac) + high * frac


def _nearest_delta(batch: PrefixBatch, rows: np.ndarray, grid: np.ndarray, delta: np.ndarray,
                   count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The median change of the ``N_NEAREST`` siblings whose prefixes are nearest to each
    curve's over its last points (mean absolute gap in scale units), and those gaps."""
    last = batch.last_index[rows]
    pick = np.clip(last[:, None] - np.arange(_NN_POINTS)[::-1], 0, None)  # (m, P)
    x = np.take_along_axis(batch.x[rows], pick, axis=1)
    y = np.take_along_axis(batch.y[rows], pick, axis=1)
    gap = np.mean(np.abs(_at(grid, x) - y[:, None, :]), axis=2) / batch.scale[rows, None]
    order = np.argsort(np.where(np.isnan(gap), np.inf, gap), axis=1, kind="stable")[:, :N_NEAREST]
    k = np.minimum(count, N_NEAREST)
    real = np.arange(order.shape[1])[None, :] < k[:, None]
    chosen = np.take_along_axis(delta, order[:, :, None], axis=1)
    chosen = np.where(real[:, :, None], chosen, np.nan)
    return _order_stat(chosen, k, 0.5), np.where(real, np.take_along_axis(gap, order, axis=1), np.nan)


def _grid_weights(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.clip(np.log(np.maximum(fractions, GRID[0])), _LOG_GRID[0], _LOG_GRID[-1])
    lo = np.clip(np.searchsorted(_LOG_GRID, x, side="right") - 1, 0, len(GRID) - 2)
    w = (x - _LOG_GRID[lo]) / (_LOG_GRID[lo + 1] - _LOG_GRID[lo])
    return lo, w


def _usable(curve: Curve, sibling: Curve) -> bool:
    if run_of(sibling) == run_of(curve):
        return False
    rule = _broken_rule(curve, sibling)
    if rule is not None:
        logger.warning("context: sibling %r (run %r) left out: %s", sibling.curve_id,
                       run_of(sibling), rule)
    return rule is None


def _broken_rule(curve: Curve, sibling: Curve) -> str | None:
    if sibling.direction != curve.direction:
        return f"its direction is {sibling.direction}, the curve's is {curve.direction}"
    if curve.metric is not None and sibling.metric not in (None, curve.metric):
        return f"its metric is {sibling.metric!r}, the curve's is {curve.metric!r}"
    low, high = metric_range(curve.metric, curve.values)
    if math.isfinite(high) and high <= 1.0 and float(np.max(sibling.values)) > 1.0:
        return "its values exceed 1 while the curve's metric is on 0-1 (another scale?)"
    return None
