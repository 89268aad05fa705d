"""The one held-out split that benchmarks evaluate on and the shipped model never sees.

A curve belongs to a *holdout group*: its ``holdout_group`` metadata where a corpus names a
group wider than one run (LCDB: the dataset, ``lcdb/<openml id>``, so whole datasets are held
out with every learner's runs on them), else its run (``run_id``), else its task, else the
curve itself. A group is held out when the
SHA-256 of ``SALT + group`` falls in the lowest ``HOLDOUT_SHARE`` of the hash range: a
deterministic rule that needs no stored list and gives the same answer on every machine.

Example:
    >>> is_held_out("pythia-v0/pythia-1.4b-deduped/five-shot") in (True, False)
    True
    >>> train, test = split_holdout(CurveSet([Curve("a", [1, 2], [0.1, 0.2], run_id="r1")]))
    >>> len(train) + len(test)
    1
"""

from __future__ import annotations

import hashlib

from .curveset import CurveSet
from .schema import Curve

HOLDOUT_SHARE = 0.2
"""Share of holdout groups held out (by hash, so approximately)."""
SALT = "metastop-holdout-v1:"
RULE = (f"group = holdout_group else run_id else task else curve_id; held out when "
        f"int(sha256('{SALT}' + group)[:16], 16) / 2**64 < {HOLDOUT_SHARE}")
"""The split rule in words, recorded in model manifests and benchmark reports."""


def holdout_group(curve: Curve) -> str:
    """The group a curve is held out with (see the module docstring)."""
    wider = curve.meta.get("holdout_group")
    return str(wider) if wider else (curve.run_id or curve.task or curve.curve_id)


def is_held_out(group_key: str) -> bool:
    """Whether the holdout group ``group_key`` is in the held-out share."""
    digest = hashlib.sha256((SALT + str(group_key)).encode("utf-8")).hexdigest()
    return int(digest[:16], 16) / 2.0**64 < HOLDOUT_SHARE


def split_holdout(curves: CurveSet) -> tuple[CurveSet, CurveSet]:
    """Split curves into ``(train, test)``: test holds every curve of a held-out group."""
    held = [is_held_out(holdout_group(curve)) for curve in curves]
    train = CurveSet(c for c, h in zip(curves, held) if not h)
    test = CurveSet(c for c, h in zip(curves, held) if h)
    return train, test
