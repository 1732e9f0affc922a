"""dexport.ir: the small IR every part of dexport speaks.

Types with symbolic dims, Value/Node/Block/Graph with use lists, programs of
named graphs, a deterministic printer and a parser that round-trip, a verifier per IR stage,
an interpreter that runs any graph with torch kernels, an op registry, and the
structured input/output schemas.
"""
from dexport.ir.errors import (CaptureError, DexportError, InterpreterError, IRParseError,
                               PassError, SchemaError, UnsupportedOpsError, VerificationError)
from dexport.ir.graph import CONSTANT, PARAM, RETURN, Block, Graph, Meta, Node, Value
from dexport.ir.types import (ANY, BOOL, DEVICE, DTYPE, FLOAT, INT, NONE, STR, TENSOR, Dim,
                              ListType, OptionalType, RecordType, ScalarType, TensorType,
                              TupleType, Type, parse_type, tensor_type_of)
from dexport.ir.parser import parse
from dexport.ir.program import Program, load_program, parse_program
from dexport.ir.printer import format_context, print_graph
from dexport.ir.verifier import STAGES, verify
