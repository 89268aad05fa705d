"""Every command under bad output paths and bad options.

Each ``-o``, ``--json FILE``, ``--png FILE`` and ``--out FOLDER`` of every command is given
paths it cannot write (a missing folder, a file where a folder should be, a folder where a
file should be, the wrong suffix, an empty path, a folder it may not write). The command must
refuse before doing any work (its input is junk: had it read it first, the error would name
the input), with exit status 2, a message naming the option and the path, no traceback, and
nothing written. An error after the check (a full disk while writing the second output)
leaves no output either, and numeric options given junk end in a clean error or a result.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from fixtures.fuzzing import Tally, fuzz_settings
from metastop.cli.main import main
from metastop.curves import Curve, CurveSet
from metastop.stop.controller import Reporting, StopController
from metastop.stop.rules import Patience

TALLY = Tally()
# command, the option under test, the suffix it writes (None: a folder), the other arguments
OUTPUTS = [
    ("ingest", "-o", ".parquet", ["ingest", "{junk}"]),
    ("ingest", "--json", ".json", ["ingest", "{junk}", "-o", "{ok}/t.parquet"]),
    ("analyze", "--png", ".png", ["analyze", "{junk}"]),
    ("analyze", "--json", ".json", ["analyze", "{junk}"]),
    ("predict", "--json", ".json", ["predict", "{junk}", "--at-fraction", "0.5"]),
    ("plot", "-o", ".png", ["plot", "{junk}"]),
    ("backtest", "--json", ".json", ["backtest", "{junk}"]),
    ("backtest", "--png", ".png", ["backtest", "{junk}"]),
    ("report", "--json", ".json", ["report", "{log}"]),
    ("report", "--png", ".png", ["report", "{log}"]),
    ("retrain", "--json", ".json", ["retrain", "{junk}", "--no-corpus", "--registry",
                                    "{ok}/registry", "--out", "{ok}/r"]),
    ("retrain", "--out", None, ["retrain", "{junk}", "--no-corpus", "--registry",
                                "{ok}/registry"]),
]
BAD_FILES = {
    "missing folder": lambda tmp, suffix: tmp / "nope" / f"x{suffix}",
    "under a file": lambda tmp, suffix: tmp / "f.txt" / f"x{suffix}",
    "a folder": lambda tmp, suffix: tmp / f"dir{suffix}",
    "wrong suffix": lambda tmp, suffix: tmp / ("x.txt" if suffix != ".txt" else "x.png"),
    "no suffix": lambda tmp, suffix: tmp / "x",
    "unwritable folder": lambda tmp, suffix: tmp / "ro" / f"x{suffix}",
    "empty": lambda tmp, suffix: "",
}
BAD_FOLDERS = {
    "a file": lambda tmp: tmp / "f.txt",
    "under a file": lambda tmp: tmp / "f.txt" / "sub",
    "unwritable folder": lambda tmp: tmp / "ro" / "sub" / "deeper",
    "empty": lambda tmp: "",
}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    TALLY.flush()


@pytest.fixture()
def place(tmp_path, monkeypatch) -> Path:
    """A folder holding junk inputs, a file ``f.txt``, folders named like outputs and a
    folder ``ro`` that may not be written (``os.access`` says so: root writes anywhere)."""
    (tmp_path / "junk.parquet").write_text("this is not a parquet file\n")
    (tmp_path / "junk.jsonl").write_text("not a decision\nnor this\n")
    (tmp_path / "f.txt").write_text("precious\n")
    for suffix in (".parquet", ".json", ".png", ".txt"):
        (tmp_path / f"dir{suffix}").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "ok").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        Path(path) != tmp_path / "ro" and real_access(path, mode, **kw)))
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too) with a file's bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def invoke(args: list[Any]) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def expect_refused(result: Any, option: str, shown: str, before: dict, place: Path) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output, result.output
    # an empty path is named as given, or as '.' where click made it a Path
    assert shown in result.output or (shown == "''" and "'.'" in result.output), result.output
    assert snapshot(place) == before, "something was written"


@pytest.mark.parametrize("how", list(BAD_FILES))
@pytest.mark.parametrize("command, option, suffix, args",
                         [o for o in OUTPUTS if o[2] is not None],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_bad_output_files_are_refused_before_the_work(place, command, option, suffix, args,
                                                      how):
    path = BAD_FILES[how](place, suffix)
    fill = {"junk": place / "junk.parquet", "log": place / "junk.jsonl", "ok": place / "ok"}
    before = snapshot(place)
    result = invoke([a.format(**fill) for a in args] + [option, path])
    expect_refused(result, option, repr(str(path)), before, place)
    TALLY.record(f"cli {command} {option}", "refused")


@pytest.mark.parametrize("how", list(BAD_FOLDERS))
def test_a_bad_retrain_report_folder_is_refused_before_the_work(place, how):
    path = BAD_FOLDERS[how](place)
    _, option, _, args = OUTPUTS[-1]
    before = snapshot(place)
    result = invoke([a.format(junk=place / "junk.parquet", ok=place / "ok") for a in args]
                    + [option, path])
    expect_refused(result, option, repr(str(path)), before, place)
    TALLY.record("cli retrain --out", "refused")


def test_the_messages_say_what_is_wrong(place):
    cases = [(["plot", place / "junk.parquet", "-o", place / "x.txt"],
              "must end in .png, the format written (got '.txt')"),
             (["ingest", place / "junk.parquet", "-o", place / "x.json"],
              "must end in .parquet or .csv or .jsonl"),
             (["ingest", place / "junk.parquet", "-o", place / "t.csv",
               "--json", "/nonexistent/x.json"],
              "folder '/nonexistent' does not exist; create it first"),
             (["analyze", place / "junk.parquet", "--json", place / "dir.json"], "is a folder"),
             (["report", place / "junk.jsonl", "--png", place / "ro" / "r.png"], "is not writable")]
    for args, message in cases:
        result = invoke(args)
        assert result.exit_code == 2 and message in result.output, result.output
    assert "'-o' / '--output'" in invoke(cases[0][0]).output


@pytest.mark.parametrize("where", ["sqlite:///{tmp}/nope/h.db", "sqlite:///{tmp}/f.txt/h.db",
                                   "sqlite:///{tmp}/f.txt", "sqlite:///{tmp}", "bogus://x"])
@pytest.mark.parametrize("command", [["history", "add", "{curves}"], ["history", "list"],
                                     ["history", "show", "squad"]], ids=lambda c: " ".join(c[:2]))
def test_history_commands_refuse_a_store_they_cannot_open(inputs, place, where, command):
    url = where.format(tmp=place)
    before = snapshot(place)
    result = invoke([a.format(curves=inputs["curves"]) for a in command] + ["--history", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 1 and url in result.output, result.output
    assert snapshot(place) == before
    TALLY.record(f"cli {' '.join(command[:2])} --history", "refused")


@pytest.mark.parametrize("root", ["{tmp}/nope", "{tmp}/f.txt", ""])
@pytest.mark.parametrize("sub", [[], ["show", "default"], ["promote", "default"], ["rollback"],
                                 ["clean"]], ids=lambda s: " ".join(s) or "list")
def test_models_commands_refuse_a_registry_that_is_not_a_folder(place, root, sub):
    path = root.format(tmp=place)
    before = snapshot(place)
    result = invoke(["models", "--root", path, *sub])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code in (1, 2) and repr(path) in result.output, result.output
    assert snapshot(place) == before
    TALLY.record("cli models --root", "refused")


# --- an error after the check leaves nothing ----------------------------------------------
def tiny_curves(n: int = 6) -> CurveSet:
    rng = np.random.default_rng(1)
    curves = []
    for i in range(n):
        tokens = np.arange(1, 9) * 1e8
        values = 0.4 * (1 - np.exp(-tokens / (2e8 + 5e7 * i))) + rng.normal(0, 0.003, 8)
        curves.append(Curve(f"run{i}/em", tokens, values, budget=8e8, run_id=f"run{i}",
                            task="arc" if i % 2 else "gsm8k", metric="exact_match"))
    return CurveSet(curves)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A small curve table and a folder of decision logs written by real controllers."""
    folder = tmp_path_factory.mktemp("inputs")
    curves = tiny_curves()
    table = curves.write(folder / "curves.parquet")
    logs = folder / "logs"
    for c in curves:
        ctl = StopController(policy=Patience(2), budget=c.budget, curve_id=c.curve_id,
                             run_id=c.run_id, task=c.task,
                             reporting=Reporting(shadow=c.run_id == "run3",
                                                 log_path=logs / f"{c.run_id}.jsonl"))
        for t, v in zip(c.tokens, c.values):
            if ctl.observe(t, v).stop:
                break
    return {"curves": table, "logs": logs}


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(28, "No space left on device")


# command, its arguments ({a} and {b}: its two outputs), what to break while writing
LATE_FAILURES = [
    (["ingest", "{curves}", "-o", "{a}.parquet", "--json", "{b}.json"],
     "metastop.cli.ingest.write_json"),
    (["analyze", "{curves}", "--limit", "1", "--png", "{a}.png", "--json", "{b}.json"],
     "metastop.cli.analysis.write_json"),
    (["backtest", "{curves}", "--policy", "patience-5", "--no-sweep", "--json", "{a}.json",
      "--png", "{b}.png"], "metastop.cli.backtest._frontier_png"),
    (["report", "{logs}", "--json", "{a}.json", "--png", "{b}.png"],
     "metastop.ops.report.plot_report"),
]


@pytest.mark.parametrize("args, target", LATE_FAILURES,
                         ids=lambda v: v[0] if isinstance(v, list) else None)
def test_an_error_while_writing_leaves_no_output(inputs, tmp_path, monkeypatch, args, target):
    monkeypatch.setattr(target, _disk_full)
    out = tmp_path / "out"
    out.mkdir()
    fill = {"curves": inputs["curves"], "logs": inputs["logs"], "a": out / "a", "b": out / "b"}
    result = invoke([a.format(**fill) for a in args])
    assert isinstance(result.exception, OSError), result.output
    assert not list(out.iterdir()), [p.name for p in out.iterdir()]
    monkeypatch.undo()
    result = invoke([a.format(**fill) for a in args])  # the same command, writing works
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        Path(a.format(**fill)).name for a in args if a.startswith(("{a}", "{b}")))


def test_report_reads_a_log_whose_tail_a_crash_zero_filled(inputs, tmp_path):
    log = tmp_path / "run1.jsonl"
    log.write_bytes((inputs["logs"] / "run1.jsonl").read_bytes() + b"\0" * 4096)
    result = invoke(["report", log, "--json", "-"])
    assert result.exit_code == 0, result.output
    assert '"n_runs": 1' in result.output


# --- bad options ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ["analyze", "{curves}", "--limit", "1"],
    ["predict", "{curves}", "--at-fraction", "0.5", "--limit", "1"],
    ["backtest", "{curves}", "--limit", "2", "--policy", "patience-5", "--no-sweep"],
], ids=lambda c: c[0])
def test_a_negative_seed_is_a_usage_error(inputs, command):
    result = invoke([a.format(curves=inputs["curves"]) for a in command] + ["--seed", "-1"])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 2 and "'--seed'" in result.output and "-1" in result.output, \
        result.output


JUNK_NUMBERS = st.sampled_from(["-1", "0", "-0", "nan", "NaN", "inf", "-inf", "1e309", "1e-320",
                                "99999999999999999999999", "abc", "", " ", "0x10", "1.5", "2"])
OPTIONS = [("ingest", "--tokens-per-step"), ("backtest", "--price"), ("backtest", "--limit"),
           ("backtest", "--seed"), ("predict", "--at-fraction"), ("predict", "--limit"),
           ("analyze", "--max-panels"), ("analyze", "--price"), ("retrain", "--min-improvement"),
           ("retrain", "--n-estimators"), ("retrain", "--max-curves")]
BASE = {"ingest": ["ingest", "{curves}", "-o", "{out}/t.parquet"],
        "backtest": ["backtest", "{curves}", "--policy", "patience-5", "--no-sweep"],
        "predict": ["predict", "{curves}", "--at-fraction", "0.5", "--limit", "1"],
        "analyze": ["analyze", "{curves}", "--limit", "1"],
        "retrain": ["retrain", "{junk}", "--no-corpus", "--registry", "{out}/registry",
                    "--out", "{out}/r"]}


@fuzz_settings(30, share=0.05)
@given(choice=st.sampled_from(OPTIONS), value=JUNK_NUMBERS)
def test_junk_numbers_in_options_end_cleanly(inputs, tmp_path_factory, choice, value):
    command, option = choice
    work = tmp_path_factory.mktemp("opt")
    (work / "junk.parquet").write_text("junk\n")
    out = work / "out"
    out.mkdir()
    fill = {"curves": inputs["curves"], "out": out, "junk": work / "junk.parquet"}
    args = [a.format(**fill) for a in BASE[command]]
    if option in args:  # the base value of the option gives way to the junk one
        del args[args.index(option):args.index(option) + 2]
    result = invoke(args + [option, value])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code:
        assert "Error: " in result.output and "Traceback" not in result.output, result.output
        written = [p for p in out.rglob("*") if "registry" not in p.parts]  # the registry is
        assert not written, f"a refused command wrote {written}"  # state, not an output
    TALLY.record(f"cli {command} {option}", "refused" if result.exit_code else "accepted")
