"""DESIGN.md's backtest JSON: build it (``report_json``) and check it (``contract_problems``).

Other tools read this file, so its keys are a contract: ``n_curves``, ``prediction``
(``mae_at`` at 0.1 / 0.25 / 0.5 and ``coverage_80``), ``policies`` and ``frontier``, and
since task memory ``context`` (``none`` or ``leave-one-run-out``; older files lack it), and
with ``backtest --by-run`` a ``by_run`` list (one entry per run-level policy). Numbers
are in metric units and fractions, as DESIGN.md says; extra keys may be added, never replace
these.

Example:
    >>> contract_problems({"n_curves": 0, "prediction": {"mae_at": {}, "coverage_80": None},
    ...                    "policies": [], "frontier": {}})
    ['prediction.mae_at.0.1', 'prediction.mae_at.0.25', 'prediction.mae_at.0.5']
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import ParameterError
from .common import fraction_key
from .contexts import CONTEXT_MODES, NONE, check_context_mode
from .frontiers import Frontier
from .outcomes import PolicyReport
from .quality import MAE_FRACTIONS, PredictionReport

CONTRACT_KEYS = {
    "top": ("n_curves", "prediction", "policies", "frontier"),
    "prediction": ("mae_at", "coverage_80"),
    "mae_at": ("0.1", "0.25", "0.5"),
    "policy": ("name", "params", "token_savings_mean", "em_loss_mean", "em_loss_p95", "n_curves"),
    "frontier_point": ("params", "token_savings_mean", "em_loss_mean"),
    "by_run_policy": ("name", "params", "n_runs", "token_savings_mean", "weighted_loss_mean",
                      "weighted_loss_p95", "task_loss_mean"),
}
"""The keys DESIGN.md promises, by where they appear."""
OPTIONAL_KEYS = {"context": CONTEXT_MODES}
"""Top-level keys added since the first files, with the values they may take: a file written
before them lacks them and still conforms."""
OPTIONAL_SECTIONS = ("by_run",)
"""Optional top-level sections (``backtest --by-run``): a list of entries with the keys of
``CONTRACT_KEYS["by_run_policy"]`` (``RunReport.to_dict``), checked only when present."""


def report_json(*, n_curves: int, prediction: PredictionReport | None,
                policies: Sequence[PolicyReport], frontiers: Mapping[str, Frontier],
                context: str = NONE, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The backtest JSON of DESIGN.md: ``n_curves``, ``prediction``, ``policies``,
    ``frontier``, ``context`` (how curves got their context: ``none`` or
    ``leave-one-run-out``); extra keys may be added through ``extra``, never replacing these."""
    empty = {"mae_at": {fraction_key(f): None for f in MAE_FRACTIONS}, "coverage_80": None}
    data: dict[str, Any] = {
        "n_curves": int(n_curves),
        "prediction": prediction.to_dict() if prediction is not None else empty,
        "policies": [r.summary() for r in policies],
        "frontier": {name: f.to_list() for name, f in frontiers.items()},
        "context": check_context_mode(context),
    }
    for key, value in (extra or {}).items():
        if key in data:
            raise ParameterError(f"extra key {key!r} would replace a contract key")
        data[key] = value
    return data


def contract_problems(data: Mapping[str, Any]) -> list[str]:
    """The keys of DESIGN.md's backtest JSON that ``data`` lacks or holds with a value it may
    not take (empty when it conforms)."""
    missing = [k for k in CONTRACT_KEYS["top"] if k not in data]
    missing += [f"{k} (one of {list(allowed)}, got {data[k]!r})"
                for k, allowed in OPTIONAL_KEYS.items() if k in data and data[k] not in allowed]
    prediction = data.get("prediction", {})
    missing += [f"prediction.{k}" for k in CONTRACT_KEYS["prediction"] if k not in prediction]
    missing += [f"prediction.mae_at.{k}" for k in CONTRACT_KEYS["mae_at"]
                if k not in prediction.get("mae_at", {})]
    for i, entry in enumerate(data.get("policies", [])):
        missing += [f"policies[{i}].{k}" for k in CONTRACT_KEYS["policy"] if k not in entry]
    for name, points in data.get("frontier", {}).items():
        for i, point in enumerate(points):
            missing += [f"frontier.{name}[{i}].{k}" for k in CONTRACT_KEYS["frontier_point"]
                        if k not in point]
    if "by_run" in data:
        section = data["by_run"]
        if not isinstance(section, list):
            return missing + [f"by_run (a list, got {type(section).__name__})"]
        for i, entry in enumerate(section):
            missing += [f"by_run[{i}].{k}" for k in CONTRACT_KEYS["by_run_policy"] if k not in entry]
    return missing
