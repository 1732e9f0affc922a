"""The ops dexport owns, one module per dialect, each op with a schema, a reference
kernel, a fake kernel (torch custom ops) and a type rule:

* ``prim`` — constants, parameters, lists, tuples, control flow;
* ``struct`` — records; ``structures`` holds the detection records (Instances, Boxes,
  ImageList) registered with the schemas;
* ``dexport`` — the detection ops (``dexport::nms``, ``dexport::roi_align``, ...) as
  ``torch.library`` custom ops, with the python wrappers models call them through.

``detection_io`` is the detection I/O convention (batched images, sizes, counts) that
the zoo's detectors implement and the compiler's loader and driver speak. Nothing here
imports any other part of dexport than ``dexport.ir``.
"""
from dexport.ir.dialects import dexport, prim, struct, structures  # noqa: F401  (they register their ops)
