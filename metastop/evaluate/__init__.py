"""The evaluation stage: replay finished curves through stopping policies, offline.

Token savings, EM loss (keep-best or keep-last), the hindsight oracle, price frontiers and
their hulls, paired A/B comparisons with bootstrap intervals, the standard suite behind
``metastop backtest``, the per-curve analysis behind ``metastop analyze``, and the figures.

Modules, lowest first: ``common`` (shared helpers), ``outcomes`` (outcomes, reports, replay,
backtest, the oracle), ``frontiers`` (sweeps and their hulls), ``ab`` (paired comparisons),
``quality`` (prediction error), ``contract`` (DESIGN.md's backtest JSON), ``suite`` (the named
policies and the standard suite), ``contexts`` (leave-one-run-out task memory for replays),
``analysis`` (per-curve analysis), ``runs`` (whole multi-task runs), ``sweeps`` (studies
replayed through Optuna's pruners and metastop's), ``plotting``.

Example:
    >>> from metastop.evaluate import backtest  # doctest: +SKIP
    >>> backtest(curves, policy).token_savings_mean  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"backtest": "outcomes", "replay": "outcomes", "oracle": "outcomes",
            "frontier": "frontiers", "compare": "ab", "hull_gap": "ab", "run_suite": "suite",
            "make_policy": "suite", "report_json": "contract", "contract_problems": "contract",
            "prediction_report": "quality", "analyze_curves": "analysis"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
