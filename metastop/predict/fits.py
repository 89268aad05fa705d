"""Parametric learning-curve families fitted by bounded least squares.

The families follow Domhan, Springenberg and Hutter (2015), "Speeding up automatic
hyperparameter optimization of deep neural networks by extrapolation of learning curves"
(IJCAI), written on the normalised cost ``x = tokens / budget`` and on *scores* (higher is
better):

========== =============================================== ========== ===========
family     formula                                          linear     nonlinear
========== =============================================== ========== ===========
pow3       ``c - a * x**(-alpha)``                          c, a >= 0  alpha
exp3       ``c - a * exp(-k * x)``                          c, a >= 0  k
logpower   ``a / (1 + (x / exp(b))**cc)``                   a          b, cc
mmf        ``alpha + a * x**kappa / (beta + x**kappa)``     alpha, a>=0 beta, kappa
janoschek  ``alpha - a * exp(-kappa * x**delta)``           alpha, a>=0 kappa, delta
========== =============================================== ========== ===========

Every family is ``y = c + a * g(x; u)`` (``logpower`` without ``c``), linear in ``(c, a)``
and nonlinear in one or two parameters ``u``. They are fitted by *variable projection*: for
each ``u`` on a grid the linear part has a closed-form weighted least-squares solution (with
the bound ``a >= 0`` that makes the curve non-decreasing), computed for the whole grid and a
whole batch of curves at once; the best grid point is then refined twice on finer local
grids (5 points per axis, +-1/2 then +-1/8 of a coarse step) inside the parameter bounds.
There is one implementation per family, used both for single curves (``fit``) and for
batches (``fit_batch``, ``fit_families``); fits never raise on odd curves (one
or two points, flat, decreasing, noisy): they degrade to a constant.

Points at zero cost are left out of the fits while at least two points with positive cost
remain (power laws are undefined at ``x = 0``); ``x`` is floored at ``X_MIN`` everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Mapping

import numpy as np
from scipy.special import expit

from ..errors import ParameterError

logger = logging.getLogger(__name__)

X_MIN = 1e-3
"""Smallest normalised cost used in a fit or an extrapolation (power laws diverge at 0)."""

_REFINE_PASSES = (0.5, 0.125)  # local grid half-widths, in coarse grid steps


@dataclass(frozen=True)
class Family:
    """One parametric curve family ``y = c + a * g(x; u)``.

    Attributes:
        name: the family's name (``pow3``, ...); feature columns use it.
        basis: ``g(log_x, u)`` with ``log_x`` of shape ``(n, 1, p)`` and ``u`` of shape
            ``(n or 1, m, k)``; returns ``(n, m, p)``.
        axes: the coarse grid of each nonlinear parameter, in the unconstrained
            coordinates ``u`` (evenly spaced; the ends are the bounds).
        intercept: whether the family has the free offset ``c``.
        nonneg: whether the amplitude ``a`` is bounded below by 0.
        params: maps ``(c, a, u)`` of one curve to the named parameters of the formula.

    Example:
        >>> sorted(FAMILIES)
        ['exp3', 'janoschek', 'logpower', 'mmf', 'pow3']
    """

    name: str
    basis: Callable[[np.ndarray, np.ndarray], np.ndarray]
    axes: tuple[np.ndarray, ...]
    intercept: bool
    nonneg: bool
    params: Callable[[float, float, np.ndarray], dict[str, float]]

    @cached_property
    def grid(self) -> np.ndarray:
        """The coarse grid as an array of shape ``(1, m, k)``."""
        mesh = np.meshgrid(*self.axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)[None]

    @cached_property
    def steps(self) -> np.ndarray:
        return np.array([axis[1] - axis[0] for axis in self.axes])

    @cached_property
    def lower(self) -> np.ndarray:
        return np.array([axis[0] for axis in self.axes])

    @cached_property
    def upper(self) -> np.ndarray:
        return np.array([axis[-1] for axis in self.axes])


def _pow3(log_x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return -np.exp(-np.exp(u[..., 0:1]) * log_x)


def _exp3(log_x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return -np.exp(-np.exp(u[..., 0:1]) * np.exp(log_x))


def _logpower(log_x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return expit(u[..., 1:2] * (u[..., 0:1] - log_x))


def _mmf(log_x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return expit(np.exp(u[..., 1:2]) * log_x - u[..., 0:1])


def _janoschek(log_x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return -np.exp(-np.exp(u[..., 0:1] + np.exp(u[..., 1:2]) * log_x))


def _logspace(low: float, high: float, n: int) -> np.ndarray:
    return np.linspace(np.log(low), np.log(high), n)


FAMILIES: Mapping[str, Family] = {
    family.name: family for family in (
        Family("pow3", _pow3, (_logspace(0.02, 2.0, 16),), True, True,
               lambda c, a, u: {"c": c, "a": a, "alpha": float(np.exp(u[0]))}),
        Family("exp3", _exp3, (_logspace(0.1, 100.0, 16),), True, True,
               lambda c, a, u: {"c": c, "a": a, "k": float(np.exp(u[0]))}),
        Family("logpower", _logpower, (np.linspace(-7.0, 3.0, 9), np.linspace(-4.0, -0.25, 7)),
               False, False,
               lambda c, a, u: {"a": a, "b": float(u[0]), "c": float(u[1])}),
        Family("mmf", _mmf, (np.linspace(-7.0, 5.0, 9), _logspace(0.1, 5.0, 7)), True, True,
               lambda c, a, u: {"alpha": c, "delta": c + a, "beta": float(np.exp(u[0])),
                                "kappa": float(np.exp(u[1]))}),
        Family("janoschek", _janoschek, (_logspace(0.01, 100.0, 9), _logspace(0.1, 4.0, 7)),
               True, True,
               lambda c, a, u: {"alpha": c, "beta": c - a, "kappa": float(np.exp(u[0])),
                                "delta": float(np.exp(u[1]))}),
    )
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


@dataclass(frozen=True, eq=False)
class FitBatch:
    """Fits of one family to a batch of ``n`` curves.

    Attributes:
        family: the family fitted.
        c: offsets, shape ``(n,)`` (zeros for families without one).
        a: amplitudes, shape ``(n,)``.
        u: nonlinear parameters in grid coordinates, shape ``(n, k)``.
        rmse: weighted root-mean-square residual of each fit, shape ``(n,)``.

    Example:
        >>> x = np.linspace(0.1, 0.5, 6)[None]
        >>> fits = fit_batch(x, 0.9 - 0.2 * x ** -0.5, family="pow3")
        >>> round(float(fits.predict(np.array([1.0]))[0, 0]), 3)
        0.7
    """

    family: Family
    c: np.ndarray
    a: np.ndarray
    u: np.ndarray
    rmse: np.ndarray

    def __len__(self) -> int:
        return len(self.c)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Extrapolate every curve to normalised costs ``x`` (shape ``(q,)`` or ``(n, q)``)."""
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), (len(self), np.shape(x)[-1]))
        log_x = np.log(np.maximum(x, X_MIN))[:, None, :]
        g = self.family.basis(log_x, self.u[:, None, :])[:, 0, :]
        return self.c[:, None] + self.a[:, None] * g

    def params(self, i: int = 0) -> dict[str, float]:
        """The named parameters of curve ``i`` (as in the family's formula)."""
        return self.family.params(float(self.c[i]), float(self.a[i]), self.u[i])


@dataclass(frozen=True, eq=False)
class Fit:
    """The fit of one family to one curve: parameters, quality and extrapolation.

    Example:
        >>> f = fit([1, 2, 4, 8], [0.2, 0.4, 0.5, 0.55], budget=16, family="exp3")
        >>> f.family, f.rmse < 0.05, f(1.0) > 0.5
        ('exp3', True, True)
    """

    family: str
    params: dict[str, float]
    rmse: float
    _batch: FitBatch

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        """The fitted curve at normalised cost(s) ``x = tokens / budget``."""
        values = self._batch.predict(np.atleast_1d(np.asarray(x, dtype=np.float64)))[0]
        return float(values[0]) if np.ndim(x) == 0 else values

    def at_tokens(self, tokens: float | np.ndarray, budget: float) -> float | np.ndarray:
        """The fitted curve at ``tokens`` (same cost unit as the fitted curve)."""
        return self(np.asarray(tokens, dtype=np.float64) / _positive_budget(budget))


def _positive_budget(budget: float) -> float:
    budget = float(budget)
    return budget if np.isfinite(budget) and budget > 0 else 1.0


def _moments(g: np.ndarray, w_wy: np.ndarray) -> np.ndarray:
    """Weighted moments of a basis ``g`` (``(n, m, p)``), given ``w_wy = [w, w*y]``
    (``(n, p, 2)``): ``(n, m, 3)`` holding ``sum w g``, ``sum w g y`` and ``sum w g^2``."""
    return np.concatenate([np.matmul(g, w_wy), np.matmul(g * g, w_wy[:, :, :1])], axis=2)


def _solve(moments: np.ndarray, s_y: np.ndarray, s_yy: np.ndarray, intercept: np.ndarray,
           nonneg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of ``y ~ c + a g`` for every grid point: ``(c, a, sse)``.

    ``moments`` are ``_moments`` of the basis at ``m`` grid points (``(n, m, 3)``) with
    weights summing to 1; ``s_y`` and ``s_yy`` the weighted moments of ``y`` (``(n, 1)``);
    ``intercept`` and ``nonneg`` boolean ``(m,)`` flags of each grid point's family. A
    degenerate basis (constant on the points) gives ``a = 0``.
    """
    s_g, s_gy, s_gg = moments[..., 0], moments[..., 1], moments[..., 2]
    g_mean = np.where(intercept, s_g, 0.0)
    var_g = np.maximum(s_gg - g_mean * s_g, 0.0)
    cov = s_gy - g_mean * s_y
    var_y = s_yy - np.where(intercept, s_y * s_y, 0.0)
    ok = var_g > 1e-12 * np.maximum(s_gg, 1e-300)
    a = np.where(ok, cov / np.where(ok, var_g, 1.0), 0.0)
    a = np.where(nonneg, np.maximum(a, 0.0), a)
    c = np.where(intercept, s_y - a * g_mean, 0.0)
    sse = np.maximum(var_y - 2.0 * a * cov + a * a * var_g, 0.0)
    return c, a, np.where(np.isfinite(sse), sse, np.inf)


_OFFSETS = {k: np.stack(np.meshgrid(*([np.linspace(-1.0, 1.0, 5)] * k), indexing="ij"),
                        axis=-1).reshape(-1, k) for k in (1, 2)}


def _local_grid(u: np.ndarray, family: Family, width: float) -> np.ndarray:
    """A 5-per-axis grid around each curve's ``u`` (``(n, k)`` -> ``(n, 5**k, k)``)."""
    grid = u[:, None, :] + _OFFSETS[u.shape[1]][None] * (width * family.steps)
    return np.minimum(np.maximum(grid, family.lower), family.upper)


def _prepare(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shape checks, zero-cost points dropped where possible, weights normalised."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape:
        raise ParameterError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
    w = (np.ones_like(x) if weights is None
         else np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape).copy())
    w = np.where(np.isfinite(x) & np.isfinite(y) & (w > 0), w, 0.0)
    positive = w * (x > 0)
    enough = (positive > 0).sum(axis=1, keepdims=True) >= 2
    w = np.where(enough, positive, w)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)
    x = np.where(np.isfinite(x), x, 1.0)
    y = np.where(w > 0, y, 0.0)
    return np.log(np.maximum(x, X_MIN))[:, None, :], y, w


class _JointSolve:
    """Solves several families per pass: per-family moments, one stacked solve."""

    def __init__(self, specs: list[Family], log_x: np.ndarray, y: np.ndarray, w: np.ndarray):
        self.specs, self.log_x, self.w = specs, log_x, w
        wy = w * y
        self.w_wy = np.stack([w, wy], axis=-1)
        self.s_y = wy.sum(-1, keepdims=True)
        self.s_yy = (wy * y).sum(-1, keepdims=True)
        self.intercept = {}
        self.nonneg = {}

    def best(self, grids: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
        """Each family's best ``(c, a, u, sse)`` over its grid (``(n|1, m_f, k_f)``)."""
        sizes = [grid.shape[1] for grid in grids]
        moments = np.concatenate([_moments(spec.basis(self.log_x, grid), self.w_wy)
                                  for spec, grid in zip(self.specs, grids)], axis=1)
        key = tuple(sizes)
        if key not in self.intercept:
            self.intercept[key] = np.repeat([spec.intercept for spec in self.specs], sizes)
            self.nonneg[key] = np.repeat([spec.nonneg for spec in self.specs], sizes)
        c, a, sse = _solve(moments, self.s_y, self.s_yy, self.intercept[key], self.nonneg[key])
        out, start = [], 0
        rows = np.arange(len(c))
        for grid, size in zip(grids, sizes):
            pick = np.argmin(sse[:, start:start + size], axis=1)
            u = grid[0, pick] if grid.shape[0] == 1 else grid[rows, pick]
            pick = pick + start
            out.append((c[rows, pick], a[rows, pick], u, sse[rows, pick]))
            start += size
        return out


def fit_families(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *,
                 families: tuple[str, ...] = FAMILY_NAMES) -> dict[str, FitBatch]:
    """Fit several families to a batch of curves given as padded arrays.

    Args:
        x: normalised costs ``tokens / budget``, shape ``(n, p)`` (or ``(p,)`` for one curve).
        y: scores (higher is better), same shape.
        weights: per-point weights, same shape; 0 marks padding. Default: all 1.
        families: names from ``FAMILY_NAMES``.

    Returns:
        ``{family: FitBatch}``, with ``rmse`` over the points of positive weight. A curve
        whose points cannot determine a family (fewer than two distinct costs, flat or
        decreasing scores) gets ``a = 0``: the constant at its (weighted) mean.
    """
    unknown = [name for name in families if name not in FAMILIES]
    if unknown or not families:
        raise ParameterError(f"families must be names from {FAMILY_NAMES}, got {families!r}")
    specs = [FAMILIES[name] for name in families]
    solver = _JointSolve(specs, *_prepare(x, y, weights))
    fits = solver.best([spec.grid for spec in specs])
    for width in _REFINE_PASSES:
        local = solver.best([_local_grid(u, spec, width)
                             for spec, (_, _, u, _) in zip(specs, fits)])
        fits = [_keep_better(old, new) for old, new in zip(fits, local)]
    return {spec.name: FitBatch(spec, c, a, u, np.sqrt(np.maximum(sse, 0.0)))
            for spec, (c, a, u, sse) in zip(specs, fits)}


def _keep_better(old: tuple[np.ndarray, ...], new: tuple[np.ndarray, ...]
                 ) -> tuple[np.ndarray, ...]:
    better = new[3] < old[3]
    c, a, sse = (np.where(better, n, o) for o, n in ((old[0], new[0]), (old[1], new[1]),
                                                     (old[3], new[3])))
    return c, a, np.where(better[:, None], new[2], old[2]), sse


def fit_batch(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *,
              family: str) -> FitBatch:
    """Fit one family to a batch of curves (see ``fit_families`` for the arguments)."""
    if family not in FAMILIES:
        raise ParameterError(f"family must be one of {FAMILY_NAMES}, got family={family!r}")
    return fit_families(x, y, weights, families=(family,))[family]


def fit(tokens: np.ndarray, values: np.ndarray, budget: float | None = None, *,
        family: str) -> Fit:
    """Fit one family to one curve of scores.

    Args:
        tokens: costs of the observations.
        values: scores (higher is better).
        budget: the cost that maps to ``x = 1``; default: the last ``tokens``.
        family: one of ``FAMILY_NAMES``.
    """
    tokens = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
    if budget is None:
        budget = tokens[-1] if len(tokens) else 1.0
    budget = _positive_budget(budget)
    batch = fit_batch(tokens / budget, np.asarray(values, dtype=np.float64), family=family)
    return Fit(family, batch.params(0), float(batch.rmse[0]), batch)


def fit_all(tokens: np.ndarray, values: np.ndarray, budget: float | None = None
            ) -> dict[str, Fit]:
    """Fit every family to one curve: ``{family: Fit}``."""
    tokens = np.atleast_1d(np.asarray(tokens, dtype=np.float64))
    if budget is None:
        budget = tokens[-1] if len(tokens) else 1.0
    batches = fit_families(tokens / _positive_budget(budget), np.asarray(values, dtype=np.float64))
    return {name: Fit(name, b.params(0), float(b.rmse[0]), b) for name, b in batches.items()}


def best_of_fits(fits: Mapping[str, Fit]) -> Fit:
    """The fit with the lowest rmse (the first family listed wins ties)."""
    if not fits:
        raise ParameterError("fits must hold at least one fit, got none")
    return min(fits.values(), key=lambda f: (f.rmse if np.isfinite(f.rmse) else np.inf))
