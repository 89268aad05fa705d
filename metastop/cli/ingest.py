"""``metastop ingest``: training logs and tables into the one curve table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .main import (
    JSON,
    _counted,
    _progress_bar,
    check_output,
    library_errors,
    main,
    print_table,
    staged,
    write_json,
)

TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")
"""What ``-o`` may end in: the curve table's format goes by it."""


# --- ingest (readers) ------------------------------------------------------------------
@main.command("ingest")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Curve table to write: .parquet, .csv or .jsonl (the suffix sets the format); "
                   "its folder must exist. Written atomically, with --json, after all reads.")
@click.option("--metric", default=None,
              help="Metric to read from logs: a log_history key, TensorBoard tag or column "
                   "(default: exact match).")
@click.option("--tokens-per-step", type=float, default=None,
              help="Tokens per optimizer step, for logs without token counts.")
@click.option("--tokens-tag", default=None, help="TensorBoard tag holding cumulative tokens.")
@click.option("--scale", type=click.Choice(["1", "100"]), default=None,
              help="Scale of a bounded metric (EM, accuracy); default: detect (> 1 means 0-100).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="fail: stop at the first bad curve; skip: drop it and say why.")
@click.option("--json", "json_path", default=None,
              help="Also write a JSON summary to this .json path ('-' for standard output).")
@library_errors
def ingest_command(sources: tuple[Path, ...], output: Path, metric: str | None,
                   tokens_per_step: float | None, tokens_tag: str | None, scale: str | None,
                   on_error: str, json_path: str | None) -> None:
    """Read curves from training logs and tables into one curve table.

    SOURCES are long tables (CSV, Parquet, JSONL with a curve_id column), Hugging Face
    trainer_state.json files (or their output directories), TensorBoard event files (or
    directories holding them) and wide step x metric exports (W&B, MLflow CSV). The format
    is detected from each file's name and contents.

    \b
    Examples:
      metastop ingest out/trainer_state.json -o curves.parquet
      metastop ingest runs/ --metric eval/exact_match --tokens-per-step 4096 -o curves.parquet
      metastop ingest wandb_export.csv --tokens-per-step 4096 --on-error skip -o curves.parquet
    """
    from ..ingest import read_sources

    check_output(output, "-o/--output", suffixes=TABLE_SUFFIXES)
    check_output(json_path, "--json", suffixes=JSON)
    with _progress_bar(f"reading {len(sources)} sources") as progress:
        result = read_sources(_counted(sources, progress), on_error=on_error, metric=metric,
                              tokens_per_step=tokens_per_step, tokens_tag=tokens_tag,
                              scale=None if scale is None else float(scale))
    with staged(output, json_path) as (table_file, json_file):
        result.curves.write(table_file)
        if json_path is not None:
            write_json(result.to_dict() | {"output": str(output)}, json_file)
    if json_path != "-":  # keep standard output clean JSON for machines
        _print_ingest(result, output)


def _print_ingest(result: Any, output: Path) -> None:
    print_table(f"read {len(result.curves)} curves ({result.curves.n_points} points) into {output}",
                ["source", "format", "curves", "points", "metrics", "dropped", "warnings"],
                [(s.path, s.format, s.curves, s.points, ", ".join(s.metrics), len(s.dropped),
                  len(s.warnings)) for s in result.sources])
    if result.dropped:
        print_table("dropped", ["#", "what and why"], list(enumerate(result.dropped, 1)))
    if result.warnings:
        print_table("warnings: read, but not as written",
                    ["#", "what the reader skipped or changed"], list(enumerate(result.warnings, 1)))
