"""Generate real learning curves (exact match and eval loss) by training tiny transformers on CPU.

Runs the sweep of metastop.generate.sweep (task x difficulty x width x depth x learning rate
x batch size x training-set size x weight decay x schedule x seed x lever setting: fixed or
ramped or adaptive batch, FreezeOut or adaptive freezing), one single-threaded run per
joblib worker; each run gives two curves, `<run_id>/em` and `<run_id>/eval_loss`. Finished
runs are cached one file per run under --cache-dir (written atomically, so an interrupted
sweep leaves only whole runs) and skipped when the command is run again: it resumes where
it stopped. With --figure it also draws example curves of each shape and prints the shape
counts and the share of runs that learn.

Example:
    .venv/bin/python scripts/generate_curves.py --sweep 3:900:2.5 --n-jobs 2 \\
        --max-minutes 30 --cache-dir data/.em_runs_v2 --out data/em_curves.parquet \\
        --figure data/em_curve_shapes.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from metastop.curves import CurveSet, atomic_path
from metastop.generate.report import plot_shape_examples, summary_tables
from metastop.generate.sweep import LEVERS, collect, run_sweep, sample_configs

DEFAULT_SWEEP = "0:1000:2.5"


SweepSpec = tuple[int, int, float, "tuple[str, ...] | None", "tuple[str, ...] | None"]
SPEC_FORM = "SEED:N_RUNS:SECONDS[:TASKS[:LEVERS]]"


def _names(text: str) -> tuple[str, ...] | None:
    return None if text in ("", "all") else tuple(text.split("+"))


def parse_sweep(text: str) -> SweepSpec:
    """Parse ``SEED:N_RUNS:SECONDS[:TASKS[:LEVERS]]``, names joined by ``+``, ``all`` for every
    one (e.g. ``0:360:4``, ``2:40:4:modular`` or ``3:100:3:all:ramp+freezeout``)."""
    try:
        seed, n_runs, seconds, *names = text.split(":")
        if len(names) > 2:
            raise ValueError(text)
        tasks, levers = (names + ["", ""])[:2]
        return int(seed), int(n_runs), float(seconds), _names(tasks), _names(levers)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sweep must look like {SPEC_FORM} (e.g. 0:360:4 or 1:200:3:all:fixed+ramp), "
            f"got {text!r}") from None


def sweep_configs(specs: list[SweepSpec]) -> list:
    """The configs of every sweep spec, in order, without duplicates."""
    configs = {}
    for seed, n_runs, seconds, tasks, levers in specs:
        for config in sample_configs(n_runs=n_runs, seed=seed, seconds_per_run=seconds,
                                     tasks=tasks, levers=levers):
            configs.setdefault(config.run_id, config)
    return list(configs.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="example: python scripts/generate_curves.py --sweep 3:900:2.5 "
               "--sweep 4:100:2.5:all:freezeout+adaptive_freeze --n-jobs 2 --max-minutes 30 "
               "--cache-dir data/.em_runs_v2 --out data/em_curves.parquet "
               "--figure data/em_curve_shapes.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=parse_sweep, action="append", default=None,
                        metavar=SPEC_FORM,
                        help="draw N_RUNS configs with sweep seed SEED, each sized to take about "
                             "SECONDS of CPU (evaluations included), optionally only TASKS and "
                             f"LEVERS (names joined by +, 'all' for every one; levers: "
                             f"{'+'.join(LEVERS)}); repeat to join sweeps (default "
                             f"{DEFAULT_SWEEP})")
    parser.add_argument("--n-jobs", type=int, default=1,
                        help="parallel worker processes, one thread each (default 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no new run after this many minutes (default: no limit)")
    parser.add_argument("--max-seconds-per-run", type=float, default=None,
                        help="safety cap: cut a run after this long and mark it truncated; a "
                             "cut run depends on machine speed (default: no cap)")
    parser.add_argument("--cache-dir", default="data/.em_runs_v2",
                        help="one finished run per file; reruns skip them (default "
                             "data/.em_runs_v2)")
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
    configs = sweep_configs(args.sweep or [parse_sweep(DEFAULT_SWEEP)])
    started = time.time()

    def progress(done: int, total: int, run_id: str, seconds: float | None) -> None:
        status = "not trained (deadline or failure)" if seconds is None else f"{seconds:5.1f}s"
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
              f"skipped, {len(outcome.failures)} failed in {outcome.seconds / 60:.1f} min")
        for run_id, error in outcome.failures:
            print(f"failed: {run_id}: {error}")
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
