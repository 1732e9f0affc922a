"""``scripting_with_instances``: ``torch.jit.script`` of a model that builds ``Instances``.

``dexport.ir.dialects.structures.Instances`` keeps its fields in a dict that grows at
run time, which TorchScript cannot type. The user names the fields the model sets
and their types; for the duration of scripting the class is replaced, in every
module whose globals hold it, by a generated class with one typed ``Optional``
attribute per field (detectron2's ``scripting_with_instances`` idea). The
generated class keeps the list API's surface that model code uses:
``Instances(image_size)``, ``inst.set(name, value)``, ``inst.<field>`` (read and
assign), ``has``, ``len`` and ``inst[index]``. Everything is put back afterwards,
also when scripting fails, and the scripted module's results are objects of the
generated class (their fields read as attributes, as on ``Instances``).
"""
from __future__ import annotations

import contextlib
import itertools
import keyword
import linecache
import re
import sys
import types
import warnings
from typing import Any, Iterator, Mapping, Optional, Tuple

import torch

from dexport.ir.dialects import structures
from dexport.ir.errors import CaptureError, DexportError

__all__ = ["scripting_with_instances", "patch_instances"]

_counter = itertools.count()
# Field names the generated class uses itself.
_RESERVED = {"image_size", "set", "has", "get", "fields"}


def scripting_with_instances(model: torch.nn.Module, fields: Mapping[str, type]) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` with ``Instances`` made static for ``fields``
    (e.g. ``{"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}``).

    Returns the scripted module. A failure of ``torch.jit.script`` is a
    :class:`~dexport.ir.errors.CaptureError` naming the source line TorchScript
    points at; the model and the ``Instances`` class are unchanged either way."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"scripting_with_instances takes an nn.Module, got {type(model).__name__}",
                           hint="wrap the function in an nn.Module whose forward calls it")
    with patch_instances(fields), warnings.catch_warnings():
        # torch deprecates jit.script in favour of export; the user cannot act on that here.
        warnings.filterwarnings("ignore", r"`torch\.jit\.script", DeprecationWarning)
        try:
            return torch.jit.script(model)
        except DexportError:
            raise
        except Exception as exc:  # TorchScript's FrontendError, RuntimeError, ...
            raise script_error(exc, fields) from exc


@contextlib.contextmanager
def patch_instances(fields: Mapping[str, type]) -> Iterator[type]:
    """Within the block, ``Instances`` names the generated static class (yielded) in every
    module that had imported the original; the original is put back on exit."""
    original = structures.Instances
    static_cls = static_instances_class(fields)
    patched: list[tuple[dict, str]] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                patched.append((namespace, name))
    _clear_jit_cache()  # functions compiled earlier against another class
    try:
        for namespace, name in patched:
            namespace[name] = static_cls
        yield static_cls
    finally:
        for namespace, name in patched:
            namespace[name] = original
        _clear_jit_cache()


def _clear_jit_cache() -> None:
    from torch.jit._recursive import concrete_type_store
    from torch.jit._state import _jit_caching_layer
    concrete_type_store.type_store.clear()   # module types
    _jit_caching_layer.clear()               # free functions


# --------------------------------------------------------------------------- the generated class

def _type_name(typ: Any, names: dict[str, Any]) -> str:
    if typ is torch.Tensor or typ == "Tensor":
        return "torch.Tensor"
    if typ == "Boxes":
        typ = structures.Boxes
    if not isinstance(typ, type):
        raise CaptureError(f"scripting_with_instances: the field type {typ!r} is not a class",
                           hint="give each field torch.Tensor, Boxes or another TorchScript class")
    name = typ.__name__
    if names.setdefault(name, typ) is not typ:
        raise CaptureError(f"scripting_with_instances: two field types are named {name!r}",
                           hint="give the field types distinct class names")
    return name


def static_instances_class(fields: Mapping[str, type]) -> type:
    """A new scriptable class standing for ``Instances`` with exactly ``fields``."""
    if not isinstance(fields, Mapping) or not fields:
        raise CaptureError("scripting_with_instances needs the Instances fields as a non-empty dict "
                           "{name: type}", hint='e.g. {"pred_boxes": Boxes, "scores": torch.Tensor}')
    type_names: dict[str, Any] = {}
    spec = []
    for name, typ in fields.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) \
                or name.startswith("_") or name in _RESERVED:
            raise CaptureError(f"scripting_with_instances: {name!r} cannot be an Instances field name",
                               hint="use identifiers that do not start with '_' and are not "
                                    f"{sorted(_RESERVED)}")
        spec.append((name, _type_name(typ, type_names)))
    n = next(_counter)
    module_name = f"dexport._static_instances_{n}"
    source = _class_source(spec)
    filename = f"<dexport static Instances {n}>"
    # TorchScript reads the class's source through inspect, i.e. linecache.
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__dict__.update(torch=torch, Any=Any, Optional=Optional, Tuple=Tuple, **type_names)
    sys.modules[module_name] = module  # results of the scripted module are objects of this class
    exec(compile(source, filename, "exec"), module.__dict__)
    cls = module.Instances
    # How dexport's importer names its records: the schemas' "Instances" kind, rebuilt as
    # the user's class; attributes _<field> are the fields.
    cls.__dexport_record__ = {"kind": "Instances",
                              "fields": {"image_size": "image_size", **{f"_{n}": n for n, _ in spec}}}
    return cls


def _class_source(spec: list[tuple[str, str]]) -> str:
    declared = ", ".join(name for name, _ in spec)
    out = [
        "class Instances:",
        f'    """Instances with the static fields {declared} (dexport.scripting_with_instances)."""',
        "",
        "    def __init__(self, image_size: Tuple[int, int]):",
        "        self.image_size = image_size",
    ]
    out += [f"        self._{name} = torch.jit.annotate(Optional[{typ}], None)" for name, typ in spec]
    for name, typ in spec:
        out += [
            "",
            "    @property",
            f"    def {name}(self) -> {typ}:",
            f"        value = self._{name}",
            "        if value is None:",
            f'            raise AttributeError("Instances has no field {name} set")',
            "        return value",
            "",
            f"    @{name}.setter",
            f"    def {name}(self, value: {typ}) -> None:",
            f"        self._{name} = value",
            "",
            f"    def _as_{name}(self, value: Any) -> {typ}:",
            f'        assert isinstance(value, {typ}), "Instances field {name} takes a {typ}"',
            "        return value",
        ]
    out += ["", "    def set(self, name: str, value: Any) -> None:"]
    for i, (name, _) in enumerate(spec):
        out += [f'        {"if" if i == 0 else "elif"} name == "{name}":',
                f"            self._{name} = self._as_{name}(value)"]
    out += ["        else:",
            f'            raise AttributeError("Instances field " + name + " was not declared to '
            f'scripting_with_instances (declared: {declared})")',
            "",
            "    def has(self, name: str) -> bool:"]
    for name, _ in spec:
        out += [f'        if name == "{name}":', f"            return self._{name} is not None"]
    out += ["        return False", "", "    def __len__(self) -> int:"]
    for name, _ in spec:
        out += [f"        value_{name} = self._{name}",
                f"        if value_{name} is not None:", f"            return len(value_{name})"]
    out += ['        raise RuntimeError("an Instances with no fields has no length")',
            "", '    def __getitem__(self, item: torch.Tensor) -> "Instances":',
            "        out = Instances(self.image_size)"]
    for name, _ in spec:
        out += [f"        value_{name} = self._{name}",
                f"        if value_{name} is not None:", f"            out._{name} = value_{name}[item]"]
    out += ["        return out", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- errors

_LOCATION = re.compile(r'File "([^"]+)", line (\d+)')
_MISSING_ATTR = re.compile(r"(?:nonexistent attribute or method|has no attribute) '(\w+)'[^\n]*Instances")


def script_error(exc: Exception, fields: Mapping[str, Any] | None = None) -> CaptureError:
    """A TorchScript compile failure as a CaptureError at its innermost source line."""
    from dexport.frontends.tracing import relative_source_path
    text = str(exc).strip()
    what = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    loc = _LOCATION.search(text)
    source = f"{relative_source_path(loc.group(1))}:{loc.group(2)}" if loc else None
    missing = _MISSING_ATTR.search(text)
    if missing and fields is not None:
        hint = (f"add {missing.group(1)!r} with its type to the fields given to "
                f"scripting_with_instances (now: {', '.join(fields)})")
    else:
        hint = ("make the code at the source line scriptable (typed arguments, no **kwargs or "
                "{**dict}; see the TorchScript language reference), move training-only code into a "
                "method decorated @torch.jit.unused, or export by tracing")
    context = "\n".join(text.splitlines()[:40])
    return CaptureError(f"torch.jit.script failed: {what}", source=source, context=context, hint=hint)
