"""``dexport.capture``: a model and example inputs in, an IR graph out."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

import dexport.records  # noqa: F401  (the zoo's Instances/Boxes/ImageList flatten through schemas)
from dexport.ir.errors import CaptureError
from dexport.ir.graph import Graph
from dexport.value_dependence import probe_content


def _trace(model, example_inputs, inference_func):
    from dexport.tracing import trace
    return trace(model, example_inputs, inference_func=inference_func)


# Capture frontends by method name.
FRONTENDS: dict[str, Callable[..., Graph]] = {"tracing": _trace}


def capture(model: torch.nn.Module, example_inputs: Any, method: str = "tracing", *,
            inference_func: Callable[..., Any] | None = None,
            probe_inputs: Sequence[Any] | None = None) -> Graph:
    """Capture ``model`` as a graph.

    ``example_inputs`` is the tuple of positional arguments, structured as the
    model takes them (dicts, lists, Instances, ...); a single non-tuple value is
    taken as the only argument. The graph's ``input_schema``/``output_schema``
    let ``graph(*inputs)`` take and return the same structures.
    ``inference_func(model, *inputs)`` calls the model (default ``model(*inputs)``).
    ``probe_inputs`` (inputs like the example, at other batch sizes and resolutions)
    turn on differential capture (``dexport.probes``): the graph gets symbolic dims and
    size-derived constants are tagged for the ``fix-batch-dim`` pass.
    """
    frontend = FRONTENDS.get(method)
    if frontend is None:
        raise CaptureError(f"unknown capture method {method!r}",
                           hint=f"use one of: {', '.join(sorted(FRONTENDS))}")
    if probe_inputs is not None:
        from dexport.probes import capture_with_probes
        return capture_with_probes(frontend, model, example_inputs, probe_inputs, inference_func)
    graph = frontend(model, example_inputs, inference_func)
    probe_content(frontend, model, [example_inputs], [graph], inference_func)
    return graph
