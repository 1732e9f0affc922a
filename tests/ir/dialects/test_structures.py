"""Boxes / Instances / ImageList: behaviour, edge cases, and resolution-generic tracing."""

import pytest
import torch

from dexport.ir.dialects.structures import Boxes, ImageList, Instances, pairwise_iou


def _boxes(rows):
    return Boxes(torch.tensor(rows, dtype=torch.float32))


# --------------------------------------------------------------------------- Boxes


def test_boxes_shape_and_empty():
    assert Boxes([]).tensor.shape == (0, 4)
    assert Boxes(torch.zeros(0, 4)).tensor.shape == (0, 4)
    assert Boxes(torch.tensor([[1, 2, 3, 4]])).tensor.dtype == torch.float32
    assert len(Boxes([])) == 0
    with pytest.raises(ValueError, match="N×4"):
        Boxes(torch.zeros(3, 5))


def test_boxes_indexing_keeps_two_dims():
    b = _boxes([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]])
    assert b[1].tensor.tolist() == [[0, 0, 2, 2]]
    assert b[-1].tensor.tolist() == [[0, 0, 3, 3]]
    assert b[1:].tensor.shape == (2, 4)
    assert b[torch.tensor([True, False, True])].tensor[:, 2].tolist() == [1, 3]
    assert b[torch.tensor([2, 0])].tensor[:, 2].tolist() == [3, 1]
    assert b[torch.zeros(3, dtype=torch.bool)].tensor.shape == (0, 4)


def test_boxes_area_nonempty_scale_centers():
    b = _boxes([[0, 0, 2, 3], [5, 5, 5, 9], [1, 1, 1.5, 4]])
    assert b.area().tolist() == [6, 0, 1.5]
    assert b.nonempty().tolist() == [True, False, True]
    assert b.nonempty(threshold=0.5).tolist() == [True, False, False]
    assert b.get_centers()[0].tolist() == [1, 1.5]
    b.scale(2.0, 10.0)
    assert b.tensor[0].tolist() == [0, 0, 4, 30]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_boxes_clip_in_place(as_tensor):
    b = _boxes([[-5, -5, 50, 50], [10, 20, 30, 40], [200, 200, 300, 300]])
    size = (torch.tensor(25), torch.tensor(35)) if as_tensor else (25, 35)
    assert b.clip(size) is None
    assert b.tensor.tolist() == [[0, 0, 35, 25], [10, 20, 30, 25], [35, 25, 35, 25]]
    assert b.nonempty().tolist() == [True, True, False]


def test_boxes_cat_to_device_clone():
    a, c = _boxes([[0, 0, 1, 1]]), _boxes([[1, 1, 2, 2], [2, 2, 3, 3]])
    cat = Boxes.cat([a, c])
    assert len(cat) == 3 and cat.tensor[2, 0] == 2
    assert Boxes.cat([]).tensor.shape == (0, 4)
    assert cat.to("cpu").device == torch.device("cpu")
    clone = cat.clone()
    clone.tensor[0, 0] = 7
    assert cat.tensor[0, 0] == 0


def _iou_reference(a, b):
    out = torch.zeros(len(a), len(b))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union if inter > 0 else 0.0
    return out


def test_pairwise_iou_matches_reference_and_degenerate_cases():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=g) * 20
    a = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 10], dim=1)
    a[3, 2] = a[3, 0]  # zero width
    xy = torch.rand(5, 2, generator=g) * 20
    b = torch.cat([xy, xy + torch.rand(5, 2, generator=g) * 10], dim=1)
    iou = pairwise_iou(Boxes(a), Boxes(b))
    assert iou.shape == (7, 5)
    torch.testing.assert_close(iou, _iou_reference(a, b))
    assert iou[3].eq(0).all()
    same = _boxes([[0, 0, 2, 2], [1, 1, 1, 1]])
    assert pairwise_iou(same, same).tolist() == [[1, 0], [0, 0]]
    assert pairwise_iou(Boxes([]), same).shape == (0, 2)


# --------------------------------------------------------------------------- Instances


def _instances():
    return Instances(
        (10, 20),
        pred_boxes=_boxes([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3]]),
        scores=torch.tensor([0.9, 0.5, 0.7]),
        names=["a", "b", "c"],
    )


def test_instances_fields_and_attribute_access():
    inst = _instances()
    assert inst.image_size == (10, 20)
    assert len(inst) == 3
    assert list(inst.fields) == ["pred_boxes", "scores", "names"]
    assert inst.get("scores") is inst.scores
    inst.pred_classes = torch.tensor([1, 2, 3])
    assert inst.has("pred_classes") and list(inst.fields)[-1] == "pred_classes"
    inst.remove("names")
    assert not inst.has("names")
    with pytest.raises(AttributeError, match="no field 'names'"):
        inst.names
    with pytest.raises(ValueError, match="length 2"):
        inst.set("bad", torch.zeros(2))
    inst.scores = torch.zeros(3)  # replacing a field with the same length is fine
    assert "num_instances=3" in repr(inst)


def test_instances_single_field_may_change_length():
    inst = Instances((4, 4), scores=torch.zeros(3))
    inst.scores = torch.zeros(5)
    assert len(inst) == 5


def test_instances_indexing():
    inst = _instances()
    one = inst[1]
    assert len(one) == 1 and one.scores.tolist() == [0.5] and one.names == ["b"]
    assert inst[-1].names == ["c"]
    with pytest.raises(IndexError):
        inst[3]
    masked = inst[inst.scores > 0.6]
    assert masked.names == ["a", "c"] and masked.pred_boxes.tensor[:, 2].tolist() == [1, 3]
    picked = inst[torch.tensor([2, 0])]
    assert picked.names == ["c", "a"] and picked.scores.tolist() == pytest.approx([0.7, 0.9])
    assert inst[1:].scores.shape == (2,)
    empty = inst[torch.zeros(3, dtype=torch.bool)]
    assert len(empty) == 0 and empty.pred_boxes.tensor.shape == (0, 4)
    assert empty.image_size == (10, 20)


def test_instances_cat_and_to():
    inst = _instances()
    cat = Instances.cat([inst, inst[:1]])
    assert len(cat) == 4
    assert cat.names == ["a", "b", "c", "a"]
    assert cat.pred_boxes.tensor.shape == (4, 4)
    with pytest.raises(ValueError, match="fields differ"):
        Instances.cat([inst, Instances((10, 20), scores=torch.zeros(1))])
    moved = inst.to("cpu")
    assert moved.scores.device.type == "cpu" and moved.names == inst.names


# --------------------------------------------------------------------------- ImageList


def test_imagelist_pads_and_rounds_up():
    a = torch.ones(3, 5, 7)
    b = torch.full((3, 9, 4), 2.0)
    il = ImageList.from_tensors([a, b], size_divisibility=8, pad_value=-1.0)
    assert il.tensor.shape == (2, 3, 16, 8)
    assert il.image_sizes == [(5, 7), (9, 4)]
    assert len(il) == 2
    assert torch.equal(il[0], a) and torch.equal(il[1], b)
    assert il.tensor[0, :, 5:].eq(-1).all() and il.tensor[1, :, :, 4:].eq(-1).all()
    plain = ImageList.from_tensors([a])
    assert plain.tensor.shape == (1, 3, 5, 7)
    with pytest.raises(ValueError, match="leading dims"):
        ImageList.from_tensors([a, torch.ones(1, 5, 7)])


def _traced_pipeline(x, y):
    """A little detector-like flow: batch images, boxes clipped to the first image's
    size, Instances filtered by score, the second image unpadded."""
    images = ImageList.from_tensors([x, y], size_divisibility=16)
    h, w = images.image_sizes[0]
    boxes = Boxes(x[0, :4, :4] * 100)  # mostly beyond the image: clipping matters
    boxes.clip(images.image_sizes[0])
    inst = Instances((h, w), pred_boxes=boxes, scores=x[1, :4, 0])
    inst = inst[inst.scores > 0.5]
    return images.tensor, inst.pred_boxes.tensor, images[1]


def test_structures_trace_generalizes_to_other_resolutions():
    g = torch.Generator().manual_seed(1)
    traced = torch.jit.trace(
        _traced_pipeline,
        (torch.rand(3, 20, 30, generator=g), torch.rand(3, 40, 10, generator=g)),
        check_trace=False,
    )
    other = (torch.rand(3, 33, 17, generator=g), torch.rand(3, 12, 50, generator=g))
    for got, want in zip(traced(*other), _traced_pipeline(*other)):
        assert got.shape == want.shape
        assert torch.equal(got, want)
    assert traced(*other)[0].shape == (2, 3, 48, 64)
