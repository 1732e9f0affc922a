"""Capture frontends: a model and example inputs in, an IR graph out.

``base`` holds the ``Frontend`` interface and the registry (``get_frontend``,
``frontend_names``, ``register_frontend``); ``tracing`` is the torch.jit.trace
frontend, ``probes`` the differential capture it needs for dynamic shapes, and
``jit_importer`` the TorchScript-graph importer frontends share (the FX importer
is ``dexport.ir.fx_importer``, as passes use it too). Importing this package loads
no frontend."""
from dexport.frontends.base import Frontend, frontend_names, get_frontend, register_frontend

__all__ = ["Frontend", "frontend_names", "get_frontend", "register_frontend"]
