"""``dexport.load(dir)``: an exported artifact as a callable that takes and returns
the model's own structures, whatever the format.

The callable does what the original model did around the exported graph: for a
``structured`` export it flattens the inputs and rebuilds the outputs with the
stored schemas; for a ``detection`` export it pads the images into one batch
(the model's own pre-processing) and splits the batched detections back into one
result per image (post-processing), so ``load(dir)(inputs)`` is comparable with
``model(inputs)`` field by field.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dexport.artifacts import check_files, read_manifest
from dexport.ir.errors import DexportError
from dexport.ir.schema import schema_from_json


class LoadedModel:
    """An ONNX artifact run by onnxruntime (CPU, no custom-op library)."""

    def __init__(self, model_bytes: bytes, manifest: dict, *, threads: int | None = None):
        import onnxruntime
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.manifest = manifest
        self.session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_schema = schema_from_json(manifest["input_schema"])
        self.output_schema = schema_from_json(manifest["output_schema"])
        self.io = manifest["io"]

    def run_flat(self, flat_inputs) -> list[torch.Tensor]:
        """The graph itself: flat tensors in, flat tensors out."""
        if len(flat_inputs) != len(self.input_names):
            raise DexportError(f"the exported graph takes {len(self.input_names)} tensors, got {len(flat_inputs)}",
                               hint="call the loaded model with the model's own inputs instead")
        feed = {name: _to_numpy(x) for name, x in zip(self.input_names, flat_inputs)}
        # np.require keeps 0-d outputs 0-d (np.ascontiguousarray would make them [1]).
        return [torch.from_numpy(np.require(o, requirements="C")) for o in self.session.run(None, feed)]

    def __call__(self, *inputs) -> Any:
        if self.io == "detection":
            return self._call_detection(*inputs)
        flat = self.input_schema.flatten(inputs)
        return self.output_schema.rebuild(self.run_flat(flat))

    def _call_detection(self, batched_inputs: list[dict]) -> list[dict]:
        from dexport.models.batched import stack_inputs
        images, image_sizes, output_sizes, sizes = stack_inputs(batched_inputs, "cpu")
        outputs = self.output_schema.rebuild(self.run_flat([images, image_sizes, output_sizes]))
        return detection_results(outputs, sizes.outputs)


def detection_results(outputs: dict[str, torch.Tensor], output_sizes: list[tuple]) -> list[dict]:
    """The batched detection format as the zoo's list API returns it: one dict per
    image with ``instances`` and, for PanopticFPN, ``sem_seg`` and ``panoptic_seg``."""
    from dexport.models.batched import DETECTION_FIELDS, SEGMENT_FIELDS, split_outputs
    from dexport.models.postprocess import instances_from_fields

    results = []
    for item, size in zip(split_outputs(outputs, output_sizes), output_sizes):
        fields = {k: v for k, v in item.items() if k in DETECTION_FIELDS}
        result = {"instances": instances_from_fields(fields, size)}
        if "sem_seg" in item:
            result["sem_seg"] = item["sem_seg"]
        if "panoptic_seg" in item:
            info = {k[len("segment_"):]: item[k] for k in SEGMENT_FIELDS}
            result["panoptic_seg"] = (item["panoptic_seg"], info)
        results.append(result)
    return results


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy()
    return np.asarray(x)


def load_onnx_bytes(model_bytes: bytes, manifest: dict, **options) -> LoadedModel:
    return LoadedModel(model_bytes, manifest, **options)


def load(directory: str | os.PathLike, *, threads: int | None = None, strict: bool = False) -> LoadedModel:
    """Load an artifact directory written by ``dexport export``; its files are checked
    against the manifest's digests first. An artifact whose recorded verification failed
    loads with a ``DexportWarning``, or is refused (``DexportError``) when ``strict``."""
    manifest = read_manifest(directory)
    check_files(directory, manifest)
    from dexport.verification import check_recorded_verification
    check_recorded_verification(directory, manifest, strict=strict)
    if manifest.get("format") != "onnx":
        raise DexportError(f"{directory}: format {manifest.get('format')!r} cannot be loaded by this dexport",
                           hint="upgrade dexport, or re-export with --format onnx")
    model_bytes = (Path(directory) / manifest["model_file"]).read_bytes()
    return LoadedModel(model_bytes, manifest, threads=threads)
