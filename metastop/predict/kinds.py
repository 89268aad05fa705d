"""Kinds of curve and budget buckets: the cells the calibration and the prior are kept by.

A curve is accuracy-like, loss-like (its scores are negative: losses negated) or still at
zero; the calibration also keeps perplexities apart (``metric_floor`` 1). Budget fractions
fall into buckets between ``BUCKET_EDGES`` (the calibration: fraction observed) or
``PRIOR_EDGES`` (the prior: fraction at the first point). The model, the calibration, the
prior and the manifest checks all index their tables with these.

Example:
    >>> import numpy as np
    >>> _bucket(np.array([0.1, 0.5, 0.9])).tolist()
    [0, 2, 3]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..curves import Curve, metric_floor

BUCKET_EDGES = (0.15, 0.35, 0.65)
"""Observed-fraction buckets (edges) of the calibration cells."""
PRIOR_EDGES = (1e-9, 0.15, 0.35, 0.65)
"""First-point budget-fraction buckets of the prior; the first holds curves first evaluated at
zero cost (at initialisation, where a language model's loss is about log(vocabulary))."""
N_KINDS = 3
_PRIOR_FLOOR = 0.01
N_CELL_KINDS = 3
"""Kinds of curve calibrated apart: accuracy-like, loss-like, perplexity."""
N_BASE_CELLS = 2 * N_CELL_KINDS * (len(BUCKET_EDGES) + 1)
"""Cells of a model without task memory: fraction bucket x kind x horizon at the end."""
CONTEXT_EDGES = (1, 3)
"""Context sizes calibrated apart: no sibling, 1-2 siblings, 3 or more."""
N_CELLS = N_BASE_CELLS * (len(CONTEXT_EDGES) + 1)
_AT_END = 1.0 - 1e-9
"""Horizons at or past this fraction of the budget are the budget's end."""


def _bucket(fraction: np.ndarray, edges: Sequence[float] = BUCKET_EDGES) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), fraction, side="right")


def _kind(score: np.ndarray) -> np.ndarray:
    """Kind of a curve by a score (its best, or its first for the prior): 0 accuracy-like
    (>= 0.01), 1 loss-like (< 0), 2 still at zero (in [0, 0.01): nothing learned yet)."""
    score = np.asarray(score, dtype=float)
    return np.where(score < 0, 1, np.where(score < _PRIOR_FLOOR, 2, 0))


def _cell(fraction: np.ndarray, best: np.ndarray, horizon: np.ndarray,
          perplexity: np.ndarray, n_context: np.ndarray | int = 0) -> np.ndarray:
    """Calibration cell of a row: observed-fraction bucket x kind of curve x (horizon at the
    budget's end or before it: the final value is what most decisions turn on, and the
    longest look ahead). The kinds are accuracy-like, loss-like (best score < 0) and
    perplexity (``metric_floor`` 1): a perplexity is the exponential of a loss, and its
    errors, even relative to its scale, are of another size than a loss's. The context size
    (``CONTEXT_EDGES``) is the highest digit, so ``cell % N_BASE_CELLS`` is the cell of a
    model without task memory."""
    n_buckets = len(BUCKET_EDGES) + 1
    kind = np.where(perplexity, 2, (_kind(best) == 1).astype(int))
    context = np.searchsorted(np.asarray(CONTEXT_EDGES), n_context, side="right")
    return (_bucket(fraction) + n_buckets * kind
            + N_CELL_KINDS * n_buckets * (np.asarray(horizon) >= _AT_END)
            + N_BASE_CELLS * context)


def _is_perplexity(curve: Curve) -> bool:
    return metric_floor(curve.metric) == 1.0
