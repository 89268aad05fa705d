"""LCDB 1.0 (Mohr, van Rijn et al., ECML PKDD 2022): learning curves of classical learners.

Example:
    >>> frame = lcdb_frame(pd.read_csv("database-accuracy.csv"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import CurveError

LCDB_COLUMNS = ("openmlid", "learner", "size_train", "outer_seed", "inner_seed", "score_valid")


def lcdb_frame(raw: pd.DataFrame, *, names: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Map LCDB's ``database-accuracy.csv`` table into the curve table.

    One curve per ``openmlid x learner x outer_seed x inner_seed``; the cost axis
    (``tokens``) is the number of training examples (``size_train``) and ``value`` is the
    validation accuracy (``score_valid``). ``run_id`` is the dataset (``lcdb/<openmlid>``) so
    that grouped cross-validation holds out whole datasets.

    Args:
        raw: the LCDB table (at least the columns in ``LCDB_COLUMNS``).
        names: OpenML dataset names by id, used as ``task``; unknown ids get
            ``openml-<id>``.

    Returns:
        The long table, sorted by curve and ``tokens``, with metadata columns ``dataset``,
        ``learner``, ``outer_seed`` and ``inner_seed``.

    Example:
        >>> raw = pd.DataFrame({"openmlid": [3, 3], "learner": ["SVC_rbf"] * 2,
        ...     "size_train": [16, 23], "outer_seed": [0, 0], "inner_seed": [0, 0],
        ...     "score_valid": [0.5, 0.6]})
        >>> lcdb_frame(raw)["curve_id"].iloc[0]
        'lcdb/3/SVC_rbf/0/0'
    """
    missing = [c for c in LCDB_COLUMNS if c not in raw.columns]
    if missing:
        raise CurveError(f"missing LCDB column(s) {missing}; columns present: "
                         f"{list(map(str, raw.columns))}")
    dataset = pd.to_numeric(raw["openmlid"], errors="raise").astype("int64")
    learner = raw["learner"].astype("category")
    short = learner.cat.rename_categories(
        [str(c).rsplit(".", 1)[-1] for c in learner.cat.categories])
    outer = raw["outer_seed"].astype("int64")
    inner = raw["inner_seed"].astype("int64")
    tokens = pd.to_numeric(raw["size_train"]).astype("float64")
    order = np.lexsort((tokens.to_numpy(), inner.to_numpy(), outer.to_numpy(),
                        learner.cat.codes.to_numpy(), dataset.to_numpy()))
    curve_id = _labels(lambda d, l, o, i: f"lcdb/{d}/{l}/{o}/{i}", dataset, short, outer, inner)
    frame = pd.DataFrame({
        "curve_id": curve_id, "run_id": _labels(lambda d: f"lcdb/{d}", dataset),
        "task": _labels(lambda d: (names or {}).get(int(d), f"openml-{d}"), dataset),
        "metric": "accuracy", "direction": "maximize", "tokens": tokens,
        "value": pd.to_numeric(raw["score_valid"]).astype("float64"),
        "dataset": dataset, "learner": learner, "outer_seed": outer, "inner_seed": inner,
    })
    if (np.diff(order) == 1).all():  # LCDB ships sorted; skip the copy
        return frame.reset_index(drop=True)
    return frame.take(order).reset_index(drop=True)


def _labels(label: Any, *keys: pd.Series) -> pd.Categorical:
    """``label(*key)`` per row, computed once per distinct key (fast on millions of rows)."""
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    levels = []
    for key in keys:  # one integer per row: mixed-radix code of the keys' own codes
        codes, uniques = pd.factorize(key, sort=False)
        combined = combined * len(uniques) + codes
        levels.append(np.asarray(uniques, dtype=object))
    codes, firsts = pd.factorize(combined, sort=False)
    texts = []
    for code in firsts:
        parts = []
        for level in reversed(levels):
            code, at = divmod(int(code), len(level))
            parts.append(level[at])
        texts.append(label(*reversed(parts)))
    text_codes, categories = pd.factorize(pd.Index(texts, dtype=object))  # labels may repeat
    return pd.Categorical.from_codes(text_codes[codes], categories=categories)
