"""IR types and their text form.

A tensor type carries a dtype and a shape whose dims are ints, symbols (``N``,
``H``, ``n0``) or small symbolic expressions (``H/4``), or ``?`` when unknown.
Text form (printed and parsed here, so the two cannot drift apart)::

    f32[1,3,H,W]   f32[*] (rank unknown)   Tensor (nothing known)
    int  float  bool  str  None  Device  Dtype  Layout  MemoryFormat  Any
    list[int]  tuple[f32[N,4], i64[N]]  optional[f32[*]]
    record Instances{pred_boxes: f32[n0,4], scores: f32[n0]}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

import torch

from dexport.ir.errors import IRParseError

Dim = Union[int, str]  # str: a symbol or symbolic expression; "?" is unknown

# Short dtype names used in the text form; unknown dtypes print as torch's own name.
_DTYPE_TO_TEXT = {
    torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64",
    torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
    torch.uint8: "u8", torch.bool: "b8", torch.complex64: "c64", torch.complex128: "c128",
}
_TEXT_TO_DTYPE = {v: k for k, v in _DTYPE_TO_TEXT.items()}

SCALAR_KINDS = ("int", "float", "bool", "str", "None", "Device", "Dtype", "Layout",
                "MemoryFormat", "Scalar", "Any")


def dtype_to_text(dtype: torch.dtype) -> str:
    return _DTYPE_TO_TEXT.get(dtype) or str(dtype).replace("torch.", "")


def text_to_dtype(text: str) -> torch.dtype:
    if text in _TEXT_TO_DTYPE:
        return _TEXT_TO_DTYPE[text]
    dtype = getattr(torch, text, None)
    if not isinstance(dtype, torch.dtype):
        raise IRParseError(f"unknown dtype {text!r}", hint="use f32, i64, b8, ... or a torch dtype name")
    return dtype


class Type:
    """Base of all IR types. Types are immutable and compare by value."""

    def __str__(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True)
class TensorType(Type):
    dtype: torch.dtype | None = None
    shape: tuple[Dim, ...] | None = None  # None: rank unknown

    def __str__(self) -> str:
        if self.dtype is None and self.shape is None:
            return "Tensor"
        head = dtype_to_text(self.dtype) if self.dtype is not None else "Tensor"
        dims = "*" if self.shape is None else ",".join(str(d) for d in self.shape)
        return f"{head}[{dims}]"

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass(frozen=True)
class ScalarType(Type):
    kind: str  # one of SCALAR_KINDS

    def __post_init__(self):
        if self.kind not in SCALAR_KINDS:
            raise ValueError(f"unknown scalar kind {self.kind!r}")

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class ListType(Type):
    elem: Type

    def __str__(self) -> str:
        return f"list[{self.elem}]"


@dataclass(frozen=True)
class TupleType(Type):
    elems: tuple[Type, ...]

    def __str__(self) -> str:
        return "tuple[" + ", ".join(str(e) for e in self.elems) + "]"


@dataclass(frozen=True)
class OptionalType(Type):
    elem: Type

    def __str__(self) -> str:
        return f"optional[{self.elem}]"


@dataclass(frozen=True)
class RecordType(Type):
    """A structure such as Instances: a kind name and an ordered set of typed fields."""
    kind: str
    fields: tuple[tuple[str, Type], ...] = ()

    def __str__(self) -> str:
        body = ", ".join(f"{name}: {typ}" for name, typ in self.fields)
        return f"record {self.kind}{{{body}}}"

    def field(self, name: str) -> Type:
        for field_name, typ in self.fields:
            if field_name == name:
                return typ
        raise KeyError(name)


# Singletons for the common scalar types.
INT, FLOAT, BOOL, STR, NONE = (ScalarType(k) for k in ("int", "float", "bool", "str", "None"))
DEVICE, DTYPE, ANY = ScalarType("Device"), ScalarType("Dtype"), ScalarType("Any")
TENSOR = TensorType()


def tensor_type_of(t: torch.Tensor) -> TensorType:
    return TensorType(t.dtype, tuple(int(d) for d in t.shape))


def is_tensor_like(typ: Type) -> bool:
    return isinstance(typ, TensorType)


# --------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"\s*(record|[A-Za-z_][A-Za-z0-9_.]*|[-+]?\d+|[\[\]{}(),:*?/+\-]|\S)")


class _TypeReader:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def peek(self) -> str | None:
        m = _TOKEN.match(self.text, self.pos)
        return m.group(1) if m else None

    def take(self, expected: str | None = None) -> str:
        m = _TOKEN.match(self.text, self.pos)
        if not m:
            raise IRParseError(f"unexpected end of type text {self.text!r}")
        tok = m.group(1)
        if expected is not None and tok != expected:
            raise IRParseError(f"expected {expected!r} in type {self.text!r} at column {self.pos}, got {tok!r}")
        self.pos = m.end()
        return tok

    def read_type(self) -> Type:
        tok = self.take()
        if tok == "record":
            kind = self.take()
            self.take("{")
            fields = []
            while self.peek() != "}":
                name = self.take()
                self.take(":")
                fields.append((name, self.read_type()))
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
            return RecordType(kind, tuple(fields))
        if tok == "list":
            self.take("[")
            elem = self.read_type()
            self.take("]")
            return ListType(elem)
        if tok == "optional":
            self.take("[")
            elem = self.read_type()
            self.take("]")
            return OptionalType(elem)
        if tok == "tuple":
            self.take("[")
            elems = []
            while self.peek() != "]":
                elems.append(self.read_type())
                if self.peek() == ",":
                    self.take(",")
            self.take("]")
            return TupleType(tuple(elems))
        if tok in SCALAR_KINDS:
            return ScalarType(tok)
        if tok == "Tensor" and self.peek() != "[":
            return TENSOR
        # A tensor: dtype[dims]
        dtype = None if tok == "Tensor" else text_to_dtype(tok)
        self.take("[")
        if self.peek() == "*":
            self.take("*")
            self.take("]")
            return TensorType(dtype, None)
        dims: list[Dim] = []
        while self.peek() != "]":
            dims.append(self._read_dim())
            if self.peek() == ",":
                self.take(",")
        self.take("]")
        return TensorType(dtype, tuple(dims))

    def _read_dim(self) -> Dim:
        # A dim runs to the next ',' or ']' (it may be an expression such as H/4).
        start = self.pos
        depth = 0
        while True:
            tok = self.peek()
            if tok is None:
                raise IRParseError(f"unterminated shape in type {self.text!r}")
            if depth == 0 and tok in (",", "]"):
                break
            depth += tok == "("
            depth -= tok == ")"
            self.take()
        text = self.text[start:self.pos].strip()
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        return text


def parse_type(text: str) -> Type:
    """Read a type from its text form (the inverse of ``str(type)``)."""
    reader = _TypeReader(text)
    typ = reader.read_type()
    if reader.peek() is not None:
        raise IRParseError(f"trailing text after type in {text!r}")
    return typ
