"""A tiny run of ``scripts/bench_freeze.py``: its JSON says what the report needs, and every
policy trains on the same tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_bench_freeze_smoke_run_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "scripts/bench_freeze.py", "--tasks", "reversal:3", "--seeds", "1",
         "--steps", "12", "--boot", "50", "--out", str(out), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert {"command", "date", "config", "tasks", "seeds", "policies", "same_budget", "summary",
            "target", "runs", "wall_s"} <= report.keys()
    assert report["policies"] == ["none", "freezeout", "adaptive", "collapse"]
    assert report["same_budget"] and report["reused"] == 0
    runs = report["runs"]
    assert [r["policy"] for r in runs] == report["policies"]
    assert len({(r["budget"], r["tokens"]) for r in runs}) == 1  # the same token budget
    by_policy = {r["policy"]: r for r in runs}
    assert by_policy["none"]["saved_share"] == 0.0 and by_policy["none"]["frozen"] == []
    assert by_policy["freezeout"]["saved_share"] > 0 and by_policy["freezeout"]["frozen"]
    row = report["summary"]["overall"]["adaptive"]
    assert {"em_mean", "em_ci", "saved_share_mean", "em_loss_pt_mean",
            "em_loss_pt_ci"} <= row.keys()
    assert report["summary"]["reversal:3"]["none"]["em_loss_pt_mean"] == 0.0
    assert set(report["target"]) == {"saved_min", "em_loss_max_pt", "met", "beats_freezeout"}
    assert report["target_policy"] == "collapse"
    assert report["target_by_policy"].keys() == {"adaptive", "collapse"}
    assert report["tuning"]["seed"] == 5 and report["first_seed"] == 0


def test_bench_freeze_reuses_the_runs_of_an_earlier_report(tmp_path):
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    common = ["scripts/bench_freeze.py", "--tasks", "reversal:3", "--seeds", "1", "--steps", "12",
              "--boot", "50", "--first-seed", "7"]
    for out, extra in ((first, []), (again, ["--reuse", str(first)])):
        done = subprocess.run([sys.executable, *common, "--out", str(out), *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    old, new = json.loads(first.read_text()), json.loads(again.read_text())
    assert new["reused"] == 4 and {r["seed"] for r in new["runs"]} == {7}
    assert [{k: v for k, v in r.items() if k != "reused"} for r in new["runs"]] == old["runs"]
    assert new["summary"] == old["summary"]


def test_bench_freeze_refuses_a_missing_reuse_report(tmp_path):
    done = subprocess.run([sys.executable, "scripts/bench_freeze.py", "--reuse",
                           str(tmp_path / "nope.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--reuse must be an existing report" in done.stderr


def test_bench_freeze_help_has_an_example():
    done = subprocess.run([sys.executable, "scripts/bench_freeze.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "example: python scripts/bench_freeze.py" in done.stdout
