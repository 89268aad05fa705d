"""``Predictor``: predicts the rest of a learning curve, with calibrated quantiles.

One LightGBM quantile model per level (default 0.1, 0.5, 0.9) maps the features of a partial
curve and a later horizon (``metastop.features``) to the curve's value at that horizon,
relative to its best so far and divided by its scale. Training rows (``rows``) are prefixes
(at least two points) of finished curves crossed with their later observed points. Intervals
are calibrated by split-conformal quantile regression (``calibration``; Romano, Patterson and
Candes 2019, "Conformalized quantile regression", NeurIPS) on a calibration fold of whole
groups (run, else task, else curve): each side of an interval gets its own correction, with
conformity scores normalised by the predicted width, per cell of observed budget fraction x
kind (``kinds``) x horizon, so the 80% interval covers about 80% of truths on unseen runs. A
curve with fewer than two points is predicted from the population prior (``prior``:
empirical quantiles of the relative final gain), flagged ``low_confidence``. Curves whose
scores are all negative (positive losses) get predictions capped at a loss of 0 (a
perplexity of 1).

Models are saved as LightGBM text files plus ``manifest.json`` (``manifest``: features,
feature version, quantiles, calibration, prior, training data, metrics, library versions and
the SHA-256 of every model file); ``load`` verifies all of it. Nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from ..curves import Curve, CurveSet
from ..curves.splits import RULE as HOLDOUT_RULE
from ..curves.splits import holdout_group, is_held_out
from ..errors import ModelError, NotFittedError, ParameterError
from .calibration import _calibration_metrics, _conformal_offsets, calibrated
from .champion import MANIFEST
from .context import CONTEXT_NAMES, SiblingPool, as_context, context_matrix
from .features import FEATURE_NAMES, FEATURE_VERSION, PrefixBatch, feature_matrix
from .kinds import N_BASE_CELLS, N_CELLS, _cell, _is_perplexity
from .manifest import (FORMAT, FORMAT_VERSION, check_file_name, model_files, read_booster,
                       read_predictor_manifest, write_model_dir)
from .prediction import Prediction
from .prior import _prior, prior_scores
from .rows import _calibration_groups, _checked_weights, _training_rows

logger = logging.getLogger(__name__)

N_DEFAULT_HORIZONS = 8
PLAIN_DIR = "plain"
"""The folder, inside a model with task memory, of its context-free twin."""
TARGETS = ("value", "best")


def default_horizons(curve: Curve, n: int = N_DEFAULT_HORIZONS) -> np.ndarray:
    """``n`` evenly spaced horizons after the last observation, the last one the budget."""
    last = curve.last_tokens
    if last >= curve.budget:
        return np.array([curve.budget])
    return last + (curve.budget - last) * np.arange(1, n + 1) / n


BoosterTrainer = Callable[[dict, np.ndarray, np.ndarray, np.ndarray], Any]
"""Trains one LightGBM booster: ``trainer(params, X, y, weight) -> lightgbm.Booster``."""


def train_booster(params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                  weight: np.ndarray) -> Any:
    """Train one booster on this machine (the default ``BoosterTrainer``)."""
    import lightgbm as lgb

    data = lgb.Dataset(X, y, weight=weight, feature_name=column_names(X.shape[1]),
                       free_raw_data=True)
    return lgb.train(params, data)


def column_names(n_columns: int) -> list[str]:
    """The names of a feature matrix's columns: the curve's features, then the context's."""
    return list(FEATURE_NAMES + CONTEXT_NAMES)[:n_columns]


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
                 num_threads: int = 1, random_state: int = 0, target: str = "value",
                 context: bool = True):
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
        self.context = context

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
        if not isinstance(self.context, bool):
            raise ParameterError(f"context must be True or False, got context={self.context!r}")
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
        groups = [holdout_group(c) for c in usable]
        calibration = _calibration_groups(groups, self.calibration_share, self.random_state)
        pool = SiblingPool.of(usable) if self.context else None
        rows = _training_rows(usable, self.target, weights[keep], calibration, self.max_prefixes,
                              self.max_horizons, np.random.default_rng(self.random_state), pool)
        fit_part = rows.group == 0
        logger.info("training on %d rows (%d calibration rows) from %d curves",
                    int(fit_part.sum()), int((~fit_part).sum()), len(usable))
        train = trainer or train_booster
        self.boosters_ = [train(self.booster_params(q), rows.X[fit_part], rows.y[fit_part],
                                rows.weight[fit_part]) for q in self.quantiles]
        raw = self._raw_predict(rows.X[~fit_part])
        cells = _cell(rows.fraction[~fit_part], rows.best[~fit_part], rows.horizon[~fit_part],
                      rows.perplexity[~fit_part], rows.n_context[~fit_part])
        self.calibration_ = _conformal_offsets(raw, rows.y[~fit_part], cells, self.quantiles,
                                               N_CELLS if self.context else N_BASE_CELLS)
        self.prior_ = _prior(usable, self.quantiles, target=self.target)
        self.metrics_ = _calibration_metrics(self.calibration_, self.quantiles, raw, rows,
                                             ~fit_part)
        self.training_ = _training_summary(curves, groups, calibration, fit_part, sources)
        self.plain_ = self._fit_plain(curves, sample_weight, sources, trainer)
        return self

    def _fit_plain(self, curves: CurveSet, sample_weight: Any, sources: Any,
                   trainer: BoosterTrainer | None) -> Predictor | None:
        """With task memory, a twin without it predicts curves that come without siblings:
        they get exactly what a context-free model of the same recipe would say."""
        if not self.context:
            return None
        twin = Predictor(**{**self.get_params(), "context": False})
        return twin.fit(curves, sample_weight=sample_weight, sources=sources, trainer=trainer)

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
        """The raw quantiles calibrated by this model's conformal factors (``calibrated``)."""
        return calibrated(raw, self.calibration_, cell)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The model's input columns: the curve's features, then the context's if it has
        task memory."""
        return FEATURE_NAMES + (CONTEXT_NAMES if self.context else ())

    def predict(self, curve: Curve, horizons: Sequence[float] | None = None,
                context: Any = None) -> Prediction:
        """Predict ``curve`` at ``horizons`` (tokens; default: 8 points up to the budget).

        ``context``: the finished curves of the same task from other runs (a sequence of
        ``Curve`` or a ``Context``); ``None`` predicts from the curve alone.
        """
        return self.predict_many([curve], horizons=None if horizons is None else [horizons],
                                 contexts=None if context is None else [context])[0]

    def predict_final(self, curve: Curve, context: Any = None) -> Prediction:
        """Predict ``curve`` at its budget only."""
        return self.predict(curve, [curve.budget], context=context)

    def predict_many(self, curves: Sequence[Curve], horizons: Sequence[Any] | None = None, *,
                     fractions: Sequence[float] | None = None,
                     contexts: Sequence[Any] | None = None) -> list[Prediction]:
        """Predict many curves at once (one feature batch, one model call per quantile).

        Args:
            curves: the partial curves.
            horizons: per curve, its horizons in tokens (a list of sequences, one per curve);
                default: ``default_horizons``.
            fractions: alternatively, horizons as fractions of each curve's budget, the same
                for every curve (e.g. ``[0.5, 1.0]``).
            contexts: per curve, its siblings (``Context``, a sequence of ``Curve`` or
                ``None``); a model without task memory ignores them.

        Returns:
            One ``Prediction`` per curve, in order.
        """
        self._check_fitted()
        grid = self._horizon_grid(curves, horizons, fractions)
        ctx = self._contexts(curves, contexts)
        out: list[Prediction | None] = [None] * len(curves)
        modelled = [i for i, c in enumerate(curves) if len(c) >= 2]
        for i in set(range(len(curves))) - set(modelled):
            out[i] = self._prior_prediction(curves[i], grid[i])
        plain = getattr(self, "plain_", None)
        alone = [i for i in modelled if plain is not None and (ctx[i] is None or not len(ctx[i]))]
        for model, rows in ((plain, alone), (self, sorted(set(modelled) - set(alone)))):
            if rows:
                for i, prediction in zip(rows, model._model_predictions(
                        [curves[i] for i in rows], [grid[i] for i in rows], [ctx[i] for i in rows])):
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

    def _contexts(self, curves: Sequence[Curve], contexts: Sequence[Any] | None) -> list:
        if contexts is None or not self.context:
            return [None] * len(curves)
        if len(contexts) != len(curves):
            raise ParameterError(f"contexts must hold one entry per curve, got {len(contexts)} "
                                 f"for {len(curves)} curves")
        return [as_context(c, x) for c, x in zip(curves, contexts)]

    def _model_predictions(self, curves: list[Curve], grid: list[np.ndarray],
                           contexts: list) -> list[Prediction]:
        batch = PrefixBatch.from_curves([(c.tokens, c.scores, c.budget) for c in curves])
        width = max(len(h) for h in grid)
        xh = np.full((len(curves), width), np.nan)
        for i, h in enumerate(grid):
            xh[i, :len(h)] = h / batch.budget[i]
        valid = np.isfinite(xh)
        X = feature_matrix(batch, xh)
        if self.context:
            X = np.concatenate([X, context_matrix(batch, xh, contexts)], axis=2)
        X = X[valid]
        counts = valid.sum(axis=1)
        row = np.repeat(np.arange(len(curves)), counts)  # the curve of each feature row
        perplexity = np.array([_is_perplexity(c) for c in curves])
        sizes = np.array([0 if c is None else len(c) for c in contexts])
        rel = self._calibrated(self._raw_predict(X), _cell(batch.x_last[row], batch.best[row],
                                                           xh[valid], perplexity[row], sizes[row]))
        low, high = _score_range(curves)
        scores = np.clip(batch.best[row, None] + batch.scale[row, None] * rel,
                         low[row, None], high[row, None])
        starts = np.r_[0, np.cumsum(counts)]
        return [Prediction(c.curve_id, c.last_tokens, h, tuple(self.quantiles),
                           scores[starts[i]:starts[i + 1]])
                for i, (c, h) in enumerate(zip(curves, grid))]

    def _prior_prediction(self, curve: Curve, horizons: np.ndarray) -> Prediction:
        scores = prior_scores(self.prior_, curve, horizons)
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
            "feature_version": FEATURE_VERSION, "feature_names": list(self.feature_names),
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
        if getattr(self, "plain_", None) is not None:  # saved first: the manifest names it
            self.plain_.save(directory / PLAIN_DIR)
            manifest["plain_model"] = PLAIN_DIR
        write_model_dir(directory, manifest,
                        ((q, booster.model_to_string().encode("utf-8"))
                         for q, booster in zip(self.quantiles, self.boosters_)))
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
        from .manifest import champion_folder  # the pointer checked before it is read

        directory = Path(directory) if directory is not None else champion_folder()
        manifest = read_predictor_manifest(directory)
        predictor = cls(**_params_from(manifest, directory))
        predictor.boosters_ = [read_booster(directory, name, entry, manifest)
                               for name, entry in model_files(manifest, directory)]
        predictor.calibration_ = manifest["calibration"]
        predictor.prior_ = manifest["prior"]
        predictor.training_ = manifest.get("training", {})
        predictor.metrics_ = manifest.get("metrics", {})
        predictor.plain_ = _plain_from(manifest, directory)
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


def _score_range(curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """Per curve, the lowest and highest score it can reach (``Curve.score_range``):
    predictions never leave a metric's range, so an accuracy is never predicted above 1, a
    loss below 0 or a perplexity below 1."""
    low, high = np.array([c.score_range() for c in curves]).T
    return low, high


def _checked_horizons(horizons: Any, curve: Curve) -> np.ndarray:
    h = np.atleast_1d(np.asarray(horizons, dtype=float))
    if h.ndim != 1 or len(h) == 0 or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ParameterError(f"horizons of curve {curve.curve_id!r} must be a non-empty 1-D "
                             f"sequence of finite tokens > 0, got {horizons!r}")
    if np.any(np.diff(h) <= 0):
        raise ParameterError(f"horizons of curve {curve.curve_id!r} must strictly increase, "
                             f"got {h.tolist()!r}")
    return h


def _plain_from(manifest: dict[str, Any], directory: Path) -> Predictor | None:
    """The context-free twin a model with task memory names (``plain_model``), verified."""
    name = manifest.get("plain_model")
    if name is None:
        return None
    check_file_name(name, directory / MANIFEST)  # the rule of every name a manifest lists
    if name != PLAIN_DIR:
        raise ModelError(f"file {directory / MANIFEST}: plain_model must be {PLAIN_DIR!r} (a "
                         f"folder inside the model), got {name!r}")
    if (directory / PLAIN_DIR).is_symlink() or not (directory / PLAIN_DIR).is_dir():
        raise ModelError(f"file {directory / PLAIN_DIR}: the plain model must be a folder "
                         f"inside the model folder, not a symbolic link or a file")
    twin = Predictor.load(directory / PLAIN_DIR)
    if twin.context:
        raise ModelError(f"file {directory / PLAIN_DIR / MANIFEST}: the plain model must not "
                         f"read context features")
    return twin


def _params_from(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    params = dict(manifest["params"])
    params["context"] = list(manifest["feature_names"]) != list(FEATURE_NAMES)  # older models
    params["quantiles"] = tuple(manifest["quantiles"])
    try:
        Predictor(**params)._validate()
    except (TypeError, ParameterError) as error:
        raise ModelError(f"file {directory / MANIFEST}: bad params entry: {error}") from None
    return params
