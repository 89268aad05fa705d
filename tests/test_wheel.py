"""A wheel carries the default model: installed outside the repository, metastop decides with it."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment

PROBE = """
import json, metastop
from metastop import StopController
from metastop.predict.champion import champion_dir
c = StopController(budget=1e9)
print(json.dumps({"reason": c.observe(1e8, 0.3).reason.value, "package": metastop.__file__,
                  "model": str(champion_dir())}))
"""


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (the repository itself is left untouched)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "metastop", source / "metastop", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "models" / "default", source / "models" / "default")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                           "--no-build-isolation", "-w", str(tmp_path / "dist"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("metastop-*.whl")
    return wheel


def fresh_venv(tmp_path: Path) -> Path:
    """A new virtual environment that sees this one's dependencies but not its metastop."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Plain paths in a .pth file are appended to sys.path; this environment's editable
    # install of metastop (an import hook run from its own .pth file) is not.
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_a_wheel_install_outside_the_repository_serves_the_packaged_default_model(tmp_path):
    wheel = build_wheel(tmp_path)
    python = fresh_venv(tmp_path)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                                "--no-deps", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "METASTOP_MODELS")}
    done = subprocess.run([str(python), "-c", PROBE], cwd=outside, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["reason"] == "warmup"  # a decision from the shipped model, not a ModelError
    venv = (tmp_path / "venv").resolve()
    assert Path(probe["package"]).resolve().is_relative_to(venv)  # the wheel's metastop
    model = Path(probe["model"])
    assert model.is_relative_to(venv) and model.name == "_model"
    shipped = json.loads((ROOT / "models" / "default" / "manifest.json").read_text())
    assert json.loads((model / "manifest.json").read_text()) == shipped
    for name in ("quantile_0.1.txt", "quantile_0.5.txt", "quantile_0.9.txt"):
        assert (model / name).read_bytes() == (ROOT / "models" / "default" / name).read_bytes()


def test_without_a_registry_the_packaged_model_serves_and_without_either_the_error_says_what_to_do(
        tmp_path, monkeypatch):
    from metastop.errors import ModelError
    from metastop.predict import champion
    from metastop.predict.manifest import champion_folder
    from metastop.predict.model import Predictor

    monkeypatch.delenv(champion.ENV_ROOT, raising=False)
    monkeypatch.setattr(champion, "MODELS_DIR", tmp_path / "no-registry")  # as in a wheel install
    assert champion_folder() == champion.PACKAGED_MODEL
    Predictor.load()  # verified against its manifest
    monkeypatch.setattr(champion, "PACKAGED_MODEL", tmp_path / "no-package")
    with pytest.raises(ModelError, match=r"no-registry/default/manifest.json: .*no model registry there "
                                         r"and no model packaged with metastop: reinstall metastop .*"
                                         r"METASTOP_MODELS"):
        Predictor.load()
    # a registry named on purpose never falls back: its missing champion is an error
    monkeypatch.setenv(champion.ENV_ROOT, str(tmp_path / "no-registry"))
    monkeypatch.setattr(champion, "PACKAGED_MODEL", champion.PACKAGED_MODEL)
    with pytest.raises(ModelError, match="no-registry/default/manifest.json"):
        Predictor.load()
