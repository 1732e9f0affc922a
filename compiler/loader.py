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
from typing import Any

import torch

from dexport.artifacts import artifact_file, check_files, read_manifest
from dexport.backends.base import FileReader, Runner
from dexport.inputs import detection_inputs, structured_inputs
from dexport.ir.errors import DexportError
from dexport.ir.schema import schema_from_json


class LoadedModel:
    """An artifact's model, run by its backend's runner (``Backend.load``), taking and
    returning the model's own structures."""

    def __init__(self, runner: Runner, manifest: dict):
        self.manifest = manifest
        self.runner = runner
        self.input_names = [i["name"] for i in manifest["inputs"]]
        self.input_schema = schema_from_json(manifest["input_schema"])
        self.output_schema = schema_from_json(manifest["output_schema"])
        self.io = manifest["io"]

    def run_flat(self, flat_inputs) -> list[torch.Tensor]:
        """The graph itself: flat tensors in, flat tensors out."""
        if len(flat_inputs) != len(self.input_names):
            raise DexportError(f"the exported graph takes {len(self.input_names)} tensors, got {len(flat_inputs)}",
                               hint="call the loaded model with the model's own inputs instead")
        return self.runner.run_flat(flat_inputs)

    def __call__(self, *inputs) -> Any:
        if self.io == "detection":
            return self._call_detection(*inputs)
        flat = structured_inputs(self.input_schema, inputs, self.manifest["inputs"])
        return self.output_schema.rebuild(self.run_flat(flat))

    def _call_detection(self, batched_inputs: list[dict]) -> list[dict]:
        from dexport.ir.dialects.detection_io import stack_inputs
        batched_inputs = detection_inputs(batched_inputs)
        images, image_sizes, output_sizes, sizes = stack_inputs(batched_inputs, "cpu")
        outputs = self.output_schema.rebuild(self.run_flat([images, image_sizes, output_sizes]))
        return detection_results(outputs, sizes.outputs)


def detection_results(outputs: dict[str, torch.Tensor], output_sizes: list[tuple]) -> list[dict]:
    """The batched detection format as the zoo's list API returns it: one dict per
    image with ``instances`` and, for PanopticFPN, ``sem_seg`` and ``panoptic_seg``."""
    from dexport.ir.dialects.detection_io import (DETECTION_FIELDS, SEGMENT_FIELDS, instances_from_fields,
                                                  split_outputs)

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


def load_files(read: FileReader, manifest: dict, *, threads: int | None = None) -> LoadedModel:
    """An artifact's model from its files, read by name through ``read`` (before the
    artifact is written, the export verifies the emitted files so)."""
    runner = _backend(manifest).load(read, manifest, threads=threads)
    return LoadedModel(runner, manifest)


def _backend(manifest: dict):
    from dexport.backends.base import backend_names, get_backend
    name = manifest.get("format")
    if name not in backend_names():
        raise DexportError(f"format {name!r} cannot be loaded by this dexport (formats: {', '.join(backend_names())})",
                           hint="upgrade dexport, or register the backend that wrote it, or re-export")
    return get_backend(name)


def load(directory: str | os.PathLike, *, threads: int | None = None, strict: bool = False) -> LoadedModel:
    """Load an artifact directory written by ``dexport export``; its files are checked
    against the manifest's digests first. An artifact whose recorded verification failed
    loads with a ``DexportWarning``, or is refused (``DexportError``) when ``strict``.
    ``threads``: the runner's thread count."""
    manifest = read_manifest(directory)
    check_files(directory, manifest)
    from dexport.verification import check_recorded_verification
    check_recorded_verification(directory, manifest, strict=strict)
    _backend(manifest)  # an unknown format is refused before any file is read
    return load_files(file_reader(directory, manifest), manifest, threads=threads)


def file_reader(directory: str | os.PathLike, manifest: dict) -> FileReader:
    """Reads an artifact's files by their artifact-relative names: only files the
    manifest lists (and so digested), and only inside the artifact."""
    def read(name: str) -> bytes:
        return artifact_file(directory, manifest, name=name).read_bytes()
    return read
