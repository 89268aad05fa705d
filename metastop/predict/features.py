"""Features of a partial learning curve, in a name -> function registry.

Every feature is a pure function of the observed points: ``f(tokens, values, budget) -> float``
(``values`` are *scores*, higher is better: ``Curve.scores``), or, for horizon features,
``f(tokens, values, budget, horizon) -> float`` with ``horizon`` in the same cost unit. The
registry name is the feature's column name. Each feature has one implementation, written
for a padded batch of curves (``PrefixBatch``) so that training and batch prediction are
vectorised; calling a registered feature on one curve runs that same code on a batch of one.

Values are expressed relative to the best score so far and divided by the curve's scale
``S = max(range of the last 3 scores, 0.01 * their max |score|, 0.01)``
(``curve_scale``), so accuracies in [0, 1]
and losses of 3 to 11 share one model: value features are invariant to adding a constant to
the scores and to multiplying them by a positive factor (while the range dominates the
floors), except ``scale_ratio`` (scale over magnitude), ``best_level``, ``headroom_rel`` and
``loss_room_rel``, which tell losses from accuracies and how close a bounded metric is to 1
or a loss to 0.
Families are fitted to ``(score - min) / S``, so even ``logpower`` (no offset) is
shift-invariant. The prediction target is the same relative value at the
horizon: ``(score(horizon) - best) / S`` (see ``relative_target``).

Example:
    >>> t, y = [1.0, 2.0, 4.0, 8.0], [0.10, 0.30, 0.40, 0.45]
    >>> REGISTRY["last_rel"](t, y, 16.0), REGISTRY["n_points"](t, y, 16.0)
    (0.0, 4.0)
    >>> round(REGISTRY["h_log_ratio"](t, y, 16.0, horizon=16.0), 3)
    0.693
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import ParameterError
from .fits import FAMILY_NAMES, X_MIN, FitBatch, fit_families

FEATURE_VERSION = "4"
"""Bumped whenever a feature's meaning changes; saved models record it (see predictor)."""

MAX_FIT_POINTS = 24
"""Points kept per curve for fits and window features: the last 16 and 8 spread before."""
_RECENT_POINTS = 16
RECENT_SCALE_POINTS = 3
REL_CLIP = 100.0
"""Relative values (in units of the curve's scale) are clipped to [-REL_CLIP, REL_CLIP]."""


@dataclass(eq=False)
class PrefixBatch:
    """Padded arrays describing ``n`` partial curves; the input of every feature.

    Points are left-aligned; ``mask`` marks real ones. Long curves keep ``MAX_FIT_POINTS``
    points (all recent ones, spread earlier ones); exact statistics of the whole prefix
    (best, its position, number of points, first value, scale) are kept separately.

    Example:
        >>> b = PrefixBatch.from_curves([([1, 2, 4], [0.1, 0.3, 0.2], 8.0)])
        >>> b.best.tolist(), round(float(b.scale[0]), 6), b.n_points.tolist()
        ([0.3], 0.2, [3.0])
    """

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray
    budget: np.ndarray
    n_points: np.ndarray
    best: np.ndarray
    x_best: np.ndarray
    best_index: np.ndarray
    first: np.ndarray
    low: np.ndarray
    scale: np.ndarray
    _fits: dict[str, FitBatch] | None = field(default=None, repr=False)
    _extrapolated: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _lines: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.budget)

    @classmethod
    def from_curves(cls, curves: Sequence[tuple[Sequence[float], Sequence[float], float]]
                    ) -> PrefixBatch:
        """Build from ``(tokens, scores, budget)`` triples (each with at least one point)."""
        n = len(curves)
        width = max([min(len(t), MAX_FIT_POINTS) for t, _, _ in curves] or [1])
        x = np.ones((n, width))
        y = np.zeros((n, width))
        mask = np.zeros((n, width), dtype=bool)
        stats = np.zeros((n, 8))
        for i, (tokens, scores, budget) in enumerate(curves):
            _fill_row(i, np.asarray(tokens, dtype=np.float64),
                      np.asarray(scores, dtype=np.float64), float(budget), x, y, mask, stats)
        return cls(x, y, mask, *stats.T)

    @property
    def last_index(self) -> np.ndarray:
        return self.mask.sum(axis=1) - 1

    @property
    def x_last(self) -> np.ndarray:
        return self.x[np.arange(len(self)), self.last_index]

    @property
    def y_last(self) -> np.ndarray:
        return self.y[np.arange(len(self)), self.last_index]

    def rel(self, values: np.ndarray) -> np.ndarray:
        """Scores -> relative values ``(score - best) / scale``, clipped."""
        shape = (-1,) + (1,) * (np.ndim(values) - 1)
        out = (values - self.best.reshape(shape)) / self.scale.reshape(shape)
        return np.clip(out, -REL_CLIP, REL_CLIP)

    @property
    def fits(self) -> dict[str, FitBatch]:
        """Every family fitted to ``(score - low) / scale`` (cached)."""
        if self._fits is None:
            z = (self.y - self.low[:, None]) / self.scale[:, None]
            self._fits = fit_families(self.x, z, self.mask.astype(np.float64))
        return self._fits

    def fits_rel(self, xh: np.ndarray) -> np.ndarray:
        """Every family extrapolated to ``xh`` (``(n, H)``) as relative values, shape
        ``(n_families, n, H)`` in ``FAMILY_NAMES`` order (cached for the last ``xh``)."""
        if self._extrapolated is not None and self._extrapolated[0] is xh:
            return self._extrapolated[1]
        x = np.where(np.isfinite(xh), xh, 1.0)
        offset = ((self.low - self.best) / self.scale)[:, None]
        rel = np.stack([self.fits[family].predict(x) + offset for family in FAMILY_NAMES])
        rel = np.clip(rel, -REL_CLIP, REL_CLIP)
        self._extrapolated = (xh, rel)
        return rel


def curve_scale(scores: np.ndarray) -> float:
    """The scale ``S`` of a curve: the range of its last 3 scores, floored at 1% of their
    magnitude and at 0.01.

    Recent points, because early ones can be orders of magnitude away (a perplexity
    falling from 3e6 to 100) and would make every later change look like zero.
    """
    scores = np.asarray(scores, dtype=np.float64)
    recent = scores[-RECENT_SCALE_POINTS:]
    spread = float(recent.max() - recent.min())
    return max(spread, 0.01 * float(np.abs(recent).max()), 0.01)


def relative_target(value: np.ndarray, best: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The prediction target: ``(value - best) / scale``, clipped like the features."""
    return np.clip((np.asarray(value) - best) / scale, -REL_CLIP, REL_CLIP)


def _keep_indices(n: int) -> np.ndarray:
    """Which points of an ``n``-point prefix enter the padded arrays."""
    if n <= MAX_FIT_POINTS:
        return np.arange(n)
    early = MAX_FIT_POINTS - _RECENT_POINTS
    spread = np.unique(np.linspace(0, n - _RECENT_POINTS - 1, early).round().astype(int))
    return np.concatenate([spread, np.arange(n - _RECENT_POINTS, n)])


def _fill_row(i: int, tokens: np.ndarray, scores: np.ndarray, budget: float, x: np.ndarray,
              y: np.ndarray, mask: np.ndarray, stats: np.ndarray) -> None:
    n = len(tokens)
    if n == 0 or len(scores) != n:
        raise ParameterError(f"curve {i}: tokens and values must be non-empty and of equal "
                             f"length, got {n} and {len(scores)}")
    budget = budget if np.isfinite(budget) and budget > 0 else max(float(tokens[-1]), 1.0)
    keep = _keep_indices(n)
    k = len(keep)
    x[i, :k] = tokens[keep] / budget
    y[i, :k] = scores[keep]
    mask[i, :k] = True
    best_index = int(np.argmax(scores))
    stats[i] = (budget, n, scores[best_index], tokens[best_index] / budget, best_index,
                scores[0], scores.min(), curve_scale(scores))


# --- the registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    """A registered feature: one batch implementation, callable on a single curve.

    Attributes:
        name: the column name.
        compute: ``compute(batch) -> (n,)``, or ``compute(batch, xh) -> (n, H)`` for
            horizon features, where ``xh`` holds horizons as fractions of the budget.
        horizon: whether the feature depends on the horizon.

    Example:
        >>> REGISTRY["frac_seen"]([1.0, 2.0], [0.2, 0.3], 8.0)
        0.25
    """

    name: str
    compute: Callable[..., np.ndarray]
    horizon: bool = False

    def __call__(self, tokens: Sequence[float], values: Sequence[float], budget: float,
                 horizon: float | None = None) -> float:
        batch = PrefixBatch.from_curves([(tokens, values, budget)])
        if not self.horizon:
            return float(self.compute(batch)[0])
        if horizon is None:
            raise ParameterError(f"feature {self.name!r} depends on the horizon: pass horizon=")
        return float(self.compute(batch, np.array([[horizon / batch.budget[0]]]))[0, 0])


REGISTRY: dict[str, Feature] = {}


def _register(name: str, *, horizon: bool = False) -> Callable:
    def add(compute: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        REGISTRY[name] = Feature(name, compute, horizon)
        return compute
    return add


def _window(batch: PrefixBatch, k: int) -> np.ndarray:
    """Weights of the last ``k`` kept points with positive cost."""
    pos = np.arange(batch.x.shape[1])[None]
    return (batch.mask & (pos > (batch.last_index[:, None] - k)) & (batch.x > 0)).astype(float)


def _linear(batch: PrefixBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Slope (scale units per e-fold of cost) and residual std of the last ``k`` points."""
    if k not in batch._lines:
        batch._lines[k] = _fit_line(batch, k)
    return batch._lines[k]


def _fit_line(batch: PrefixBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
    w = _window(batch, k)
    total = np.maximum(w.sum(1, keepdims=True), 1e-300)
    w = w / total
    lx = np.log(np.maximum(batch.x, X_MIN))
    z = batch.y / batch.scale[:, None]
    lx_c = lx - (w * lx).sum(1, keepdims=True)
    z_c = z - (w * z).sum(1, keepdims=True)
    var_x = (w * lx_c * lx_c).sum(1)
    cov = (w * lx_c * z_c).sum(1)
    ok = var_x > 1e-12
    slope = np.where(ok, cov / np.where(ok, var_x, 1.0), 0.0)
    resid_var = (w * z_c * z_c).sum(1) - slope * cov
    return np.clip(slope, -REL_CLIP, REL_CLIP), np.sqrt(np.maximum(resid_var, 0.0))


def _last_mean(batch: PrefixBatch, k: int) -> np.ndarray:
    pos = np.arange(batch.x.shape[1])[None]
    w = batch.mask & (pos > (batch.last_index[:, None] - k))
    return (w * batch.y).sum(1) / w.sum(1)


_register("frac_seen")(lambda b: b.x_last)
_register("n_points")(lambda b: b.n_points.astype(float))
_register("first_rel")(lambda b: b.rel(b.first))
_register("last_rel")(lambda b: b.rel(b.y_last))
_register("mean3_rel")(lambda b: b.rel(_last_mean(b, 3)))
_register("best_age_points")(lambda b: b.n_points - 1 - b.best_index)
_register("best_age_frac")(lambda b: (b.x_last - b.x_best) / np.maximum(b.x_last, 1e-12))
_register("slope_last3")(lambda b: _linear(b, 3)[0])
_register("slope_last6")(lambda b: _linear(b, 6)[0])
_register("slope_all")(lambda b: _linear(b, MAX_FIT_POINTS)[0])
_register("curvature")(lambda b: _linear(b, 3)[0] - _linear(b, MAX_FIT_POINTS)[0])
_register("noise")(lambda b: _linear(b, 6)[1])
_register("range_ratio")(lambda b: np.minimum((b.best - b.low) / b.scale, 1e4))
_register("scale_ratio")(lambda b: b.scale / np.maximum(np.abs(b.best), b.scale))
_register("best_level")(lambda b: np.sign(b.best) * np.log1p(np.abs(b.best)))


@_register("headroom_rel")
def _headroom_rel(batch: PrefixBatch) -> np.ndarray:
    """``(1 - best) / S`` for curves within [0, 1] (room left to a perfect score), else -1."""
    bounded = (batch.low >= 0.0) & (batch.best <= 1.0)
    return np.where(bounded, np.minimum((1.0 - batch.best) / batch.scale, REL_CLIP), -1.0)


@_register("loss_room_rel")
def _loss_room_rel(batch: PrefixBatch) -> np.ndarray:
    """``-best / S`` for curves whose scores are all negative (a positive loss has at most
    that much left to gain before reaching 0), else -1."""
    return np.where(batch.best < 0.0, np.minimum(-batch.best / batch.scale, 1e4), -1.0)


def _family_rmse(family: str) -> Callable[[PrefixBatch], np.ndarray]:
    return lambda b: b.fits[family].rmse


def _family_at(family: str) -> Callable[[PrefixBatch, np.ndarray], np.ndarray]:
    index = FAMILY_NAMES.index(family)
    return lambda b, xh: b.fits_rel(xh)[index]


for _family in FAMILY_NAMES:
    _register(f"{_family}_rmse")(_family_rmse(_family))

_register("h_frac", horizon=True)(lambda b, xh: xh)
_register("h_log_ratio", horizon=True)(
    lambda b, xh: np.log(np.maximum(xh, X_MIN) / np.maximum(b.x_last, X_MIN)[:, None]))

for _family in FAMILY_NAMES:
    _register(f"{_family}_at_h", horizon=True)(_family_at(_family))


@_register("bestfit_at_h", horizon=True)
def _bestfit_at_h(batch: PrefixBatch, xh: np.ndarray) -> np.ndarray:
    rmse = np.stack([batch.fits[family].rmse for family in FAMILY_NAMES])
    return batch.fits_rel(xh)[np.argmin(rmse, axis=0), np.arange(len(batch))]


_register("fits_median_at_h", horizon=True)(lambda b, xh: np.median(b.fits_rel(xh), axis=0))
_register("fits_spread_at_h", horizon=True)(
    lambda b, xh: np.ptp(b.fits_rel(xh), axis=0))


@_register("linlog_at_h", horizon=True)
def _linlog_at_h(batch: PrefixBatch, xh: np.ndarray) -> np.ndarray:
    """The mean of the last 3 points continued by the recent slope in log-cost."""
    step = REGISTRY["h_log_ratio"].compute(batch, xh)
    start = batch.rel(_last_mean(batch, 3))[:, None]
    return np.clip(start + _linear(batch, 6)[0][:, None] * step, -REL_CLIP, REL_CLIP)


FEATURE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def feature_matrix(batch: PrefixBatch, xh: np.ndarray,
                   names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """All features of ``n`` prefixes at ``H`` horizons each: shape ``(n, H, len(names))``.

    Args:
        batch: the prefixes.
        xh: horizons as fractions of each curve's budget, shape ``(n, H)``; NaN pads.
        names: feature columns, in order (default: every registered feature).
    """
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise ParameterError(f"names must be registered features, unknown: {unknown}")
    xh = np.asarray(xh, dtype=np.float64).reshape(len(batch), -1)
    out = np.empty(xh.shape + (len(names),))
    for j, name in enumerate(names):
        feature = REGISTRY[name]
        out[:, :, j] = (feature.compute(batch, xh) if feature.horizon
                        else feature.compute(batch)[:, None])
    return out


def features_of(tokens: Sequence[float], values: Sequence[float], budget: float,
                horizon: float) -> Mapping[str, float]:
    """Every registered feature of one curve at one horizon, as ``{name: value}``."""
    batch = PrefixBatch.from_curves([(tokens, values, budget)])
    row = feature_matrix(batch, np.array([[horizon / batch.budget[0]]]))[0, 0]
    return dict(zip(FEATURE_NAMES, row.tolist()))
