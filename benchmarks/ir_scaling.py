"""How the IR scales: print, parse, verify and a ``cse,dce`` pipeline on
synthetic graphs of 1k to 1M nodes.

The graphs look like a traced conv net: per unit, parameters read with
``prim::Param``, constants (some shared, some repeated per use as tracing
emits them), ``aten::conv2d`` / ``batch_norm``-free residual arithmetic,
views built from ``aten::size.int`` calls, subexpressions computed twice
(work for cse) and results nobody reads (work for dce).

Targets: every step grows linearly (time at 1M / time at 100k <= 12) and the
``cse,dce`` pipeline handles >= 100k nodes/s. Each step is timed on its own,
after a ``gc.collect()``, in CPU seconds of this process (the machine is
shared) and the best of 5 repeats up to 10k nodes, 3 at 100k and 2 at 1M.

    python benchmarks/ir_scaling.py                      # 1k, 10k, 100k, 1M
    python benchmarks/ir_scaling.py --sizes 1000,10000   # quick look

Writes ``benchmarks/results/ir_scaling.json`` and ``.md`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time

import torch

from dexport.ir.graph import Graph, Meta, Value
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.ir.types import BOOL, INT, NONE, ListType, TensorType
from dexport.ir.verifier import verify
from dexport.passes import PassManager

C, HW = 4, 8
ACT = TensorType(torch.float32, (1, C, HW, HW))
FLAT = TensorType(torch.float32, (1, C * HW * HW))
INTS = ListType(INT)
STEPS = ("print", "parse", "verify", "cse,dce")
# One tensor per parameter shape, shared by every name: the benchmark measures
# the IR, not tensor memory.
WEIGHT = torch.zeros(C, C, 3, 3)
BIAS = torch.zeros(C)


class _Builder:
    def __init__(self):
        self.g = Graph()
        self.x = self.g.add_input(ACT, "x")
        self.units = 0
        self.one = self.const(1, INT)
        self.zero = self.const(0, INT)

    def const(self, value, typ) -> Value:
        return self.g.create_node("prim::Constant", [], [typ], {"value": value}).output

    def op(self, op, inputs, typ, scope) -> Value:
        return self.g.create_node(op, inputs, [typ], meta=Meta(scope, "models/net.py:42")).output

    def param(self, name, tensor, typ) -> Value:
        self.g.params[name] = tensor
        node = self.g.create_node("prim::Param", [], [typ], {"name": name})
        node.output.name_hint = name
        return node.output

    def unit(self) -> None:
        """One residual unit: about 30 nodes, 3 of them duplicates and 3 dead."""
        u = self.units
        self.units += 1
        scope = f"backbone.res{u // 100}.{u % 100}"
        x = self.x
        w = self.param(f"{scope}.conv.weight", WEIGHT, TensorType(torch.float32, (C, C, 3, 3)))
        b = self.param(f"{scope}.conv.bias", BIAS, TensorType(torch.float32, (C,)))
        # tracing emits these constants once per use
        stride = self.const([1, 1], INTS)
        padding = self.const([1, 1], INTS)
        dilation = self.const([1, 1], INTS)
        groups = self.const(1, INT)
        y = self.op("aten::conv2d", [x, w, b, stride, padding, dilation, groups], ACT, scope + ".conv")
        r = self.op("aten::relu", [y], ACT, scope + ".relu")
        r2 = self.op("aten::relu", [y], ACT, scope + ".relu")            # duplicate
        alpha = self.const(1, INT)                                        # duplicate constant
        s = self.op("aten::add.Tensor", [r, x, alpha], ACT, scope)
        m = self.op("aten::mul.Tensor", [s, r2], ACT, scope)
        # flatten and back through views whose sizes come from aten::size
        n0 = self.op("aten::size.int", [m, self.zero], INT, scope)
        n0b = self.op("aten::size.int", [m, self.zero], INT, scope)       # duplicate
        minus = self.const(-1, INT)
        flat_size = self.g.create_node("prim::ListConstruct", [n0, minus], [INTS]).output
        f = self.op("aten::view", [m, flat_size], FLAT, scope)
        c, hw = self.const(C, INT), self.const(HW, INT)
        back_size = self.g.create_node("prim::ListConstruct", [n0b, c, hw, hw], [INTS]).output
        v = self.op("aten::view", [f, back_size], ACT, scope)
        # dead: a score nobody reads, and its input
        dead = self.op("aten::sigmoid", [f], FLAT, scope + ".unused")
        self.op("aten::sum", [dead, self.const(None, NONE)], TensorType(torch.float32, ()), scope)
        self.const(False, BOOL)
        t = self.op("aten::neg", [v], ACT, scope)
        self.x = self.op("aten::add.Tensor", [t, v, self.one], ACT, scope + ".out")

    def build(self, nodes: int) -> Graph:
        while self.units == 0 or len(self.g.block) < nodes:
            self.unit()
        self.g.set_outputs([self.x])
        return self.g


def build_graph(nodes: int) -> Graph:
    """A synthetic graph with at least ``nodes`` nodes (whole units)."""
    return _Builder().build(nodes)


def _timed(fn):
    """(CPU seconds, wall seconds, result). CPU time is the figure reported: the
    machine is shared, and wall time mostly measures the neighbours."""
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def measure(nodes: int, repeats: int) -> dict:
    best = {step: float("inf") for step in STEPS}
    wall = {step: float("inf") for step in STEPS}

    def step(name, fn):
        cpu_s, wall_s, result = _timed(fn)
        best[name] = min(best[name], cpu_s)
        wall[name] = min(wall[name], wall_s)
        return result

    for _ in range(repeats):
        g = build_graph(nodes)
        size = len(g)
        params = g.params
        text = step("print", lambda: print_graph(g))
        del g
        g = step("parse", lambda: parse(text, params))
        del text
        step("verify", lambda: verify(g))
        step("cse,dce", lambda: PassManager("cse,dce").run(g))
        after = len(g)
        del g
    return {"nodes": size, "nodes_after_cse_dce": after, "cpu_seconds": best, "wall_seconds": wall,
            "nodes_per_second": {s: size / best[s] for s in STEPS}}


def write_results(rows: list[dict], out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    by_size = {r["nodes"]: r for r in rows}
    big = [r for r in rows if r["nodes"] >= 900_000]
    mid = [r for r in rows if 90_000 <= r["nodes"] < 200_000]
    ratios = {}
    if big and mid:
        ratios = {s: big[0]["cpu_seconds"][s] / mid[0]["cpu_seconds"][s] for s in STEPS}
    meta = {"python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0]}
    with open(os.path.join(out_dir, "ir_scaling.json"), "w") as f:
        json.dump({"rows": rows, "ratio_1M_over_100k": ratios, "environment": meta}, f, indent=2)
        f.write("\n")
    lines = ["# IR scaling", "",
             "CPU seconds per step (nodes/s in parentheses) on synthetic traced-conv-net graphs, "
             "from `benchmarks/ir_scaling.py`; wall times are in the JSON.", "",
             "| nodes | " + " | ".join(STEPS) + " |",
             "|---:|" + "---:|" * len(STEPS)]
    for n in sorted(by_size):
        r = by_size[n]
        cells = [f"{r['cpu_seconds'][s]:.3f} ({r['nodes_per_second'][s] / 1000:,.0f}k/s)" for s in STEPS]
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    if ratios:
        lines.append("| **1M / 100k** | " + " | ".join(f"{ratios[s]:.1f}x" for s in STEPS) + " |")
    lines += ["", "Targets: linear growth (1M / 100k <= 12 for every step) and >= 100k nodes/s for `cse,dce`."]
    if ratios:
        linear = all(v <= 12 for v in ratios.values())
        fast = big[0]["nodes_per_second"]["cse,dce"] >= 100_000
        lines.append(f"Linear: {'met' if linear else 'NOT met'}; "
                     f"cse,dce at 1M: {big[0]['nodes_per_second']['cse,dce'] / 1000:,.0f}k nodes/s "
                     f"({'met' if fast else 'NOT met'}).")
    lines += ["", f"Environment: Python {meta['python']}, torch {meta['torch']}, {meta['cpus']} CPUs "
                  f"(shared; 1-min load average {meta['load_average_1min']:.1f} at the end of the run)."]
    with open(os.path.join(out_dir, "ir_scaling.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        row = measure(n, repeats=5 if n <= 10_000 else 3 if n <= 100_000 else 2)
        rows.append(row)
        print(f"{row['nodes']:>9,} nodes: " + "  ".join(f"{s} {row['cpu_seconds'][s]:.3f}s" for s in STEPS),
              flush=True)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
