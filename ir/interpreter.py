"""Run any graph with torch kernels: the oracle for verification and for checking
that a pass preserved behaviour.

Values live in one environment keyed by ``Value``. Nested blocks (``prim::If``,
``prim::Loop``) read outer values directly from it, as in TorchScript. Each value
is dropped from the environment right after its last use, so peak memory stays
close to eager execution even for big models; the last uses are computed once
per run (a loop body does not recompute them per iteration).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from dexport.ir.errors import DexportError, InterpreterError
from dexport.ir.graph import CONSTANT, PARAM, Block, Graph, Node, Value
from dexport.ir.ops import get_op

Observer = Callable[[Node, tuple], None]


def run(graph: Graph, flat_inputs: Sequence[Any], *, observe: Observer | None = None) -> list:
    """Run ``graph`` on a flat list of inputs (one per graph input); returns the
    flat outputs. ``observe(node, outputs)`` is called after every node runs,
    including nodes inside blocks (once per execution)."""
    flat_inputs = list(flat_inputs)
    if len(flat_inputs) != len(graph.inputs):
        raise InterpreterError(
            f"the graph takes {len(graph.inputs)} inputs, got {len(flat_inputs)}",
            hint="pass one value per graph input; use graph(*structured_inputs) to flatten "
                 "the model's own input structure")
    frame = _Frame(_free_plan(graph.block), observe)
    return frame.run_block(graph.block, flat_inputs)


def run_structured(graph: Graph, inputs: tuple) -> Any:
    """Run on the model's structured inputs and rebuild its structured outputs.

    Without schemas the inputs are the flat values and the result is the single
    output, or a tuple when the graph has several (as a traced function returns)."""
    flat = list(inputs) if graph.input_schema is None else graph.input_schema.flatten(inputs)
    outputs = run(graph, flat)
    if graph.output_schema is not None:
        return graph.output_schema.rebuild(outputs)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def evaluate_node(node: Node, input_values: Sequence[Any]) -> tuple:
    """Run one node on the given input values. Blocks of ``prim::If``/``prim::Loop``
    may read outer values only if those are constants or parameters."""
    return _call_kernel(node, list(input_values))


def run_if(node: Node, cond: Any) -> tuple:
    """The reference kernel of ``prim::If`` outside a running graph."""
    return _Frame(_free_plan(node), None).run_if(node, cond)


def run_loop(node: Node, max_trip: Any, cond: Any, carried: Sequence[Any]) -> tuple:
    """The reference kernel of ``prim::Loop`` outside a running graph."""
    return _Frame(_free_plan(node), None).run_loop(node, max_trip, cond, list(carried))


# --------------------------------------------------------------------------- execution

class _Env(dict):
    """Value -> run-time value. A value missing from it can only be a constant or a
    parameter read by a block that runs outside its graph (``evaluate_node``);
    anything else is a use before definition."""

    def __missing__(self, value: Value):
        producer = value.node
        if producer is not None and producer.op in (CONSTANT, PARAM):
            return _call_kernel(producer, [])[0]
        where = producer.op if producer is not None else "a block parameter"
        raise InterpreterError(
            f"value from {where} is used before it has been computed",
            op=producer.op if producer is not None else None,
            scope=producer.meta.scope if producer is not None else None,
            hint="run dexport.ir.verify(graph) to find the use before definition; to evaluate "
                 "a single If/Loop node, its blocks may only read constants and parameters "
                 "from outside")


class _Frame:
    def __init__(self, free_after: dict[Node, list[Value]], observe: Observer | None):
        self.env = _Env()
        self.free_after = free_after
        self.observe = observe

    def run_block(self, block: Block, args: Sequence[Any]) -> list:
        env = self.env
        for param, arg in zip(block.params, args):
            if param.uses:
                env[param] = arg
        free_after, observe = self.free_after, self.observe
        for node in block.nodes:
            inputs = [env[v] for v in node.inputs]
            if node.op == "prim::If" and node.blocks:
                outputs = self.run_if(node, *inputs)
            elif node.op == "prim::Loop" and node.blocks:
                outputs = self.run_loop(node, inputs[0], inputs[1], inputs[2:])
            else:
                outputs = _call_kernel(node, inputs)
            if len(outputs) != len(node.outputs):
                raise _kernel_error(node, None, f"{node.op} returned {len(outputs)} values "
                                                f"for {len(node.outputs)} outputs")
            for value, result in zip(node.outputs, outputs):
                env[value] = result
            if observe is not None:
                observe(node, outputs)
            for value in free_after.get(node, ()):
                env.pop(value, None)
        results = [env[v] for v in block.returns]
        # Values defined in this block and returned from it are not needed once the
        # owner node has taken the results.
        if not isinstance(block.owner, Graph):
            for value in block.returns:
                if value.producer is block or (value.node is not None and value.node.block is block):
                    env.pop(value, None)
        return results

    def run_if(self, node: Node, cond: Any) -> tuple:
        try:
            taken = bool(cond)
        except Exception as exc:
            raise _kernel_error(node, [cond], f"the condition of prim::If is not a boolean: {exc}") from exc
        return tuple(self.run_block(node.blocks[0 if taken else 1], ()))

    def run_loop(self, node: Node, max_trip: Any, cond: Any, carried: list) -> tuple:
        body = node.blocks[0]
        trip, i = int(max_trip), 0
        while i < trip and bool(cond):
            results = self.run_block(body, [i, *carried])
            cond, carried = results[0], results[1:]
            i += 1
        return tuple(carried)


def _call_kernel(node: Node, inputs: list) -> tuple:
    try:
        opdef = get_op(node.op)
    except DexportError as err:
        raise InterpreterError(err.what, op=node.op, scope=node.meta.scope, source=node.meta.source,
                               hint=err.hint, context=_context(node)) from None
    try:
        return opdef.kernel(node, *inputs)
    except InterpreterError:
        raise  # already names the failing node (inside a block)
    except DexportError as err:
        raise InterpreterError(err.what, op=node.op, scope=node.meta.scope, source=node.meta.source,
                               hint=err.hint, context=_context(node)) from err
    except Exception as exc:
        raise _kernel_error(node, inputs, f"{type(exc).__name__}: {exc}") from exc


def _free_plan(root: Graph | Node | Block) -> dict[Node, list[Value]]:
    """For every node, the values to drop from the environment after it ran: those
    whose last reader (the node itself, or the node whose blocks hold the reader)
    it is. Values returned by their block are never dropped inside it."""
    free_after: dict[Node, list[Value]] = {}
    blocks = [root.block] if isinstance(root, Graph) else list(root.blocks) if isinstance(root, Node) else [root]
    while blocks:
        block = blocks.pop()
        position = {}
        defined = list(block.params)
        for i, node in enumerate(block.nodes):
            position[node] = i
            defined.extend(node.outputs)
            blocks.extend(node.blocks)
        for value in defined:
            last = _last_reader(value, block, position)
            if last is not None:
                free_after.setdefault(last, []).append(value)
    return free_after


def _last_reader(value: Value, block: Block, position: dict[Node, int]) -> Node | None:
    """The node of ``block`` after which ``value`` is dead, or None to keep it."""
    last = value.node if not value.uses else None
    for user, _ in value.uses:
        while user.block is not block:  # climb from a nested block to its owner in ``block``
            owner = user.block.owner if user.block is not None else None
            if not isinstance(owner, Node):
                return None  # used outside its block: a malformed graph, never drop it
            user = owner
        if user is block.return_node:
            return None
        if last is None or position[user] > position[last]:
            last = user
    return last


# --------------------------------------------------------------------------- errors

def _kernel_error(node: Node, inputs: list | None, what: str) -> InterpreterError:
    detail = ""
    if inputs is not None:
        detail = "\n  inputs: " + (", ".join(describe_value(v) for v in inputs) or "(none)")
    return InterpreterError(
        f"{node.op} failed: {what}{detail}", op=node.op, scope=node.meta.scope,
        source=node.meta.source, context=_context(node),
        hint="compare the input shapes above with what the op expects; run the graph with "
             "observe= to inspect the values that lead here, and the model eagerly on the same "
             "inputs to see whether it fails there too")


def _context(node: Node) -> str:
    graph = node.graph
    if graph is not None:
        try:
            from dexport.ir.printer import format_context
        except ImportError:
            pass
        else:
            return format_context(graph, node)
    outs = ", ".join(str(v.type) for v in node.outputs)
    ins = ", ".join(str(v.type) for v in node.inputs)
    return f"{outs} = {node.op}({ins})"


def describe_value(value: Any) -> str:
    """A short description of a run-time value for error messages (tensors by type,
    small scalars by value)."""
    if isinstance(value, torch.Tensor):
        from dexport.ir.types import tensor_type_of
        return str(tensor_type_of(value))
    if isinstance(value, (list, tuple)):
        inner = ", ".join(describe_value(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
