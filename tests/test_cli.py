"""The analysis commands end to end on a few real curves with the shipped model.

``analyze``, ``predict``, ``backtest``, ``plot`` and ``models``: help with an example,
tables, JSON that follows DESIGN.md's contract, PNGs, and errors that name the bad file.
"""

from __future__ import annotations

import dataclasses
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


# --- task memory: --context and --history -----------------------------------------------------
@pytest.fixture(scope="module")
def one_run_per_task(few_curves, tmp_path_factory) -> Path:
    """The six curves, each task's curves made one run: the only context any curve could get
    would come from its own run."""
    curves = read_curves(few_curves)
    path = tmp_path_factory.mktemp("one_run") / "one_run.parquet"
    CurveSet(dataclasses.replace(c, run_id=f"run-{c.task}") for c in curves).write(path)
    return path


def _store(tmp_path: Path, *files: Path) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    result = run("history", "add", *files, "--history", url)
    assert result.exit_code == 0, result.output
    return url


def _facts(data: dict) -> dict:
    """What a backtest found, without timings and without how contexts were given."""
    policies = [{k: v for k, v in p.items() if k != "wall_s"} for p in data["policies"]]
    return {"prediction": data["prediction"], "policies": policies, "frontier": data["frontier"]}


def _backtest(*args: Any) -> tuple[dict, Any]:
    result = run("backtest", *args, "--no-sweep", "--json", "-")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result


def _model_has_context() -> bool:
    from metastop.predict.model import Predictor

    return Predictor.load().context


def test_backtest_never_uses_a_context_from_the_curves_own_run(one_run_per_task):
    with_context, result = _backtest(one_run_per_task, "--context", "leave-one-run-out")
    without, _ = _backtest(one_run_per_task)
    assert with_context["context"] == "leave-one-run-out" and without["context"] == "none"
    assert with_context["n_curves_with_context"] == 0
    assert "context: 0 of 6 curves" in result.stderr
    assert _facts(with_context) == _facts(without)
    assert contract_problems(with_context) == []


def test_backtest_leave_one_run_out_takes_the_other_runs_of_the_file(few_curves):
    with_context, result = _backtest(few_curves, "--context", "leave-one-run-out")
    without, _ = _backtest(few_curves, "--context", "none")
    assert with_context["n_curves_with_context"] == 6 and with_context["context_source"] == "files"
    assert contract_problems(with_context) == [] and "context: 6 of 6 curves" in result.stderr
    if _model_has_context():
        assert with_context["prediction"] != without["prediction"]


def test_backtest_with_history_is_the_same_backtest_against_the_store(few_curves, tmp_path):
    url = _store(tmp_path, few_curves)
    from_store, result = _backtest(few_curves, "--history", url)   # leave-one-run-out by default
    from_file, _ = _backtest(few_curves, "--context", "leave-one-run-out")
    assert from_store["context"] == "leave-one-run-out" and from_store["context_source"] == url
    assert _facts(from_store) == _facts(from_file)
    refused = run("backtest", few_curves, "--history", url, "--context", "none")
    assert refused.exit_code == 2 and "drop one of them" in refused.output


def test_backtest_history_holding_only_the_curves_own_runs_gives_no_context(one_run_per_task,
                                                                             tmp_path):
    url = _store(tmp_path, one_run_per_task)
    from_store, _ = _backtest(one_run_per_task, "--history", url, "--context", "leave-one-run-out")
    without, _ = _backtest(one_run_per_task)
    assert from_store["n_curves_with_context"] == 0
    assert _facts(from_store) == _facts(without)


def test_predict_and_analyze_take_their_context_from_history(few_curves, one_run_per_task,
                                                             tmp_path):
    url = _store(tmp_path, few_curves)
    plain = run("predict", few_curves, "--at-fraction", "0.25", "--json", "-")
    told = run("predict", few_curves, "--at-fraction", "0.25", "--json", "-", "--history", url)
    assert told.exit_code == 0, told.output
    assert "context: 6 of 6 curves" in told.stderr
    if _model_has_context():
        assert json.loads(told.stdout) != json.loads(plain.stdout)
    analyzed = run("analyze", few_curves, "--json", "-", "--history", url)
    assert analyzed.exit_code == 0, analyzed.output
    assert len(json.loads(analyzed.stdout)["curves"]) == 6
    own_runs = one_run_per_task.parent / "history-own.db"
    url = f"sqlite:///{own_runs}"
    assert run("history", "add", one_run_per_task, "--history", url).exit_code == 0
    alone = run("predict", one_run_per_task, "--at-fraction", "0.25", "--json", "-")
    own = run("predict", one_run_per_task, "--at-fraction", "0.25", "--json", "-", "--history", url)
    assert json.loads(own.stdout) == json.loads(alone.stdout)
    assert "context: 0 of 6 curves" in own.stderr


# --- analyze/predict filters and summaries, --by-run, help texts ------------------------------
def _multi_task_runs(path: Path, n_runs: int = 3) -> Path:
    """``n_runs`` runs of three tasks each (accuracy rising, then flat), as a Parquet file."""
    import numpy as np

    from metastop.curves import Curve

    curves = []
    for r in range(n_runs):
        for k, task in enumerate(("lambada", "arc", "piqa")):
            tokens = np.arange(1, 16) * 1e9
            values = np.clip(0.2 + 0.1 * k + 0.3 * (1 - np.exp(-tokens / 3e9))
                             + 0.005 * np.sin(tokens / 1e9 + r), 0, 1)
            curves.append(Curve(f"run{r}/{task}/acc", tokens=tokens, values=values, task=task,
                                metric="acc", run_id=f"run{r}"))
    CurveSet(curves).write(path)
    return path


def test_backtest_by_run_writes_a_by_run_section(tmp_path):
    path, out = _multi_task_runs(tmp_path / "runs.parquet"), tmp_path / "bt.json"
    result = run("backtest", path, "--by-run", "--no-sweep", "--policy", "patience-5", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert contract_problems(data) == [] and data["n_curves"] == 9
    names = [r["name"] for r in data["by_run"]]
    assert names == ["metastop", "patience-5 (mean curve)", "cost-aware (mean curve)"]
    for entry in data["by_run"]:
        assert entry["n_runs"] == 3 and 0 <= entry["token_savings_mean"] <= 1
        assert 0 <= entry["weighted_loss_mean"] <= entry["weighted_loss_p95"] + 1e-12
    assert "by run" in result.output


def test_backtest_by_run_without_multi_task_runs_is_a_clean_error(few_curves):
    result = run("backtest", few_curves, "--by-run", "--no-sweep", "--policy", "patience-5")
    assert result.exit_code == 1 and "no run_id holds curves of 2 or more tasks" in result.output


def test_analyze_filters_contexts_and_sums_up_against_patience(tmp_path):
    path, png = _multi_task_runs(tmp_path / "runs.parquet"), tmp_path / "a.png"
    result = run("analyze", path, "--task", "arc", "--metric", "acc", "--limit", "2",
                 "--context", "leave-one-run-out", "--png", png)
    assert result.exit_code == 0, result.output
    assert "context: 2 of 2 curves" in result.output and png.stat().st_size > 10_000
    summary = next(line for line in result.output.splitlines() if line.startswith("summary:"))
    assert "2 curves" in summary and "patience-5 saves" in summary and "EM loss" in summary
    data = json.loads(run("analyze", path, "--task", "arc", "--json", "-").output)
    assert len(data["curves"]) == 3 and {c["task"] for c in data["curves"]} == {"arc"}
    assert set(data["summary"]["replay"]) == {"metastop", "patience-5"}
    missing = run("analyze", path, "--task", "nope")
    assert missing.exit_code == 1 and "no curve left" in missing.output


def test_predict_limit_and_summary(few_curves):
    result = run("predict", few_curves, "--at-fraction", "0.25", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "summary: 2 curves" in result.output
    data = json.loads(run("predict", few_curves, "--at-fraction", "0.25", "--json", "-").output)
    assert data["summary"]["n_curves"] == 6


def test_help_texts_point_to_no_design_file_outside_the_repository():
    for path, command in _all_commands(main):
        assert "DESIGN.md" not in (command.help or ""), path
        for param in command.params:
            assert "DESIGN.md" not in (getattr(param, "help", None) or ""), (path, param.name)


def test_models_clean_removes_what_killed_writers_left(tmp_path):
    import shutil

    from metastop.curves.paths import MODELS_DIR

    root = tmp_path / "models"
    shutil.copytree(MODELS_DIR / "default", root / "default")
    (root / ".add-v2-dead").mkdir()
    (root / ".current.abc.tmp").write_text("{}")
    result = CliRunner().invoke(main, ["models", "--root", str(root), "clean"])
    assert result.exit_code == 0, result.output
    assert "removed 2" in result.output
    assert sorted(p.name for p in root.iterdir()) == [".lock", "default"]  # its own lock stays
    again = CliRunner().invoke(main, ["models", "--root", str(root), "clean"])
    assert "nothing to clean" in again.output


# --- refusing what would otherwise end in silence (issue 15) ------------------------------------
@pytest.mark.parametrize("sub", [(), ("clean",), ("show", "default"), ("rollback",)],
                         ids=lambda s: " ".join(s) or "list")
def test_models_with_a_missing_root_fails_and_says_what_to_do(tmp_path, sub):
    missing = tmp_path / "nonexistent"
    result = run("models", "--root", missing, *sub)
    assert result.exit_code == 2, result.output  # a bad option: a usage error
    assert f"'--root': registry folder {str(missing)!r} does not exist" in result.output
    assert "give the folder that holds the model versions" in result.output
    assert not missing.exists()


def test_models_with_a_missing_env_registry_fails(tmp_path):
    missing = tmp_path / "gone"
    result = CliRunner(env={"METASTOP_MODELS": str(missing)}).invoke(main, ["models"])
    assert result.exit_code == 1
    assert f"{str(missing)!r} ($METASTOP_MODELS) does not exist" in result.output


def test_report_of_a_curve_table_says_it_is_not_a_decision_log(tmp_path):
    result = run("report", SAMPLE)
    assert result.exit_code == 1, result.output
    assert f"file {SAMPLE}: not a decision log (a Parquet file)" in result.output
    assert "JSONL" in result.output and "Traceback" not in result.output
    csv = tmp_path / "curves.csv"
    CurveSet(list(read_curves(SAMPLE))[:2]).write(csv)
    result = run("report", csv, "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert "no run found" in result.output and "not a decision log" in result.output
    assert not (tmp_path / "r.json").exists()
    binary = tmp_path / "log.jsonl"
    binary.write_bytes(b"\x00\x01\x02\xff{}\n")
    result = run("report", binary)
    assert result.exit_code == 1 and "not a decision log (binary)" in result.output


def test_ingest_shows_the_reader_warnings_in_its_table(tmp_path):
    wide = tmp_path / "wandb.csv"
    wide.write_text("step,eval/exact_match\n100,0.1\n200,NaN\n300,0.3\n400,N/A\n500,0.4\n")
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        main, ["ingest", str(wide), "--tokens-per-step", "1000", "-o", str(tmp_path / "c.parquet")])
    assert result.exit_code == 0, result.output
    assert "warnings: read, but not as written" in result.stdout
    assert "skipped 2 cell(s) holding NaN/None/N/A" in result.stdout
    data = json.loads(run("ingest", wide, "--tokens-per-step", "1000", "-o",
                          tmp_path / "d.parquet", "--json", "-").stdout)
    assert any("skipped 2 cell(s)" in w for w in data["warnings"])  # the same facts as JSON
