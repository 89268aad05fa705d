"""The framework examples run end to end: metastop stops them and the best checkpoint is restored."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_example(name: str, tmp_path: Path, *args: str) -> tuple[str, list[dict]]:
    log = tmp_path / "decisions.jsonl"
    done = subprocess.run([sys.executable, f"examples/{name}", "--log", str(log), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, [json.loads(line) for line in log.read_text().splitlines()]


def test_hf_trainer_example_stops_early_and_the_restored_model_scores_the_best_exact_match(tmp_path):
    pytest.importorskip("transformers")
    out, lines = run_example("hf_trainer.py", tmp_path, "--output-dir", str(tmp_path / "out"))
    summary = re.search(r"stopped at step (\d+) of (\d+) .* best exact match ([\d.]+) at step (\d+); "
                        r"the model now scores ([\d.]+) \(restored from (\S+)\)", out)
    assert summary is not None, out[-2000:]
    step, planned, best, best_step, final, checkpoint = summary.groups()
    assert int(step) < int(planned)
    assert float(final) == float(best)  # the restored weights score the best value
    assert checkpoint.endswith(f"checkpoint-{best_step}")
    assert lines[-1]["stop"] and lines[-1]["acted"] and lines[-1]["reason"] == "gain_below_cost"
    assert not any(line["reason"] == "bad_input" for line in lines)  # EM on 0-100 is read, not ignored


def test_lightning_example_restores_the_best_checkpoint_which_scores_the_best_loss(tmp_path):
    pytest.importorskip("lightning")
    out, lines = run_example("lightning_loop.py", tmp_path, "--root", str(tmp_path / "run"),
                             "--epochs", "16", "--steps-per-epoch", "25")  # a shorter run
    summary = re.search(r"at step (\d+) of (\d+) .* best val_loss ([\d.]+) in (\S+); restored, it "
                        r"scores ([\d.]+)", out)
    assert summary is not None, out[-2000:]
    _, _, best, path, restored, = summary.groups()
    assert float(restored) == float(best)
    assert Path(path).is_file() and lines[-1]["stop"] and lines[-1]["acted"]
    assert lines[0]["direction"] == "minimize"
    assert [line["tokens"] for line in lines[:2]] == [25 * 64 * 10, 50 * 64 * 10]  # digits counted
