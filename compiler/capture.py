"""``dexport.capture``: a model and example inputs in, an IR graph out."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

import dexport.ir.dialects.structures  # noqa: F401  (Instances/Boxes/ImageList flatten through schemas)
from dexport.frontends.base import get_frontend
from dexport.ir.graph import Graph
from dexport.frontends.value_dependence import probe_content


def capture(model: torch.nn.Module, example_inputs: Any, method: str = "tracing", *,
            inference_func: Callable[..., Any] | str | None = None,
            probe_inputs: Sequence[Any] | None = None) -> Graph:
    """Capture ``model`` as a graph with the frontend registered as ``method``
    (``dexport.frontends.frontend_names()``; another name is a CaptureError listing them).

    ``example_inputs`` is the tuple of positional arguments, structured as the
    model takes them (dicts, lists, Instances, ...); a single non-tuple value is
    taken as the only argument. The graph's ``input_schema``/``output_schema``
    let ``graph(*inputs)`` take and return the same structures.
    ``inference_func(model, *inputs)`` calls the model (default ``model(*inputs)``); it
    may instead be the name of the model's method to call (``"forward_batched"``),
    which is what a frontend that compiles code (``scripting``) needs.
    ``probe_inputs`` (inputs like the example, at other batch sizes and resolutions)
    turn on differential capture (``dexport.frontends.probes``) for a frontend that
    needs it (``Frontend.needs_probes``): the graph gets symbolic dims and size-derived
    constants are tagged for the ``fix-batch-dim`` pass. A frontend that does not bake
    sizes in ignores them. Third-party detection ops are replaced by dexport's
    (``dexport.passes.thirdparty``).
    """
    frontend = get_frontend(method)

    def run(model, inputs, inference_func):
        return frontend.capture(model, inputs, inference_func=inference_func)
    if probe_inputs is not None and frontend.needs_probes:
        from dexport.frontends.probes import capture_with_probes
        graph = capture_with_probes(run, model, example_inputs, probe_inputs, inference_func)
    else:
        graph = run(model, example_inputs, inference_func)
        baked = getattr(graph, "baked_sizes", ())
        if baked:  # nothing here would make these constants follow the sizes again
            raise baked[0].error()
        if frontend.needs_probes:  # a frontend that records one path is also checked on other content
            probe_content(run, model, [example_inputs], [graph], inference_func)
    # Other libraries' detection ops (torchvision::nms, ...) become dexport's own here, so
    # every backend, pipeline and `--check` sees one set of detection ops.
    from dexport.passes.thirdparty import ThirdPartyOps
    ThirdPartyOps().run(graph)
    return graph
