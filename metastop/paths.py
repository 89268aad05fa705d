"""Where the project's files live: the repository's data and models, and the shared corpora.

The public corpora (Pythia evals, nanoGPT logs) sit read-only beside the repository in
``../shared/data``; ``METASTOP_SHARED_DATA`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
MODELS_DIR = REPO_ROOT / "models"
REPORTS_DIR = REPO_ROOT / "reports"


def shared_data_dir() -> Path:
    """The folder of shared public corpora: ``$METASTOP_SHARED_DATA``, else ``../shared/data``."""
    override = os.environ.get("METASTOP_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def shared_corpus(name: str) -> Path:
    """Path of one shared corpus file, e.g. ``shared_corpus("pythia_evals.parquet")``."""
    return shared_data_dir() / name
