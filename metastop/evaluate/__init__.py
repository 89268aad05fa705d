"""The evaluation stage: replay finished curves through stopping policies, offline.

Token savings, EM loss (keep-best or keep-last), the hindsight oracle, price frontiers and
their hulls, paired A/B comparisons with bootstrap intervals, the standard suite behind
``metastop backtest``, the per-curve analysis behind ``metastop analyze``, and the figures.

Example:
    >>> from metastop.evaluate import backtest  # doctest: +SKIP
    >>> backtest(curves, policy).token_savings_mean  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"backtest": "backtest", "replay": "backtest", "oracle": "backtest",
            "frontier": "backtest", "compare": "backtest", "run_suite": "backtest",
            "analyze_curves": "backtest"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
