"""Rebuild the shipped default predictor, ``models/default``, from the training corpora.

Trains on the *train* part of every corpus only (``metastop.splits.split_holdout``: the
held-out groups that benchmarks evaluate on are never seen), with at most
``--max-curves`` curves drawn at random per corpus, and writes the LightGBM text models and
``manifest.json`` (files, SHA-256 hashes and curve counts of what it was trained on).

Usage:
    .venv/bin/python scripts/train_default.py            # about 2 minutes on 2 busy cores
    .venv/bin/python scripts/train_default.py --out /tmp/model --max-curves 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from metastop.curves import CurveSet
from metastop.predict.model import Predictor
from metastop.curves.splits import split_holdout
from metastop.curves.paths import shared_data_dir
from metastop.ingest import read_curves

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_data_dir()
CORPORA = {  # name -> path; missing optional files are skipped
    "lcdb": ROOT / "data" / "lcdb.parquet",
    "pythia_evals": SHARED / "pythia_evals.parquet",
    "pythia_arithmetic": SHARED / "pythia_arithmetic.parquet",
    "nanogpt_speedrun": SHARED / "nanogpt_speedrun.parquet",
    "em_curves": ROOT / "data" / "em_curves.parquet",
}
MAX_CURVES = {"lcdb": 12000, "pythia_arithmetic": 3000}
BALANCE_CURVES = 10000
"""Corpora are balanced: each curve weighs min(10, sqrt(BALANCE_CURVES / curves used))."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def display_path(path: Path) -> str:
    """The path relative to the repository root (``../shared/data/...`` for shared files)."""
    return os.path.relpath(path.resolve(), ROOT)


def load_training_curves(max_curves: int | None, seed: int
                         ) -> tuple[CurveSet, np.ndarray, list[dict]]:
    """The train part of each corpus present, subsampled; per-curve weights balancing the
    corpora; and the manifest's source list."""
    rng = np.random.default_rng(seed)
    parts, weights, sources = [], [], []
    for name, path in CORPORA.items():
        if not path.exists():
            print(f"  {name:18s} not found at {path}, skipped")
            continue
        curves = read_curves(path, on_error="skip")
        train, test = split_holdout(curves)
        cap = max_curves if max_curves is not None else MAX_CURVES.get(name)
        chosen = train
        if cap is not None and len(train) > cap:
            keep = np.sort(rng.choice(len(train), size=cap, replace=False))
            chosen = CurveSet(train[int(i)] for i in keep)
        parts.append(chosen)
        weight = min(10.0, float(np.sqrt(BALANCE_CURVES / max(len(chosen), 1))))
        weights.append(np.full(len(chosen), weight))
        sources.append({"name": name, "path": display_path(path), "sha256": sha256_file(path),
                        "curve_weight": round(weight, 4),
                        "n_curves": len(curves), "n_curves_train_split": len(train),
                        "n_curves_held_out": len(test), "n_curves_used": len(chosen),
                        "n_curves_dropped_invalid": len(curves.dropped)})
        print(f"  {name:18s} {len(curves):7d} curves, train split {len(train):7d}, "
              f"held out {len(test):6d}, used {len(chosen):6d}")
    return CurveSet.concat(parts), np.concatenate(weights), sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--max-curves", type=int, default=None,
                        help="cap on curves per corpus (default: 12000 LCDB, 3000 arithmetic, "
                             "all others)")
    parser.add_argument("--n-estimators", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=0.08)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=("value", "best"), default="value",
                        help="predict the value at each horizon, or the best value up to it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.time()
    print("corpora (train split only):")
    curves, weights, sources = load_training_curves(args.max_curves, args.seed)
    predictor = Predictor(n_estimators=args.n_estimators, learning_rate=args.learning_rate,
                          random_state=args.seed, target=args.target)
    predictor.fit(curves, sample_weight=weights, sources=sources)
    predictor.training_["train_seconds"] = round(time.time() - start, 1)
    predictor.save(args.out)
    print(f"saved {args.out} in {time.time() - start:.0f} s; calibration metrics:")
    print(json.dumps(predictor.metrics_, indent=2))


if __name__ == "__main__":
    main()
