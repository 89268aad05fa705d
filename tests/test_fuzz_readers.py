"""Fuzzing the readers: mutants of valid files of every format (long CSV/Parquet/JSONL,
trainer_state.json, TensorBoard events, wide W&B/MLflow exports) go through
``metastop ingest`` and give either a curve table that obeys every rule and reads back, or a
metastop error naming the file, with no output left behind. ``make fuzz`` runs many more
examples (see ``tests/fixtures/fuzzing.py``)."""

from __future__ import annotations

import datetime
import json
import math
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from fixtures.fuzzing import Tally, fuzz_settings
from metastop.cli.main import main
from metastop.curves import DIRECTIONS, CurveSet, is_bounded_metric
from metastop.curves.schema import bounded_rule, declared_unbounded
from metastop.ingest import read_curves

FIXTURES = Path(__file__).parent / "fixtures" / "trainer_run"
TRAINER_STATE = json.loads((FIXTURES / "trainer_state.json").read_text())
EVENTS = next((FIXTURES / "runs").glob("events.out.tfevents.*"))
TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    TALLY.flush()


# --- what every read must give ---------------------------------------------------------------
def check_curves(curves: CurveSet) -> None:
    """Every rule of the curve table holds."""
    for curve in curves:
        assert curve.curve_id.strip()
        assert np.isfinite(curve.tokens).all() and (curve.tokens >= 0).all()
        assert (np.diff(curve.tokens) > 0).all() and np.isfinite(curve.values).all()
        assert np.isfinite(curve.budget) and curve.budget >= curve.tokens[-1]
        assert curve.direction in DIRECTIONS
        if curve.metric and is_bounded_metric(curve.metric) and not declared_unbounded(curve.meta):
            assert bounded_rule(curve.values) is None, (curve.curve_id, curve.values)
            assert curve.meta.get("scale_original") != 100 or curve.values.max() <= 1
        for value in curve.meta.values():
            assert not isinstance(value, (dict, list, tuple, set, np.ndarray)), value


def read_mutant(path: Path, target: str, work: Path, **options) -> dict | None:
    """``metastop ingest`` a mutant; return its JSON summary, or None when it was refused
    with a metastop error naming the file and nothing was written."""
    out = work / "out"
    out.mkdir()
    args = ["ingest", str(path), "-o", str(out / "curves.parquet"),
            "--json", str(out / "summary.json")]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        "".join(traceback.format_exception(result.exception))
    if result.exit_code != 0:
        assert "Error: " in result.output and path.name in result.output, result.output
        assert not any(out.iterdir()), list(out.iterdir())
        TALLY.record(target, "refused")
        return None
    TALLY.record(target, "accepted")
    check_curves(read_curves(out / "curves.parquet"))  # the table reads back, rules hold
    return json.loads((out / "summary.json").read_text())


def fresh(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name.replace("/", "-"), numbered=True)


# --- junk ----------------------------------------------------------------------------------
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1, -0.5, 0, 1.5, 50, 100, 101, 1e308, -1e308, "", " ", "NaN", "nan",
                     "None", "N/A", "null", "inf", "-inf", "True", "false", "1e309", "0x10",
                     "maximize", "minimize", "MAXIMIZE", "up", "12abc", "\x00", "é", "50%"]),
    st.just(datetime.datetime(2024, 1, 2, 3, 4, 5)), st.just(datetime.date(2024, 1, 2)),
    st.text(max_size=6), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.lists(st.integers(), max_size=3))
BYTE_MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                          st.floats(0, 1, exclude_max=True), st.integers(0, 255))


def mutate_bytes(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, where, byte in mutations:
        if not data:
            break
        i = int(where * len(data))
        if kind == "flip":
            data[i] ^= 1 << (byte % 8)
        elif kind == "set":
            data[i] = byte
        elif kind == "insert":
            data[i:i] = bytes([byte])
        elif kind == "delete":
            del data[i:i + 1 + byte % 16]
        else:
            del data[i:]
    return bytes(data)


# --- long tables -----------------------------------------------------------------------------
def long_seed() -> pd.DataFrame:
    rows = []
    for curve, metric, direction, values in (
            ("a/em", "exact_match", "maximize", [0.1, 0.3, 0.35, 0.5]),
            ("b/loss", "loss", "minimize", [3.0, 2.0, 1.5, 1.4]),
            ("c/acc", "accuracy", "maximize", [0.2, 0.4, 0.45, 0.6])):
        for i, value in enumerate(values):
            rows.append({"curve_id": curve, "run_id": curve[0], "task": "qa", "metric": metric,
                         "direction": direction, "tokens": 1000.0 * (i + 1), "value": value,
                         "budget": 8000.0, "step": i + 1, "seed": 3, "note": "x"})
    return pd.DataFrame(rows)


def write_table(frame: pd.DataFrame, path: Path) -> None:
    try:
        _writers[path.suffix](frame, path)
    except (TypeError, ValueError, OverflowError, ArithmeticError) + _arrow_errors():
        # Parquet keeps one type per column: a mutant mixing kinds goes in as text.
        frame = frame.apply(lambda c: c.map(str) if c.dtype == object else c)
        _writers[path.suffix](frame, path)


_writers = {".csv": lambda f, p: f.to_csv(p, index=False),
            ".parquet": lambda f, p: f.to_parquet(p, index=False),
            ".jsonl": lambda f, p: f.to_json(p, orient="records", lines=True,
                                             default_handler=str)}


def _arrow_errors() -> tuple[type, ...]:
    import pyarrow as pa

    return (pa.ArrowException,)


CELL_EDITS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                st.floats(0, 1, exclude_max=True), JUNK), min_size=1, max_size=4)


def edit_cells(frame: pd.DataFrame, edits) -> pd.DataFrame:
    frame = frame.astype(object)
    for row, column, value in edits:
        frame.iat[int(row * len(frame)), int(column * frame.shape[1])] = value
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
@fuzz_settings(40, share=1.0)
@given(edits=CELL_EDITS, byte_mutations=st.lists(BYTE_MUTATION, max_size=3))
def test_long_table_mutants(tmp_path_factory, suffix, edits, byte_mutations):
    work = fresh(tmp_path_factory, "long")
    path = work / f"curves{suffix}"
    write_table(edit_cells(long_seed(), edits), path)
    path.write_bytes(mutate_bytes(path.read_bytes(), byte_mutations))
    read_mutant(path, f"readers/long{suffix}", work)


# --- trainer_state.json ----------------------------------------------------------------------
TRAINER_EDITS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                   st.sampled_from(["eval_exact_match", "step",
                                                    "num_input_tokens_seen", "eval_loss", "?"]),
                                   JUNK), min_size=1, max_size=3)


def edit_trainer_state(edits, top: dict) -> dict:
    state = json.loads(json.dumps(TRAINER_STATE))
    history = state["log_history"]
    for where, key, value in edits:
        entry = history[int(where * len(history))]
        if key == "?":
            entry.clear()
        else:
            entry[key] = value if not isinstance(value, (datetime.date,)) else str(value)
    state.update(top)
    return state


@fuzz_settings(40)
@given(edits=TRAINER_EDITS,
       top=st.dictionaries(st.sampled_from(["max_steps", "global_step",
                                            "num_input_tokens_seen"]), JUNK, max_size=2),
       byte_mutations=st.lists(BYTE_MUTATION, max_size=2))
def test_trainer_state_mutants(tmp_path_factory, edits, top, byte_mutations):
    work = fresh(tmp_path_factory, "trainer")
    path = work / "run" / "trainer_state.json"
    path.parent.mkdir()
    state = edit_trainer_state(edits, {k: v if not isinstance(v, datetime.date) else str(v)
                                       for k, v in top.items()})
    text = json.dumps(state, default=str).encode()
    path.write_bytes(mutate_bytes(text, byte_mutations))
    read_mutant(path, "readers/trainer_state", work)


# --- TensorBoard -----------------------------------------------------------------------------
@fuzz_settings(30)
@given(byte_mutations=st.lists(BYTE_MUTATION, min_size=1, max_size=2))
def test_tensorboard_mutants(tmp_path_factory, byte_mutations):
    work = fresh(tmp_path_factory, "tb")
    path = work / "run" / EVENTS.name
    path.parent.mkdir()
    path.write_bytes(mutate_bytes(EVENTS.read_bytes(), byte_mutations))
    summary = read_mutant(path, "readers/tensorboard", work)
    if summary is not None and summary["n_points"] < len(read_curves(EVENTS)[0]):
        # cut short: never in silence
        assert any("damaged at byte" in note for note in summary["warnings"]), summary


# --- wide W&B / MLflow exports ---------------------------------------------------------------
def wide_seed() -> pd.DataFrame:
    return pd.DataFrame({
        "_step": [100, 200, 300, 400, 500],
        "_runtime": [1.0, 2.0, 3.0, 4.0, 5.0],
        "r1 - eval/exact_match": [5.0, 20.0, None, 35.0, 40.0],
        "r1 - eval/loss": [3.0, None, 2.0, 1.8, 1.7],
        "r2 - eval/accuracy": [0.1, 0.2, 0.3, None, 0.5],
        "tokens": [1e5, 2e5, 3e5, 4e5, 5e5]})


def mlflow_seed() -> pd.DataFrame:
    return pd.DataFrame({"step": [1, 2, 3, 4], "value": [0.2, 0.3, 0.35, 0.4],
                         "timestamp": [1700000000000 + i for i in range(4)]})


@pytest.mark.parametrize("kind", ["wandb.csv", "wandb.parquet", "wandb.jsonl", "mlflow.csv"])
@fuzz_settings(40)
@given(edits=CELL_EDITS, byte_mutations=st.lists(BYTE_MUTATION, max_size=2))
def test_wide_export_mutants(tmp_path_factory, kind, edits, byte_mutations):
    work = fresh(tmp_path_factory, "wide")
    name, suffix = kind.split(".")
    seed = wide_seed() if name == "wandb" else mlflow_seed()

    path = work / f"{'eval_accuracy' if name == 'mlflow' else 'export'}.{suffix}"
    write_table(edit_cells(seed, edits), path)
    path.write_bytes(mutate_bytes(path.read_bytes(), byte_mutations))
    options = {"tokens_per_step": 10} if name == "mlflow" else {}
    read_mutant(path, f"readers/{kind}", work, **options)


# --- the seeds themselves read -----------------------------------------------------------------
def test_the_seeds_read_cleanly(tmp_path):
    """The mutants start from valid files (else the fuzzing only tests refusals)."""
    for frame, name in ((long_seed(), "long.csv"), (wide_seed(), "w.csv")):
        write_table(frame, tmp_path / name)
        curves = read_curves(tmp_path / name)
        assert len(curves) == 3 and not curves.warnings
    assert not math.isnan(read_curves(EVENTS)[0].values[0])
