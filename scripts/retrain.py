"""Batch retraining for schedulers: exactly ``metastop retrain`` (same options, same recipe).

Examples:
    python scripts/retrain.py --runs runs/finished
    python scripts/retrain.py extra.parquet --no-corpus --out reports/retrain/today --force
    python scripts/retrain.py --dask-scheduler tcp://scheduler:8786
"""

from __future__ import annotations

import logging
import sys

from metastop.cli.main import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main(["retrain", *sys.argv[1:]]))
