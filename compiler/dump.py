"""Dumps for debugging: the IR as text, DOT and SVG, and a TorchScript module's IR.

Files are written whole or not at all (temporary file, then rename), so a
failure never leaves a truncated dump behind.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import networkx as nx
import torch

from dexport.ir.graph import CONSTANT, PARAM, Graph, Node
from dexport.ir.printer import print_graph

_HIDDEN_OPS = (CONSTANT, PARAM)  # drawn as edges' sources would only add clutter


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def dump_ir(graph: Graph, directory: str | os.PathLike, name: str = "graph") -> dict[str, Path]:
    """Write ``NAME.ir`` (text form), ``NAME.dot`` (Graphviz) and ``NAME.svg`` (opens in
    any browser, no Graphviz needed) into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ir": directory / f"{name}.ir", "dot": directory / f"{name}.dot",
             "svg": directory / f"{name}.svg"}
    write_text_atomic(paths["ir"], print_graph(graph))
    dag = _dataflow(graph)
    write_text_atomic(paths["dot"], _to_dot(dag))
    write_text_atomic(paths["svg"], _to_svg(dag))
    return paths


def dump_torchscript_IR(module, directory: str | os.PathLike) -> dict[str, Path]:
    """Write what a traced/scripted module or function looks like to TorchScript:
    ``model.txt`` (module structure), ``model_ts_code.txt`` (code of every
    submodule), ``model_ts_IR.txt`` (graph of every submodule) and
    ``model_ts_IR_inlined.txt`` (the whole graph inlined)."""
    if not isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        from dexport.ir.errors import DexportError
        raise DexportError(f"dump_torchscript_IR needs a traced or scripted module, got {type(module).__name__}",
                           hint="pass the result of torch.jit.trace or torch.jit.script")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(module, torch.jit.ScriptFunction):
        parts = {"model.txt": f"ScriptFunction {module.name}\n", "model_ts_code.txt": module.code,
                 "model_ts_IR.txt": str(module.graph), "model_ts_IR_inlined.txt": str(module.graph)}
    else:
        code, graphs = [], []
        for name, sub in module.named_modules():
            title = f"# module {name or '<top>'} ({sub.original_name})\n"
            if hasattr(sub, "code"):
                code.append(title + sub.code)
            if hasattr(sub, "graph"):
                graphs.append(title + str(sub.graph))
        parts = {"model.txt": str(module) + "\n", "model_ts_code.txt": "\n".join(code),
                 "model_ts_IR.txt": "\n".join(graphs), "model_ts_IR_inlined.txt": str(module.inlined_graph)}
    paths = {}
    for fname, text in parts.items():
        paths[fname] = directory / fname
        write_text_atomic(paths[fname], text)
    return paths


# --------------------------------------------------------------------------- drawing

def _dataflow(graph: Graph) -> nx.DiGraph:
    """A DAG of the top block: one vertex per visible node (nested blocks fold into
    their owner), plus the graph's inputs and outputs."""
    dag = nx.DiGraph()
    owner_of: dict[int, str] = {}

    def vertex_of(value) -> str | None:
        # None for values with no drawn vertex (constants and parameters).
        return owner_of.get(id(value))

    for i, v in enumerate(graph.inputs):
        key = f"in{i}"
        dag.add_node(key, label=f"input {v.name_hint or i}\n{v.type}", kind="io")
        owner_of[id(v)] = key
    for k, node in enumerate(graph.block.nodes):
        if node.op in _HIDDEN_OPS:
            continue
        key = f"n{k}"
        label = node.op + (f"\n{node.meta.scope}" if node.meta.scope else "")
        if node.blocks:
            label += f"\n({sum(len(b) for b in node.blocks)} nested nodes)"
        dag.add_node(key, label=label, kind="op")
        for v in node.outputs:
            owner_of[id(v)] = key
        for inner in _nested_values(node):
            owner_of[id(inner)] = key
        for v in _free_inputs(node):
            src = vertex_of(v)
            if src is not None and src != key:
                dag.add_edge(src, key, label=str(v.type))
    for i, v in enumerate(graph.outputs):
        key = f"out{i}"
        dag.add_node(key, label=f"output {i}\n{v.type}", kind="io")
        src = vertex_of(v)
        if src is not None:
            dag.add_edge(src, key, label=str(v.type))
    return dag


def _nested_values(node: Node):
    for b in node.blocks:
        yield from b.params
        for n in b.nodes:
            yield from n.outputs
            yield from _nested_values(n)


def _free_inputs(node: Node):
    yield from node.inputs
    for b in node.blocks:
        for n in b.nodes:
            yield from _free_inputs(n)
        yield from b.returns


def _to_dot(dag: nx.DiGraph) -> str:
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph dexport {", "  node [shape=box, fontname=monospace, fontsize=10];"]
    for key, data in dag.nodes(data=True):
        style = ", style=rounded" if data["kind"] == "io" else ""
        lines.append(f"  {key} [label={q(data['label'])}{style}];")
    for a, b, data in dag.edges(data=True):
        lines.append(f"  {a} -> {b} [label={q(data['label'])}, fontsize=8];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _to_svg(dag: nx.DiGraph) -> str:
    """A layered drawing: each vertex sits one row below its deepest producer."""
    col_w, row_h, box_h = 220, 70, 44
    order = {key: i for i, key in enumerate(dag.nodes)}
    rows = [sorted(gen, key=order.__getitem__) for gen in nx.topological_generations(dag)]
    pos = {key: (20 + c * col_w, 20 + r * row_h) for r, row in enumerate(rows) for c, key in enumerate(row)}
    width = 40 + col_w * max((len(r) for r in rows), default=1)
    height = 40 + row_h * max(len(rows), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="10">']
    for a, b in dag.edges():
        (xa, ya), (xb, yb) = pos[a], pos[b]
        out.append(f'<line x1="{xa + 100}" y1="{ya + box_h}" x2="{xb + 100}" y2="{yb}" stroke="#888"/>')
    for key, data in dag.nodes(data=True):
        x, y = pos[key]
        fill = "#e8f0fe" if data["kind"] == "io" else "#fff"
        out.append(f'<rect x="{x}" y="{y}" width="200" height="{box_h}" rx="4" fill="{fill}" stroke="#333"/>')
        for i, line in enumerate(data["label"].split("\n")[:3]):
            out.append(f'<text x="{x + 6}" y="{y + 14 + 12 * i}">{html.escape(line[:32])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
