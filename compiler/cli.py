"""The `dexport` command line (also `python -m dexport`)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from dexport.artifacts import check_output, check_report_path, read_manifest, refuse_inside_artifacts, write_report
from dexport.backends.base import DEFAULT_BACKEND, backend_names, backends, get_backend, load_backends
from dexport.frontends.base import frontend_names
from dexport.ir.errors import DexportError

# Exit codes (README, "What dexport guarantees").
EXIT_OK = 0          # done (exported and verified / matched)
EXIT_MISMATCH = 1    # done, but the artifact does not match eager (or --check found ops without a lowering)
EXIT_USER_ERROR = 2  # a DexportError (bad arguments, paths, models, inputs, artifacts) or a refused write
EXIT_INTERNAL = 3    # an unexpected exception: a bug in dexport, reported as one
EXIT_INTERRUPTED = 130


class Progress:
    """Numbered step lines on stderr with the time each step took."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr

    @contextmanager
    def step(self, what: str):
        self.done += 1
        print(f"[{self.done}/{self.total}] {what} ...", end="", file=self.stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=self.stream, flush=True)
            raise
        print(f" {time.perf_counter() - start:.1f}s", file=self.stream, flush=True)


def load_model(spec: str, weights: str | None = "default"):
    """`zoo:NAME` or `package.module:factory` (a callable returning an nn.Module)."""
    if spec.startswith("zoo:"):
        from dexport import zoo
        return zoo.get(spec[4:], weights=weights)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise DexportError(f"--model {spec!r} is neither zoo:NAME nor package.module:factory",
                           hint="e.g. --model zoo:mask_rcnn_tiny or --model mypkg.models:build")
    with _current_directory_first():
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise DexportError(f"cannot load {spec!r}: {e}", hint="check that the module is importable "
                               "from the current directory and defines the factory") from None
        if not callable(factory):
            raise DexportError(f"factory {spec} is a {type(factory).__name__}, not a callable",
                               hint=FACTORY_CONTRACT)
        try:
            made = factory()
        except DexportError:
            raise
        except Exception as e:  # the user's code: its failure is theirs to fix, with its message
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise DexportError(f"factory {spec} raised {type(e).__name__}: {e}",
                               source=f"{where.filename}:{where.lineno}",
                               hint=f"fix the factory; {FACTORY_CONTRACT}") from None
    return check_factory_result(spec, made)


@contextmanager
def _current_directory_first():
    """The current directory first on sys.path while a factory's module is imported and
    run, as `python -m dexport` has it (the console script's sys.path starts with its
    own bin folder instead); put back afterwards, so in-process callers keep theirs."""
    cwd = os.getcwd()
    if sys.path[:1] in ([""], [cwd]):
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if cwd in sys.path:
            sys.path.remove(cwd)


FACTORY_CONTRACT = ("a factory takes no arguments and returns a torch.nn.Module that takes the zoo's inputs, or "
                    "(model, example_inputs) or (model, example_inputs, [check_inputs, ...]), where example_inputs "
                    "and each check input are tuples of the model's positional arguments")


def check_factory_result(spec: str, made):
    """``made`` if it is what a factory may return, else a DexportError saying what is wrong."""
    import torch

    def refuse(what: str):
        return DexportError(f"factory {spec} returned {what}", hint=FACTORY_CONTRACT)

    if isinstance(made, torch.nn.Module):
        return made
    if not isinstance(made, tuple):
        raise refuse(f"a {type(made).__name__}, not a torch.nn.Module or a tuple")
    if len(made) not in (2, 3):
        raise refuse(f"a tuple of {len(made)} items, not (model, example_inputs[, check_inputs])")
    if not isinstance(made[0], torch.nn.Module):
        raise refuse(f"a tuple whose first item is a {type(made[0]).__name__}, not a torch.nn.Module")
    if not isinstance(made[1], tuple):
        raise refuse(f"example_inputs of type {type(made[1]).__name__}, not a tuple of positional arguments "
                     "(wrap a single argument: (x,))")
    if len(made) == 3 and not (isinstance(made[2], (list, tuple)) and all(isinstance(c, tuple) for c in made[2])):
        raise refuse("check_inputs that are not a list of tuples of positional arguments")
    return made


def sample_images(count: int, size: int, seed: int):
    """Images from the synthetic shapes data, in the zoo's input format."""
    from dexport import zoo
    data = zoo.shapes_dataset("val", num_images=count, seed=seed, image_size=size)
    return [{"image": data[i]["image"]} for i in range(count)]


def _model_and_inputs(args):
    """The model plus example inputs: zoo models and factories that return a model get
    synthetic images (the zoo's input format); a factory may instead return
    ``(model, example_inputs)`` or ``(model, example_inputs, [check_inputs, ...])``."""
    made = load_model(args.model)
    if isinstance(made, tuple):
        model, example, *rest = made
        return model, example, list(rest[0]) if rest else []
    batch = 1 if args.batch == "dynamic" else int(args.batch)
    example = (sample_images(batch, args.size, seed=0),)
    if args.batch == "dynamic":  # other batch sizes and resolutions than the capture's
        checks = [(sample_images(n, args.size + 32 * k, seed=10 + k),) for k, n in enumerate((2, 3), 1)]
    else:
        checks = [(sample_images(batch, args.size + 32, seed=11),)]
    return made, example, checks


def cmd_export(args) -> int:
    from dexport.driver import export

    backend = get_backend(args.format)
    options = _backend_options(args, backend)
    progress = Progress(6 if not args.check else 3)
    with progress.step(f"loading {args.model}"):
        model, example, checks = _model_and_inputs(args)
    if args.check:
        import dexport
        with progress.step(f"capturing by {args.method}"):
            graph = dexport.capture(model, example, method=args.method)
        with progress.step(f"checking {backend.label} support"):
            missing = backend.check_support(graph)
        if not missing:
            print(f"every op of the captured graph ({len(graph)} nodes) has an {backend.label} lowering")
            return 0
        print(f"ops without an {backend.label} lowering (run the decompose pass, or register a lowering):")
        for op, count, places in missing:
            where = "; ".join(f"{scope or '<top>'} @ {source or '?'}" for scope, source in places[:3])
            print(f"  {op} x{count}: {where}")
        return 1
    batch = args.batch if args.batch == "dynamic" else int(args.batch)
    result = export(model, example, args.output, format=args.format, method=args.method,
                    batch=batch, dump_ir=args.dump_ir, overwrite=args.overwrite, check_inputs=checks,
                    tolerances=_tolerances(args), model_spec=args.model, progress=progress, **options)
    model_file = result.manifest["model_file"]
    print(f"exported {args.model} to {result.directory}/{model_file} "
          f"({result.manifest['files'][model_file]['bytes'] / 1e6:.1f} MB, {len(result.graph)} IR nodes)")
    ok = True
    if result.verification is not None:
        shapes = "; ".join(_describe_inputs(inputs) for inputs in checks)
        print(f"  verified vs eager on {shapes}: {result.verification.summary()}")
        for line in result.verification.worst():
            print(f"    {line}")
        ok = result.verification.ok
    if args.run_eval:
        import dexport
        ok &= _run_eval(args, model, dexport.load(result.directory))
    return 0 if ok else 1


def _backend_options(args, backend) -> dict:
    """The emission options given on the command line (flags left unset are None), for
    ``backend``; one that belongs to another format is an error naming it."""
    given = {}
    for option in _all_options():
        value = getattr(args, option.name)
        if value is None:
            continue
        if option.name not in {o.name for o in backend.options}:
            owners = [b.name for b in backends() if option.name in {o.name for o in b.options}]
            raise DexportError(f"--{option.name.replace('_', '-')} is an option of format {', '.join(owners)}, "
                               f"not of {backend.name}", hint=f"drop it, or pass --format {owners[0]}")
        given[option.name] = value
    return given


def _all_options():
    """Every registered backend's emission options, each name once (first backend's help)."""
    seen = {}
    for backend in backends():
        for option in backend.options:
            seen.setdefault(option.name, (option, backend))
    return [option for option, _ in seen.values()]


def _add_backend_options(p) -> None:
    seen = {}
    for backend in backends():
        for option in backend.options:
            if option.name in seen:
                continue
            seen[option.name] = option
            flag = "--" + option.name.replace("_", "-")
            if isinstance(option.default, bool):
                p.add_argument(flag, dest=option.name, action="store_true", default=None,
                               help=f"{option.help} (--format {backend.name})")
            else:
                p.add_argument(flag, dest=option.name, type=type(option.default), default=None,
                               help=f"{option.help} (--format {backend.name}; default {option.default})")


def _describe_inputs(inputs) -> str:
    first = inputs[0]
    if isinstance(first, list) and first and isinstance(first[0], dict) and "image" in first[0]:
        sizes = sorted({tuple(x["image"].shape[-2:]) for x in first})
        return f"{len(first)} image(s) of {', '.join(f'{h}x{w}' for h, w in sizes)}"
    return "held-out inputs"


def _parse_ints(text: str, flag: str, example: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise DexportError(f"{flag} {text!r}: expected positive integers separated by commas", hint=f"e.g. {flag} {example}")
    return values


def _tolerances(args):
    from dexport.verification import Tolerances
    return Tolerances().replace(box=args.box_tol, score=args.score_tol, mask_iou=args.mask_iou,
                                mask_margin=args.mask_margin, keypoint_px=args.keypoint_tol, sem_seg=args.sem_seg_agreement,
                                panoptic=args.sem_seg_agreement, atol=args.atol)


def _eval_source(args, spec: str | None):
    from dexport import zoo
    from dexport.verification import CocoFolder
    if args.coco_json or args.image_dir:
        if not (args.coco_json and args.image_dir):
            raise DexportError("--coco-json and --image-dir go together", hint="pass both, or neither for shapes val")
        return CocoFolder(args.coco_json, args.image_dir), f"{args.coco_json}"
    kwargs = dict(num_images=args.eval_images, seed=0, image_size=args.eval_size)
    if spec and spec.startswith("zoo:"):
        data = zoo.dataset_for_model(spec[4:], "val", **kwargs)
    else:
        data = zoo.shapes_dataset("val", **kwargs)
    return data, f"shapes val ({len(data)} images, {args.eval_size}px)"


def _run_eval(args, model, loaded) -> bool:
    """COCO AP (and PQ for panoptic models on shapes val) of eager and exported side by
    side; False when any figure differs by more than --ap-tol points."""
    from dexport.verification import ap_ok, compare_ap, format_ap_table
    source, what = _eval_source(args, args.model)
    notes: list[str] = []
    table = compare_ap(model, loaded, source, notes=notes)
    measures = "COCO AP and PQ" if "panoptic" in table else "COCO AP"
    print(f"{measures} on {what}, eager vs exported:")
    print(format_ap_table(table))
    for note in notes:
        print(note)
    ok = ap_ok(table, args.ap_tol)
    print(f"{'AP and PQ' if 'panoptic' in table else 'AP'} difference within {args.ap_tol} -> "
          f"{'ok' if ok else 'MISMATCH'}")
    return ok


def _verify_inputs(args, manifest, made):
    """Held-out synthetic images (seeds the export's own checks never use): for every
    size, --images images split into batches cycling through --batch. A structured
    artifact takes exactly its capture inputs, so a factory's own check inputs are used."""
    if manifest["io"] != "detection":
        if isinstance(made, tuple) and len(made) > 2 and made[2]:
            return list(made[2])
        raise DexportError("this artifact is not a detector: dexport verify needs held-out inputs from its factory",
                           hint="let the factory return (model, example_inputs, [check_inputs, ...])")
    from dexport import zoo
    sizes, batches = _parse_ints(args.sizes, "--sizes", "96,160"), _parse_ints(args.batch, "--batch", "1,2,3")
    inputs = []
    for k, size in enumerate(sizes):
        data = zoo.shapes_dataset("val", num_images=args.images, seed=1000 + k, image_size=size)
        start, b = 0, 0
        while start < args.images:
            n = min(batches[b % len(batches)], args.images - start)
            inputs.append(([{"image": data[i]["image"]} for i in range(start, start + n)],))
            start, b = start + n, b + 1
    return inputs


def cmd_verify(args) -> int:
    import dexport
    from dexport.artifacts import read_manifest
    from dexport.verification import verify

    manifest = read_manifest(args.artifact)
    args.model = args.model or manifest.get("model")
    if not args.model:
        raise DexportError(f"{args.artifact}: the manifest does not record which model was exported",
                           hint="pass --model zoo:NAME or package.module:factory (or re-export with this dexport)")
    progress = Progress(3 if args.bisect else 2)
    with progress.step(f"loading {args.artifact} and rebuilding {args.model}"):
        loaded = dexport.load(args.artifact)
        made = load_model(args.model)
        model = (made[0] if isinstance(made, tuple) else made).eval()
        inputs = _verify_inputs(args, manifest, made)
    with progress.step(f"running eager and exported on {len(inputs)} held-out input(s)"):
        report = verify(model, loaded, inputs, tolerances=_tolerances(args))
    if args.json:
        write_report(args.json, report.to_json())
    print(report.format_table())
    ok = report.ok
    if args.bisect:
        ok &= _bisect(args, made, model, inputs[0], progress)
    if args.run_eval:
        ok &= _run_eval(args, model, loaded)
    return 0 if ok else 1


def _bisect(args, made, model, inputs, progress) -> bool:
    """Re-capture the model as export did and name the first IR node whose emitted value
    diverges from the IR interpreter on ``inputs``; False when a lowering is wrong."""
    from dexport.bisect import bisect_artifact
    example = made[1] if isinstance(made, tuple) else None
    from dexport.artifacts import read_manifest
    label = get_backend(read_manifest(args.artifact).get("format")).label
    with progress.step(f"re-capturing and comparing {label} with the IR interpreter node by node"):
        report = bisect_artifact(args.artifact, model, inputs, example_inputs=example,
                                 capture_size=args.capture_size)
    print(report)
    return report.wrong_lowering is None


def _add_tolerance_flags(p) -> None:
    from dexport.verification import Tolerances
    t = Tolerances()
    p.add_argument("--box-tol", type=float, help=f"max box error, fraction of the image size (default {t.box})")
    p.add_argument("--score-tol", type=float, help=f"max score error (default {t.score})")
    p.add_argument("--mask-iou", type=float, help=f"min mask IoU of matched detections, over the pixels "
                   f"whose eager mask probability is more than --mask-margin from the mask threshold "
                   f"(default {t.mask_iou})")
    p.add_argument("--mask-margin", type=float,
                   help=f"mask pixels whose eager probability is within this of the threshold may fall "
                        f"either way and are left out of the mask IoU; 0 compares every pixel "
                        f"(default {t.mask_margin})")
    p.add_argument("--keypoint-tol", type=float, help=f"max keypoint distance in pixels (default {t.keypoint_px})")
    p.add_argument("--sem-seg-agreement", type=float,
                   help=f"min fraction of equal semantic / panoptic labels (default {t.sem_seg})")
    p.add_argument("--atol", type=float, default=t.atol,
                   help=f"max abs diff accepted for models that are not detectors (default {t.atol})")


def _add_eval_flags(p) -> None:
    p.add_argument("--run-eval", action="store_true",
                   help="also compare COCO AP (and PQ for panoptic models) of eager and exported on a "
                        "dataset (shapes val by default)")
    p.add_argument("--eval-images", type=int, default=200, help="shapes val images for --run-eval (default 200)")
    p.add_argument("--eval-size", type=int, default=128, help="shapes val image size (default 128)")
    p.add_argument("--coco-json", help="evaluate on this COCO json instead (with --image-dir)")
    p.add_argument("--image-dir", help="folder of the --coco-json images as .npy/.pt [3,H,W] arrays")
    p.add_argument("--ap-tol", type=float, default=0.1, help="max AP (and PQ) difference in points (default 0.1)")


def cmd_zoo(args) -> int:
    from dexport import zoo
    for name in zoo.names():
        print(name)
    return 0


def cmd_dump(args) -> int:
    import dexport
    from dexport.passes import PassManager
    from dexport.verification import verify

    out = Path(args.output)
    progress = Progress(5)
    with progress.step(f"loading {args.model}"):
        model = load_model(args.model)
    with progress.step(f"capturing by tracing at {args.size}x{args.size}"):
        example = (sample_images(1, args.size, seed=0),)
        graph = dexport.capture(model, example, method="tracing")
    from dexport.driver import default_pipeline
    pipeline = args.pipeline or default_pipeline()
    with progress.step(f"running passes {pipeline!r}"):
        load_backends()  # registers the backends' decompose targets
        PassManager(pipeline, verify_each=True, dump_dir=out / "passes").run(graph)
    other_size = args.size + 32
    with progress.step(f"checking the IR against eager at {other_size}x{other_size}"):
        held_out = (sample_images(1, other_size, seed=1),)
        report = verify(model, graph, [held_out], tolerances=_tolerances(args))
    with progress.step(f"writing dumps to {out}"):
        paths = dexport.dump_ir(graph, out)
    print(f"captured {len(graph)} nodes, {len(graph.params)} parameters; IR interpreter vs eager on a "
          f"held-out {other_size}x{other_size} image: {report.summary()}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    print(f"  per-pass dumps: {out / 'passes'}")
    return 0 if report.ok else 1


def cmd_bench(args) -> int:
    from dexport.bench import bench, to_markdown, write_results
    # load, 2 jit compilations, each artifact (or export + load), floor, the interleaved timing
    steps = 5 + (len(args.artifact) if args.artifact else 2)
    progress = Progress(steps)
    with progress.step(f"loading {args.model}"):
        model = load_model(args.model)
    result = bench(model, name=args.model, artifacts=args.artifact or (), size=args.size, batch=args.batch,
                   runs=args.runs, warmup=args.warmup, threads=args.threads, progress=progress)
    write_results(result, args.json, args.md)
    print(to_markdown(result))
    # torch.jit's entries report parity too, but only an artifact failing it is dexport's failure
    mismatched = [e["name"] for e in result["entries"] if e.get("parity_ok") is False and "format" in e]
    for name in mismatched:
        print(f"{name}: detections differ from eager (MISMATCH)", file=sys.stderr)
    return EXIT_MISMATCH if mismatched else EXIT_OK


def cmd_ops(args) -> int:
    from dexport.backends.coverage import coverage
    print(coverage(args.format).format(markdown=args.markdown))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dexport", description=(
        "Export PyTorch detection and segmentation models through dexport's IR."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    z = sub.add_parser("zoo", help="list the built-in reference models")
    z.set_defaults(func=cmd_zoo)

    o = sub.add_parser("ops", help="list a backend's ATen op coverage (lowered / decomposed / missing)")
    o.add_argument("--format", default="onnx", help="the backend (default: onnx)")
    o.add_argument("--markdown", action="store_true", help="print the table as markdown (as in the README)")
    o.set_defaults(func=cmd_ops)

    d = sub.add_parser("dump", help="capture a model, run passes, and dump its IR (text, DOT, SVG)",
                       description="Capture MODEL by tracing on a synthetic image, run a pass pipeline "
                                   "with per-pass IR dumps, check the IR interpreter against eager "
                                   "PyTorch on a held-out image of another size, and write "
                                   "graph.ir / graph.dot / graph.svg.")
    d.add_argument("--model", required=True, help="zoo:NAME (see `dexport zoo`) or package.module:factory")
    d.add_argument("--output", required=True, help="directory for the dumps")
    d.add_argument("--size", type=int, default=128, help="capture image size in pixels (default 128)")
    d.add_argument("--pipeline", help="pass pipeline (default: the default format's export pipeline, "
                   "dexport.driver.default_pipeline())")
    _add_tolerance_flags(d)
    d.set_defaults(func=cmd_dump)

    formats = backend_names()
    e = sub.add_parser("export", help=f"export a model to an artifact directory ({', '.join(formats)})",
                       description="Capture MODEL, run the pass pipeline, emit the model in --format "
                                   f"({DEFAULT_BACKEND} by default), compare it with eager PyTorch on inputs not "
                                   "used for capture (other batch sizes and resolutions), and write OUTPUT "
                                   "atomically: the model file(s) + manifest.json. Load it back with "
                                   "dexport.load(OUTPUT).")
    e.add_argument("--model", required=True, help="zoo:NAME (see `dexport zoo`) or package.module:factory; a "
                   "factory returns a model taking the zoo's inputs, or (model, example_inputs[, checks])")
    e.add_argument("--output", help="artifact directory to write (required unless --check)")
    e.add_argument("--method", default="tracing", choices=frontend_names(),
                   help="capture method, a registered frontend (default tracing)")
    e.add_argument("--format", default=DEFAULT_BACKEND, choices=formats,
                   help=f"artifact format, a registered backend (default {DEFAULT_BACKEND})")
    e.add_argument("--batch", default="dynamic",
                   help="'dynamic' (default: one artifact for any batch size) or a number to capture and "
                        "check at that batch size")
    e.add_argument("--size", type=int, default=128, help="capture image size in pixels (default 128)")
    _add_backend_options(e)
    e.add_argument("--dump-ir", metavar="DIR", help="also write the IR (graph.ir/.dot/.svg, per-pass dumps) to DIR")
    e.add_argument("--check", action="store_true",
                   help="only report which ops of the captured graph have no lowering in --format; write nothing")
    e.add_argument("--overwrite", action="store_true", help="replace an existing artifact at --output")
    _add_tolerance_flags(e)
    _add_eval_flags(e)
    e.set_defaults(func=cmd_export)

    v = sub.add_parser("verify", help="compare an exported artifact with eager PyTorch on held-out images",
                       description="Load ARTIFACT, rebuild the eager model the manifest records, run both on "
                                   "held-out synthetic images of other sizes and batch sizes, match detections "
                                   "per image by IoU and print a table. Exit code 0: match, 1: mismatch, "
                                   "2: user error. The artifact itself is never written.")
    v.add_argument("artifact", help="artifact directory written by `dexport export`")
    v.add_argument("--model", help="rebuild the eager model from this spec instead of the manifest's")
    v.add_argument("--images", type=int, default=6, help="held-out images per size (default 6)")
    v.add_argument("--sizes", default="96,160", help="image sizes, comma separated (default 96,160)")
    v.add_argument("--batch", default="1,2,3", help="batch sizes to cycle through (default 1,2,3)")
    v.add_argument("--json", metavar="OUT", help="write the full report as json to OUT")
    v.add_argument("--bisect", action="store_true",
                   help="also re-capture the model and name the first IR node whose emitted value diverges "
                        "from the IR interpreter on the first held-out input (op, scope, source, IR around it)")
    v.add_argument("--capture-size", type=int, default=128,
                   help="image size a detector is re-captured at for --bisect (default 128, as export's --size)")
    _add_tolerance_flags(v)
    _add_eval_flags(v)
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("bench", help="time eager PyTorch, exported artifacts and the backbone+FPN floor",
                       description="Time MODEL eager (list API and forward_batched), each artifact "
                                   "in its format's runtime (none given: export one first) and the backbone + "
                                   "FPN alone, in one run with a fixed thread count, interleaved (each round "
                                   "calls every entry once); print a markdown table "
                                   "of medians and ratios against eager model(list).")
    b.add_argument("--model", required=True, help="zoo:NAME (see `dexport zoo`) or package.module:factory")
    b.add_argument("--artifact", action="append", metavar="DIR",
                   help="an artifact directory written by `dexport export` (repeatable)")
    b.add_argument("--size", type=int, default=512, help="image size in pixels (default 512)")
    b.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    b.add_argument("--runs", type=int, default=10, help="timed rounds, one call per entry each (default 10)")
    b.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    b.add_argument("--threads", type=int, default=2, help="torch and artifact runtime threads (default 2)")
    b.add_argument("--json", metavar="OUT", help="write the results as JSON")
    b.add_argument("--md", metavar="OUT", help="write the markdown table")
    b.set_defaults(func=cmd_bench)
    return p


# Integer flags that must be positive, with an example value for the hint.
_POSITIVE = {"size": 128, "images": 6, "capture_size": 128, "eval_images": 200, "eval_size": 128, "runs": 10,
             "threads": 2}
_MAX_TOLERANCES = ("box_tol", "score_tol", "keypoint_tol", "atol", "ap_tol")  # a max error: >= 0
_MIN_FRACTIONS = ("mask_iou", "sem_seg_agreement")  # a min agreement: 0..1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args) -> None:
    """Every argument and path checked before any work (loading a model, capturing,
    exporting): a DexportError saying what is wrong and what to pass instead."""
    for name, example in _POSITIVE.items():
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise DexportError(f"{_flag(name)} {value}: expected a positive integer",
                               hint=f"e.g. {_flag(name)} {example}")
    if getattr(args, "warmup", 0) < 0:
        raise DexportError(f"--warmup {args.warmup}: expected 0 or more untimed runs", hint="e.g. --warmup 2")
    for name in _MAX_TOLERANCES:
        value = getattr(args, name, None)
        if value is not None and not value >= 0:  # also NaN, which would switch the check off
            raise DexportError(f"{_flag(name)} {value}: a tolerance is a number >= 0",
                               hint="pass the largest error to accept (inf switches the check off)")
    for name in _MIN_FRACTIONS:
        value = getattr(args, name, None)
        if value is not None and not 0 <= value <= 1:
            raise DexportError(f"{_flag(name)} {value}: expected a fraction between 0 and 1",
                               hint=f"e.g. {_flag(name)} 0.99 (0 switches the check off)")
    if bool(getattr(args, "coco_json", None)) != bool(getattr(args, "image_dir", None)):
        raise DexportError("--coco-json and --image-dir go together", hint="pass both, or neither for shapes val")
    check = {"export": _check_export_args, "verify": _check_verify_args, "bench": _check_bench_args,
             "dump": _check_dump_args}.get(args.command)
    if check:
        check(args)


def _check_export_args(args) -> None:
    if args.batch != "dynamic" and not (args.batch.isdigit() and int(args.batch) > 0):
        raise DexportError(f"--batch {args.batch!r}: expected 'dynamic' or a positive number",
                           hint="e.g. --batch dynamic (one artifact for any batch size) or --batch 2")
    backend = get_backend(args.format)
    backend.resolve_options(_backend_options(args, backend))  # e.g. an opset the backend lacks
    if args.check:
        return
    if not args.output:
        raise DexportError("export: --output is required (or pass --check)", hint="e.g. --output out/model")
    check_output(args.output, overwrite=args.overwrite, dump_dir=args.dump_ir)
    if args.dump_ir:
        refuse_inside_artifacts(args.dump_ir, "--dump-ir")


def _check_verify_args(args) -> None:
    _parse_ints(args.sizes, "--sizes", "96,160")
    _parse_ints(args.batch, "--batch", "1,2,3")
    read_manifest(args.artifact)
    if args.json:
        check_report_path(args.json, "--json", reading=[args.artifact])


def _check_bench_args(args) -> None:
    if args.batch <= 0:
        raise DexportError(f"--batch {args.batch}: expected a positive integer", hint="e.g. --batch 1")
    for directory in args.artifact or ():
        if read_manifest(directory)["io"] != "detection":
            raise DexportError(f"--artifact {directory} is not a detector artifact (io "
                               f"{read_manifest(directory)['io']!r}): dexport bench times detectors on images",
                               hint="time it with your own inputs: dexport.load(DIR)(*inputs)")
    for flag, path in (("--json", args.json), ("--md", args.md)):
        if path:
            check_report_path(path, flag, reading=args.artifact or ())


def _check_dump_args(args) -> None:
    refuse_inside_artifacts(args.output, "--output")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return args.func(args)
    except DexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the file system refused (permissions, free space): nothing a bug report fixes
        print(f"error: {e}\n  what to do: check the paths, their permissions and the free space", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        print(f"internal error: {type(e).__name__}: {e}\n  at: {where.filename}:{where.lineno}\n"
              "  this is a bug in dexport, not a verdict on the model: please report it with the command line "
              "(DEXPORT_TRACEBACK=1 prints the full traceback)", file=sys.stderr)
        if os.environ.get("DEXPORT_TRACEBACK"):
            traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
