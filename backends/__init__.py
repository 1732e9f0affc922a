"""dexport.backends: the backend interface and registry (``base``) and the backends
(``onnx``). Importing this package loads no backend; the registry imports the built-in
ones on first use."""
from dexport.backends.base import (DEFAULT_BACKEND, Backend, Emission, LoweringTable, Option, TensorIO,
                                   backend_names, get_backend, register_backend)

__all__ = ["DEFAULT_BACKEND", "Backend", "Emission", "LoweringTable", "Option", "TensorIO", "backend_names",
           "get_backend", "register_backend"]
