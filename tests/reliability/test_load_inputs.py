"""`dexport.load(dir)(inputs)` on every kind of input a careless caller passes: each row
either gives what the eager zoo model gives (on the same input, or on the input the
row names as eager's equivalent) or raises a DexportError naming what is expected."""
import numpy as np
import pytest
import torch

import dexport
from dexport.ir import DexportError
from dexport.models import zoo
from dexport.models.data import ShapesDataset
from dexport.verification import compare_outputs


def image(size=64, seed=0) -> torch.Tensor:
    return ShapesDataset("val", num_images=1, seed=seed, image_size=size)[0]["image"]


IMG = image()
EAGER = "same as eager"


def same(reference=None):
    """Expected: eager's outputs on ``reference`` (default: the row's own inputs)."""
    return (EAGER, reference)


def error(pattern: str):
    return ("DexportError", pattern)


# (name, inputs, expected)
ROWS = [
    ("float32", lambda: [{"image": IMG}], same()),
    ("uint8", lambda: [{"image": IMG.round().to(torch.uint8)}], same()),
    ("int32", lambda: [{"image": IMG.to(torch.int32)}], same()),
    ("int64", lambda: [{"image": IMG.to(torch.int64)}], same()),
    ("float16", lambda: [{"image": IMG.half()}], same()),
    ("float64", lambda: [{"image": IMG.double()}], same(lambda: [{"image": IMG.double().float()}])),
    ("bool", lambda: [{"image": IMG > 128}], error(r"dtype torch.bool")),
    ("complex", lambda: [{"image": IMG.to(torch.complex64)}], error(r"dtype torch.complex64")),
    ("1 channel", lambda: [{"image": IMG[:1]}], same()),
    ("1 channel next to 3", lambda: [{"image": IMG[:1]}, {"image": image(64, 1)}],
     same(lambda: [{"image": IMG[:1].expand(3, -1, -1)}, {"image": image(64, 1)}])),
    ("2-D", lambda: [{"image": IMG[0]}], error(r"shape \(64, 64\); expected \(3, H, W\)(.|\n)*image\[None\]")),
    ("4-D", lambda: [{"image": IMG[None]}], error(r"expected \(3, H, W\)(.|\n)*one dict per image")),
    ("4 channels", lambda: [{"image": torch.cat([IMG, IMG[:1]])}], error(r"4 channels(.|\n)*3-channel")),
    ("HWC", lambda: [{"image": IMG.permute(1, 2, 0).contiguous()}], error(r"64 channels(.|\n)*permute\(2, 0, 1\)")),
    ("zero height", lambda: [{"image": torch.zeros(3, 0, 64)}], error(r"empty image")),
    ("zero width", lambda: [{"image": torch.zeros(3, 64, 0)}], error(r"empty image")),
    ("non-contiguous", lambda: [{"image": IMG.flip(0)}], same()),
    ("requires grad", lambda: [{"image": IMG.clone().requires_grad_()}], same()),
    ("extra keys", lambda: [{"image": IMG, "file_name": "a.png", "image_id": 3}], same()),
    ("two sizes", lambda: [{"image": IMG}, {"image": image(96, 2)[:, :80]}], same()),
    ("tuple of dicts", lambda: ({"image": IMG},), same(lambda: [{"image": IMG}])),
    ("height and width", lambda: [{"image": IMG, "height": 80, "width": 100}], same()),
    ("height as 0-d tensor", lambda: [{"image": IMG, "height": torch.tensor(80)}],
     same(lambda: [{"image": IMG, "height": 80}])),
    ("height as numpy int", lambda: [{"image": IMG, "height": np.int64(80)}],
     same(lambda: [{"image": IMG, "height": 80}])),
    ("negative height", lambda: [{"image": IMG, "height": -5}], error(r"\['height'\] is -5(.|\n)*positive")),
    ("zero width size", lambda: [{"image": IMG, "width": 0}], error(r"\['width'\] is 0(.|\n)*positive")),
    ("float height", lambda: [{"image": IMG, "height": 50.5}], error(r"50.5, not an integer")),
    ("string height", lambda: [{"image": IMG, "height": "50"}], error(r"'50', not an integer")),
    ("bool height", lambda: [{"image": IMG, "height": True}], error(r"True, not an integer")),
    ("float tensor height", lambda: [{"image": IMG, "height": torch.tensor(50.0)}], error(r"not an integer")),
    ("missing image key", lambda: [{"img": IMG}], error(r"item 0 has no 'image' key \(keys: \['img'\]\)")),
    ("tensor instead of list", lambda: IMG, error(r"got a tensor of shape \(3, 64, 64\)(.|\n)*\"image\": x")),
    ("batch tensor", lambda: IMG[None], error(r"got a tensor of shape \(1, 3, 64, 64\)")),
    ("one dict", lambda: {"image": IMG}, error(r"got one dict(.|\n)*\[inputs\]")),
    ("empty list", lambda: [], error(r"empty list")),
    ("None", lambda: None, error(r"got NoneType")),
    ("list of tensors", lambda: [IMG], error(r"item 0 is a Tensor, not a dict")),
    ("numpy image", lambda: [{"image": IMG.numpy()}], error(r"numpy array(.|\n)*torch.from_numpy")),
    ("list image", lambda: [{"image": IMG.tolist()}], error(r"is a list, not a tensor")),
]


@pytest.fixture(scope="module")
def loaded(mask_rcnn_artifact):
    return dexport.load(mask_rcnn_artifact)


@pytest.fixture(scope="module")
def eager():
    return zoo.get("mask_rcnn_tiny")


@pytest.mark.parametrize("name, inputs, expected", ROWS, ids=[r[0] for r in ROWS])
def test_load_input_table(loaded, eager, name, inputs, expected):
    kind, detail = expected
    if kind == EAGER:
        with torch.no_grad():
            want = eager((detail or inputs)())
        got = loaded(inputs())
        report = compare_outputs(want, got)
        assert report.ok, report.format_table()
        assert len(want) == len(got) and sum(len(o["instances"]) for o in got) > 0
    else:
        with pytest.raises(DexportError, match=detail) as err:
            loaded(inputs())
        assert "what to do:" in str(err.value)


def test_the_table_covers_what_eager_refuses(eager):
    """Rows expected to raise are inputs eager cannot run either, or runs by accident to a
    meaningless result: a 2-D image broadcast into a batch of one, ``height=True`` read as
    1, ``width=0`` giving an empty canvas."""
    accidents = ("2-D", "zero width size", "bool height")
    for name, inputs, (kind, _) in ROWS:
        if kind != EAGER and name not in accidents:
            with pytest.raises(Exception), torch.no_grad():
                eager(inputs())


X = torch.randn(1, 3, 16, 16)
STRUCTURED_ROWS = [
    ("the capture's input", lambda: (X,), same()),
    ("other height and width", lambda: (torch.randn(2, 3, 20, 24),), same()),
    ("float64", lambda: (X.double(),), error(r"dtype torch.float64, the exported graph takes torch.float32")),
    ("int64", lambda: (X.long(),), error(r"dtype torch.int64(.|\n)*x.to\(torch.float32\)")),
    ("rank 3", lambda: (X[0],), error(r"shape \(3, 16, 16\), the exported graph takes \['\?', '\?', '\?', '\?'\]")),
    ("a list around it", lambda: ([X],), error(r"inputs\[0\]: expected a tensor, got list(.|\n)*same structure")),
    ("no argument", lambda: (), error(r"expected a tuple of 1 items, got 0")),
    ("two arguments", lambda: (X, X), error(r"expected a tuple of 1 items, got 2")),
    ("a numpy array", lambda: (X.numpy(),), error(r"expected a tensor, got ndarray")),
]


@pytest.mark.parametrize("name, inputs, expected", STRUCTURED_ROWS, ids=[r[0] for r in STRUCTURED_ROWS])
def test_structured_input_table(structured_artifact, name, inputs, expected):
    from tests.reliability.factories import structured
    model = structured()[0]
    loaded = dexport.load(structured_artifact)
    kind, detail = expected
    if kind == EAGER:
        args = inputs()
        with torch.no_grad():
            torch.testing.assert_close(loaded(*args), model(*args), rtol=1e-4, atol=1e-4)
    else:
        with pytest.raises(DexportError, match=detail) as err:
            loaded(*inputs())
        assert "what to do:" in str(err.value)
