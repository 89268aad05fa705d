"""Readers: every supported layout of training logs mapped into the one curve table.

Long tables (CSV, Parquet, JSONL), Hugging Face ``trainer_state.json``, TensorBoard event
files and wide step x metric exports (W&B, MLflow), one module per format; ``lcdb`` maps the
LCDB table. ``read_curves`` (in ``detect``) detects the format of one path; ``read_sources``
reads many and reports what each gave.

What is not a learning curve is refused with an error naming the file, curve, row and rule
(``CurveSet.from_frame``); what a reader skipped or changed without refusing (NaN cells of a
wide export, a damaged TensorBoard file, metadata kept as text) is said in
``CurveSet.warnings`` and ``SourceSummary.warnings``.

Example:
    >>> from metastop.ingest import read_curves
    >>> curves = read_curves("data/sample_curves.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from ._common import metric_direction
from .detect import (FORMATS, IngestResult, SourceSummary, detect_format, read_curves,
                     read_sources)
from .lcdb import lcdb_frame
from .long import long_table_curves, read_long_table
from .tensorboard import read_tensorboard
from .trainer_state import read_trainer_state
from .wide import read_wide_table, wide_table_curves

__all__ = ["FORMATS", "IngestResult", "SourceSummary", "detect_format", "lcdb_frame",
           "long_table_curves", "metric_direction", "read_curves", "read_long_table",
           "read_sources", "read_tensorboard", "read_trainer_state", "read_wide_table",
           "wide_table_curves"]
