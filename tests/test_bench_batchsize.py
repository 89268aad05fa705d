"""A fast smoke run of ``scripts/bench_batchsize.py``: tiny budgets, every policy, one report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("joblib")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench_batchsize.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_batchsize", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_every_policy_runs_on_the_same_token_budget_and_the_report_is_complete(tmp_path, capsys):
    out = tmp_path / "bench.json"
    script = load_script()
    assert script.main(["--tasks", "qa:1,sorting:4", "--seeds", "1", "--steps", "16",
                        "--eval-size", "16", "--boot", "20", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "vs best fixed" in table and "Target (adaptive within 0.5 pt" in table
    report = json.loads(out.read_text())
    assert {"command", "date", "settings", "overall", "tasks", "same_budget", "target", "runs",
            "wall_s"} <= set(report)
    assert len(report["runs"]) == 2 * 4 and report["same_budget"] is True
    for task in ("qa:1", "sorting:4"):
        runs = [r for r in report["runs"] if r["task"] == task]
        assert sorted(r["policy"] for r in runs) == sorted(script.POLICIES)
        assert len({r["budget"] for r in runs}) == 1  # one token budget for all policies
        assert all(r["tokens"] == r["budget"] for r in runs)  # and each spent it all
        steps = {r["policy"]: r["optimizer_steps"] for r in runs}
        assert steps["fixed_small"] == 16 and steps["fixed_large"] == 2
        assert report["tasks"][task]["best_fixed"][task] in script.FIXED
    overall = report["overall"]["policies"]
    assert set(overall) == set(script.POLICIES)
    assert {"final_em_mean", "final_em_ci", "optimizer_steps_mean", "em_vs_best_fixed_pt",
            "em_vs_best_fixed_pt_ci", "steps_saved_vs_best_fixed"} <= set(overall["adaptive"])
    assert set(report["target"]) == {"em_within_pt", "steps_saved_at_least",
                                     "adaptive_em_vs_best_fixed_pt", "adaptive_steps_saved", "met"}


def test_help_shows_an_example_and_bad_settings_are_refused(capsys):
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "example: nice -n 5" in done.stdout
    script = load_script()
    for argv, message in ((["--steps", "12"], "--steps must be a positive multiple of 8"),
                          (["--tasks", "qa"], "--tasks must look like qa:1,sorting:4"),
                          (["--tasks", "qa:99"], "difficulty")):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
        assert message in capsys.readouterr().err
