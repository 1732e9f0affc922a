"""examples/cpp: the C++ `detect` program, built with CMake against the torch wheel's
libtorch, gives the same detections on PPM images as Python does on the same pixels.

The build is cached in pytest's cache folder (keyed by the cmake binary and torch's
version and location), so only the first run pays for it (about 15 s on 2 cores).
Without cmake or a C++ compiler the test skips, except in CI (``CI=true``), where it
fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch


# torch 2.9+ deprecates torch.jit; the example runs what it saves all the same
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.:DeprecationWarning")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp"


def _tool(*names: str) -> str | None:
    """The first of ``names`` on PATH, looking next to this python first (``pip install
    cmake`` puts it there, and a venv's bin need not be on PATH)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return next((found for name in names if (found := shutil.which(name, path=path))), None)


def _missing(what: str):
    message = f"the C++ example needs {what}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}: install it on the CI machine (`pip install cmake`; apt-get install g++)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def detect_binary(request, tmp_path_factory) -> Path:
    """examples/cpp built in Release mode (`cmake --build -j 2`), once per torch install."""
    cmake = _tool("cmake")
    if cmake is None:
        _missing("cmake")
    if not (os.environ.get("CXX") or _tool("c++", "g++", "clang++")):
        _missing("a C++ compiler (g++ or clang++)")
    import torch.utils
    key = hashlib.sha256(f"{cmake} {torch.__version__} {torch.utils.cmake_prefix_path}".encode()).hexdigest()[:12]
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    build = Path(cache.mkdir(f"cpp-example-{key}")) if cache else tmp_path_factory.mktemp("cpp-example")
    for command in ([cmake, "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                    [cmake, "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return build / "detect"


class CallsPythonOp(torch.nn.Module):
    """Scripts, but calls dexport::nms, an op registered from Python."""

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor,
                output_sizes: torch.Tensor) -> Dict[str, torch.Tensor]:
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
        keep = torch.ops.dexport.nms(boxes, torch.ones(1), 0.5)
        return {"boxes": boxes[keep], "scores": torch.ones(1)[keep], "classes": keep,
                "counts": torch.tensor([keep.shape[0]])}


Reference = Callable[[list[torch.Tensor]], list[dict]]


def detector_artifact(directory: Path) -> tuple[Path, Reference]:
    """The model.pt that `detect` runs (`dexport export --format torchscript` of
    zoo:mask_rcnn_tiny) and `dexport.load`'s results on the same images (one dict of
    boxes, scores, classes per image)."""
    import dexport
    from dexport.cli import main
    out = directory / "mask_rcnn_tiny"
    assert main(["export", "--format", "torchscript", "--model", "zoo:mask_rcnn_tiny", "--output", str(out),
                 "--size", "64"]) == 0
    loaded = dexport.load(out)

    def reference(images):
        results = loaded([{"image": image} for image in images])
        return [{"boxes": r["instances"].pred_boxes.tensor, "scores": r["instances"].scores,
                 "classes": r["instances"].pred_classes} for r in results]
    return out / "model.pt", reference


def write_ppm(path: Path, rgb: np.ndarray, header: bytes | None = None) -> None:
    """uint8 H×W×3 RGB as binary PPM; ``header`` replaces the plain one."""
    h, w, _ = rgb.shape
    path.write_bytes((header or f"P6\n{w} {h}\n255\n".encode()) + rgb.tobytes())


def zoo_pixels(bgr: torch.Tensor) -> np.ndarray:
    """A zoo image (f32[3,H,W] BGR 0..255) as the uint8 RGB pixels a PPM holds."""
    return bgr.round().clamp(0, 255).to(torch.uint8).flip(0).permute(1, 2, 0).contiguous().numpy()


def run_detect(binary: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_detect_matches_python(detect_binary, tmp_path):
    from dexport.cli import sample_images
    model_file, reference = detector_artifact(tmp_path)
    shapes = [image["image"] for image in sample_images(2, 96, seed=21)]
    pixels = [zoo_pixels(shapes[0])[:72],                                   # 72x96: taller canvas from the other
              zoo_pixels(torch.nn.functional.interpolate(shapes[1][None], size=(88, 60))[0]),
              np.zeros((40, 56, 3), np.uint8)]                              # black
    files = []
    for k, rgb in enumerate(pixels):
        files.append(tmp_path / f"image{k}.ppm")
        write_ppm(files[-1], rgb, header=f"P6 # made by the test\n{rgb.shape[1]}\n  {rgb.shape[0]}\t255\r".encode()
                  if k == 1 else None)  # comments and odd whitespace are allowed
    done = run_detect(detect_binary, model_file, *files)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)

    # Python's input: the same pixels, in the zoo's BGR channel order.
    expected = reference([torch.from_numpy(rgb).permute(2, 0, 1).flip(0).float() for rgb in pixels])
    assert [item["image"] for item in printed] == list(range(len(pixels)))
    assert sum(len(item["detections"]) for item in printed) > 0
    for item, want in zip(printed, expected):
        got = item["detections"]
        assert len(got) == len(want["scores"])
        if not got:
            continue
        torch.testing.assert_close(torch.tensor([d["box"] for d in got]), want["boxes"].double(),
                                   atol=1e-4, rtol=0, check_dtype=False)
        torch.testing.assert_close(torch.tensor([d["score"] for d in got]), want["scores"].double(),
                                   atol=1e-4, rtol=0, check_dtype=False)
        assert [d["class"] for d in got] == want["classes"].tolist()


@pytest.mark.parametrize("content, message", [
    (b"", "does not start with the magic number P6"),
    (b"P3\n2 2\n255\n0 0 0", "ASCII PPM (P3)"),
    (b"P5\n2 2\n255\n" + bytes(4), "magic number P5"),
    (b"P6\n2 # two\n2\n65535\n" + bytes(24), "maxval is 65535"),
    (b"P6\n2 x\n255\n", "expected the height (a decimal number), found 'x'"),
    (b"P6\n2 2\n255\n" + bytes(11), "needs 12 bytes, the file has 11"),
    (b"P6\n0 2\n255\n", "the image is empty (0x2)"),
    (b"P6\n2 2", "the header ends before the maxval"),
])
def test_detect_refuses_bad_ppm(detect_binary, tmp_path, content, message):
    bad = tmp_path / "bad.ppm"
    bad.write_bytes(content)
    # images are read before the model, so no model file is needed to get this error
    done = run_detect(detect_binary, tmp_path / "absent.pt", bad)
    assert done.returncode == 2 and done.stdout == ""
    assert f"error: {bad}: not a valid binary PPM (P6) file: " in done.stderr and message in done.stderr


def test_detect_reports_usage_and_unloadable_model(detect_binary, tmp_path):
    done = run_detect(detect_binary)
    assert done.returncode == 2 and "usage:" in done.stderr
    image = tmp_path / "image.ppm"
    write_ppm(image, np.full((4, 5, 3), 7, np.uint8))
    assert "cannot open the file" in run_detect(detect_binary, "model.pt", tmp_path / "absent.ppm").stderr
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"not a zip archive")
    done = run_detect(detect_binary, not_a_model, image)
    assert done.returncode == 1 and f"{not_a_model}: cannot load the TorchScript model" in done.stderr


def test_detect_names_ops_libtorch_lacks(detect_binary, tmp_path):
    import dexport.ir.dialects.dexport  # noqa: F401  registers dexport::nms for scripting
    path = tmp_path / "python_op.pt"
    torch.jit.save(torch.jit.script(CallsPythonOp()), str(path))
    image = tmp_path / "image.ppm"
    write_ppm(image, np.full((4, 5, 3), 7, np.uint8))
    done = run_detect(detect_binary, path, image)
    assert done.returncode == 1 and "Unknown builtin op: dexport::nms" in done.stderr
    assert "an op that libtorch alone does not have" in done.stderr


def test_a_missing_build_tool_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="example needs cmake: install it on the CI machine"):
        _missing("cmake")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs cmake"):
        _missing("cmake")
