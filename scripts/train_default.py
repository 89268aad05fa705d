"""Rebuild the shipped default predictor, ``models/default``, with the library's one recipe.

The recipe (``metastop.ops.recipe``) reads the train part of every corpus, caps and weighs
them; ``metastop retrain`` trains its challengers the same way.

Usage:
    .venv/bin/python scripts/train_default.py            # about 2.5 minutes on 2 busy cores
    .venv/bin/python scripts/train_default.py --out /tmp/model --max-curves 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from metastop.curves.paths import MODELS_DIR
from metastop.ops.recipe import DEFAULT_PARAMS, Recipe, fit, training_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "default")
    parser.add_argument("--max-curves", type=int, default=None,
                        help="cap on curves per corpus (default: each corpus's own cap)")
    parser.add_argument("--n-estimators", type=int, default=DEFAULT_PARAMS["n_estimators"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_PARAMS["learning_rate"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", choices=("value", "best"), default="value",
                        help="predict the value at each horizon, or the best value up to it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    start = time.time()
    params = {"n_estimators": args.n_estimators, "learning_rate": args.learning_rate,
              "random_state": args.seed, "target": args.target}
    recipe = Recipe(max_curves=args.max_curves, seed=args.seed, params=params)
    predictor = fit(training_set(recipe), recipe.params)
    predictor.training_["train_seconds"] = round(time.time() - start, 1)
    predictor.save(args.out)
    print(f"saved {args.out} in {time.time() - start:.0f} s; calibration metrics:")
    print(json.dumps(predictor.metrics_, indent=2))


if __name__ == "__main__":
    main()
