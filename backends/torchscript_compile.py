"""Compile a generated ``model.py`` into ``model.pt``, run as a script in a fresh
``python -I`` that imports only torch (``dexport.backends.torchscript.compile_source``
starts it):

    python -I torchscript_compile.py WORKDIR

WORKDIR holds ``model.py`` and ``buffers.pt`` (the module's buffers, a dict of
tensors); this writes ``model.pt`` there and prints one JSON line: the aten overloads
TorchScript resolved in ``forward`` (name, overload, count) and the ``dexport::`` ops
left in any method of the saved model (there should be none: plain torch has no such
op). A fresh process because TorchScript names a class compiled a second time in one
process ``___torch_mangle_<k>``, which would make the bytes depend on what ran before.

``model.pt`` is made byte-identical across runs: ``torch.jit.save`` writes a random
``.data/serialization_id`` and ``*.debug_pkl`` source ranges naming the temporary
path of ``model.py``; the archive is rewritten with the id derived from its other
contents and without the debug records (a run-time error in the loaded model then
quotes its serialized code, ``code/__torch__/...``, instead of ``model.py``).
"""
import collections
import hashlib
import importlib.util
import io
import json
import os
import sys
import warnings
import zipfile

import torch

MODULE_NAME = "dexport_torchscript_model"  # the same qualified class names in every export


def deterministic_archive(data: bytes) -> bytes:
    """``torch.jit.save`` output without debug records, its serialization id a digest."""
    src = zipfile.ZipFile(io.BytesIO(data))
    entries = [(i.filename, src.read(i)) for i in src.infolist() if not i.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, content in entries:
        if not name.endswith(".data/serialization_id"):
            digest.update(name.encode() + b"\0" + content)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            if name.endswith(".data/serialization_id"):
                content = str(int(digest.hexdigest(), 16))[:len(content) or 40].encode()
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()


def _nodes(graph):
    stack = [graph]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            yield node
            stack.extend(node.blocks())


def main(workdir: str) -> None:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, os.path.join(workdir, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buffers = torch.load(os.path.join(workdir, "buffers.pt"), weights_only=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        scripted = torch.jit.script(module.Model(buffers))
        overloads = collections.Counter()
        for node in _nodes(scripted.forward.graph):
            schema = node.schema()
            if schema != "(no schema)" and node.kind().startswith("aten::"):
                overloads[(node.kind(), torch._C.parse_schema(schema).overload_name)] += 1
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        data = deterministic_archive(buf.getvalue())
        loaded = torch.jit.load(io.BytesIO(data))
    left = sorted({node.kind() for name in loaded._c._method_names()
                   for node in _nodes(getattr(loaded, name).inlined_graph) if node.kind().startswith("dexport::")})
    with open(os.path.join(workdir, "model.pt"), "wb") as f:
        f.write(data)
    print(json.dumps({"overloads": [[k, o, n] for (k, o), n in sorted(overloads.items())], "left": left}))


if __name__ == "__main__":
    main(sys.argv[1])
