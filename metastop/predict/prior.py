"""The population prior: how curves go on from their first point, for one-point curves.

Quantiles of the relative final gain ``(final score - first score) / max(|first score|,
0.01)`` per kind of curve (``kinds._kind`` of the first score) and first-point budget
fraction bucket (``kinds.PRIOR_EDGES``), pooled and per metric with enough curves. A curve
with fewer than two points is predicted from these tables, scaled linearly in tokens from
its last point to its budget.

Example:
    >>> prior = _prior(curves, (0.1, 0.5, 0.9))  # doctest: +SKIP
    >>> prior_scores(prior, curve.prefix(1), horizons)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from ..curves import Curve
from .kinds import _PRIOR_FLOOR, N_KINDS, PRIOR_EDGES, _bucket, _kind

PRIOR_METRIC_CURVES = 50
"""A metric with at least this many training curves gets its own prior table."""


def prior_scores(prior: Mapping[str, Any], curve: Curve, horizons: np.ndarray) -> np.ndarray:
    """Scores of ``curve`` at ``horizons`` (rows) for each quantile level of the prior's
    gains (columns), unsorted and unclipped; the curve's metric's own table where it has one."""
    best = float(curve.scores.max())
    bucket = int(_bucket(np.array([curve.tokens[0] / curve.budget if curve.budget > 0
                                    else 1.0]), PRIOR_EDGES)[0])
    table = prior.get("by_metric", {}).get(curve.metric, prior["gain_quantiles"])
    gains = np.asarray(table)[int(_kind(best)), bucket]
    remaining = curve.budget - curve.last_tokens
    share = (np.clip((horizons - curve.last_tokens) / remaining, 0.0, 1.0) if remaining > 0
             else np.ones_like(horizons))
    return best + max(abs(best), _PRIOR_FLOOR) * share[:, None] * gains[None, :]


def _prior(curves: list[Curve], quantiles: Sequence[float], *,
           target: str = "value") -> dict[str, Any]:
    """Quantiles of the relative final gain from a curve's first point, per kind and bucket,
    for all curves and for each metric with at least ``PRIOR_METRIC_CURVES`` curves.

    The gain is ``(final score - first score) / max(|first score|, 0.01)``; kinds are
    ``_kind`` of the first score; buckets (``PRIOR_EDGES``) are the first point's budget
    fraction. A metric's own table matters where its first point says much about its
    last (a language model's loss starts near ``log(vocabulary)`` and falls by a similar
    share every run), which the pooled kinds blur across metrics and scales.
    """
    first = np.array([c.scores[0] for c in curves])
    final = np.array([c.scores[-1] if target == "value" else c.scores.max() for c in curves])
    gain = (final - first) / np.maximum(np.abs(first), _PRIOR_FLOOR)
    cells = (_kind(first), _bucket(np.array([c.tokens[0] / c.budget if c.budget > 0 else 1.0
                                             for c in curves]), PRIOR_EDGES))
    pooled = _gain_table(gain, *cells, quantiles)
    metrics = [c.metric for c in curves]
    counts = Counter(m for m in metrics if m is not None)
    by_metric = {name: _gain_table(gain, *cells, quantiles, fallback=pooled,
                                   mask=np.array([m == name for m in metrics]))
                 for name, n in sorted(counts.items()) if n >= PRIOR_METRIC_CURVES}
    return {"bucket_edges": list(PRIOR_EDGES), "gain_quantiles": pooled, "by_metric": by_metric,
            "gain": "(final score - first score) / max(|first score|, 0.01), per kind (0: "
                    "first score >= 0.01, 1: < 0, 2: in [0, 0.01)) and first-point "
                    "budget-fraction bucket; scaled linearly in tokens from now to the budget; "
                    f"by_metric: the same table for each metric with >= {PRIOR_METRIC_CURVES} "
                    "curves (its cells with < 20 curves copy the pooled table's)"}


def _gain_table(gain: np.ndarray, kind: np.ndarray, bucket: np.ndarray,
                quantiles: Sequence[float], *, mask: np.ndarray | None = None,
                fallback: list | None = None) -> list:
    """Quantiles of ``gain`` per kind x bucket over the curves in ``mask`` (default: all).

    A cell with fewer than 20 curves takes ``fallback``'s cell; without a fallback, the
    quantiles of its kind, or of every curve in ``mask`` when the kind is sparse too.
    """
    mask = np.ones(len(gain), dtype=bool) if mask is None else mask
    table = []
    for k in range(N_KINDS):
        in_kind = mask & (kind == k)
        kind_gains = gain[in_kind] if in_kind.sum() >= 20 else gain[mask]
        row = []
        for b in range(len(PRIOR_EDGES) + 1):
            cell = in_kind & (bucket == b)
            if cell.sum() >= 20:
                row.append(np.quantile(gain[cell], quantiles).tolist())
            elif fallback is not None:
                row.append(fallback[k][b])
            else:
                row.append(np.quantile(kind_gains, quantiles).tolist())
        table.append(row)
    return table

