"""The plain PyTorch example runs end to end with the shipped model and the real controller."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parent.parent


def test_torch_loop_example_trains_logs_and_stops_by_the_controller(tmp_path):
    log = tmp_path / "decisions.jsonl"
    done = subprocess.run([sys.executable, "examples/torch_loop.py", "--log", str(log)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all(line["shadow"] is False for line in lines)
    last = lines[-1]
    assert last["stop"] and last["acted"]
    assert last["reason"] in ("gain_below_cost", "budget_reached")
    assert "stopped after" in done.stdout


def test_levers_example_logs_batch_changes_beside_the_stop_decisions(tmp_path):
    log = tmp_path / "levers.jsonl"
    done = subprocess.run([sys.executable, "examples/levers_loop.py", "--log", str(log),
                           "--examples", "40000"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {line.get("kind", "decision") for line in lines}
    assert {"decision", "batch_size"} <= kinds
    change = next(line for line in lines if line.get("kind") == "batch_size")
    assert change["change"]["accumulation"][0] == 2 and "noise scale" in change["message"]
    assert "optimizer steps" in done.stdout and "lever changes logged" in done.stdout
