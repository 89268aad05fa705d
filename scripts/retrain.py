"""Batch retraining: parse arguments and call ``metastop.retrain.retrain`` (nothing else).

Examples:
    python scripts/retrain.py --runs runs/finished
    python scripts/retrain.py extra.parquet --no-corpus --out reports/retrain/today --force
    python scripts/retrain.py --dask-scheduler tcp://scheduler:8786
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", nargs="*", type=Path, help="extra curve files or folders")
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="corpus folder (lcdb.parquet, em_curves.parquet when present)")
    parser.add_argument("--no-corpus", action="store_true", help="do not read the corpus")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of finished runs: curve files and decision logs (*.jsonl)")
    parser.add_argument("--registry", type=Path, default=None, help="model registry folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--force", action="store_true", help="promote even if not better")
    parser.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                        help="train the boosters on this running Dask cluster")
    parser.add_argument("--n-estimators", type=int, default=None)
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--min-improvement", type=float, default=0.01)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from metastop.errors import MetastopError
    from metastop.ops.registry import Registry
    from metastop.ops.retrain import corpus_files, retrain

    paths = ([] if args.no_corpus else corpus_files(args.data)) + list(args.curves)
    params = {k: v for k, v in (("n_estimators", args.n_estimators),
                                ("num_threads", args.num_threads)) if v is not None}
    try:
        result = retrain(paths, runs_dir=args.runs, registry=Registry(args.registry),
                         out=args.out, params=params, dask_scheduler=args.dask_scheduler,
                         force=args.force, min_improvement=args.min_improvement)
    except MetastopError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    verdict = f"promoted as {result.promoted_as}" if result.promoted_as else "champion kept"
    print(f"{verdict}: {result.verdict.reason}\nreport: {result.out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
