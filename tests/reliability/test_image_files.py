"""`--image-dir` files are data, never code: a pickled payload in a `.pt` image is refused
without running, and a file that is not a [3, H, W] array is a DexportError."""
import pickle

import numpy as np
import pytest
import torch

from dexport.inputs import read_image_file
from dexport.ir import DexportError


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file when unpickled


def test_a_pickle_payload_is_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"image": torch.zeros(3, 4, 4), "x": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(DexportError, match="not a readable image array"):
        read_image_file(tmp_path / "evil.pt")
    assert not marker.exists()
    with open(tmp_path / "evil.npy", "wb") as f:
        np.save(f, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(DexportError, match="not a readable image array"):
        read_image_file(tmp_path / "evil.npy")
    assert not marker.exists()


def test_plain_images_load_and_others_are_refused(tmp_path):
    torch.save(torch.full((3, 5, 6), 7, dtype=torch.uint8), tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", np.ones((3, 2, 2), dtype=np.float64))
    assert read_image_file(tmp_path / "a.pt").dtype == torch.float32
    assert read_image_file(tmp_path / "b.npy").shape == (3, 2, 2)
    torch.save({"image": torch.zeros(3, 4, 4)}, tmp_path / "dict.pt")
    torch.save(torch.zeros(4, 4), tmp_path / "flat.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps(3)[:2])
    for name, message in (("dict.pt", "got dict"), ("flat.pt", r"got shape \(4, 4\)"), ("junk.pt", "not a readable")):
        with pytest.raises(DexportError, match=message):
            read_image_file(tmp_path / name)
