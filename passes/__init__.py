"""dexport.passes: the pass manager, the pattern rewriter and the standard passes.

Importing this package registers the built-in passes (dce, cse, fold-constants,
canonicalize, decompose). Backends register themselves as decompose targets.
"""
from dexport.passes.base import NoOptions, Pass, get_pass, register_pass, registered
from dexport.passes.manager import (DumpInstrument, Instrument, PassManager, PassRecord, PassResult,
                                    TimingInstrument, ValidateInstrument, VerifyInstrument,
                                    abs_errors, first_difference, max_abs_error, parse_pipeline)
from dexport.passes.rewrite import Const, Match, Op, Pattern, Rejection, Rewriter, Rule, Var
from dexport.passes import (  # noqa: F401  (registers the passes)
    canonicalize, cleanup, decompose, fix_batch_dim, fold, functionalize, infer_types, staticize_instances,
    thirdparty,
)
