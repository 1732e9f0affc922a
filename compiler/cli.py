"""The `dexport` command line (also `python -m dexport`)."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from dexport.ir.errors import DexportError


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
        from dexport.models import zoo
        name = spec[4:]
        if name not in zoo.names():
            raise DexportError(f"unknown zoo model {name!r}",
                               hint="run `dexport zoo` for the list of names")
        return zoo.get(name, weights=weights)
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise DexportError(f"--model {spec!r} is neither zoo:NAME nor package.module:factory",
                           hint="e.g. --model zoo:mask_rcnn_tiny or --model mypkg.models:build")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise DexportError(f"cannot load {spec!r}: {e}", hint="check that the module is importable "
                           "from the current directory and defines the factory") from None
    return factory()


def sample_images(count: int, size: int, seed: int):
    """Images from the synthetic shapes data, in the zoo's input format."""
    from dexport.models.data import ShapesDataset
    data = ShapesDataset("val", num_images=count, seed=seed, image_size=size)
    return [{"image": data[i]["image"]} for i in range(count)]


def _max_abs_diff(a, b) -> float:
    from dexport.ir.schema import flatten
    fa, fb = flatten(a)[0], flatten(b)[0]
    if len(fa) != len(fb):
        return float("inf")
    worst = 0.0
    for x, y in zip(fa, fb):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst


def cmd_zoo(args) -> int:
    from dexport.models import zoo
    for name in zoo.names():
        print(name)
    return 0


def cmd_dump(args) -> int:
    import torch

    import dexport
    from dexport.passes import PassManager

    out = Path(args.output)
    progress = Progress(5)
    with progress.step(f"loading {args.model}"):
        model = load_model(args.model)
    with progress.step(f"capturing by tracing at {args.size}x{args.size}"):
        example = (sample_images(1, args.size, seed=0),)
        graph = dexport.capture(model, example, method="tracing")
    with progress.step(f"running passes {args.pipeline!r}"):
        PassManager(args.pipeline, verify_each=True, dump_dir=out / "passes").run(graph)
    other_size = args.size + 32
    with progress.step(f"checking the IR against eager at {other_size}x{other_size}"):
        held_out = (sample_images(1, other_size, seed=1),)
        with torch.no_grad():
            err = _max_abs_diff(graph(*held_out), model(*held_out))
    with progress.step(f"writing dumps to {out}"):
        paths = dexport.dump_ir(graph, out)
    n_nodes = len(graph)
    print(f"captured {n_nodes} nodes, {len(graph.params)} parameters; "
          f"IR interpreter vs eager on a held-out {other_size}x{other_size} image: max abs diff {err:.2e}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    print(f"  per-pass dumps: {out / 'passes'}")
    return 0 if err <= args.atol else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dexport", description=(
        "Export PyTorch detection and segmentation models through dexport's IR."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    z = sub.add_parser("zoo", help="list the built-in reference models")
    z.set_defaults(func=cmd_zoo)

    d = sub.add_parser("dump", help="capture a model, run passes, and dump its IR (text, DOT, SVG)",
                       description="Capture MODEL by tracing on a synthetic image, run a pass pipeline "
                                   "with per-pass IR dumps, check the IR interpreter against eager "
                                   "PyTorch on a held-out image of another size, and write "
                                   "graph.ir / graph.dot / graph.svg.")
    d.add_argument("--model", required=True, help="zoo:NAME (see `dexport zoo`) or package.module:factory")
    d.add_argument("--output", required=True, help="directory for the dumps")
    d.add_argument("--size", type=int, default=128, help="capture image size in pixels (default 128)")
    d.add_argument("--pipeline", default="canonicalize,cse,dce",
                   help="pass pipeline (default: canonicalize,cse,dce)")
    d.add_argument("--atol", type=float, default=1e-4, help="max abs diff accepted vs eager (default 1e-4)")
    d.set_defaults(func=cmd_dump)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
