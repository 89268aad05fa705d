"""The integrations package: lazy imports and install hints."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

FRAMEWORKS = ("transformers", "lightning", "optuna", "ray", "torch")


def test_importing_the_package_imports_no_framework():
    code = ("import sys, metastop, metastop.integrations; "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module, framework, extra", [
    ("hf", "transformers", "hf"), ("lightning", "lightning.pytorch", "lightning"),
    ("optuna", "optuna", "optuna"), ("ray", "ray.tune", "ray")])
def test_a_missing_framework_gives_the_install_hint(monkeypatch, module, framework, extra):
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import framework` fail
    monkeypatch.delitem(sys.modules, f"metastop.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'metastop\[{extra}\]'"):
        importlib.import_module(f"metastop.integrations.{module}")


def test_lazy_exports_and_unknown_names():
    import metastop.integrations as integrations

    assert integrations.MetaStopPruner.__module__ == "metastop.integrations.optuna"
    with pytest.raises(AttributeError, match="MetaStopCallback"):
        integrations.MetaStopCallback  # noqa: B018
