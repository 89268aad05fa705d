"""Benchmark reading large curve tables into ``CurveSet``: wall time and peak memory.

Cases, each run in its own subprocess so that peak RSS is the case's own:

- ``pythia``: ``../shared/data/pythia_evals.parquet`` (11,652 curves) through ``read_curves``;
- ``lcdb``: the full LCDB 1.0 accuracy table (1.95 M rows): CSV read with pandas (pyarrow
  engine), mapped with ``metastop.ingest.lcdb_frame``, validated by ``CurveSet.from_frame``;
  each step timed. Target: under 10 s.

Writes JSON (default ``reports/bench_io.json``) and prints a table:

    .venv/bin/python scripts/bench_io.py [--lcdb-csv PATH] [--json PATH]

Without ``--lcdb-csv`` the LCDB sdist is downloaded once (``pip download lcdb==0.1.0``) and
its CSV extracted to ``~/.cache/metastop/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from metastop.curves.paths import shared_corpus

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "metastop"
TARGET_S = {"lcdb": 10.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=ROOT / "reports" / "bench_io.json",
                        help="where to write the results (default reports/bench_io.json)")
    parser.add_argument("--pythia", type=Path,
                        default=shared_corpus("pythia_evals.parquet"))
    parser.add_argument("--lcdb-csv", type=Path, default=None,
                        help="LCDB database-accuracy.csv (default: download and cache)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


class Timer:
    """Times named steps: ``with timer("read"): ...``."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}

    def __call__(self, name: str) -> "Timer":
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.steps[self.name] = round(time.perf_counter() - self.start, 3)


def case_pythia(path: Path, timer: Timer) -> dict:
    from metastop.ingest import read_curves

    with timer("read_curves"):
        curves = read_curves(path)
    return {"curves": len(curves), "rows": curves.n_points}


def case_lcdb(path: Path, timer: Timer) -> dict:
    import pandas as pd

    from metastop.curves import CurveSet
    from metastop.ingest.lcdb import LCDB_COLUMNS, lcdb_frame

    with timer("read_csv"):
        raw = pd.read_csv(path, engine="pyarrow", usecols=list(LCDB_COLUMNS))
    with timer("lcdb_frame (column mapping)"):
        frame = lcdb_frame(raw)
    with timer("CurveSet.from_frame"):
        curves = CurveSet.from_frame(frame, source=str(path))
    return {"curves": len(curves), "rows": len(frame)}


CASES = {"pythia": case_pythia, "lcdb": case_lcdb}


def run_case(name: str, path: Path) -> None:
    """Child process: import, measure the baseline, run one case, print its JSON."""
    import pandas  # noqa: F401  (imports are not part of the case's memory)

    import metastop.curves  # noqa: F401
    import metastop.ingest  # noqa: F401

    baseline = peak_rss_mb()
    timer = Timer()
    start, cpu = time.perf_counter(), cpu_seconds()
    counts = CASES[name](path, timer)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    print(json.dumps({"case": name, "path": str(path), **counts, "wall_s": round(wall, 3),
                      "cpu_s": round(cpu, 3),
                      "steps_s": timer.steps, "peak_rss_mb": round(peak_rss_mb(), 1),
                      "baseline_rss_mb": round(baseline, 1)}))


def lcdb_csv(given: Path | None) -> Path:
    """The LCDB accuracy CSV: given, cached, or downloaded and extracted into the cache."""
    if given is not None:
        return given
    cached = CACHE / "lcdb-0.1.0" / "database-accuracy.csv"
    if cached.exists():
        return cached
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_corpus import ACCURACY_MEMBER, download_sdist

    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lcdb-sdist-") as tmp:
        with tarfile.open(download_sdist(Path(tmp))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(ACCURACY_MEMBER))
            partial = cached.with_suffix(".part")
            partial.write_bytes(tar.extractfile(member).read())
            partial.replace(cached)
    return cached


def measure(name: str, path: Path) -> dict:
    if not path.exists():
        return {"case": name, "path": str(path), "skipped": "file not found"}
    command = [sys.executable, __file__, "--case", name, "--path", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"case": name, "path": str(path), "failed": done.stderr.strip()[-2000:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if name in TARGET_S:
        result |= {"target_s": TARGET_S[name], "within_target": result["wall_s"] < TARGET_S[name]}
    return result


def print_table(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bench_io: reading curve tables into CurveSet")
    for column in ("case", "curves", "rows", "step", "wall s", "CPU s", "peak RSS MB"):
        table.add_column(column)
    for r in results:
        if "wall_s" not in r:
            table.add_row(r["case"], "-", "-", r.get("skipped") or "failed", "-", "-", "-")
            continue
        for step, seconds in r["steps_s"].items():
            table.add_row(r["case"], "", "", step, f"{seconds:.2f}", "", "")
        target = f" (target < {r['target_s']:g})" if "target_s" in r else ""
        table.add_row(r["case"], f"{r['curves']:,}", f"{r['rows']:,}", "total" + target,
                      f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r['peak_rss_mb']:.0f}")
    Console(width=110).print(table)
    print(f"load average {os.getloadavg()[0]:.1f} on {_cpus()} CPUs: wall times include "
          "waiting for other processes; CPU s is this process's own time (all threads).")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        run_case(args.case, args.path)
        return 0
    results = [measure("pythia", args.pythia), measure("lcdb", lcdb_csv(args.lcdb_csv))]
    import pandas

    report = {"machine": {"python": platform.python_version(), "pandas": pandas.__version__,
                          "platform": platform.platform(), "cpus": _cpus(),
                          "load_average_1m": round(os.getloadavg()[0], 2)},
              "cases": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.json}")
    return 0 if all("wall_s" in r or "skipped" in r for r in results) else 1


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
