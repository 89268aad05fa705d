"""metastop: decide when a training run should stop.

Importing this package is cheap and does no I/O: heavy modules (LightGBM, matplotlib,
torch, training frameworks) load only when the names that need them are used.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Curve": "curves", "CurveSet": "curves",
    "MetastopError": "errors", "CurveError": "errors", "ReadError": "errors",
    "ParameterError": "errors", "ModelError": "errors", "NotFittedError": "errors",
    "read_curves": "ingest", "read_sources": "ingest", "detect_format": "ingest",
    "Decision": "stop.decision", "Reason": "stop.decision", "Prediction": "predict.prediction",
    "Price": "stop.prices", "PriceBook": "stop.prices",
    "StoppingPolicy": "stop.policies", "CostAware": "stop.policies", "Patience": "stop.rules",
    "ImprovementProbability": "stop.policies", "Threshold": "stop.rules", "AnyOf": "stop.compose",
    "AllOf": "stop.compose", "Confirmed": "stop.compose", "DEFAULT_PRICE": "stop.prices", "DEFAULT_RISK": "stop.policies",
    "StopController": "stop.controller", "Reporting": "stop.controller", "sync_decision": "stop.distributed", "MultiTask": "stop.multitask",
    "Predictor": "predict.model", "split_holdout": "curves.splits",
    "Registry": "ops.registry", "Governor": "ops.governor", "retrain": "ops.retrain",
    "fleet_report": "ops.report", "HistoryStore": "curves.history", "backtest": "evaluate.outcomes", "replay": "evaluate.outcomes",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
