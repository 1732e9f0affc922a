"""dexport: export PyTorch detection and segmentation models to TorchScript, ONNX and
caffe2-flavoured ONNX through a small IR and a pass pipeline."""
from dexport.ir.errors import DexportError
from dexport.capture import capture

__version__ = "0.1.0"
