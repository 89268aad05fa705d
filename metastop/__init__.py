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
    "Decision": "decision", "Reason": "decision", "Prediction": "prediction",
    "Price": "prices", "PriceBook": "prices",
    "StoppingPolicy": "policies", "CostAware": "policies", "Patience": "policies",
    "ImprovementProbability": "policies", "Threshold": "policies", "AnyOf": "policies",
    "AllOf": "policies", "Confirmed": "policies", "DEFAULT_PRICE": "policies", "DEFAULT_RISK": "policies",
    "StopController": "runtime", "sync_decision": "runtime",
    "Predictor": "predictor", "split_holdout": "splits",
    "Registry": "registry", "Governor": "governor", "retrain": "retrain",
    "fleet_report": "report", "backtest": "backtest", "replay": "backtest",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
