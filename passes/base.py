"""Passes: the ``Pass`` base class, typed options, and the pass registry.

A pass is a class with a registered ``name``, an ``Options`` dataclass, the IR
properties it ``requires``, ``establishes`` and ``invalidates``, an optional
``validate()`` of its options against what is registered, and
``run(graph) -> bool`` (whether it changed the graph)::

    @register_pass
    class FixBatchDim(Pass):
        name = "fix-batch-dim"

        @dataclass(frozen=True)
        class Options:
            batch: int | Literal["dynamic"] = "dynamic"

        def run(self, graph): ...

Options come from Python values or from the strings of a pipeline text
(``fix-batch-dim{batch=1}``); both are checked against the field's type
(int, float, bool, str, ``Literal[...]`` choices, ``None``, or a union of them).

A property is a verifier stage (``"tensors-only"``), an observable property
registered with ``register_property`` (a check that reads it off the graph, e.g.
``"batch-probed"``: capture found the batch dim), or a plain name that only a
pass can establish (e.g. ``"functional"``). ``PassManager`` checks a pipeline's
contracts and ``validate()`` before it runs anything. ``requires`` may depend on
the options (a property of the instance).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from dexport.ir.errors import PassError
from dexport.ir.graph import Graph


@dataclass(frozen=True)
class NoOptions:
    """The options of a pass that takes none."""


class Pass:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[tuple[str, ...]] = ()
    establishes: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()
    # True for passes that deliberately change what the graph takes or returns
    # (e.g. one that cuts post-processing out): validation compares outputs across them no more.
    changes_signature: ClassVar[bool] = False

    def __init__(self, **options: Any):
        self.options = parse_options(self.Options, options, owner=self.name or type(self).__name__)

    def validate(self) -> None:
        """Raise ``PassError`` if the options name something that does not exist
        (called by ``PassManager`` on every pass before the first one runs)."""

    def run(self, graph: Graph) -> bool:
        """Transform ``graph`` in place; return True when anything changed."""
        raise NotImplementedError(f"{type(self).__name__}.run")

    def spec(self) -> str:
        """The pipeline text that rebuilds this pass: its name and non-default options."""
        parts = []
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if value != _default_of(f):
                text = format_option(value)
                if any(c in text for c in ',{}= ') or not text:
                    text = f'"{text}"'  # the pipeline reader takes quoted values verbatim
                parts.append(f"{f.name}={text}")
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")

    def __repr__(self) -> str:
        return f"<Pass {self.spec()}>"


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` available by ``cls.name`` in pipelines."""
    if not cls.name:
        raise PassError(f"pass class {cls.__name__} has no name", hint="set the class attribute `name`")
    if not dataclasses.is_dataclass(cls.Options):
        raise PassError(f"pass {cls.name!r}: Options must be a dataclass")
    known = _REGISTRY.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise PassError(f"pass name {cls.name!r} is already registered by {known.__module__}.{known.__qualname__}",
                        hint="pick another name")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> list[str]:
    """The registered pass names, sorted."""
    return sorted(_REGISTRY)


def pass_class(name: str) -> type[Pass]:
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = (f"did you mean {' or '.join(map(repr, close))}? " if close else "") + \
            "registered passes: " + ", ".join(registered())
        raise PassError(f"unknown pass {name!r}", hint=hint)
    return cls


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the registered pass ``name`` with ``options`` (values or strings)."""
    return pass_class(name)(**options)


# --------------------------------------------------------------------------- properties

# name -> check(graph): None when the property holds, else what is missing (with a hint)
_PROPERTIES: dict[str, Callable[[Graph], "tuple[str, str] | None"]] = {}


def register_property(name: str, check: Callable[[Graph], "tuple[str, str] | None"]) -> None:
    """Make ``name`` an observable property: ``check(graph)`` returns None when it
    holds, else ``(what is missing, what to do)``. Such a property holds before a pass
    when the check accepts the graph (or an earlier pass established it)."""
    _PROPERTIES[name] = check


def property_check(name: str) -> Callable[[Graph], "tuple[str, str] | None"] | None:
    return _PROPERTIES.get(name)


# --------------------------------------------------------------------------- options

def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _arms(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a (possibly union) option type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def describe_type(annotation: Any) -> str:
    words = []
    for arm in _arms(annotation):
        if typing.get_origin(arm) is Literal:
            words.append("one of " + ", ".join(format_option(c) for c in typing.get_args(arm)))
        elif arm is type(None):
            words.append("none")
        else:
            words.append(getattr(arm, "__name__", str(arm)))
    return " or ".join(words)


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


_BOOL_WORDS = {"true": True, "false": False}


def _convert(arm: Any, value: Any) -> tuple[bool, Any]:
    """Convert ``value`` (a Python value or pipeline text) to ``arm``; (ok, result)."""
    text = value if isinstance(value, str) else None
    if typing.get_origin(arm) is Literal:
        for choice in typing.get_args(arm):
            if value == choice and type(value) is type(choice):
                return True, choice
            if text is not None and text == format_option(choice):
                return True, choice
        return False, None
    if arm is type(None):
        return (True, None) if value is None or text == "none" else (False, None)
    if arm is bool:
        if isinstance(value, bool):
            return True, value
        if text is not None and text.lower() in _BOOL_WORDS:
            return True, _BOOL_WORDS[text.lower()]
        return False, None
    if arm is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if text is not None:
            try:
                return True, int(text, 10)
            except ValueError:
                return False, None
        return False, None
    if arm is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if text is not None:
            try:
                return True, float(text)
            except ValueError:
                return False, None
        return False, None
    if arm is str:
        return (True, value) if text is not None else (False, None)
    raise PassError(f"unsupported option type {arm!r}",
                    hint="use int, float, bool, str, Literal[...], None or a union of them")


def parse_options(options_cls: type, values: dict[str, Any], *, owner: str) -> Any:
    """Build an ``options_cls`` instance from Python values or pipeline strings,
    checking each against its field's annotated type."""
    hints = typing.get_type_hints(options_cls)
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    converted = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(f"{n} ({describe_type(hints[n])})" for n in fields) or "none"
            raise PassError(f"pass {owner!r} has no option {key!r}", hint=f"valid options: {valid}")
        annotation = hints[key]
        # Text prefers a typed reading: "1" for `int | str` is the int 1.
        arms = sorted(_arms(annotation), key=lambda a: a is str)
        for arm in arms:
            ok, result = _convert(arm, value)
            if ok:
                converted[key] = result
                break
        else:
            raise PassError(f"pass {owner!r}: option {key!r} expects {describe_type(annotation)}, got {value!r}")
    missing = [n for n, f in fields.items() if n not in converted and _default_of(f) is dataclasses.MISSING]
    if missing:
        raise PassError(f"pass {owner!r}: option {missing[0]!r} is required")
    return options_cls(**converted)
