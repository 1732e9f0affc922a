"""Artifact directories: written whole or not at all.

An export produces one directory: the model file(s), ``manifest.json`` and
optional extras (IR dumps). Everything is first written into a temporary
sibling directory, which is renamed into place only when every file is
complete, so an interrupted or failed export never leaves a half-written
artifact where a deployment would look for one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dexport.ir.errors import DexportError

MANIFEST = "manifest.json"


def manifest_text(manifest: dict) -> str:
    """Canonical json: sorted keys, fixed indentation, so equal manifests are equal bytes."""
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


@contextmanager
def staging_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; on normal exit it
    replaces ``target``, on an exception it is removed and ``target`` is untouched."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise DexportError(f"{target} already exists",
                           hint="choose another --output directory, or pass overwrite=True / --overwrite")
    if target.exists() and not (target / MANIFEST).exists():
        raise DexportError(f"{target} exists and is not a dexport artifact (no {MANIFEST}); refusing to replace it",
                           hint="choose another --output directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the artifact private
    try:
        yield staging
        if target.exists():
            retired = staging.with_suffix(".old")
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finish_manifest(staging: Path, manifest: dict) -> dict:
    """Record every file's size and sha256, then write the manifest last; returns it."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    manifest = {**manifest, "files": files}
    (staging / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise DexportError(f"{directory} is not a dexport artifact: {MANIFEST} is missing",
                           hint="pass the directory written by `dexport export`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DexportError(f"{path} is not valid json: {e}", hint="re-export the model") from None


def check_files(directory: str | os.PathLike, manifest: dict) -> None:
    """Refuse an artifact whose files differ from what its manifest recorded."""
    for rel, info in manifest.get("files", {}).items():
        path = Path(directory) / rel
        if not path.exists():
            raise DexportError(f"artifact file {rel} is missing from {directory}", hint="re-export the model")
        if file_digest(path) != info["sha256"]:
            raise DexportError(f"artifact file {rel} in {directory} does not match its manifest (sha256 differs)",
                               hint="the file was modified or truncated after export; re-export the model")
