"""Value-dependent control flow under tracing: refused instead of exported wrong.

A trace records the ops that ran on one example. Where Python takes a tensor's value
(``if x.sum() > 0:``, ``k = t.item()``, ``for row in kept_boxes:``), the trace keeps the
one path and the one value that example gave, and the exported graph is silently wrong
for other inputs. Sizes are different: ``int(x.shape[0])`` is baked in too, but
differential capture (``dexport.probes``) sees it change with the probe sizes and turns
it into a shape computation. Two checks tell the two apart:

* ``ConversionWatch``, while tracing: every conversion of a traced tensor to Python
  (``Tensor.__bool__``, ``__int__``, ``__index__``, ``__float__``, ``__complex__``,
  ``item``, ``tolist``, ``numpy``, and ``__len__`` / ``__iter__``, which read the length)
  is looked up in the partial trace. One whose result depends on the *values* of the
  input tensors (not only on their sizes, the parameters or constants) is refused with
  the op, the module scope and the user's source line. The tracer's own TracerWarning
  for a conversion that is not refused is passed on as torch gives it.
  A *count* (the length of a tensor whose size follows values: detections after NMS,
  nonzero, bool-mask indexing) read into Python is not refused here: detection code
  reads such lengths to check that fields agree, which changes nothing in the graph.
  Where a count does change the graph (a constant, a loop over detections) the probes
  see it differ and refuse it; a branch on a count that is the same on every probe
  (``if len(boxes) == 0`` when every probe has detections) is not seen.
* ``check_content_probe``: the model is traced once more on inputs of the same sizes and
  other values (``content_probe``); any difference from the trace of those sizes (an op,
  its wiring, an attribute, a constant, a baked parameter) is value-dependent. A model
  that refuses the probe's values (a float tensor that holds indices) gives no evidence
  either way, and the check is skipped.

* ``ConversionWatch`` also watches calls into scripted code (``torch.jit.script``
  functions and modules) while tracing. A traced number passed where the scripted code
  takes an int, float, bool or a list of them (``n = x.shape[0]; scripted(x, n)``) is
  baked into the trace as the example's constant, without any Python conversion the
  watch could see. One computed from the input values is refused at once; one computed
  from the input sizes is recorded (``watch.baked_sizes``): differential capture turns
  such constants into shape computations, and ``dexport.capture`` refuses them where
  it does not probe (a model without ``forward_batched``).

Conversions that the trace *records* (``aten::Int`` or ``aten::ScalarImplicit`` nodes,
e.g. a count passed on to ``topk``, or PanopticFPN's output canvas sized by the maximum
of ``output_sizes``) are not refused: the graph computes them on every input.
"""
from __future__ import annotations

import sys
import threading
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dexport.ir.errors import CaptureError, DexportError

__all__ = ["BakedArgument", "ConversionWatch", "ONE_PATH_HINT", "ValueDependenceError", "check_content_probe",
           "content_probe", "depends_on_inputs", "probe_content"]

ONE_PATH_HINT = ("tracing records one path and the Python values of one example: compute "
                 "it with tensor ops instead (torch.where(cond, a, b) keeps both branches; "
                 "masks and clamps instead of Python ifs), or skip code that only checks or "
                 "logs values with `if not torch.jit.is_tracing():`; capture by scripting "
                 "(`--method scripting`, which keeps Python control flow) is planned but not "
                 "available yet")

# Tensor method -> (the op the conversion is, what Python gets, what it reads).
_WATCHED = {
    "__bool__": ("aten::Bool", "a Python bool", "value"),
    "__int__": ("aten::Int", "a Python int", "value"),
    "__index__": ("aten::Int", "a Python index", "value"),
    "__float__": ("aten::Float", "a Python float", "value"),
    "__complex__": ("aten::Complex", "a Python complex", "value"),
    "item": ("aten::item", "a Python number", "value"),
    "tolist": ("aten::tolist", "a Python list", "value"),
    "numpy": ("Tensor.numpy", "a NumPy array", "value"),
    "__len__": ("aten::len", "a Python int (its length)", "shape"),
    "__iter__": ("aten::unbind", "a Python loop over its rows", "shape"),
}
# Conversions inside these only print: they cannot change the graph.
_PRINTING = ("__repr__", "__format__")

# Ops that read only the sizes (or dtype, device) of their first input.
_SHAPE_READERS = frozenset({
    "aten::size", "aten::sym_size", "aten::dim", "aten::numel", "aten::sym_numel",
    "prim::shape", "prim::device", "prim::dtype", "prim::layout", "aten::len",
    "aten::_shape_as_tensor", "aten::stride", "aten::sym_stride", "aten::is_floating_point",
    "aten::is_complex", "aten::element_size", "prim::is_cuda",
    "aten::zeros_like", "aten::ones_like", "aten::empty_like", "aten::full_like",
    "aten::rand_like", "aten::randn_like", "aten::new_zeros", "aten::new_ones",
    "aten::new_empty", "aten::new_full",
})

_THIS_FILE = __file__


class ValueDependenceError(CaptureError):
    """Tracing met value-dependent control flow or a value baked into the trace."""


@dataclass
class Conversion:
    """One value-dependent conversion seen while tracing."""
    op: str
    method: str
    result: str
    scope: str | None
    source: str | None

    def error(self, more: list["Conversion"]) -> CaptureError:
        what = (f"the model converts a tensor computed from the input values to {self.result} "
                f"(Tensor.{self.method}): tracing records only the path and the values this "
                "example took, so the export would be silently wrong for other inputs")
        context = None
        if more:
            context = "other value-dependent conversions in the same trace:\n" + "\n".join(
                f"{c.op} (Tensor.{c.method})  # {c.scope or '<top level>'} @ {c.source or '?'}"
                for c in more[:10])
        return ValueDependenceError(what, op=self.op, scope=self.scope, source=self.source,
                                    context=context, hint=ONE_PATH_HINT)


# --------------------------------------------------------------------------- the watch

_lock = threading.Lock()
_active: list["ConversionWatch"] = []  # innermost last
_originals: dict[str, Any] = {}        # method -> what torch.Tensor's own __dict__ had
_local = threading.local()             # .busy: inside a watched call or a printing method


class ConversionWatch:
    """``with ConversionWatch(scope, is_user_file, relative_path) as watch: trace...;
    watch.check()``. ``scope()`` names the running module; ``is_user_file(path)`` and
    ``relative_path(path)`` locate the user's source line, as the tracing frontend does
    for nodes. The first value-dependent conversion raises at once (a CaptureError);
    ``check()`` raises it again after the trace in case the model swallowed it."""

    def __init__(self, scope: Callable[[], str | None], is_user_file: Callable[[str], bool],
                 relative_path: Callable[[str], str]):
        self.scope = scope
        self.is_user_file = is_user_file
        self.relative_path = relative_path
        self.found: list[Conversion] = []
        self.baked_sizes: list[BakedArgument] = []  # traced sizes passed into scripted code

    def __enter__(self) -> "ConversionWatch":
        with _lock:
            if not _active:
                _patch()
            _active.append(self)
        return self

    def __exit__(self, *exc_info) -> None:
        with _lock:
            _active.remove(self)
            if not _active:
                _unpatch()

    def check(self) -> None:
        if self.found:
            raise self.found[0].error(self.found[1:])

    def _source(self, frame) -> str | None:
        while frame is not None:
            path = frame.f_code.co_filename
            if path != _THIS_FILE and self.is_user_file(path):
                return f"{self.relative_path(path)}:{frame.f_lineno}"
            frame = frame.f_back
        return None

    def _saw(self, method: str, tensor: torch.Tensor, frame) -> Conversion | None:
        op, result, reads = _WATCHED[method]
        value = _value_trace(tensor)
        # A count read into Python is left to the probes (see the module doc): code
        # reads such lengths to check consistency, and the probes see the counts change.
        if value is None or depends_on_inputs(value, torch._C._get_tracing_state().graph(),
                                              reads) != "value":
            return None
        scope = self.scope()  # None: no submodule is running, the model's own code is
        conversion = Conversion(op, method, result, "" if scope is None else scope, self._source(frame))
        self.found.append(conversion)
        return conversion


@dataclass
class BakedArgument:
    """A traced number passed into scripted code, which the trace keeps as a constant."""
    function: str
    op: str  # the call the trace records: prim::CallFunction or prim::CallMethod
    argument: str
    value: Any
    reads: str  # "values" or "sizes"
    scope: str | None
    source: str | None

    def error(self) -> CaptureError:
        what = (f"the model passes a number computed from the input {self.reads} ({self.value!r} here) to "
                f"the scripted {self.function!r} as its argument {self.argument!r}: a trace keeps "
                "the number this example gave as a constant, so the scripted code would run "
                "with it on every input (a loop over that many rows, a slice of that length)")
        error_type = ValueDependenceError if self.reads == "values" else CaptureError
        return error_type(what, op=self.op, scope=self.scope, source=self.source,
                          hint=f"pass the tensor itself to {self.function!r} and take its size (or "
                               "value) inside the scripted code, e.g. `x.size(0)`, where TorchScript "
                               "keeps it a computation")


def _saw_call(watch: "ConversionWatch", function, args: tuple, kwargs: dict, frame) -> None:
    """Check the arguments of a call into scripted code (see the module doc)."""
    graph = torch._C._get_tracing_state().graph()
    arguments = list(function.schema.arguments)
    if isinstance(function, torch._C.ScriptMethod):
        arguments = arguments[1:]  # self is bound
    bound = list(zip(arguments, args)) + [(a, kwargs[a.name]) for a in arguments if a.name in kwargs]
    for argument, value in bound:
        if _holds_tensors(argument.type):
            continue  # a tensor argument stays a traced value
        tensors = [value] if isinstance(value, torch.Tensor) else \
            [t for t in value if isinstance(t, torch.Tensor)] if isinstance(value, (list, tuple)) else []
        for tensor in tensors:
            traced = _value_trace(tensor)
            if traced is None or not _reads_inputs(traced, graph):
                continue
            reads = "values" if depends_on_inputs(traced, graph, "value") == "value" else "sizes"
            scope = watch.scope()
            name = (getattr(function, "qualified_name", None) or function.name).removeprefix("__torch__.")
            op = "prim::CallMethod" if isinstance(function, torch._C.ScriptMethod) else "prim::CallFunction"
            baked = BakedArgument(name, op, argument.name, _plain_value(value), reads,
                                  "" if scope is None else scope, watch._source(frame))
            if reads == "values":
                raise baked.error()
            watch.baked_sizes.append(baked)
            break


def _plain_value(value):
    """``value`` with its traced tensors as the numbers they hold, for a message (read
    without the watch or the tracer taking note)."""
    busy = getattr(_local, "busy", False)
    _local.busy = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            if isinstance(value, torch.Tensor):
                return value.tolist()
            return [v.tolist() if isinstance(v, torch.Tensor) else v for v in value]
    finally:
        _local.busy = busy


def _reads_inputs(value, graph) -> bool:
    """Whether the traced ``value`` is computed from the graph's input tensors at all
    (their values or their sizes)."""
    inputs = {v.unique() for v in graph.inputs() if not isinstance(v.type(), torch._C.ClassType)}
    seen, todo = set(), deque([value])
    while todo:
        v = todo.popleft()
        if v.unique() in seen:
            continue
        seen.add(v.unique())
        if v.unique() in inputs:
            return True
        node = v.node()
        if node.kind() in ("prim::Constant", "prim::GetAttr"):
            continue
        todo.extend(node.inputs())
        for block in node.blocks():
            todo.extend(block.returnNode().inputs())
    return False


def _scripted_call(original):
    def call(self, *args, **kwargs):
        if not _active or torch._C._get_tracing_state() is None or getattr(_local, "busy", False):
            return original(self, *args, **kwargs)
        watch = _active[-1]
        before = len(watch.baked_sizes)
        _saw_call(watch, self, args, kwargs, sys._getframe(1))
        if len(watch.baked_sizes) == before:
            return original(self, *args, **kwargs)
        with warnings.catch_warnings():  # the tracer's warning about the number just recorded
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return original(self, *args, **kwargs)
    return call


# Calls into scripted code, whose int arguments the tracer bakes in (see the module doc).
_SCRIPTED_CALLABLES = (torch._C.ScriptFunction, torch._C.ScriptMethod)
_scripted_originals: dict[type, Any] = {}


def _value_trace(tensor: torch.Tensor):
    """The traced value of ``tensor`` in the running trace, or None outside one.
    Kernels of custom ops run with no tracing state: their conversions are not the
    model's (the op is one recorded node)."""
    if torch._C._get_tracing_state() is None or not isinstance(tensor, torch.Tensor):
        return None
    try:
        # An untraced tensor (made before the trace) becomes a constant of the trace:
        # it does not depend on the inputs, and the unused constant is removed by DCE.
        return torch._C._get_value_trace(tensor)
    except RuntimeError:
        return None


def _watched(method: str, original):
    def conversion(self, *args, **kwargs):
        if not _active or torch._C._get_tracing_state() is None:
            return original(self, *args, **kwargs)
        caller = sys._getframe(1)
        busy = getattr(_local, "busy", False)
        _local.busy = True
        try:
            found = None if busy else _active[-1]._saw(method, self, caller)
            if found is not None:
                raise found.error([])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = original(self, *args, **kwargs)
        finally:
            _local.busy = busy
        _warn_at(caller, caught)  # the tracer's warnings, from where torch would have given them
        return result
    conversion.__name__ = getattr(original, "__name__", method)
    conversion.__doc__ = getattr(original, "__doc__", None)
    return conversion


def _warn_at(frame, caught) -> None:
    module_globals = frame.f_globals
    for w in caught:
        warnings.warn_explicit(w.message, w.category, frame.f_code.co_filename, frame.f_lineno,
                               module=module_globals.get("__name__"),
                               registry=module_globals.setdefault("__warningregistry__", {}),
                               module_globals=module_globals)


def _printing(original):
    def printing(self, *args, **kwargs):
        busy = getattr(_local, "busy", False)
        _local.busy = True
        try:
            return original(self, *args, **kwargs)
        finally:
            _local.busy = busy
    printing.__name__ = getattr(original, "__name__", "printing")
    return printing


def _patch() -> None:
    for cls in _SCRIPTED_CALLABLES:
        _scripted_originals[cls] = cls.__call__
        cls.__call__ = _scripted_call(cls.__call__)
    for method in (*_WATCHED, *_PRINTING):
        _originals[method] = torch.Tensor.__dict__.get(method)
        original = getattr(torch.Tensor, method)
        setattr(torch.Tensor, method,
                _watched(method, original) if method in _WATCHED else _printing(original))


def _unpatch() -> None:
    for cls, own in _scripted_originals.items():
        cls.__call__ = own
    _scripted_originals.clear()
    for method, own in _originals.items():
        if own is None:
            delattr(torch.Tensor, method)  # inherited from torch._C.TensorBase again
        else:
            setattr(torch.Tensor, method, own)
    _originals.clear()


# --------------------------------------------------------------------------- dependence

def depends_on_inputs(value, graph, reads: str = "value") -> str | None:
    """How the ``value`` (``reads="value"``) or the sizes (``reads="shape"``) of a value
    of the (partial) JIT ``graph`` depend on the values of its input tensors: "value"
    when some path reads input values directly, "count" when every such path goes
    through the size of an op whose output size follows the values (the number of
    detections after NMS), None when only sizes, parameters and constants are read."""
    inputs = {v.unique() for v in graph.inputs()}
    seen: set[tuple[int, str, bool]] = set()
    todo = deque([(value, reads, False)])  # (value, what is read, through a count)
    found = None
    while todo:
        v, mode, counted = todo.popleft()
        key = (v.unique(), mode, counted)
        if key in seen:
            continue
        seen.add(key)
        node = v.node()
        kind = node.kind()
        if kind == "prim::Param":
            if v.unique() not in inputs or (mode == "value" and _holds_tensors(v.type())):
                # an input's values (or a block's loop-carried value: assume the worst)
                if not counted:
                    return "value"
                found = "count"
            continue
        if kind in ("prim::Constant", "prim::GetAttr"):
            continue
        ins = list(node.inputs())
        if mode == "value":
            first_shape_only = kind in _SHAPE_READERS
            for k, i in enumerate(ins):
                todo.append((i, "shape" if first_shape_only and k == 0 else "value", counted))
            for block in node.blocks():
                todo.extend((r, "value", counted) for r in block.returnNode().inputs())
        else:
            value_sized = _has_value_dependent_size(node)
            for i in ins:
                if value_sized:
                    todo.append((i, "value", True))
                else:
                    todo.append((i, "shape" if _holds_tensors(i.type()) else "value", counted))
    return found


def _holds_tensors(t) -> bool:
    if isinstance(t, torch._C.TensorType):
        return True
    if isinstance(t, (torch._C.ListType, torch._C.OptionalType)):
        return _holds_tensors(t.getElementType())
    if isinstance(t, torch._C.TupleType):
        return any(_holds_tensors(e) for e in t.elements())
    return False


def _has_value_dependent_size(node) -> bool:
    from dexport.passes.fix_batch_dim import DATA_DEPENDENT_OPS
    schema = node.schema()
    name = schema.split("(", 1)[0] if schema != "(no schema)" else node.kind()
    if name in DATA_DEPENDENT_OPS:
        return True
    if node.kind() == "aten::index":
        indices = list(node.inputs())[1:2]
        for listed in indices:
            for t in listed.node().inputs():
                typ = t.type()
                if isinstance(typ, torch._C.TensorType) and typ.scalarType() in ("Bool", "Byte"):
                    return True
    return False


# --------------------------------------------------------------------------- content probe

def content_probe(inputs: Any) -> Any | None:
    """``inputs`` with the same structure and sizes and other values: every floating
    tensor goes through a gamma curve within its own range (``lo + (hi-lo)*u**2``), so
    each value and the mean change while the range stays valid (images stay images).
    Integer and bool tensors are kept (they are often sizes or indices). None when
    there is no floating tensor to change."""
    changed = False

    def walk(x):
        nonlocal changed
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point() or not x.numel():
                return x
            lo, hi = x.min(), x.max()
            if not bool(hi > lo):
                changed = True
                return x + 1
            changed = True
            u = (x - lo) / (hi - lo)
            return lo + (hi - lo) * u * u
        if isinstance(x, dict):
            return type(x)((k, walk(v)) for k, v in x.items())
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return type(x)(*(walk(v) for v in x))
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    with torch.no_grad():
        probe = walk(inputs)
    return probe if changed else None


def probe_content(frontend: Callable, model: torch.nn.Module, inputs_list: list, graphs: list,
                  inference_func=None) -> None:
    """Capture ``model`` with ``frontend`` on ``content_probe`` of the smallest of
    ``inputs_list`` (the inputs ``graphs`` were captured on, the example first) and
    refuse any difference from that graph (``check_content_probe``)."""
    from dexport.ir.schema import flatten

    def cost(inputs) -> int:
        return sum(t.numel() for t in flatten(inputs, "inputs")[0])

    k = min(range(len(inputs_list)), key=lambda i: cost(inputs_list[i]))
    probe = content_probe(inputs_list[k])
    if probe is None:
        return
    which = "the example" if k == 0 else f"probe_inputs[{k - 1}]"
    try:
        with warnings.catch_warnings():  # the user has seen the tracer's warnings on the first trace
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            other = frontend(model, probe, inference_func)
    except ValueDependenceError:
        raise
    except DexportError:
        return  # the model refuses the probe's values (indices or boxes kept as floats): no evidence
    check_content_probe(graphs[k], other, which)


def check_content_probe(base, other, which: str = "the example") -> None:
    """Refuse when ``other`` (an IR graph traced on ``content_probe`` of the inputs that
    gave ``base``) is not the same graph: same ops and wiring, attributes, constants and
    parameters. Types may differ: counts after NMS are sizes that follow the values."""
    from dexport.frontends.probes import _Skeleton, _check_schemas, _compare, _same

    label = f"the content probe (other values at the sizes of {which})"
    mine, theirs = _Skeleton(base), _Skeleton(other)
    try:
        _check_schemas(base, other, (label, which))
        _compare(mine, theirs, (label, which))
    except CaptureError as err:
        raise ValueDependenceError(err.what, op=err.op, scope=err.scope, source=err.source,
                                   context=err.context, hint=ONE_PATH_HINT) from None
    for user, their_user in zip(mine.users(), theirs.users()):
        for j, (a, b) in enumerate(zip(user.inputs, their_user.inputs)):
            if a.node is None or a.node.op != "prim::Constant":
                continue
            va, vb = a.node.attrs["value"], b.node.attrs["value"]
            if not _same(va, vb):
                raise ValueDependenceError(
                    f"input {j} of {user.op} is the constant {_short(va)} on {which} and "
                    f"{_short(vb)} on {label}: a Python value computed from tensor values is "
                    "baked into the trace", op=user.op, scope=user.meta.scope,
                    source=user.meta.source or a.node.meta.source, hint=ONE_PATH_HINT)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
