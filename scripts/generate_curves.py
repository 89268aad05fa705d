"""Generate real exact-match learning curves by training tiny transformers on CPU.

Runs the sweep of metastop.generate.sweep (task x difficulty x width x depth x learning rate
x batch size x training-set size x weight decay x schedule x seed), one single-threaded run
per joblib worker. Finished runs are cached one file per run under --cache-dir and skipped
when the command is run again, so an interrupted sweep resumes where it stopped. With
--figure it also draws example curves of each shape and prints the shape counts.

Example:
    .venv/bin/python scripts/generate_curves.py --sweep 0:37:4 --sweep 1:300:2 \\
        --sweep 2:40:4:qa+reversal+sorting --n-jobs 2 --max-minutes 35 \\
        --out data/em_curves.parquet --figure data/em_curve_shapes.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from metastop.curves import CurveSet, atomic_path
from metastop.generate.report import plot_shape_examples, summary_tables
from metastop.generate.sweep import collect, run_sweep, sample_configs


def parse_sweep(text: str) -> tuple[int, int, float, tuple[str, ...] | None]:
    """Parse ``SEED:N_RUNS:SECONDS[:TASK+TASK...]`` (e.g. ``0:360:4`` or ``2:40:4:modular``)."""
    try:
        seed, n_runs, seconds, *tasks = text.split(":")
        if len(tasks) > 1:
            raise ValueError(text)
        return int(seed), int(n_runs), float(seconds), tuple(tasks[0].split("+")) if tasks else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sweep must look like SEED:N_RUNS:SECONDS[:TASK+TASK] (e.g. 0:360:4), "
            f"got {text!r}") from None


def sweep_configs(specs: list[tuple[int, int, float, tuple[str, ...] | None]]) -> list:
    """The configs of every sweep spec, in order, without duplicates."""
    configs = {}
    for seed, n_runs, seconds, tasks in specs:
        for config in sample_configs(n_runs=n_runs, seed=seed, seconds_per_run=seconds,
                                     tasks=tasks):
            configs.setdefault(config.run_id, config)
    return list(configs.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/generate_curves.py --sweep 0:37:4 --sweep 1:300:2 "
               "--sweep 2:40:4:qa+reversal+sorting --n-jobs 2 --max-minutes 35 "
               "--out data/em_curves.parquet "
               "--figure data/em_curve_shapes.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=parse_sweep, action="append", default=None,
                        metavar="SEED:N_RUNS:SECONDS[:TASKS]",
                        help="draw N_RUNS configs with sweep seed SEED, each sized to take about "
                             "SECONDS of CPU, optionally only TASKS (joined by +); repeat to "
                             "join sweeps (default 0:360:4)")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="parallel worker processes, one thread each (default 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new run after this many minutes (default: no limit)")
    parser.add_argument("--max-seconds-per-run", type=float, default=None,
                        help="safety cap: cut a run after this long and mark it truncated; a "
                             "cut run depends on machine speed (default: no cap)")
    parser.add_argument("--cache-dir", default="data/.em_runs",
                        help="one finished run per file; reruns skip them (default data/.em_runs)")
    parser.add_argument("--out", default="data/em_curves.parquet",
                        help="the curve table to write (default data/em_curves.parquet)")
    parser.add_argument("--figure", default=None,
                        help="also save example curves per shape to this PNG (default: none)")
    parser.add_argument("--collect-only", action="store_true",
                        help="train nothing; write the table from runs already cached")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    configs = sweep_configs(args.sweep or [(0, 360, 4.0, None)])
    started = time.time()

    def progress(done: int, total: int, run_id: str, seconds: float | None) -> None:
        status = "skipped (deadline)" if seconds is None else f"{seconds:5.1f}s"
        print(f"[{done:4d}/{total}] {time.time() - started:7.0f}s  {run_id:<28} {status}",
              flush=True)

    if args.collect_only:
        frame = collect(configs, cache_dir=args.cache_dir)
    else:
        outcome = run_sweep(configs, cache_dir=args.cache_dir, n_jobs=args.n_jobs,
                            max_minutes=args.max_minutes,
                            max_seconds_per_run=args.max_seconds_per_run, on_run=progress)
        frame = outcome.frame
        print(f"{outcome.n_trained} trained, {outcome.n_cached} cached, {outcome.n_skipped} "
              f"skipped in {outcome.seconds / 60:.1f} min")
    curves = CurveSet.from_frame(frame, source=args.out)  # validates the schema
    with atomic_path(args.out) as tmp:
        frame.to_parquet(tmp, index=False)
    print(f"wrote {args.out}: {len(curves)} curves, {curves.n_points} points")
    if args.figure is not None:
        plot_shape_examples(curves, args.figure)
        print(f"wrote {args.figure}\n{summary_tables(curves)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
