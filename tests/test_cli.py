"""The analysis commands end to end on a few real curves with the shipped model.

``analyze``, ``predict``, ``backtest``, ``plot`` and ``models``: help with an example,
tables, JSON that follows DESIGN.md's contract, PNGs, and errors that name the bad file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from metastop.evaluate.contract import contract_problems
from metastop.evaluate.suite import STANDARD_POLICIES
from metastop.cli.main import main
from metastop.curves import CurveSet
from metastop.ingest import read_curves

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample_curves.parquet"
ANALYSIS_COMMANDS = ("analyze", "predict", "backtest", "plot", "models")


@pytest.fixture(scope="module")
def few_curves(tmp_path_factory) -> Path:
    """Six real curves of the sample corpus (three tasks), as a small Parquet file."""
    curves = read_curves(SAMPLE)
    chosen, tasks = [], {}
    for curve in curves:
        if tasks.get(curve.task, 0) < 2 and len(tasks) <= 3:
            tasks[curve.task] = tasks.get(curve.task, 0) + 1
            chosen.append(curve)
        if len(chosen) == 6:
            break
    path = tmp_path_factory.mktemp("curves") / "few.parquet"
    CurveSet(chosen).write(path)
    return path


@pytest.fixture()
def junk(tmp_path) -> Path:
    path = tmp_path / "junk.parquet"
    path.write_text("this is not a parquet file\n")
    return path


def run(*args: str) -> Any:
    result = CliRunner(env={"COLUMNS": "250"}).invoke(main, [str(a) for a in args])
    return result


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, prefix + (name,))


# --- help -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [p for p, _ in _all_commands(main)], ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    command = dict(_all_commands(main))[path]
    assert command.help and command.help.strip(), f"{' '.join(path)} has no help text"
    assert "Example" in result.output, f"{' '.join(path)} --help shows no example"


def test_the_analysis_commands_exist():
    assert set(ANALYSIS_COMMANDS) <= set(main.commands)


# --- analyze ------------------------------------------------------------------------------
def test_analyze_table_png_and_json(few_curves, tmp_path):
    png, out = tmp_path / "analyze.png", tmp_path / "analyze.json"
    result = run("analyze", few_curves, "--png", png, "--json", out)
    assert result.exit_code == 0, result.output
    assert "predicted final" in result.output and "tokens saved" in result.output
    assert png.stat().st_size > 10_000
    data = json.loads(out.read_text())
    assert len(data["curves"]) == 6 and data["price"]["kind"] == "fraction_of_budget"
    row = data["curves"][0]
    for key in ("curve_id", "n_points", "best", "predicted_final", "interval_80", "stop_index",
                "stop_tokens", "tokens_saved", "predicted_from_points"):
        assert key in row
    low, high = row["interval_80"]
    assert low <= high


def test_analyze_json_to_stdout_is_pure_json(few_curves):
    result = run("analyze", few_curves, "--json", "-", "--price", "0.02")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["price"]["amount"] == 0.02


def test_analyze_on_the_sample_corpus_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    result = run("analyze", SAMPLE, "--png", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    assert time.perf_counter() - start < 60
    assert (tmp_path / "a.png").stat().st_size > 10_000


# --- predict ----------------------------------------------------------------------------------
def test_predict_at_fraction(few_curves):
    result = run("predict", few_curves, "--at-fraction", "0.3", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["at_fraction"] == 0.3 and len(data["curves"]) == 6
    for row in data["curves"]:
        assert row["true_final"] is not None        # the sample curves are finished
        assert row["predicted_from_tokens"] <= 0.3 * row["budget"] or row["predicted_from_points"] == 1
    table = run("predict", few_curves, "--at-fraction", "0.3")
    assert table.exit_code == 0 and "true final" in table.output


def test_predict_needs_a_fraction_in_range(few_curves):
    result = run("predict", few_curves, "--at-fraction", "1.5")
    assert result.exit_code != 0 and "at-fraction" in result.output


# --- backtest ---------------------------------------------------------------------------------
def test_backtest_json_follows_the_contract(few_curves, tmp_path):
    out, png = tmp_path / "backtest.json", tmp_path / "frontier.png"
    result = run("backtest", few_curves, "--json", out, "--png", png)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert contract_problems(data) == []
    assert data["n_curves"] == 6
    names = [p["name"] for p in data["policies"]]
    assert names == list(STANDARD_POLICIES)
    assert {"metastop", "patience", "oracle"} <= set(data["frontier"])
    for entry in data["policies"]:
        assert 0.0 <= entry["token_savings_mean"] <= 1.0
        assert entry["em_loss_mean"] >= 0.0 and entry["n_curves"] == 6
    assert "comparison" in data and "utility" in data
    assert png.stat().st_size > 10_000
    assert "token savings" in result.output and "paired difference" in result.output


def test_backtest_chosen_policies_keep_last_and_two_files(few_curves, tmp_path):
    other = tmp_path / "other.parquet"
    CurveSet(list(read_curves(SAMPLE))[-3:]).write(other)
    result = run("backtest", few_curves, other, "--policy", "patience-2", "--policy", "oracle",
                 "--keep", "last", "--no-sweep", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["name"] for p in data["policies"]] == ["patience-2", "oracle"]
    assert data["n_curves"] == 9 and data["keep"] == "last" and data["frontier"] == {}
    assert contract_problems(data) == []


def test_backtest_unknown_policy_is_a_clean_error(few_curves):
    result = run("backtest", few_curves, "--policy", "median")
    assert result.exit_code == 1 and "unknown policy 'median'" in result.output


# --- plot -------------------------------------------------------------------------------------
def test_plot_chosen_curves(few_curves, tmp_path):
    ids = read_curves(few_curves).ids
    png = tmp_path / "plot.png"
    result = run("plot", few_curves, "--curve", ids[0], "--curve", ids[3], "-o", png)
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 10_000 and "2 curves" in result.output
    result = run("plot", few_curves, "--at-fraction", "0.4", "-o", tmp_path / "all.png")
    assert result.exit_code == 0, result.output


def test_plot_unknown_curve_names_it(few_curves, tmp_path):
    result = run("plot", few_curves, "--curve", "nope", "-o", tmp_path / "x.png")
    assert result.exit_code == 1 and "nope" in result.output and "few.parquet" in result.output


# --- models -----------------------------------------------------------------------------------
@pytest.fixture()
def registry(tmp_path) -> Path:
    for name, mae in (("default", 0.031), ("20250101-000000-abc", 0.027)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(
            {"created": "2025-01-01T00:00:00Z", "metrics": {"mae_final": mae, "coverage_80": 0.8}}))
    (tmp_path / "broken").mkdir()
    return tmp_path


def test_models_lists_versions_with_metrics(registry):
    result = run("models", "--root", registry)
    assert result.exit_code == 0, result.output
    assert "default" in result.output and "20250101-000000-abc" in result.output
    assert "mae_final=0.031" in result.output
    data = json.loads(run("models", "--root", registry, "--json").stdout)
    by_name = {v["name"]: v for v in data}
    assert by_name["default"]["champion"] is True
    assert by_name["broken"]["problem"]


def test_models_show_one_manifest(registry):
    result = run("models", "--root", registry, "show", "default")
    assert result.exit_code == 0, result.output
    assert "mae_final" in result.output
    data = json.loads(run("models", "--root", registry, "--json", "show", "default").stdout)
    assert data["metrics"]["mae_final"] == 0.031
    missing = run("models", "--root", registry, "show", "nope")
    assert missing.exit_code == 1 and "nope" in missing.output


def test_models_lists_the_shipped_model():
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "default" in result.output


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("analyze", "{junk}"),
    ("predict", "{junk}", "--at-fraction", "0.5"),
    ("backtest", "{junk}", "--no-sweep"),
    ("plot", "{junk}", "-o", "{tmp}/x.png"),
], ids=lambda a: a[0])
def test_junk_file_fails_and_names_the_file(args, junk, tmp_path):
    result = run(*(a.format(junk=junk, tmp=tmp_path) for a in args))
    assert result.exit_code != 0
    assert str(junk) in result.output or junk.name in result.output
    assert "Traceback" not in result.output


def test_missing_file_fails_and_names_it(tmp_path):
    result = run("analyze", tmp_path / "absent.parquet")
    assert result.exit_code != 0 and "absent.parquet" in result.output
