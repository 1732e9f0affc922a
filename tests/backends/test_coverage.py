"""dexport ops / dexport.backends.coverage: the classification, the CLI and the README."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dexport
from dexport.backends.coverage import coverage
from dexport.cli import main
from dexport.ir import UnsupportedOpsError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_classification():
    cov = coverage("onnx")
    assert cov.ops["aten::add.Tensor"] == "lowered"
    assert cov.ops["aten::layer_norm"] == "lowered"
    assert cov.counts()["decomposed"] > 0 and all(not op.startswith("aten::layer_norm") for op in cov.names("decomposed"))
    assert cov.ops["aten::convolution_backward"] == "missing"
    assert sum(cov.counts().values()) == len(cov.ops) > 200


class LeakyRelu(torch.nn.Module):
    def forward(self, x):
        return F.leaky_relu(x, 0.1)


class Var(torch.nn.Module):
    def forward(self, x):
        return torch.var(x, dim=1, correction=1)


def test_decomposed_means_the_export_works(tmp_path):
    """"decomposed" is verified, not just "a decomposition exists": var.correction has one, but it
    ends in prims::var, so it is missing, and the export indeed refuses it."""
    cov = coverage("onnx")
    assert cov.ops["aten::leaky_relu"] == "decomposed"
    assert cov.ops["aten::var.correction"] == "missing" and "prims::var" in cov.notes["aten::var.correction"]
    x = torch.rand(2, 5) * 2 - 1
    result = dexport.export(LeakyRelu(), (x,), tmp_path / "leaky", check_inputs=[(torch.randn(3, 4),)])
    assert result.verification.ok
    with pytest.raises(UnsupportedOpsError, match="aten::var"):
        dexport.export(Var(), (x,), tmp_path / "var")


def test_cli_prints_the_table(capsys):
    assert main(["ops", "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(coverage("onnx").summary())
    assert "  aten::add.Tensor" in out


def test_readme_table_is_what_the_command_prints(capsys):
    assert main(["ops", "--format", "onnx", "--markdown"]) == 0
    printed = capsys.readouterr().out.strip()
    block = re.search(r"<!-- dexport ops --format onnx --markdown -->\n(.*?)\n<!-- end dexport ops -->",
                      README.read_text(), re.S)
    assert block is not None and block.group(1).strip() == printed, \
        "README coverage table is stale: paste `dexport ops --format onnx --markdown` into it"
