"""Training rows of the predictor: sampled prefixes of finished curves x their later points.

Each row is the features of a prefix (at least two points) and a later horizon, and the
curve's value there relative to its best so far and divided by its scale
(``features.relative_target``). Prefixes and horizons are sampled per curve with one seeded
generator, and each curve's rows share its weight.

Example:
    >>> rows = _training_rows(curves, "value", np.ones(len(curves)), mask, 6, 4,
    ...                       np.random.default_rng(0))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..curves import Curve
from ..errors import ParameterError
from .context import SiblingPool, context_matrix
from .features import PrefixBatch, feature_matrix, relative_target
from .kinds import _is_perplexity
from .manifest import sha256_bytes

_CALIBRATION_SALT = "metastop-calibration-v1:"


@dataclass(frozen=True)
class _Rows:
    """Training rows: features, relative targets, weights and their groups."""

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    fraction: np.ndarray
    horizon: np.ndarray
    best: np.ndarray
    perplexity: np.ndarray
    is_final: np.ndarray
    n_context: np.ndarray


def _calibration_groups(groups: list[str], share: float, random_state: int) -> np.ndarray:
    """Boolean mask of curves whose group calibrates: groups chosen by hash (about ``share``
    of them); with too few groups for that, every k-th group; with one group, every k-th
    curve."""
    unique = sorted(set(groups))
    salt = f"{_CALIBRATION_SALT}{random_state}:"
    chosen = {g for g in unique
              if int(sha256_bytes((salt + g).encode())[:16], 16) / 2.0**64 < share}
    every = max(2, round(1 / share))
    if not chosen or len(chosen) == len(unique):
        chosen = set(unique[::every])
    mask = np.array([g in chosen for g in groups])
    if mask.all():
        mask = np.arange(len(groups)) % every == 0
    return mask


def _checked_weights(sample_weight: Sequence[float] | None, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    weights = np.asarray(sample_weight, dtype=float)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ParameterError(f"sample_weight must hold {n} finite weights >= 0 (one per "
                             f"curve), got shape {weights.shape}")
    return weights


def _sample(candidates: np.ndarray, k: int, rng: np.random.Generator,
            keep_last: bool) -> np.ndarray:
    if len(candidates) <= k:
        return candidates
    if keep_last:
        rest = rng.choice(candidates[:-1], size=k - 1, replace=False)
        return np.sort(np.r_[rest, candidates[-1]])
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _training_rows(curves: list[Curve], target: str, weights: np.ndarray, calibration: np.ndarray,
                   max_prefixes: int, max_horizons: int, rng: np.random.Generator,
                   pool: SiblingPool | None = None, chunk: int = 20000) -> _Rows:
    """Prefixes x later observed points of every curve, features computed in chunks. With a
    sibling ``pool`` each prefix gets a random leave-one-run-out context (``pool.draw``)."""
    prefixes, horizons, owners, contexts = [], [], [], []
    for i, curve in enumerate(curves):
        n = len(curve)
        for k in _sample(np.arange(2, n), max_prefixes, rng, keep_last=False):
            prefixes.append((curve.tokens[:k], curve.scores[:k], curve.budget))
            horizons.append(_sample(np.arange(k, n), max_horizons, rng, keep_last=True))
            owners.append(i)
            contexts.append(pool.draw(i, rng) if pool is not None else None)
    perplexity = np.array([_is_perplexity(c) for c in curves])
    parts = [_rows_chunk(curves, target, prefixes[s:s + chunk], horizons[s:s + chunk],
                         owners[s:s + chunk], weights, calibration, perplexity,
                         contexts[s:s + chunk] if pool is not None else None)
             for s in range(0, len(prefixes), chunk)]
    return _Rows(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _rows_chunk(curves: list[Curve], target_kind: str, prefixes: list, horizons: list, owners: list,
                weights: np.ndarray, calibration: np.ndarray, perplexity: np.ndarray,
                contexts: list | None) -> tuple[np.ndarray, ...]:
    batch = PrefixBatch.from_curves(prefixes)
    width = max(len(h) for h in horizons)
    xh = np.full((len(prefixes), width), np.nan)
    target = np.full((len(prefixes), width), np.nan)
    final = np.zeros((len(prefixes), width), dtype=bool)
    for r, (owner, idx) in enumerate(zip(owners, horizons)):
        curve = curves[owner]
        xh[r, :len(idx)] = curve.tokens[idx] / batch.budget[r]
        scores = curve.scores if target_kind == "value" else np.maximum.accumulate(curve.scores)
        target[r, :len(idx)] = scores[idx]
        final[r, :len(idx)] = idx == len(curve) - 1
    valid = np.isfinite(xh)
    counts = valid.sum(axis=1)
    X = feature_matrix(batch, xh)
    if contexts is not None:
        X = np.concatenate([X, context_matrix(batch, xh, contexts)], axis=2)
    X = X[valid]
    n_context = np.array([len(c) if c is not None else 0 for c in (contexts or [None] * len(prefixes))])
    rep = lambda a: np.repeat(a, counts)  # noqa: E731 - per-prefix value on every row
    y = relative_target(target[valid], rep(batch.best), rep(batch.scale))
    owners = np.asarray(owners)
    return (X.astype(np.float32), y, rep(weights[owners] / counts),
            rep(calibration[owners].astype(int)), rep(batch.x_last), xh[valid], rep(batch.best),
            rep(perplexity[owners]), final[valid], rep(n_context))
