"""Artifact directories: written whole or not at all, replaced only when they are ours,
and read only through paths confined to them.

An export produces one directory: the model file(s) and ``manifest.json``, which
lists every file with its size and sha256. Everything is first written into a
temporary sibling directory, which is renamed into place only when every file is
complete, so an interrupted or failed export never leaves a half-written artifact
where a deployment would look for one.

* Staging folders are named ``.NAME.HOST.PID.XXXX.partial``: the next export to
  ``NAME`` removes those of dead processes on this host and never one of a live
  export.
* Replacing an artifact swaps the two directories in one ``renameat2(RENAME_EXCHANGE)``
  where Linux offers it; elsewhere the old one is first renamed to ``.NAME.HOST.PID.XXXX.old``
  and, should the process die before the second rename, the next export or load to
  ``NAME`` puts it back.
* ``overwrite`` replaces only a directory that is a dexport artifact: a manifest that
  validates, and no file or folder beyond the ones it lists.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from dexport.ir.errors import DexportError

MANIFEST = "manifest.json"
STAGING = ".partial"
RETIRED = ".old"
IO_KINDS = ("structured", "detection")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Checked up front so a long export does not fail at its last step: room for the
# ".NAME.HOST.PID.XXXXXXXX.partial" sibling inside the usual 255-byte name limit.
_NAME_MAX = 255 - 80


def manifest_text(manifest: dict) -> str:
    """Canonical json: sorted keys, fixed indentation, so equal manifests are equal bytes."""
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


# --------------------------------------------------------------------------- writing

def check_output(target: str | os.PathLike, *, overwrite: bool = False,
                 dump_dir: str | os.PathLike | None = None) -> Path:
    """Everything that would make writing ``target`` fail or destroy something, checked
    before any work: returns the absolute target path. Also puts back an artifact an
    interrupted replacement left aside, and removes dead exports' staging folders."""
    target = _absolute(target, "--output")
    if not target.name or target.name in (".", ".."):
        raise DexportError(f"--output {target}: not a directory name an artifact can have",
                           hint="pass a new folder, e.g. --output out/model")
    if len(os.fsencode(target.name)) > _NAME_MAX:
        raise DexportError(f"--output {target}: the folder name is longer than {_NAME_MAX} bytes",
                           hint="choose a shorter name")
    if dump_dir is not None and _inside(_absolute(dump_dir, "--dump-ir"), target):
        raise DexportError(f"--dump-ir {dump_dir} is inside --output {target}, which is replaced as a whole",
                           hint="write the IR dumps to a folder outside the artifact, e.g. next to it")
    parent = _existing_ancestor(target.parent)
    if not parent.is_dir():
        raise DexportError(f"--output {target}: {parent} is a file, not a folder",
                           hint="choose an --output whose parent folders are folders")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DexportError(f"--output {target}: {parent} is not writable",
                           hint="choose an --output in a folder you can write to")
    if target.parent.is_dir():
        recover_interrupted(target)
        remove_stale(target)
    if os.path.lexists(target):
        if not overwrite:
            raise DexportError(f"{target} already exists",
                               hint="choose another --output directory, or pass overwrite=True / --overwrite")
        check_replaceable(target)
    return target


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything but a dexport artifact holding only what its manifest lists."""
    refuse = "refusing to replace it"
    if target.is_symlink() or not target.is_dir():
        raise DexportError(f"{target} is not a dexport artifact (a {'link' if target.is_symlink() else 'file'}, "
                           f"not a folder); {refuse}", hint="choose another --output directory")
    try:
        manifest = read_manifest(target, recover=False)
    except DexportError as e:
        raise DexportError(f"{target} is not a dexport artifact ({e.what}); {refuse}",
                           hint="choose another --output directory, or remove it yourself") from None
    listed = set(manifest["files"]) | {MANIFEST}
    folders = {str(p) for rel in listed for p in PurePosixPath(rel).parents} - {"."}
    extra = []
    for root, dirs, files in os.walk(target):  # links are reported, never followed
        base = Path(root)
        for name in sorted(dirs):
            rel = (base / name).relative_to(target).as_posix()
            if (base / name).is_symlink() or rel not in folders:
                extra.append(rel + "/")
        dirs[:] = [d for d in dirs if (base / d).relative_to(target).as_posix() in folders
                   and not (base / d).is_symlink()]
        extra += [rel for rel in ((base / f).relative_to(target).as_posix() for f in sorted(files))
                  if rel not in listed or (target / rel).is_symlink()]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DexportError(f"{target} holds what its manifest does not list ({shown}); {refuse}",
                           hint="move those out of the artifact, or choose another --output directory")


@contextmanager
def staging_directory(target: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``target``; on normal exit it
    replaces ``target``, on an exception it is removed and ``target`` is untouched."""
    target = check_output(target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner()}.", suffix=STAGING, dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the artifact private
    try:
        yield staging
        check_output(target, overwrite=overwrite)  # what is there now, after the export's work
        if os.path.lexists(target):
            _replace(staging, target)
        elif not _renameat2(staging, target, _RENAME_NOREPLACE):
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target`` and delete the old ``target``: atomically where the
    OS can exchange two directories, else by two renames that undo themselves on error
    (and that ``recover_interrupted`` completes after a crash between them)."""
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        shutil.rmtree(staging, ignore_errors=True)  # now the old artifact; a leftover is stale
        return
    retired = staging.with_name(staging.name[:-len(STAGING)] + RETIRED)
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False where it is unavailable (other OSes, old glibc, or a
    filesystem without the flag), so the caller falls back to plain renames."""
    libc_rename = _libc_renameat2()
    if libc_rename is None:
        return False
    if libc_rename(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    if err == errno.EEXIST:
        raise DexportError(f"{dst} appeared while the export ran; nothing was replaced",
                           hint="run the export again (with --overwrite to replace it)")
    raise OSError(err, os.strerror(err), str(dst))


_libc = None


def _libc_renameat2():
    global _libc
    if _libc is None:
        try:
            _libc = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", False)
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def _owner() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}"


def _leftovers(target: Path, suffix: str) -> list[tuple[Path, str, int]]:
    """(path, host, pid) of every staging (or retired) folder of ``target``."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"([A-Za-z0-9-]+)\.(\d+)\.[A-Za-z0-9_]+"
                         + re.escape(suffix))
    found = []
    for path in target.parent.iterdir():
        m = pattern.fullmatch(path.name)
        if m and path.is_dir() and not path.is_symlink():
            found.append((path, m.group(1), int(m.group(2))))
    return sorted(found)


def _dead(host: str, pid: int) -> bool:
    """True only when the owner certainly is gone: same host, no such process."""
    if host != _owner().split(".")[0] or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def remove_stale(target: Path) -> list[Path]:
    """Remove staging and retired folders of ``target`` left by dead exports; returns them."""
    removed = []
    for suffix in (STAGING, RETIRED):
        for path, host, pid in _leftovers(target, suffix):
            if _dead(host, pid):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def recover_interrupted(target: Path) -> bool:
    """An export that died between its two renames left ``target`` missing and the old
    artifact in a ``.old`` folder: put it back. True when something was recovered."""
    if os.path.lexists(target):
        return False
    newest_first = sorted(_leftovers(target, RETIRED), key=lambda found: -found[0].stat().st_mtime)
    for path, host, pid in newest_first:
        if _dead(host, pid) and (path / MANIFEST).is_file():
            try:
                os.rename(path, target)
            except OSError:
                return False
            return True
    return False


def finish_manifest(staging: Path, manifest: dict) -> dict:
    """Record every file's size and sha256, then write the manifest last; returns it."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    manifest = {**manifest, "files": files}
    (staging / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------- reading

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike, *, recover: bool = True) -> dict:
    """The validated manifest of an artifact directory (an artifact an interrupted
    replacement left aside is put back first)."""
    directory = Path(directory)
    if recover and not os.path.lexists(directory) and directory.parent.is_dir():
        recover_interrupted(_absolute(directory, "artifact"))
    path = directory / MANIFEST
    if not path.is_file():
        raise DexportError(f"{directory} is not a dexport artifact: {MANIFEST} is missing",
                           hint="pass the directory written by `dexport export`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except OSError as e:
        raise DexportError(f"{path} cannot be read: {e.strerror}", hint="check the file's permissions") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DexportError(f"{path} is not valid json: {e}"[:300], hint="re-export the model") from None
    return validate_manifest(manifest, path)


def _no_constant(name: str):
    raise ValueError(f"{name} is not json")


def validate_manifest(manifest, where: str | os.PathLike = MANIFEST) -> dict:
    """Check the shape of everything the loader and ``overwrite`` rely on: returns
    ``manifest``, or raises a DexportError naming the first bad key."""
    def bad(what: str):
        return DexportError(f"{where}: {what}", hint="the manifest is damaged or not dexport's; re-export the model")

    if not isinstance(manifest, dict):
        raise bad(f"expected a json object, got {_json_type(manifest)}")
    for key, kinds in (("format", str), ("model_file", str), ("io", str), ("files", dict),
                       ("input_schema", str), ("output_schema", str)):
        if key not in manifest:
            raise bad(f"the key {key!r} is missing")
        if not isinstance(manifest[key], kinds):
            raise bad(f"{key!r} must be a json {_json_type(kinds())}, got {_json_type(manifest[key])}")
    if manifest["io"] not in IO_KINDS:
        raise bad(f"'io' is {manifest['io']!r}, expected one of {list(IO_KINDS)}")
    files = manifest["files"]
    if not files:
        raise bad("'files' lists no file, so nothing could be checked against its digest")
    for rel, info in files.items():
        confined_path(rel, f"'files' entry {rel!r}", where)
        if rel == MANIFEST:
            raise bad(f"'files' lists {MANIFEST} itself")
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and _SHA256.fullmatch(info["sha256"])
                and type(info.get("bytes")) is int and info["bytes"] >= 0):
            raise bad(f"'files' entry {rel!r} must be {{\"bytes\": N, \"sha256\": 64 hex digits}}, got {info!r}"[:300])
    model_file = confined_path(manifest["model_file"], "'model_file'", where)
    if model_file not in files:
        raise bad(f"'model_file' {manifest['model_file']!r} is not listed in 'files' with its digest")
    for key in ("input_schema", "output_schema"):
        _check_schema(manifest[key], key, bad, detection=manifest["io"] == "detection")
    for key in ("inputs", "outputs"):  # the graph's declared tensors, as the backend emitted them
        _check_declared(manifest.get(key), key, bad)
    return manifest


def _check_declared(entries, key: str, bad) -> None:
    if not isinstance(entries, list):
        raise bad(f"{key!r} must be a json array of {{\"name\", \"shape\"}} objects, got {_json_type(entries)}")
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("shape"), list)
                and all(type(d) in (int, str) for d in entry["shape"])
                and isinstance(entry.get("dtype", ""), str)):
            raise bad(f"{key!r} entry {entry!r} must be {{\"name\": str, \"shape\": [int|str, ...], "
                      f"\"dtype\": str (optional)}}"[:300])


def _check_schema(text: str, key: str, bad, *, detection: bool) -> None:
    from dexport.ir.schema import DictSchema, SequenceSchema, TensorSchema, schema_from_json
    try:
        schema = schema_from_json(text)
        schema.num_leaves  # walks the whole tree
    except Exception as e:  # any malformed json tree; the schema module trusts its input
        raise bad(f"{key!r} is not a schema dexport can read ({type(e).__name__}: {e})"[:300]) from None
    if not detection:
        return
    if key == "input_schema":
        ok = isinstance(schema, SequenceSchema) and len(schema.items) == 3 and all(
            isinstance(s, TensorSchema) for s in schema.items)
        expected = "(images, image_sizes, output_sizes)"
    else:
        ok = isinstance(schema, DictSchema) and all(isinstance(s, TensorSchema) for s in schema.values) and {
            "counts", "boxes", "scores", "classes"} <= set(schema.keys)
        expected = "a dict of tensors with counts, boxes, scores and classes"
    if not ok:
        raise bad(f"{key!r} of a detection artifact must be {expected}")


def confined_path(rel, what: str, where: str | os.PathLike = MANIFEST) -> str:
    """``rel`` if it is a relative path inside the artifact (no ``..``, not absolute, no
    drive or backslash); else a DexportError."""
    if not isinstance(rel, str) or not rel:
        raise DexportError(f"{where}: {what} must be a non-empty path, got {rel!r}", hint="re-export the model")
    parts = PurePosixPath(rel).parts
    if (rel.startswith("/") or "\\" in rel or "\0" in rel or ":" in rel
            or any(p in ("..", ".") for p in rel.split("/")) or not parts or rel != "/".join(parts)):
        raise DexportError(f"{where}: {what} {rel!r} points outside the artifact or is not a plain relative path",
                           hint="every path in a manifest names a file inside the artifact directory; re-export the model")
    return rel


def artifact_file(directory: str | os.PathLike, manifest: dict, key: str = "model_file", *,
                  name: str | None = None) -> Path:
    """The path of the file ``manifest[key]`` names (or the file ``name``), checked to lie
    inside ``directory`` (also through links) and to be listed in ``files``."""
    what = repr(key) if name is None else "file"
    rel = confined_path(manifest.get(key) if name is None else name, what, Path(directory) / MANIFEST)
    if rel not in manifest.get("files", {}):
        raise DexportError(f"{directory}: {what} {rel!r} is not listed in the manifest's files",
                           hint="re-export the model")
    return _inside_artifact(Path(directory), rel)


def _inside_artifact(directory: Path, rel: str) -> Path:
    path = directory / rel
    if not _inside(path.resolve(), directory.resolve()):
        raise DexportError(f"artifact file {rel} in {directory} links outside the artifact",
                           hint="an artifact's files are its own; re-export the model")
    return path


def check_files(directory: str | os.PathLike, manifest: dict) -> None:
    """Refuse an artifact whose files differ from what its manifest recorded."""
    directory = Path(directory)
    validate_manifest(manifest, directory / MANIFEST)
    for rel, info in manifest["files"].items():
        path = _inside_artifact(directory, rel)
        if not path.is_file():
            raise DexportError(f"artifact file {rel} is missing from {directory}", hint="re-export the model")
        if path.stat().st_size != info["bytes"] or file_digest(path) != info["sha256"]:
            raise DexportError(f"artifact file {rel} in {directory} does not match its manifest (sha256 differs)",
                               hint="the file was modified or truncated after export; re-export the model")


# --------------------------------------------------------------------------- reports

def check_report_path(path: str | os.PathLike, flag: str, reading=()) -> Path:
    """A report file (``--json``/``--md``) may be written at ``path``: its folder exists,
    and it is neither inside an artifact being read nor inside any dexport artifact.
    Checked before any work; returns the absolute path."""
    path = _absolute(path, flag)
    if path.is_dir():
        raise DexportError(f"{flag} {path} is a folder", hint=f"pass a file name, e.g. {flag} {path / 'report.json'}")
    if not path.parent.is_dir():
        raise DexportError(f"{flag} {path}: the folder {path.parent} does not exist",
                           hint=f"create it first (mkdir -p {path.parent}), or choose another {flag}")
    refuse_inside_artifacts(path, flag, reading)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise DexportError(f"{flag} {path}: {path.parent} is not writable", hint=f"choose another {flag}")
    return path


def refuse_inside_artifacts(path: str | os.PathLike, flag: str, reading=()) -> None:
    """Refuse a path (a report, a dump folder) inside an artifact being read, or inside
    any dexport artifact: writing there would change what its manifest vouches for."""
    resolved = _absolute(path, flag).resolve()
    artifacts = [Path(a).resolve() for a in reading]
    artifacts += [p for p in (resolved, *resolved.parents) if (p / MANIFEST).is_file() and _is_manifest(p)]
    for artifact in artifacts:
        if _inside(resolved, artifact):
            raise DexportError(f"{flag} {path} is inside the artifact {artifact}, which dexport never writes",
                               hint=f"write it outside the artifact directory, e.g. {flag} "
                                    f"{artifact.parent / Path(path).name}")


def write_report(path: str | os.PathLike, text: str) -> None:
    """Write a report whole (temporary file, then rename)."""
    from dexport.dump import write_text_atomic
    write_text_atomic(path, text)


def _is_manifest(directory: Path) -> bool:
    try:
        read_manifest(directory, recover=False)
    except DexportError:
        return False
    return True


# --------------------------------------------------------------------------- paths

def _absolute(path, flag: str) -> Path:
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\0" in text:
        raise DexportError(f"{flag} {text!r} is not a usable path", hint=f"pass a path for {flag}")
    return Path(os.path.abspath(text))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _json_type(value) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (str, "string"), (dict, "object"), (list, "array")):
        if isinstance(value, kind):
            return name
    if isinstance(value, (int, float)):
        return "number" if math.isfinite(value) else "non-finite number"
    return type(value).__name__
