"""TracingAdapter: a rich-I/O model seen as a tensors-only callable.

torch.jit.trace (and every flat backend) needs a function of tensors returning
tensors. The adapter flattens the example inputs once (``inputs_schema``),
rebuilds them from flat tensors on every call, runs the model and flattens what
it returns (``outputs_schema``). The output structure must be the same on
every call: a model whose output structure depends on its input cannot be
captured as one graph, and we say so instead of tracing a wrong graph.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from dexport.ir.errors import SchemaError
from dexport.ir.schema import Schema, flatten


class TracingAdapter(torch.nn.Module):
    """Wrap ``model`` so that ``adapter(*adapter.flattened_inputs)`` returns a tuple of tensors.

    ``inputs`` is the tuple of positional arguments the model takes (a single
    non-tuple argument is wrapped). ``inference_func(model, *inputs)`` calls the
    model, or names the model's method to call; the default is ``model(*inputs)``.
    """

    def __init__(self, model: torch.nn.Module, inputs: Any,
                 inference_func: Callable[..., Any] | None = None):
        super().__init__()
        self.model = model
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        self.flattened_inputs, self.inputs_schema = flatten(inputs, "inputs")
        self.flattened_inputs = tuple(self.flattened_inputs)
        if isinstance(inference_func, str):
            method = inference_func
            inference_func = lambda m, *args: getattr(m, method)(*args)  # noqa: E731
        self.inference_func = inference_func or (lambda m, *args: m(*args))
        self.outputs_schema: Schema | None = None

    def forward(self, *flat_inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = self.inputs_schema.rebuild(flat_inputs)
        outputs = self.inference_func(self.model, *inputs)
        flat, schema = flatten(outputs, "outputs")
        if self.outputs_schema is None:
            self.outputs_schema = schema
        elif schema != self.outputs_schema:
            raise SchemaError(
                "the model's output structure changed between calls "
                f"(first: {self.outputs_schema.to_json()[:200]}, now: {schema.to_json()[:200]})",
                hint="make the output structure independent of the input values (e.g. always "
                     "return the same fields), or capture each structure separately")
        return tuple(flat)
