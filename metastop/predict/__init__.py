"""The prediction stage: from a partial curve, the rest of it with uncertainty.

Pure feature functions of a curve prefix (``features``), parametric fits (``fits``), the
multi-horizon quantile LightGBM ``Predictor`` (``model``) trained on sampled prefixes
(``rows``), with split-conformal calibration (``calibration``) and a population prior for
one-point curves (``prior``), both kept per kind of curve (``kinds``), and the frozen
``Prediction`` it returns. Models are saved as LightGBM text plus a JSON manifest with
SHA-256 checksums (``manifest``); never pickles. ``champion`` reads which model serves.

Example:
    >>> from metastop.predict import Predictor  # doctest: +SKIP
    >>> Predictor.load().predict(curve).final  # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {"Predictor": "model", "Prediction": "prediction", "default_horizons": "model",
            "FEATURE_NAMES": "features", "features_of": "features"}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
