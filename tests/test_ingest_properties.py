"""Property tests: whatever bytes, tables or JSON the readers are fed, only metastop's own
errors (``MetastopError``) come out, and a failing ingest leaves no half-written output."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metastop.cli.main import main
from metastop.curves import CurveSet
from metastop.errors import MetastopError
from metastop.ingest import read_curves, read_sources

FIXTURES = Path(__file__).parent / "fixtures" / "trainer_run"
TRAINER_STATE = FIXTURES / "trainer_state.json"
EVENTS = next((FIXTURES / "runs").glob("events.out.tfevents.*"))
NAMES = ["t.csv", "t.parquet", "t.jsonl", "trainer_state.json", "x.json",
         "events.out.tfevents.1.host"]
OPTIONS = st.fixed_dictionaries({}, optional={
    "metric": st.sampled_from(["exact_match", "eval_loss", "loss", "value", "em", "?"]),
    "tokens_per_step": st.sampled_from([1, 2048.0]),
})
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def read_only_metastop_errors(path: Path, **options) -> CurveSet | None:
    """Read ``path``; a MetastopError is fine, any other exception fails the test."""
    try:
        curves = read_curves(path, on_error=options.pop("on_error", "fail"), **options)
    except MetastopError:
        return None
    for curve in curves:  # whatever comes back obeys the schema
        assert np.isfinite(curve.values).all() and np.isfinite(curve.tokens).all()
        assert (np.diff(curve.tokens) > 0).all() and curve.budget >= curve.tokens[-1]
    return curves


def fresh(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- random bytes ---------------------------------------------------------------------------------
@PROPERTY
@given(name=st.sampled_from(NAMES), content=st.binary(max_size=400), options=OPTIONS)
def test_junk_bytes_give_only_metastop_errors(tmp_path, name, content, options):
    read_only_metastop_errors(fresh(tmp_path, name, content), **options)


@PROPERTY
@given(name=st.sampled_from(NAMES[:5]),
       text=st.text(alphabet=st.sampled_from(list('{}[]":,0123456789.eE-+ \n\tabcnulrtsNaIfy_')),
                    max_size=300), options=OPTIONS)
def test_junk_text_that_looks_like_data_gives_only_metastop_errors(tmp_path, name, text, options):
    read_only_metastop_errors(fresh(tmp_path, name, text.encode()), **options)


# --- random tables --------------------------------------------------------------------------------
CELLS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                  st.sampled_from(["maximize", "minimize", "nan", "inf", "1e309", ""]))
COLUMNS = ["curve_id", "tokens", "value", "step", "_step", "direction", "budget", "metric",
           "run_id", "total_steps", "exact_match", "eval/loss", "run - eval/em"]


@st.composite
def junk_tables(draw) -> pd.DataFrame:
    n = draw(st.integers(0, 8))
    names = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6, unique=True))
    return pd.DataFrame({c: draw(st.lists(CELLS, min_size=n, max_size=n)) for c in names})


def to_bytes(frame: pd.DataFrame, name: str) -> bytes:
    buffer = io.BytesIO()
    if name.endswith(".csv"):
        frame.to_csv(buffer, index=False)
    elif name.endswith(".jsonl"):
        buffer.write(frame.to_json(orient="records", lines=True).encode())
    else:
        frame.astype(str).to_parquet(buffer)
    return buffer.getvalue()


@PROPERTY
@given(frame=junk_tables(), name=st.sampled_from(["t.csv", "t.jsonl", "t.parquet"]),
       options=OPTIONS, on_error=st.sampled_from(["fail", "skip"]))
def test_junk_tables_give_only_metastop_errors(tmp_path, frame, name, options, on_error):
    try:
        content = to_bytes(frame, name)
    except (ValueError, OverflowError, TypeError):
        assume(False)  # pandas itself cannot write this frame
    read_only_metastop_errors(fresh(tmp_path, name, content), on_error=on_error, **options)


@PROPERTY
@given(frame=junk_tables(), on_error=st.sampled_from(["fail", "skip"]))
def test_junk_frames_in_memory_give_only_metastop_errors(frame, on_error):
    try:
        curves = CurveSet.from_frame(frame, source="mem", on_error=on_error)
    except MetastopError:
        return
    assert all(np.isfinite(c.values).all() for c in curves)


# --- random trainer_state.json ----------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
ENTRY = st.dictionaries(
    st.sampled_from(["step", "eval_exact_match", "eval_em", "eval_loss", "num_input_tokens_seen",
                     "loss", "epoch"]), JSON_VALUES | st.floats(0, 200), max_size=6)


@PROPERTY
@given(history=st.lists(ENTRY | JSON_VALUES, max_size=8),
       top=st.dictionaries(st.sampled_from(["max_steps", "global_step", "num_input_tokens_seen"]),
                           JSON_VALUES, max_size=3),
       options=OPTIONS)
def test_random_trainer_states_give_only_metastop_errors(tmp_path, history, top, options):
    text = json.dumps(top | {"log_history": history})
    read_only_metastop_errors(fresh(tmp_path, "trainer_state.json", text.encode()), **options)


# --- mutated valid files ------------------------------------------------------------------------------
def valid_files(tmp_path: Path) -> dict[str, bytes]:
    table = read_curves(TRAINER_STATE).to_frame()
    return {"trainer_state.json": TRAINER_STATE.read_bytes(), EVENTS.name: EVENTS.read_bytes(),
            "t.csv": to_bytes(table, "t.csv"), "t.jsonl": to_bytes(table, "t.jsonl"),
            "t.parquet": _parquet(table)}


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


@st.composite
def mutations(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(["trainer_state.json", EVENTS.name, "t.csv",
                                             "t.jsonl", "t.parquet"]), options=OPTIONS)
def test_mutated_valid_files_give_only_metastop_errors(tmp_path, data, name, options):
    original = valid_files(tmp_path)[name]
    mutated = data.draw(mutations(original))
    read_only_metastop_errors(fresh(tmp_path, name, mutated), **options)


def test_the_unmutated_files_read():
    """The mutation tests start from files that really are valid."""
    assert len(read_curves(TRAINER_STATE)) == 1 and len(read_curves(EVENTS)) == 1


# --- ingest output is all or nothing ------------------------------------------------------------------
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       name=st.sampled_from(["bad.csv", "bad.json", "trainer_state.json", "bad.jsonl"]))
def test_failing_ingest_leaves_the_previous_output_untouched(tmp_path, content, name):
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    out = directory / "curves.parquet"
    out.write_bytes(b"previous output")
    source = fresh(directory, name, content)
    result = CliRunner().invoke(main, ["ingest", str(TRAINER_STATE), str(source), "-o", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    if result.exit_code != 0:
        assert out.read_bytes() == b"previous output"
        assert "Error: " in result.output and name in result.output
    else:
        assert len(read_curves(out)) >= 1
    assert sorted(p.name for p in directory.iterdir()) == sorted(["curves.parquet", name])


@PROPERTY
@given(contents=st.lists(st.binary(max_size=80), min_size=1, max_size=3))
def test_read_sources_with_skip_never_raises_anything_but_metastop_errors(tmp_path, contents):
    paths = [fresh(tmp_path, f"s{i}.csv", c) for i, c in enumerate(contents)]
    try:
        result = read_sources([TRAINER_STATE, *paths], on_error="skip")
    except MetastopError:
        pytest.fail("skip keeps the one good source")
    assert len(result.curves) >= 1
    assert math.isfinite(result.curves.n_points)
