"""The import graph points one way: ir <- passes <- backends <- frontends/compiler, and
the zoo (dexport.models) uses only the IR's dialects; only the ``zoo:`` model loader
(dexport.zoo), tests and benchmarks import the zoo, and ``import dexport`` does not.

Imports are read from each module's syntax tree (top level and inside functions), never
from its text, so a docstring that shows an import is not one."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each layer may import of dexport besides itself (ir includes its dialects). The
# zoo loader (dexport.zoo) may import anything.
ALLOWED = {
    "ir": {"ir"},
    "passes": {"ir"},
    "backends": {"ir", "passes"},
    "frontends": {"ir", "passes", "backends", "compiler"},
    "compiler": {"ir", "passes", "backends", "frontends", "zoo"},
    "models": {"dialects"},
}


def _package_dirs() -> dict[str, Path]:
    """Import package -> folder, as pyproject.toml maps them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {pkg: ROOT / folder for pkg, folder in config["tool"]["setuptools"]["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every dexport module name -> its file (subfolders of a mapped folder are
    subpackages, e.g. compiler/frontends -> dexport.frontends)."""
    modules: dict[str, Path] = {}
    for pkg, folder in sorted(_package_dirs().items()):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.setdefault(".".join((pkg, *parts)), path)
    return modules


MODULES = _modules()


def layer_of(module: str) -> str:
    """The layer a dexport module belongs to."""
    for prefix, layer in (("dexport.ir.dialects", "dialects"), ("dexport.ir", "ir"),
                          ("dexport.passes", "passes"), ("dexport.backends", "backends"),
                          ("dexport.frontends", "frontends"), ("dexport.models", "models"),
                          ("dexport.zoo", "zoo")):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "compiler"


def _rule_layer(layer: str) -> str:
    # For the rules the dialects are part of ir.
    return "ir" if layer == "dialects" else layer


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source`` (at any depth), plus
    ``importlib.import_module("...")`` / ``find_spec("...")`` calls with a literal name.
    ``from pkg import name`` names the submodule ``pkg.name`` where one exists."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "find_spec")):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def _dexport_imports(module: str) -> list[tuple[int, str]]:
    path = MODULES[module]
    return [(line, target) for line, target in
            imports_of(path.read_text(), module, path.name == "__init__.py")
            if target == "dexport" or target.startswith("dexport.")]


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_the_module_map_sees_every_layer():
    layers = {layer_of(m) for m in MODULES}
    assert {"ir", "dialects", "passes", "backends", "compiler", "zoo", "models"} <= layers
    assert layer_of("dexport.ir.dialects.dexport") == "dialects" and layer_of("dexport.irx") == "compiler"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    allowed = ALLOWED[layer]
    broken = []
    for module in MODULES:
        if _rule_layer(layer_of(module)) != layer:
            continue
        for line, target in _dexport_imports(module):
            got = layer_of(target)
            if got in allowed or _rule_layer(got) in allowed | {layer}:
                continue
            broken.append(f"{_where(module, line)}: {module} imports {target} ({got})")
    assert not broken, f"{layer} may import only {sorted(allowed)}:\n" + "\n".join(broken)


def test_only_the_zoo_loader_imports_the_zoo():
    importers = sorted({module for module in MODULES if layer_of(module) not in ("models", "zoo")
                        for _, target in _dexport_imports(module) if layer_of(target) == "models"})
    assert importers == []
    assert any(layer_of(t) == "models" for _, t in _dexport_imports("dexport.zoo"))


def test_import_dexport_does_not_load_the_zoo():
    code = ("import sys, dexport\n"
            "zoo = sorted(m for m in sys.modules if m.startswith('dexport.models'))\n"
            "assert not zoo, zoo\n"
            "from dexport.ir.ops import get_op\n"
            "get_op('dexport::roi_align')\n"  # the detection ops live in the dialects
            "assert not any(m.startswith('dexport.models') for m in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_imports_are_read_from_code_not_text():
    source = '''"""Use it as: from dexport.models import zoo"""
import os
from dexport.ir import errors
from . import sibling

def later():
    from dexport.models.data import ShapesDataset  # inside a function
    return importlib.import_module("dexport.backends.onnx")

text = "import dexport.models"
'''
    found = imports_of(source, "dexport.passes.example")
    assert found == [(2, "os"), (3, "dexport.ir.errors"), (4, "dexport.passes"),
                     (7, "dexport.models.data"), (8, "dexport.backends.onnx")]
