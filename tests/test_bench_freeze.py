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
    assert report["policies"] == ["none", "freezeout", "adaptive"] and report["same_budget"]
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


def test_bench_freeze_help_has_an_example():
    done = subprocess.run([sys.executable, "scripts/bench_freeze.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "example: python scripts/bench_freeze.py" in done.stdout
