"""The installed `dexport` console script finds `--model mymodule:factory` in the
current directory, as `python -m dexport` does (its sys.path starts with the script's
bin folder, not the current directory)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dexport.cli import load_model

SCRIPT = Path(sys.executable).with_name("dexport")

MODULE = textwrap.dedent("""
    import torch

    def factory():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
        return model, (torch.rand(2, 4),), [(torch.rand(5, 4),)]
""")


@pytest.mark.skipif(not SCRIPT.exists(), reason="the dexport console script is not installed next to python")
def test_console_script_imports_a_module_from_the_current_directory(tmp_path):
    (tmp_path / "mymodule.py").write_text(MODULE)
    done = subprocess.run([str(SCRIPT), "export", "--model", "mymodule:factory", "--output", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "out" / "model.onnx").is_file()
    assert "1/1 inputs match eager" in done.stdout


def test_load_model_puts_the_current_directory_back(tmp_path, monkeypatch):
    (tmp_path / "cwd_factory_module.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    model, example, checks = load_model("cwd_factory_module:factory")
    assert model(*example).shape == (2, 3) and len(checks) == 1
    assert sys.path == before
    monkeypatch.delitem(sys.modules, "cwd_factory_module")
