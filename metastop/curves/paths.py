"""Where the project's files live: the repository's data and models, and the shared corpora.

The public corpora (Pythia evals, nanoGPT logs) sit read-only beside the repository in
``../shared/data`` (a clone elsewhere on the machine finds them at ``/work/shared/data``);
``METASTOP_SHARED_DATA`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
MODELS_DIR = REPO_ROOT / "models"
REPORTS_DIR = REPO_ROOT / "reports"


_SHARED_CANDIDATES = (REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data"))


def shared_data_dir() -> Path:
    """The folder of shared public corpora: ``$METASTOP_SHARED_DATA``, else ``../shared/data``
    beside the repository, else ``/work/shared/data``."""
    override = os.environ.get("METASTOP_SHARED_DATA")
    if override:
        return Path(override)
    return next((p for p in _SHARED_CANDIDATES if p.is_dir()), _SHARED_CANDIDATES[0])


def shared_corpus(name: str) -> Path:
    """Path of one shared corpus file, e.g. ``shared_corpus("pythia_evals.parquet")``."""
    return shared_data_dir() / name
