"""Split-conformal calibration of the predicted quantiles (asymmetric, width-normalised CQR).

Romano, Patterson and Candes 2019, "Conformalized quantile regression" (NeurIPS): on a
calibration fold of whole groups, each side of each symmetric quantile pair gets its own
correction factor per cell (``kinds._cell``: observed-fraction bucket x kind of curve x
horizon at the budget's end or before it), in units of the pair's predicted width plus a
stabilizer, so the 80% interval covers about 80% of truths on unseen runs.

Example:
    >>> offsets = _conformal_offsets(raw, y, cells, (0.1, 0.5, 0.9))  # doctest: +SKIP
    >>> calibrated(raw, offsets, cells)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .kinds import BUCKET_EDGES, N_BASE_CELLS, N_CELLS, _cell
from .rows import _Rows

_WIDTH_STABILIZER = 0.5
"""Added to predicted widths (in curve-scale units) when normalising conformity scores, so
near-zero-width intervals (flat curves) still get an absolute correction."""


def calibrated(raw: np.ndarray, calibration: Mapping[str, Any], cell: np.ndarray) -> np.ndarray:
    """Sort the quantiles, then move each side of each symmetric pair out by its conformal
    factor (per calibration cell, see ``kinds._cell``) times the pair's predicted width. A
    model calibrated without context sizes has ``N_BASE_CELLS`` cells: ``cell % n`` is its
    cell."""
    factors = np.asarray(calibration["factors"])
    return _apply_conformal(np.sort(raw, axis=1), factors[np.asarray(cell) % len(factors)])


def _pair_widths(q: np.ndarray) -> np.ndarray:
    """Width of each symmetric quantile pair (``(n, n_q // 2)``) plus ``_WIDTH_STABILIZER``."""
    n_q = q.shape[1]
    width = q[:, n_q - 1 - np.arange(n_q // 2)] - q[:, :n_q // 2]
    return np.maximum(width, 0.0) + _WIDTH_STABILIZER


def _apply_conformal(q: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Move the low side of pair ``i`` down by ``factors[:, i, 0] * width`` and its high side
    up by ``factors[:, i, 1] * width`` (inwards where a factor is negative).

    Each side stays where its calibration put it. Where a side moved inwards past a quantile
    inside the pair, that quantile is clipped into the pair: re-sorting all of them would
    swap it out to be the bound, and widen the interval the calibration had narrowed. A pair
    whose sides cross is swapped. Pairs are repaired from the outside in, so the result is
    sorted.
    """
    n_q = q.shape[1]
    width = _pair_widths(q)
    out = q.copy()
    out[:, :n_q // 2] -= factors[:, :, 0] * width
    out[:, n_q - 1 - np.arange(n_q // 2)] += factors[:, :, 1] * width
    for lo in range(n_q // 2):
        hi = n_q - 1 - lo
        out[:, [lo, hi]] = np.sort(out[:, [lo, hi]], axis=1)
        out[:, lo + 1:hi] = np.clip(out[:, lo + 1:hi], out[:, lo, None], out[:, hi, None])
    return out


def _conformal_offsets(raw: np.ndarray, y: np.ndarray, cells: np.ndarray,
                       quantiles: Sequence[float], n_cells: int = N_CELLS) -> dict[str, Any]:
    """Width-normalised asymmetric CQR factors per calibration cell, quantile pair and side.

    For the pair (lo, hi) with nominal coverage ``c = q_hi - q_lo``, each side may miss
    ``(1 - c) / 2`` of the truths. The low side's conformity score of a calibration row is
    ``(lo - y) / (hi - lo + s)``, the high side's ``(y - hi) / (hi - lo + s)`` (normalised by
    the predicted width plus a stabilizer ``s``, so wide and narrow intervals are corrected
    in proportion and zero-width ones still by an absolute amount); each side's factor is
    the ``ceil((n + 1)(1 - (1 - c) / 2)) / n`` empirical quantile of its scores. Calibrating
    the sides apart lets a model that is too pessimistic on one side and too optimistic on
    the other be corrected on both. Cells with fewer than 50 rows use the rows of the same
    cell at any context size, then of their observed-fraction bucket, then all rows.
    """
    n_q = len(quantiles)
    raw = np.sort(raw, axis=1)
    widths = _pair_widths(raw)
    n_buckets = len(BUCKET_EDGES) + 1
    factors = np.zeros((n_cells, n_q // 2, 2))
    for b in range(n_cells):
        rows = cells == b
        if rows.sum() < 50:
            rows = cells % N_BASE_CELLS == b % N_BASE_CELLS
        if rows.sum() < 50:
            rows = cells % n_buckets == b % n_buckets
        if rows.sum() < 50:
            rows = np.ones_like(cells, dtype=bool)
        n = int(rows.sum())
        for lo in range(n_q // 2):
            hi = n_q - 1 - lo
            miss = (1.0 - (quantiles[hi] - quantiles[lo])) / 2  # each side's share of misses
            level = min(1.0, np.ceil((n + 1) * (1.0 - miss)) / n)
            for side, score in enumerate((raw[rows, lo] - y[rows], y[rows] - raw[rows, hi])):
                factors[b, lo, side] = float(np.quantile(score / widths[rows, lo], level,
                                                         method="higher"))
    return {"bucket_edges": list(BUCKET_EDGES), "factors": factors.tolist(),
            "cells": "observed-fraction bucket + n_buckets * kind (0 accuracy-like, 1 loss-like: "
                     "best score < 0, 2 perplexity) + 3 * n_buckets * (horizon at the budget's "
                     "end) + n_base_cells * context size bucket (0, 1-2, >= 3 siblings)",
            "layout": "factors[cell][pair][side], side 0 low, 1 high",
            "method": "split-conformal CQR (Romano et al. 2019), asymmetric (each side "
                      "calibrated apart), scores normalised by the predicted interval width, "
                      "per cell"}



def _calibration_metrics(calibration: Mapping[str, Any], quantiles: Sequence[float],
                         raw: np.ndarray, rows: _Rows, part: np.ndarray) -> dict[str, Any]:
    """Coverage of the outer interval before and after calibration, on the calibration rows."""
    cal = calibrated(raw, calibration, _cell(rows.fraction[part], rows.best[part],
                                             rows.horizon[part], rows.perplexity[part],
                                             rows.n_context[part]))
    y = rows.y[part]
    inside_raw = (raw[:, 0] <= y) & (y <= raw[:, -1])
    inside = (cal[:, 0] <= y) & (y <= cal[:, -1])
    median = cal[:, len(quantiles) // 2]
    final = rows.is_final[part]
    return {"calibration_rows": int(part.sum()),
            "coverage_outer_raw": float(inside_raw.mean()),
            "coverage_outer_calibrated": float(inside.mean()),
            "coverage_outer_calibrated_final": float(inside[final].mean()),
            "nominal_outer": float(quantiles[-1] - quantiles[0]),
            "median_abs_error_relative": float(np.mean(np.abs(median - y)))}
