"""``Predictor``: predicts the rest of a learning curve, with calibrated quantiles.

One LightGBM quantile model per level (default 0.1, 0.5, 0.9) maps the features of a partial
curve and a later horizon (``metastop.features``) to the curve's value at that horizon,
relative to its best so far and divided by its scale. Training rows are prefixes (at least
two points) of finished curves crossed with their later observed points. Intervals are
calibrated by split-conformal quantile regression (CQR; Romano, Patterson and Candes 2019,
"Conformalized quantile regression", NeurIPS) on a calibration fold of whole groups (run,
else task, else curve): each side of an interval gets its own correction (the asymmetric
CQR of that paper), with conformity scores normalised by the predicted width, per cell of
observed budget fraction x kind (accuracy-like or loss-like) x horizon (the budget's end or
before it), so the 80% interval covers about 80% of truths on unseen runs. A curve with
fewer than two points is predicted from the population prior (empirical quantiles of the
relative final gain), flagged ``low_confidence``. Curves whose scores are all negative
(positive losses) get predictions capped at a loss of 0 (a perplexity of 1).

Models are saved as LightGBM text files plus ``manifest.json`` (features, feature version,
quantiles, calibration, prior, training data, metrics, library versions and the SHA-256 of
every model file); ``load`` verifies all of it. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..curves import Curve, CurveSet, atomic_path, metric_floor
from ..errors import ModelError, NotFittedError, ParameterError
from .features import (FEATURE_NAMES, FEATURE_VERSION, PrefixBatch, feature_matrix,
                       relative_target)
from ..curves.paths import MODELS_DIR
from .champion import champion_dir
from .prediction import Prediction
from ..curves.splits import RULE as HOLDOUT_RULE
from ..curves.splits import holdout_group, is_held_out

logger = logging.getLogger(__name__)

FORMAT = "metastop-predictor"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_DIR = MODELS_DIR / "default"
"""The shipped default model (``models/default`` in the repository)."""
N_DEFAULT_HORIZONS = 8
TARGETS = ("value", "best")
BUCKET_EDGES = (0.15, 0.35, 0.65)
"""Observed-fraction buckets (edges) of the calibration cells."""
PRIOR_EDGES = (1e-9, 0.15, 0.35, 0.65)
"""First-point budget-fraction buckets of the prior; the first holds curves first evaluated at
zero cost (at initialisation, where a language model's loss is about log(vocabulary))."""
PRIOR_METRIC_CURVES = 50
"""A metric with at least this many training curves gets its own prior table."""
N_KINDS = 3
_CALIBRATION_SALT = "metastop-calibration-v1:"
_PRIOR_FLOOR = 0.01
_WIDTH_STABILIZER = 0.5
"""Added to predicted widths (in curve-scale units) when normalising conformity scores, so
near-zero-width intervals (flat curves) still get an absolute correction."""


def default_horizons(curve: Curve, n: int = N_DEFAULT_HORIZONS) -> np.ndarray:
    """``n`` evenly spaced horizons after the last observation, the last one the budget."""
    last = curve.last_tokens
    if last >= curve.budget:
        return np.array([curve.budget])
    return last + (curve.budget - last) * np.arange(1, n + 1) / n


def _bucket(fraction: np.ndarray, edges: Sequence[float] = BUCKET_EDGES) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), fraction, side="right")


def _kind(score: np.ndarray) -> np.ndarray:
    """Kind of a curve by a score (its best, or its first for the prior): 0 accuracy-like
    (>= 0.01), 1 loss-like (< 0), 2 still at zero (in [0, 0.01): nothing learned yet)."""
    score = np.asarray(score, dtype=float)
    return np.where(score < 0, 1, np.where(score < _PRIOR_FLOOR, 2, 0))


N_CELL_KINDS = 3
"""Kinds of curve calibrated apart: accuracy-like, loss-like, perplexity."""
N_CELLS = 2 * N_CELL_KINDS * (len(BUCKET_EDGES) + 1)
_AT_END = 1.0 - 1e-9
"""Horizons at or past this fraction of the budget are the budget's end."""


def _cell(fraction: np.ndarray, best: np.ndarray, horizon: np.ndarray,
          perplexity: np.ndarray) -> np.ndarray:
    """Calibration cell of a row: observed-fraction bucket x kind of curve x (horizon at the
    budget's end or before it: the final value is what most decisions turn on, and the
    longest look ahead). The kinds are accuracy-like, loss-like (best score < 0) and
    perplexity (``metric_floor`` 1): a perplexity is the exponential of a loss, and its
    errors, even relative to its scale, are of another size than a loss's."""
    n_buckets = len(BUCKET_EDGES) + 1
    kind = np.where(perplexity, 2, (_kind(best) == 1).astype(int))
    return (_bucket(fraction) + n_buckets * kind
            + N_CELL_KINDS * n_buckets * (np.asarray(horizon) >= _AT_END))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Rows:
    """Training rows: features, relative targets, weights and their groups."""

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    fraction: np.ndarray
    horizon: np.ndarray
    best: np.ndarray
    perplexity: np.ndarray
    is_final: np.ndarray


BoosterTrainer = Callable[[dict, np.ndarray, np.ndarray, np.ndarray], Any]
"""Trains one LightGBM booster: ``trainer(params, X, y, weight) -> lightgbm.Booster``."""


def train_booster(params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                  weight: np.ndarray) -> Any:
    """Train one booster on this machine (the default ``BoosterTrainer``)."""
    import lightgbm as lgb

    data = lgb.Dataset(X, y, weight=weight, feature_name=list(FEATURE_NAMES), free_raw_data=True)
    return lgb.train(params, data)


class Predictor:
    """Multi-horizon quantile LightGBM model of the rest of a learning curve.

    Args:
        quantiles: increasing levels in (0, 1), symmetric around 0.5 for calibration.
        n_estimators: boosting rounds per quantile model.
        learning_rate: LightGBM learning rate.
        num_leaves: LightGBM leaves per tree.
        min_child_samples: LightGBM minimum rows per leaf.
        max_prefixes: prefixes sampled per training curve.
        max_horizons: later points sampled per prefix (the last point always included).
        calibration_share: share of groups held out to calibrate the intervals.
        num_threads: LightGBM threads for training (1 by default: OpenMP threads spin and
            slow down badly on a loaded machine).
        random_state: seed of every random choice.
        target: what is predicted at each horizon: ``"value"``, the curve's value there, or
            ``"best"``, the best value up to there (what keep-best delivers if the run stops
            at that horizon: the quantity stopping decisions weigh).

    Example:
        >>> p = Predictor(n_estimators=50).fit(read_curves("curves.parquet"))  # doctest: +SKIP
        >>> p.predict(curve).final_interval  # doctest: +SKIP
        >>> p.save("models/mine"); Predictor.load("models/mine")  # doctest: +SKIP
    """

    def __init__(self, *, quantiles: Sequence[float] = (0.1, 0.5, 0.9), n_estimators: int = 150,
                 learning_rate: float = 0.08, num_leaves: int = 31, min_child_samples: int = 100,
                 max_prefixes: int = 6, max_horizons: int = 4, calibration_share: float = 0.2,
                 num_threads: int = 1, random_state: int = 0, target: str = "value"):
        self.quantiles = quantiles
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.max_prefixes = max_prefixes
        self.max_horizons = max_horizons
        self.calibration_share = calibration_share
        self.num_threads = num_threads
        self.random_state = random_state
        self.target = target

    # --- parameters ----------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name, value in vars(self).items() if not name.endswith("_")}

    def _validate(self) -> None:
        q = np.asarray(self.quantiles, dtype=float)
        if q.ndim != 1 or len(q) < 2 or np.any(np.diff(q) <= 0) or q[0] <= 0 or q[-1] >= 1:
            raise ParameterError(f"quantiles must be >= 2 increasing levels in (0, 1), "
                                 f"got quantiles={self.quantiles!r}")
        if not np.allclose(q + q[::-1], 1.0):
            raise ParameterError(f"quantiles must be symmetric around 0.5 (pairs are "
                                 f"calibrated together), got quantiles={self.quantiles!r}")
        for name in ("n_estimators", "num_leaves", "min_child_samples", "max_prefixes",
                     "max_horizons", "num_threads"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ParameterError(f"{name} must be an integer >= 1, got {name}={value!r}")
        if not 0 < self.learning_rate <= 1:
            raise ParameterError(f"learning_rate must be in (0, 1], got "
                                 f"learning_rate={self.learning_rate!r}")
        if self.target not in TARGETS:
            raise ParameterError(f"target must be one of {TARGETS}, got target={self.target!r}")
        if not 0 < self.calibration_share < 1:
            raise ParameterError(f"calibration_share must be in (0, 1), got "
                                 f"calibration_share={self.calibration_share!r}")

    # --- fit -------------------------------------------------------------------------------
    def fit(self, curves: CurveSet | Iterable[Curve], *,
            sample_weight: Sequence[float] | None = None,
            sources: Sequence[Mapping[str, Any]] = (),
            trainer: BoosterTrainer | None = None) -> Predictor:
        """Train the quantile models, calibrate the intervals and the prior.

        Args:
            curves: finished curves (at least 3 points each are used; shorter ones are
                skipped).
            sample_weight: one weight >= 0 per curve (e.g. to balance corpora); default 1.
                Each curve's rows share its weight.
            sources: what the curves were read from, recorded in the manifest (e.g.
                ``{"path": ..., "sha256": ..., "n_curves": ...}``).
            trainer: trains one booster from ``(params, X, y, weight)``; default
                ``train_booster`` on this machine (``metastop.retrain`` passes a Dask one).

        Returns:
            self.
        """
        self._validate()
        curves = CurveSet(curves) if not isinstance(curves, CurveSet) else curves
        weights = _checked_weights(sample_weight, len(curves))
        keep = np.array([len(c) >= 3 for c in curves], dtype=bool)
        usable = [c for c, k in zip(curves, keep) if k]
        if len(usable) < 10:
            raise ParameterError(f"curves must hold at least 10 curves with >= 3 points, got "
                                 f"{len(usable)} of {len(curves)}")
        groups = [curves.group_key(c) for c in usable]
        calibration = self._calibration_groups(groups)
        rows = _training_rows(usable, self.target, weights[keep], calibration, self.max_prefixes,
                              self.max_horizons, np.random.default_rng(self.random_state))
        fit_part = rows.group == 0
        logger.info("training on %d rows (%d calibration rows) from %d curves",
                    int(fit_part.sum()), int((~fit_part).sum()), len(usable))
        train = trainer or train_booster
        self.boosters_ = [train(self.booster_params(q), rows.X[fit_part], rows.y[fit_part],
                                rows.weight[fit_part]) for q in self.quantiles]
        raw = self._raw_predict(rows.X[~fit_part])
        cells = _cell(rows.fraction[~fit_part], rows.best[~fit_part], rows.horizon[~fit_part],
                      rows.perplexity[~fit_part])
        self.calibration_ = _conformal_offsets(raw, rows.y[~fit_part], cells, self.quantiles)
        self.prior_ = _prior(usable, self.quantiles, target=self.target)
        self.metrics_ = _calibration_metrics(self, raw, rows, ~fit_part)
        self.training_ = _training_summary(curves, groups, calibration, fit_part, sources)
        return self

    def _calibration_groups(self, groups: list[str]) -> np.ndarray:
        """Boolean mask of curves whose group calibrates: groups chosen by hash; with too
        few groups for that, every k-th group; with one group, every k-th curve."""
        unique = sorted(set(groups))
        salt = f"{_CALIBRATION_SALT}{self.random_state}:"
        chosen = {g for g in unique
                  if int(_sha256((salt + g).encode())[:16], 16) / 2.0**64 < self.calibration_share}
        every = max(2, round(1 / self.calibration_share))
        if not chosen or len(chosen) == len(unique):
            chosen = set(unique[::every])
        mask = np.array([g in chosen for g in groups])
        if mask.all():
            mask = np.arange(len(groups)) % every == 0
        return mask

    def booster_params(self, quantile: float) -> dict[str, Any]:
        """LightGBM parameters of the booster for one quantile level (any trainer uses these)."""
        return {"objective": "quantile", "alpha": float(quantile),
                "num_iterations": self.n_estimators, "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_child_samples": self.min_child_samples,
                "num_threads": self.num_threads, "seed": self.random_state,
                "deterministic": True, "force_row_wise": True, "feature_fraction": 0.9,
                "bagging_fraction": 0.8, "bagging_freq": 1, "verbosity": -1}

    # --- predict ---------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "boosters_"):
            raise NotFittedError("this Predictor is not fitted yet: call fit(curves) or "
                                 "Predictor.load(dir) first")

    def _raw_predict(self, X: np.ndarray) -> np.ndarray:
        threads = 1 if len(X) < 20000 else self.num_threads
        return np.stack([b.predict(X, num_threads=threads) for b in self.boosters_], axis=1)

    def _calibrated(self, raw: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """Sort the quantiles, then move each side of each symmetric pair out by its conformal
        factor (per calibration cell, see ``_cell``) times the pair's predicted width."""
        return _apply_conformal(np.sort(raw, axis=1),
                                np.asarray(self.calibration_["factors"])[cell])

    def predict(self, curve: Curve, horizons: Sequence[float] | None = None) -> Prediction:
        """Predict ``curve`` at ``horizons`` (tokens; default: 8 points up to the budget)."""
        return self.predict_many([curve], horizons=None if horizons is None else [horizons])[0]

    def predict_final(self, curve: Curve) -> Prediction:
        """Predict ``curve`` at its budget only."""
        return self.predict(curve, [curve.budget])

    def predict_many(self, curves: Sequence[Curve], horizons: Sequence[Any] | None = None, *,
                     fractions: Sequence[float] | None = None) -> list[Prediction]:
        """Predict many curves at once (one feature batch, one model call per quantile).

        Args:
            curves: the partial curves.
            horizons: per curve, its horizons in tokens (a list of sequences, one per curve);
                default: ``default_horizons``.
            fractions: alternatively, horizons as fractions of each curve's budget, the same
                for every curve (e.g. ``[0.5, 1.0]``).

        Returns:
            One ``Prediction`` per curve, in order.
        """
        self._check_fitted()
        grid = self._horizon_grid(curves, horizons, fractions)
        out: list[Prediction | None] = [None] * len(curves)
        modelled = [i for i, c in enumerate(curves) if len(c) >= 2]
        for i in set(range(len(curves))) - set(modelled):
            out[i] = self._prior_prediction(curves[i], grid[i])
        if modelled:
            for i, prediction in zip(modelled, self._model_predictions(
                    [curves[i] for i in modelled], [grid[i] for i in modelled])):
                out[i] = prediction
        return out  # type: ignore[return-value]

    def _horizon_grid(self, curves: Sequence[Curve], horizons: Sequence[Any] | None,
                      fractions: Sequence[float] | None) -> list[np.ndarray]:
        if horizons is not None and fractions is not None:
            raise ParameterError("pass horizons or fractions, not both")
        if fractions is not None:
            horizons = [np.asarray(fractions, dtype=float) * c.budget for c in curves]
        if horizons is None:
            return [default_horizons(c) for c in curves]
        if len(horizons) != len(curves):
            raise ParameterError(f"horizons must hold one sequence per curve, got "
                                 f"{len(horizons)} for {len(curves)} curves")
        return [_checked_horizons(h, c) for h, c in zip(horizons, curves)]

    def _model_predictions(self, curves: list[Curve], grid: list[np.ndarray]) -> list[Prediction]:
        batch = PrefixBatch.from_curves([(c.tokens, c.scores, c.budget) for c in curves])
        width = max(len(h) for h in grid)
        xh = np.full((len(curves), width), np.nan)
        for i, h in enumerate(grid):
            xh[i, :len(h)] = h / batch.budget[i]
        valid = np.isfinite(xh)
        X = feature_matrix(batch, xh)[valid]
        counts = valid.sum(axis=1)
        row = np.repeat(np.arange(len(curves)), counts)  # the curve of each feature row
        perplexity = np.array([_is_perplexity(c) for c in curves])
        rel = self._calibrated(self._raw_predict(X), _cell(batch.x_last[row], batch.best[row],
                                                           xh[valid], perplexity[row]))
        low, high = _score_range(curves)
        scores = np.clip(batch.best[row, None] + batch.scale[row, None] * rel,
                         low[row, None], high[row, None])
        starts = np.r_[0, np.cumsum(counts)]
        return [Prediction(c.curve_id, c.last_tokens, h, tuple(self.quantiles),
                           scores[starts[i]:starts[i + 1]])
                for i, (c, h) in enumerate(zip(curves, grid))]

    def _prior_prediction(self, curve: Curve, horizons: np.ndarray) -> Prediction:
        best = float(curve.scores.max())
        bucket = int(_bucket(np.array([curve.tokens[0] / curve.budget if curve.budget > 0
                                        else 1.0]), PRIOR_EDGES)[0])
        table = self.prior_.get("by_metric", {}).get(curve.metric, self.prior_["gain_quantiles"])
        gains = np.asarray(table)[int(_kind(best)), bucket]
        remaining = curve.budget - curve.last_tokens
        share = (np.clip((horizons - curve.last_tokens) / remaining, 0.0, 1.0) if remaining > 0
                 else np.ones_like(horizons))
        scores = best + max(abs(best), _PRIOR_FLOOR) * share[:, None] * gains[None, :]
        return Prediction(curve.curve_id, curve.last_tokens, horizons, tuple(self.quantiles),
                          np.clip(np.sort(scores, axis=1), *_score_range([curve])),
                          low_confidence=True)

    # --- save / load -----------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest describing this fitted model (without file hashes)."""
        self._check_fitted()
        import lightgbm
        import sklearn

        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION, "feature_names": list(FEATURE_NAMES),
            "quantiles": list(self.quantiles), "params": self.get_params(),
            "calibration": self.calibration_, "prior": self.prior_,
            "training": self.training_, "metrics": self.metrics_,
            "versions": {"metastop": __version__, "lightgbm": lightgbm.__version__,
                         "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                         "python": platform.python_version()},
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the models (LightGBM text) and ``manifest.json`` into ``directory``."""
        manifest = self.manifest()
        directory = Path(directory)
        files = {}
        for q, booster in zip(self.quantiles, self.boosters_):
            name = f"quantile_{q:g}.txt"
            text = booster.model_to_string().encode("utf-8")
            with atomic_path(directory / name) as tmp:
                tmp.write_bytes(text)
            files[name] = {"quantile": q, "sha256": _sha256(text), "bytes": len(text)}
        manifest["files"] = files
        with atomic_path(directory / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        logger.info("saved predictor to %s", directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike | None = None) -> Predictor:
        """Load a saved model, verifying every hash and the feature version.

        Args:
            directory: the model directory; default: the registry's champion
                (``models/current`` names it; the shipped ``models/default`` without one).

        Raises:
            ModelError: naming the file and the problem (missing, not JSON, tampered or
                truncated, incompatible feature version, unreadable model).
        """
        directory = Path(directory) if directory is not None else champion_dir()
        manifest = _read_manifest(directory)
        predictor = cls(**_params_from(manifest, directory))
        predictor.boosters_ = [_read_booster(directory, name, entry, manifest)
                               for name, entry in _model_files(manifest, directory)]
        predictor.calibration_ = manifest["calibration"]
        predictor.prior_ = manifest["prior"]
        predictor.training_ = manifest.get("training", {})
        predictor.metrics_ = manifest.get("metrics", {})
        return predictor


def _training_summary(curves: CurveSet, groups: list[str], calibration: np.ndarray,
                      fit_part: np.ndarray, sources: Sequence[Mapping[str, Any]]) -> dict:
    """What a model was trained on, for its manifest."""
    return {"sources": [dict(s) for s in sources],
            "n_curves": len(curves), "n_curves_used": len(groups),
            "n_groups": len(set(groups)),
            "n_calibration_groups": len(set(np.array(groups)[calibration])),
            "n_rows_train": int(fit_part.sum()), "n_rows_calibration": int((~fit_part).sum()),
            "n_curves_in_holdout": sum(is_held_out(holdout_group(c)) for c in curves),
            "holdout_rule": HOLDOUT_RULE}


def _is_perplexity(curve: Curve) -> bool:
    return metric_floor(curve.metric) == 1.0


def _score_range(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """Per curve, the lowest and highest score it can reach (``Curve.score_range``):
    predictions never leave a metric's range, so an accuracy is never predicted above 1, a
    loss below 0 or a perplexity below 1."""
    low, high = np.array([c.score_range() for c in curves]).T
    return low, high


def _checked_weights(sample_weight: Sequence[float] | None, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n)
    weights = np.asarray(sample_weight, dtype=float)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ParameterError(f"sample_weight must hold {n} finite weights >= 0 (one per "
                             f"curve), got shape {weights.shape}")
    return weights


def _checked_horizons(horizons: Any, curve: Curve) -> np.ndarray:
    h = np.atleast_1d(np.asarray(horizons, dtype=float))
    if h.ndim != 1 or len(h) == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ParameterError(f"horizons of curve {curve.curve_id!r} must be a non-empty 1-D "
                             f"sequence of finite tokens > 0, got {horizons!r}")
    if np.any(np.diff(h) <= 0):
        raise ParameterError(f"horizons of curve {curve.curve_id!r} must strictly increase, "
                             f"got {h.tolist()!r}")
    return h


# --- training rows ---------------------------------------------------------------------------
def _sample(candidates: np.ndarray, k: int, rng: np.random.Generator,
            keep_last: bool) -> np.ndarray:
    if len(candidates) <= k:
        return candidates
    if keep_last:
        rest = rng.choice(candidates[:-1], size=k - 1, replace=False)
        return np.sort(np.r_[rest, candidates[-1]])
    return np.sort(rng.choice(candidates, size=k, replace=False))


def _training_rows(curves: list[Curve], target: str, weights: np.ndarray, calibration: np.ndarray,
                   max_prefixes: int, max_horizons: int, rng: np.random.Generator,
                   chunk: int = 20000) -> _Rows:
    """Prefixes x later observed points of every curve, features computed in chunks."""
    prefixes, horizons, owners = [], [], []
    for i, curve in enumerate(curves):
        n = len(curve)
        for k in _sample(np.arange(2, n), max_prefixes, rng, keep_last=False):
            prefixes.append((curve.tokens[:k], curve.scores[:k], curve.budget))
            horizons.append(_sample(np.arange(k, n), max_horizons, rng, keep_last=True))
            owners.append(i)
    perplexity = np.array([_is_perplexity(c) for c in curves])
    parts = [_rows_chunk(curves, target, prefixes[s:s + chunk], horizons[s:s + chunk],
                         owners[s:s + chunk], weights, calibration, perplexity)
             for s in range(0, len(prefixes), chunk)]
    return _Rows(*(np.concatenate(arrays) for arrays in zip(*parts)))


def _rows_chunk(curves: list[Curve], target_kind: str, prefixes: list, horizons: list, owners: list,
                weights: np.ndarray, calibration: np.ndarray, perplexity: np.ndarray
                ) -> tuple[np.ndarray, ...]:
    batch = PrefixBatch.from_curves(prefixes)
    width = max(len(h) for h in horizons)
    xh = np.full((len(prefixes), width), np.nan)
    target = np.full((len(prefixes), width), np.nan)
    final = np.zeros((len(prefixes), width), dtype=bool)
    for r, (owner, idx) in enumerate(zip(owners, horizons)):
        curve = curves[owner]
        xh[r, :len(idx)] = curve.tokens[idx] / batch.budget[r]
        scores = curve.scores if target_kind == "value" else np.maximum.accumulate(curve.scores)
        target[r, :len(idx)] = scores[idx]
        final[r, :len(idx)] = idx == len(curve) - 1
    valid = np.isfinite(xh)
    counts = valid.sum(axis=1)
    X = feature_matrix(batch, xh)[valid]
    rep = lambda a: np.repeat(a, counts)  # noqa: E731 - per-prefix value on every row
    y = relative_target(target[valid], rep(batch.best), rep(batch.scale))
    owners = np.asarray(owners)
    return (X.astype(np.float32), y, rep(weights[owners] / counts),
            rep(calibration[owners].astype(int)), rep(batch.x_last), xh[valid], rep(batch.best),
            rep(perplexity[owners]), final[valid])


# --- calibration, prior, metrics -------------------------------------------------------------
def _pair_widths(q: np.ndarray) -> np.ndarray:
    """Width of each symmetric quantile pair (``(n, n_q // 2)``) plus ``_WIDTH_STABILIZER``."""
    n_q = q.shape[1]
    width = q[:, n_q - 1 - np.arange(n_q // 2)] - q[:, :n_q // 2]
    return np.maximum(width, 0.0) + _WIDTH_STABILIZER


def _apply_conformal(q: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Move the low side of pair ``i`` down by ``factors[:, i, 0] * width`` and its high side
    up by ``factors[:, i, 1] * width`` (inwards where a factor is negative).

    Each side stays where its calibration put it. Where a side moved inwards past a quantile
    inside the pair, that quantile is clipped into the pair: re-sorting all of them would
    swap it out to be the bound, and widen the interval the calibration had narrowed. A pair
    whose sides cross is swapped. Pairs are repaired from the outside in, so the result is
    sorted.
    """
    n_q = q.shape[1]
    width = _pair_widths(q)
    out = q.copy()
    out[:, :n_q // 2] -= factors[:, :, 0] * width
    out[:, n_q - 1 - np.arange(n_q // 2)] += factors[:, :, 1] * width
    for lo in range(n_q // 2):
        hi = n_q - 1 - lo
        out[:, [lo, hi]] = np.sort(out[:, [lo, hi]], axis=1)
        out[:, lo + 1:hi] = np.clip(out[:, lo + 1:hi], out[:, lo, None], out[:, hi, None])
    return out


def _conformal_offsets(raw: np.ndarray, y: np.ndarray, cells: np.ndarray,
                       quantiles: Sequence[float]) -> dict[str, Any]:
    """Width-normalised asymmetric CQR factors per calibration cell, quantile pair and side.

    For the pair (lo, hi) with nominal coverage ``c = q_hi - q_lo``, each side may miss
    ``(1 - c) / 2`` of the truths. The low side's conformity score of a calibration row is
    ``(lo - y) / (hi - lo + s)``, the high side's ``(y - hi) / (hi - lo + s)`` (normalised by
    the predicted width plus a stabilizer ``s``, so wide and narrow intervals are corrected
    in proportion and zero-width ones still by an absolute amount); each side's factor is
    the ``ceil((n + 1)(1 - (1 - c) / 2)) / n`` empirical quantile of its scores. Calibrating
    the sides apart lets a model that is too pessimistic on one side and too optimistic on
    the other be corrected on both. Cells with fewer than 50 rows use the rows of their
    observed-fraction bucket, then all rows.
    """
    n_q = len(quantiles)
    raw = np.sort(raw, axis=1)
    widths = _pair_widths(raw)
    n_buckets = len(BUCKET_EDGES) + 1
    factors = np.zeros((N_CELLS, n_q // 2, 2))
    for b in range(N_CELLS):
        rows = cells == b
        if rows.sum() < 50:
            rows = cells % n_buckets == b % n_buckets
        if rows.sum() < 50:
            rows = np.ones_like(cells, dtype=bool)
        n = int(rows.sum())
        for lo in range(n_q // 2):
            hi = n_q - 1 - lo
            miss = (1.0 - (quantiles[hi] - quantiles[lo])) / 2  # each side's share of misses
            level = min(1.0, np.ceil((n + 1) * (1.0 - miss)) / n)
            for side, score in enumerate((raw[rows, lo] - y[rows], y[rows] - raw[rows, hi])):
                factors[b, lo, side] = float(np.quantile(score / widths[rows, lo], level,
                                                         method="higher"))
    return {"bucket_edges": list(BUCKET_EDGES), "factors": factors.tolist(),
            "cells": "observed-fraction bucket + n_buckets * kind (0 accuracy-like, 1 loss-like: "
                     "best score < 0, 2 perplexity) + 3 * n_buckets * (horizon at the budget's "
                     "end)",
            "layout": "factors[cell][pair][side], side 0 low, 1 high",
            "method": "split-conformal CQR (Romano et al. 2019), asymmetric (each side "
                      "calibrated apart), scores normalised by the predicted interval width, "
                      "per cell"}


def _prior(curves: list[Curve], quantiles: Sequence[float], *, target: str = "value") -> dict[str, Any]:
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


def _calibration_metrics(predictor: Predictor, raw: np.ndarray, rows: _Rows,
                         part: np.ndarray) -> dict[str, Any]:
    cal = predictor._calibrated(raw, _cell(rows.fraction[part], rows.best[part],
                                           rows.horizon[part], rows.perplexity[part]))
    y = rows.y[part]
    inside_raw = (raw[:, 0] <= y) & (y <= raw[:, -1])
    inside = (cal[:, 0] <= y) & (y <= cal[:, -1])
    median = cal[:, len(predictor.quantiles) // 2]
    final = rows.is_final[part]
    return {"calibration_rows": int(part.sum()),
            "coverage_outer_raw": float(inside_raw.mean()),
            "coverage_outer_calibrated": float(inside.mean()),
            "coverage_outer_calibrated_final": float(inside[final].mean()),
            "nominal_outer": float(predictor.quantiles[-1] - predictor.quantiles[0]),
            "median_abs_error_relative": float(np.mean(np.abs(median - y)))}


# --- manifest checks -------------------------------------------------------------------------
def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        hint = " (run scripts/train_default.py to build it)" if directory == DEFAULT_DIR else ""
        raise ModelError(f"file {path}: missing; a model directory needs {MANIFEST}{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"file {path}: not a valid JSON manifest (truncated or edited?): "
                         f"{error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"file {path}: not a {FORMAT} manifest (format="
                         f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("feature_version") != FEATURE_VERSION or \
            manifest.get("feature_names") != list(FEATURE_NAMES):
        raise ModelError(f"file {path}: incompatible feature version "
                         f"{manifest.get('feature_version')!r}; this metastop computes feature "
                         f"version {FEATURE_VERSION!r} ({len(FEATURE_NAMES)} features): retrain")
    for key in ("quantiles", "calibration", "prior", "files", "params"):
        if key not in manifest:
            raise ModelError(f"file {path}: manifest lacks the {key!r} entry")
    _check_layout(manifest, path)
    return manifest


def _check_layout(manifest: dict[str, Any], path: Path) -> None:
    """The calibration and prior tables must have the shapes this metastop indexes."""
    n_pairs = len(manifest["quantiles"]) // 2
    prior_shape = (N_KINDS, len(PRIOR_EDGES) + 1, len(manifest["quantiles"]))
    expected = {"calibration": (list(BUCKET_EDGES), "factors", (N_CELLS, n_pairs, 2)),
                "prior": (list(PRIOR_EDGES), "gain_quantiles", prior_shape)}
    for key, (edges, table, shape) in expected.items():
        entry = manifest[key]
        got = _shape(entry.get(table)) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("bucket_edges") != edges or got != shape:
            raise ModelError(f"file {path}: incompatible {key} table (bucket edges "
                             f"{entry.get('bucket_edges') if isinstance(entry, dict) else None}, "
                             f"shape {got}); this metastop expects edges {edges} and shape "
                             f"{shape}: retrain")
    by_metric = manifest["prior"].get("by_metric", {})
    bad = ([] if not isinstance(by_metric, dict) else
           [name for name, table in by_metric.items() if _shape(table) != prior_shape])
    if not isinstance(by_metric, dict) or bad:
        raise ModelError(f"file {path}: prior.by_metric must map metric names to tables of shape "
                         f"{prior_shape}; wrong: {bad or type(by_metric).__name__}: retrain")


def _shape(table: Any) -> tuple[int, ...] | None:
    """The shape of a nested list, or None where it is ragged."""
    try:
        return np.shape(table)
    except ValueError:
        return None


def _params_from(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    params = dict(manifest["params"])
    params["quantiles"] = tuple(manifest["quantiles"])
    try:
        Predictor(**params)._validate()
    except (TypeError, ParameterError) as error:
        raise ModelError(f"file {directory / MANIFEST}: bad params entry: {error}") from None
    return params


def _model_files(manifest: dict[str, Any], directory: Path) -> list[tuple[str, dict]]:
    by_quantile = {entry.get("quantile"): (name, entry)
                   for name, entry in manifest["files"].items()}
    missing = [q for q in manifest["quantiles"] if q not in by_quantile]
    if missing:
        raise ModelError(f"file {directory / MANIFEST}: lists no model file for quantiles "
                         f"{missing}")
    return [by_quantile[q] for q in manifest["quantiles"]]


def _read_booster(directory: Path, name: str, entry: dict, manifest: dict) -> Any:
    import lightgbm as lgb

    path = directory / name
    if not path.is_file():
        raise ModelError(f"file {path}: missing (listed in {MANIFEST})")
    data = path.read_bytes()
    if _sha256(data) != entry.get("sha256"):
        what = "truncated" if len(data) < entry.get("bytes", 0) else "tampered with or replaced"
        raise ModelError(f"file {path}: SHA-256 does not match {MANIFEST} (file {what}: "
                         f"{len(data)} bytes, expected {entry.get('bytes')})")
    try:
        booster = lgb.Booster(model_str=data.decode("utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError) as error:
        raise ModelError(f"file {path}: not a readable LightGBM text model: {error}") from None
    if booster.num_feature() != len(manifest["feature_names"]):
        raise ModelError(f"file {path}: model expects {booster.num_feature()} features, "
                         f"{MANIFEST} lists {len(manifest['feature_names'])}")
    return booster
