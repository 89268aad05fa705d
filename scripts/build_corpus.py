"""Build the project's LCDB curve corpus: ``data/lcdb.parquet`` and ``data/sample_curves.parquet``.

LCDB 1.0 (Mohr, van Rijn et al., ECML PKDD 2022, MIT) ships its learning curves inside the
PyPI source package ``lcdb``. This script downloads that sdist with pip (unless given the
CSV or the sdist), maps the accuracy curves into the curve table with
``metastop.ingest.lcdb_frame``, validates them with ``CurveSet.from_frame``, holds a few
whole datasets out for ``data/sample_curves.parquet`` and rewrites its two sections of the
data card ``data/README.md``.

Rebuild exactly as shipped:

    .venv/bin/python scripts/build_corpus.py

or, with an extracted copy of the sdist:

    .venv/bin/python scripts/build_corpus.py --lcdb-csv /tmp/lcdb-0.1.0/lcdb/database-accuracy.csv
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metastop.curves import CurveSet, atomic_path
from metastop.ingest.lcdb import LCDB_COLUMNS, lcdb_frame

log = logging.getLogger("build_corpus")

LCDB_VERSION = "0.1.0"
ACCURACY_MEMBER = "lcdb/database-accuracy.csv"
DATASETS_MEMBER = "lcdb/datasets.csv"
MIN_POINTS = 4
MAX_BYTES = 25_000_000
ROOT = Path(__file__).resolve().parent.parent
LCDB_MARKER = "<!-- section: lcdb (owned by scripts/build_corpus.py) -->"
SAMPLE_MARKER = "<!-- section: sample_curves -->"


@dataclass(frozen=True)
class Source:
    """Where the raw LCDB tables came from."""

    accuracy: pd.DataFrame
    names: dict[int, str]
    origin: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lcdb-csv", type=Path, help="database-accuracy.csv (datasets.csv "
                        "beside it gives dataset names); skips the download")
    parser.add_argument("--sdist", type=Path, help=f"lcdb-{LCDB_VERSION}.tar.gz; skips the download")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "lcdb.parquet")
    parser.add_argument("--sample-out", type=Path, default=ROOT / "data" / "sample_curves.parquet")
    parser.add_argument("--readme", type=Path, default=ROOT / "data" / "README.md",
                        help="data card whose lcdb and sample_curves sections are rewritten")
    parser.add_argument("--heldout-datasets", type=int, default=6,
                        help="datasets kept out of lcdb.parquet entirely (default 6)")
    parser.add_argument("--sample-curves", type=int, default=36,
                        help="curves in sample_curves.parquet, drawn from the held-out datasets")
    parser.add_argument("--seeds-per-learner", type=int, default=None,
                        help="stratified subsample: keep at most N seed pairs per dataset x "
                        "learner (default: all, as long as the file stays under 25 MB)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def download_sdist(directory: Path) -> Path:
    """``pip download lcdb==0.1.0 --no-deps`` (source only) into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", f"lcdb=={LCDB_VERSION}", "--no-deps",
               "--no-binary", ":all:", "--no-build-isolation", "-d", str(directory)]
    log.info("downloading: %s", " ".join(command))
    subprocess.run(command, check=True)
    found = sorted(directory.glob(f"lcdb-{LCDB_VERSION}*.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no lcdb-{LCDB_VERSION} sdist in {directory}")
    return found[0]


def read_sdist(sdist: Path) -> Source:
    """Read the accuracy table and dataset names straight out of the sdist tarball."""
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers()}
        accuracy = pd.read_csv(tar.extractfile(members[ACCURACY_MEMBER]),
                               usecols=list(LCDB_COLUMNS))
        names = _names(pd.read_csv(tar.extractfile(members[DATASETS_MEMBER])))
    return Source(accuracy, names, f"{sdist.name} ({ACCURACY_MEMBER})")


def read_csv(path: Path) -> Source:
    accuracy = pd.read_csv(path, engine="pyarrow", usecols=list(LCDB_COLUMNS))
    datasets = path.with_name("datasets.csv")
    names = _names(pd.read_csv(datasets)) if datasets.exists() else {}
    return Source(accuracy, names, f"lcdb-{LCDB_VERSION} sdist ({ACCURACY_MEMBER})")


def _names(datasets: pd.DataFrame) -> dict[int, str]:
    return {int(i): str(n) for i, n in zip(datasets["openmlid"], datasets["Name"])}


def load_source(args: argparse.Namespace) -> Source:
    if args.lcdb_csv is not None:
        return read_csv(args.lcdb_csv)
    if args.sdist is not None:
        return read_sdist(args.sdist)
    with tempfile.TemporaryDirectory(prefix="lcdb-sdist-") as tmp:
        return read_sdist(download_sdist(Path(tmp)))


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop curves that break the schema or have fewer than ``MIN_POINTS`` points."""
    curves = CurveSet.from_frame(frame, source="lcdb", on_error="skip")
    for reason in curves.dropped:
        log.warning("dropped %s", reason)
    keep = {c.curve_id for c in curves if len(c) >= MIN_POINTS}
    log.info("kept %d of %d curves (%d with < %d points)", len(keep), len(curves) + len(curves.dropped),
             len(curves) - len(keep), MIN_POINTS)
    return frame[frame["curve_id"].isin(keep)].reset_index(drop=True)


def pick_heldout(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> list[int]:
    """Draw ``n`` datasets (among those with a known name and >= 10 learners) to hold out."""
    learners = frame.groupby("dataset", observed=True)["learner"].nunique()
    named = frame.drop_duplicates("dataset").set_index("dataset")["task"].astype(str)
    eligible = sorted(i for i in learners.index
                      if learners[i] >= 10 and not named[i].startswith("openml-"))
    return sorted(int(i) for i in rng.choice(eligible, size=n, replace=False))


def sample_curves(heldout: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Stratified by dataset and learner: seed pair (0, 0) curves with >= 8 points,
    ``n / datasets`` learners drawn per dataset."""
    first = heldout[(heldout["outer_seed"] == 0) & (heldout["inner_seed"] == 0)]
    sizes = first.groupby("curve_id", observed=True).size()
    first = first[first["curve_id"].isin(sizes[sizes >= 8].index)]
    per = -(-n // first["dataset"].nunique())
    chosen: list[str] = []
    for _, part in first.groupby("dataset", observed=True):
        ids = part["curve_id"].drop_duplicates().to_numpy()
        chosen += list(rng.choice(ids, size=min(per, len(ids)), replace=False))
    chosen = sorted(chosen)[:n] if len(chosen) <= n else sorted(rng.choice(chosen, n, replace=False))
    return heldout[heldout["curve_id"].isin(chosen)].reset_index(drop=True)


def subsample_seeds(frame: pd.DataFrame, per: int | None, rng: np.random.Generator) -> pd.DataFrame:
    """Keep at most ``per`` (outer, inner) seed pairs per dataset x learner, drawn at random."""
    if per is None:
        return frame
    curves = frame.drop_duplicates("curve_id")[["curve_id", "dataset", "learner"]]
    shuffled = curves.sample(frac=1.0, random_state=int(rng.integers(2**31)))
    keep = shuffled.groupby(["dataset", "learner"], observed=True).head(per)["curve_id"]
    return frame[frame["curve_id"].isin(set(keep))].reset_index(drop=True)


def write(frame: pd.DataFrame, path: Path) -> int:
    """Write plain columns (no categoricals, whose unused categories would travel along)."""
    categorical = frame.select_dtypes("category").columns
    frame = frame.astype({c: str for c in categorical})
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, compression="zstd")
    size = path.stat().st_size
    log.info("wrote %s: %d curves, %d points, %.1f MB", path, frame["curve_id"].nunique(),
             len(frame), size / 1e6)
    return size


def counts(frame: pd.DataFrame, size: int) -> dict[str, int | float]:
    return {"curves": frame["curve_id"].nunique(), "points": len(frame),
            "datasets": frame["dataset"].nunique(), "learners": frame["learner"].nunique(),
            "mb": round(size / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    source = load_source(args)
    frame = clean(lcdb_frame(source.accuracy, names=source.names))
    heldout_ids = pick_heldout(frame, args.heldout_datasets, rng)
    is_heldout = frame["dataset"].isin(heldout_ids)
    corpus = subsample_seeds(frame[~is_heldout], args.seeds_per_learner, rng)
    sample = sample_curves(frame[is_heldout], args.sample_curves, rng)
    corpus_size = write(corpus, args.out)
    if corpus_size > MAX_BYTES:
        raise SystemExit(f"{args.out} is {corpus_size / 1e6:.1f} MB (> 25 MB); "
                         "rerun with --seeds-per-learner N")
    sample_size = write(sample, args.sample_out)
    card = DataCard(source.origin, args, heldout_ids, counts(corpus, corpus_size),
                    counts(sample, sample_size), sample)
    card.update(args.readme)
    return 0


@dataclass(frozen=True)
class DataCard:
    """The two data-card sections this script owns."""

    origin: str
    args: argparse.Namespace
    heldout: list[int]
    corpus: dict
    sample: dict
    sample_frame: pd.DataFrame

    def command(self) -> str:
        extra = "" if self.args.seeds_per_learner is None else f" --seeds-per-learner {self.args.seeds_per_learner}"
        if self.args.heldout_datasets != 6 or self.args.sample_curves != 36 or self.args.seed != 0:
            extra += (f" --heldout-datasets {self.args.heldout_datasets} --sample-curves "
                      f"{self.args.sample_curves} --seed {self.args.seed}")
        return f".venv/bin/python scripts/build_corpus.py{extra}"

    def lcdb_section(self) -> str:
        c = self.corpus
        subsample = ("all curves of the remaining datasets are kept" if self.args.seeds_per_learner is None
                     else f"at most {self.args.seeds_per_learner} (outer, inner) seed pairs per "
                          "dataset x learner, drawn at random (stratified by dataset and learner)")
        return f"""{LCDB_MARKER}
## `lcdb.parquet`: LCDB 1.0 accuracy curves

**Source.** LCDB 1.0, the learning-curve database of Mohr, van Rijn et al.: sample-wise
learning curves of 20 scikit-learn learners on OpenML classification datasets, read from
`{ACCURACY_MEMBER}` inside the PyPI source package `lcdb=={LCDB_VERSION}`
(`pip download lcdb=={LCDB_VERSION} --no-deps`).

**License.** MIT (as the `lcdb` package). Cite: F. Mohr, T. J. Viering, M. Loog and
J. N. van Rijn, "LCDB 1.0: An Extensive Learning Curves Database for Classification Tasks",
ECML PKDD 2022.

**Schema** (the curve table, one row per evaluation point):

| column | meaning |
|---|---|
| `curve_id` | `lcdb/<openmlid>/<learner class>/<outer_seed>/<inner_seed>` |
| `run_id` | `lcdb/<openmlid>`: the dataset, so grouped CV holds out whole datasets |
| `task` | OpenML dataset name (`openml-<id>` where `datasets.csv` has none) |
| `metric`, `direction` | `accuracy`, `maximize` |
| `tokens` | cost axis = number of training examples (`size_train`), not tokens |
| `value` | validation accuracy (`score_valid`) in [0, 1] |
| `dataset` | OpenML dataset id |
| `learner` | scikit-learn learner (full LCDB name) |
| `outer_seed`, `inner_seed` | LCDB's split seeds; seed noise is kept, one curve per pair |

No `budget` column: a curve's budget is its last `tokens`.

**Counts.** {c['curves']:,} curves, {c['points']:,} points, {c['datasets']} datasets,
{c['learners']} learners; {c['mb']} MB.

**How it was built.** `metastop.ingest.lcdb_frame` maps the table; `CurveSet.from_frame`
validates it (curves that break the schema are dropped and logged); curves with fewer than
{MIN_POINTS} points are dropped; the {len(self.heldout)} datasets held out for
`sample_curves.parquet` ({', '.join(map(str, self.heldout))}) are removed entirely;
{subsample}. Rebuild with:

    {self.command()}

(add `--lcdb-csv PATH/database-accuracy.csv` or `--sdist lcdb-{LCDB_VERSION}.tar.gz` to skip the download).
"""

    def sample_section(self) -> str:
        s = self.sample
        tasks = sorted(self.sample_frame["task"].astype(str).unique())
        return f"""{SAMPLE_MARKER}
## `sample_curves.parquet`: held-out LCDB curves for `make run`

{s['curves']} LCDB curves ({s['points']:,} points, {s['learners']} learners) from
{s['datasets']} datasets that are not in `lcdb.parquet` at all (OpenML ids
{', '.join(map(str, self.heldout))}: {', '.join(tasks)}), so a model trained on
`lcdb.parquet` never saw them. Same schema, source, license and citation as `lcdb.parquet`.
Sampling: the {len(self.heldout)} datasets are drawn with seed {self.args.seed} among those with a
known name and at least 10 learners; from each, curves of seed pair (0, 0) with at least 8
points are drawn from distinct learners (stratified by dataset and learner), {s['curves']} in
all. Built by the same command as `lcdb.parquet`.
"""

    def update(self, readme: Path) -> None:
        text = readme.read_text()
        text = replace_section(text, LCDB_MARKER, self.lcdb_section())
        text = replace_section(text, SAMPLE_MARKER, self.sample_section())
        with atomic_path(readme) as tmp:
            tmp.write_text(text)
        log.info("updated %s", readme)


def replace_section(text: str, marker: str, body: str) -> str:
    """Replace ``marker`` and what follows it up to the next section marker with ``body``."""
    start = text.find(marker)
    if start < 0:
        raise SystemExit(f"data card has no marker {marker!r}")
    end = text.find("<!-- section:", start + len(marker))
    end = len(text) if end < 0 else end
    return text[:start] + body.rstrip("\n") + "\n\n" + text[end:]


if __name__ == "__main__":
    sys.exit(main())
