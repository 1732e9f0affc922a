"""dexport: export PyTorch detection and segmentation models to TorchScript, ONNX and
caffe2-flavoured ONNX through a small IR and a pass pipeline."""
from dexport.adapter import TracingAdapter
from dexport.capture import capture
from dexport.driver import export
from dexport.dump import dump_ir, dump_torchscript_IR
from dexport.ir.errors import DexportError, DexportWarning
from dexport.ir.schema import register_record
from dexport.loader import load
from dexport.scripting_instances import scripting_with_instances

__version__ = "0.1.0"
__all__ = ["DexportError", "DexportWarning", "TracingAdapter", "capture", "dump_ir", "dump_torchscript_IR", "export",
           "load", "register_record", "scripting_with_instances"]
