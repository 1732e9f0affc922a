"""Detection-aware verification: detections matched by IoU per image (robust to tie
swaps), perturbations caught and named with their image, deterministic json,
`dexport verify` / `--run-eval` on a tiny artifact, AP and PQ of eager vs exported."""
import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch

from dexport.cli import main
from dexport.models import zoo
from dexport.models.data import ShapesDataset, to_coco_json
from dexport.models.evaluation import evaluate
from dexport.ir.dialects.structures import Boxes, Instances
from dexport.verification import (CocoFolder, Tolerances, compare_ap, match_detections, verify)


def instances(boxes, scores, classes, size=(100, 100), **extra) -> Instances:
    return Instances(size, pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                     scores=torch.tensor(scores), pred_classes=torch.tensor(classes), **extra)


def replay(outputs_per_call):
    """A stand-in 'exported model' returning fixed outputs, one per call."""
    it = iter(outputs_per_call)
    return lambda *inputs: next(it)


BOXES = [[10, 10, 40, 40], [50, 50, 90, 80], [5, 60, 30, 95]]


def test_swapped_ties_still_match():
    eager = instances(BOXES, [0.9, 0.7, 0.7], [0, 1, 1])
    # the two detections scoring 0.7 (tied within float error) come out the other way round
    swapped = instances([BOXES[0], BOXES[2], BOXES[1]], [0.9, 0.7 + 1e-8, 0.7], [0, 1, 1])
    assert match_detections(eager, swapped) == [(0, 0), (1, 2), (2, 1)]
    report = verify(replay([[{"instances": eager}]]), replay([[{"instances": swapped}]]), [()])
    assert report.ok and report.rows[0]["matched"] == 3 and report.rows[0]["box_error_px"] == 0


def test_matching_needs_same_class_and_overlap():
    eager = instances(BOXES[:2], [0.9, 0.8], [0, 1])
    other = instances([BOXES[0], [60, 10, 95, 30]], [0.9, 0.8], [2, 1])
    assert match_detections(eager, other) == []


@pytest.fixture(scope="module")
def eager_run():
    """mask_rcnn_tiny (trained) on two held-out images: real detections to perturb."""
    model = zoo.get("mask_rcnn_tiny")
    data = ShapesDataset("val", num_images=2, seed=77, image_size=96)
    inputs = ([{"image": data[i]["image"]} for i in range(2)],)
    with torch.no_grad():
        out = model(*inputs)
    assert all(len(o["instances"]) >= 2 for o in out)
    return model, inputs, out


def perturbed(out, image, edit):
    out = copy.deepcopy(out)
    out[image]["instances"] = edit(out[image]["instances"])
    return out


def shift_box(inst):
    inst.pred_boxes.tensor[1, 0] += 2.0
    return inst


def drop_last(inst):
    return inst[: len(inst) - 1]


def flip_mask_pixels(inst):
    mask = inst.pred_masks[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    mask[ys[: len(ys) // 4], xs[: len(xs) // 4]] = False
    return inst


@pytest.mark.parametrize("edit,image,figure", [(shift_box, 1, "box_error_rel"), (drop_last, 0, "detections"),
                                               (flip_mask_pixels, 1, "mask_iou")])
def test_perturbed_output_is_caught_and_named(eager_run, edit, image, figure):
    model, inputs, out = eager_run
    assert verify(model, replay([out]), [inputs]).ok
    report = verify(model, replay([perturbed(out, image, edit)]), [inputs])
    assert not report.ok
    assert [r["ok"] for r in report.rows] == [image != 0, image != 1]
    assert report.worst()[0].startswith(f"image {image} (96x96, input 0): {figure}")
    assert f"image {image}" in report.format_table() and "FAIL" in report.format_table()


def test_tolerances_are_overridable(eager_run):
    model, inputs, out = eager_run
    report = verify(model, replay([perturbed(out, 1, shift_box)]), [inputs], box=0.05)
    assert report.ok and report.tolerances == Tolerances(box=0.05)


def test_keypoints_semantic_and_panoptic_figures():
    kps = torch.tensor([[[20.0, 20.0, 1.0], [30.0, 35.0, 1.0]]])
    seg = torch.tensor([[1, 1, 2], [0, 2, 2]], dtype=torch.int32)
    info = {"id": torch.tensor([1, 2]), "category_id": torch.tensor([0, 1]), "isthing": torch.tensor([True, False])}
    logits = torch.zeros(3, 2, 3)
    logits[1, 0] = 1.0
    eager = {"instances": instances([BOXES[0]], [0.9], [0], size=(2, 3), pred_keypoints=kps),
             "sem_seg": logits, "panoptic_seg": (seg, info)}
    same = verify(replay([[eager]]), replay([[copy.deepcopy(eager)]]), [()])
    assert same.ok and same.rows[0]["sem_seg_agreement"] == 1.0 and same.rows[0]["panoptic_agreement"] == 1.0

    moved = copy.deepcopy(eager)
    moved["instances"].pred_keypoints[0, 1, :2] += torch.tensor([0.6, 0.8])  # 1 px away
    moved["sem_seg"][2, 1, 1] = 5.0  # one of six pixels changes its argmax
    moved["panoptic_seg"][0][0, 2] = 1  # one pixel becomes the thing segment
    row = verify(replay([[eager]]), replay([[moved]]), [()]).rows[0]
    assert row["keypoint_error_px"] == pytest.approx(1.0)
    assert row["sem_seg_agreement"] == pytest.approx(5 / 6) and row["panoptic_agreement"] == pytest.approx(5 / 6)
    assert [f.split()[0] for f in row["failures"]] == ["keypoint_error_px", "sem_seg_agreement",
                                                       "panoptic_agreement"]


def test_other_models_get_raw_figures():
    x = torch.tensor([[1.0, -2.0], [4.0, 0.5]])
    good = verify(lambda t: {"y": t * 2}, lambda t: {"y": t * 2 + 2.0 ** -20}, [(x,)])
    assert good.kind == "raw" and good.ok and good.rows[0]["raw_max_abs"] == 2.0 ** -20
    bad = verify(lambda t: {"y": t * 2}, lambda t: {"y": t[:1] * 2}, [(x,), (x,)])
    assert not bad.ok and math.isinf(bad.rows[1]["raw_max_abs"])
    assert bad.worst()[0].startswith("input 0: raw_max_abs inf")
    assert json.loads(bad.to_json())["rows"][0]["raw_max_abs"] == "inf"


def test_json_is_deterministic(eager_run):
    model, inputs, out = eager_run
    texts = [verify(model, replay([perturbed(out, 1, shift_box)]), [inputs]).to_json() for _ in range(2)]
    assert texts[0] == texts[1]
    doc = json.loads(texts[0])
    assert doc["ok"] is False and doc["worst"][0].startswith("image 1") and "severity" not in doc["rows"][0]
    assert doc["extremes"]["box_error_rel"]["index"] == 1


def test_export_records_model_and_verification(mask_rcnn_artifact):
    manifest = json.loads((mask_rcnn_artifact / "manifest.json").read_text())
    assert manifest["model"] == "zoo:mask_rcnn_tiny"
    assert manifest["verification"]["ok"] and manifest["verification"]["kind"] == "detection"


def test_cli_verify_passes_and_fails_with_exit_codes(mask_rcnn_artifact, tmp_path, capsys):
    report = tmp_path / "report.json"
    args = ["verify", str(mask_rcnn_artifact), "--images", "3", "--sizes", "80", "--batch", "1,2"]
    assert main(args + ["--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "3/3 images match eager" in out and "mask IoU" in out
    doc = json.loads(report.read_text())
    assert doc["ok"] and [r["input"] for r in doc["rows"]] == [0, 1, 1]
    assert main(args + ["--score-tol", "1e-12"]) == 1  # float noise exceeds it (1.01 is now refused)
    assert "FAIL" in capsys.readouterr().out
    assert main(args + ["--sizes", "80,x"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_cli_verify_run_eval_prints_both_aps(mask_rcnn_artifact, capsys):
    assert main(["verify", str(mask_rcnn_artifact), "--images", "1", "--sizes", "64", "--run-eval",
                 "--eval-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "COCO AP on shapes val (4 images, 128px), eager vs exported" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("bbox", "segm"))]
    assert [r[:2] for r in rows if r[1] == "AP"] == [["bbox", "AP"], ["segm", "AP"]]
    assert all(float(r[2]) > 0 and abs(float(r[4])) <= 0.1 for r in rows)


def test_coco_folder_scores_like_the_shapes_split(tmp_path):
    model = zoo.get("retinanet_tiny")
    data = ShapesDataset("val", num_images=3, seed=5, image_size=96)
    to_coco_json(data, tmp_path / "val.json")
    for i in range(3):
        np.save(tmp_path / f"val_{i:06d}.png.npy", data[i]["image"].numpy())
    table = compare_ap(model, model, CocoFolder(tmp_path / "val.json", tmp_path))
    assert table["bbox"]["AP"]["diff"] == 0
    assert table["bbox"]["AP"]["eager"] == pytest.approx(evaluate(model, data)["bbox"]["AP"])


@pytest.fixture(scope="module")
def panoptic_pair(tmp_path_factory):
    """The trained panoptic_fpn_tiny and its exported ONNX artifact."""
    import dexport
    model = zoo.get("panoptic_fpn_tiny").eval()
    data = ShapesDataset("val", num_images=1, seed=3, image_size=96)
    out = tmp_path_factory.mktemp("panoptic") / "art"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings from torch's own code
        dexport.export(model, ([{"image": data[0]["image"]}],), out)
    return model, dexport.load(out)


def test_compare_ap_reports_pq_of_panoptic_export(panoptic_pair, capsys):
    import argparse

    from dexport.cli import _run_eval
    model, loaded = panoptic_pair
    data = ShapesDataset("val", num_images=8)
    table = compare_ap(model, loaded, data)
    assert list(table) == ["bbox", "segm", "panoptic"]
    assert list(table["panoptic"]) == ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"]
    assert table["panoptic"]["PQ_th"]["eager"] > 50 and table["panoptic"]["PQ_st"]["eager"] > 50
    # 0 on these images; a mask pixel at the 0.5 threshold may flip with another runtime
    assert all(abs(v["diff"]) < 0.01 for v in table["panoptic"].values()), table["panoptic"]

    args = argparse.Namespace(coco_json=None, image_dir=None, eval_images=4, eval_size=128,
                              model="zoo:panoptic_fpn_tiny", ap_tol=0.1)
    assert _run_eval(args, model, loaded)
    out = capsys.readouterr().out
    assert "COCO AP and PQ on shapes val (4 images, 128px), eager vs exported" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("panoptic")]
    assert [r[1] for r in rows] == ["PQ", "SQ", "RQ", "PQ_th", "PQ_st"]
    assert all(abs(float(r[4])) < 0.01 for r in rows)
    assert "AP and PQ difference within 0.1 -> ok" in out


def test_coco_folder_skips_pq_with_a_note(panoptic_pair, tmp_path):
    model, _ = panoptic_pair
    data = ShapesDataset("val", num_images=2, seed=5, image_size=96)
    to_coco_json(data, tmp_path / "val.json")
    for i in range(2):
        np.save(tmp_path / f"val_{i:06d}.png.npy", data[i]["image"].numpy())
    notes = []
    table = compare_ap(model, model, CocoFolder(tmp_path / "val.json", tmp_path), notes=notes)
    assert list(table) == ["bbox", "segm"]
    assert len(notes) == 1 and notes[0].startswith("PQ skipped:") and "\n" not in notes[0]
    with pytest.warns(UserWarning, match="PQ skipped"):
        compare_ap(model, model, CocoFolder(tmp_path / "val.json", tmp_path), iou_types=["bbox", "panoptic"])


# ---- tolerances ---------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [("box", math.nan), ("score", -1e-4), ("mask_iou", math.nan),
                                        ("mask_margin", -0.1), ("atol", "0.1"), ("match_iou", True)])
def test_nan_negative_or_non_number_tolerance_is_refused(name, value):
    from dexport.ir.errors import DexportError
    with pytest.raises(DexportError, match=f"tolerance {name}="):
        Tolerances(**{name: value})
    with pytest.raises(DexportError, match=f"tolerance {name}="):
        Tolerances().replace(**{name: value})


# ---- mask noise floor ---------------------------------------------------------------

@pytest.fixture(scope="module")
def undecided_masks():
    """mask_rcnn_tiny with its mask predictor scaled down 1e7 times: every mask logit is
    within 1e-6 of 0 (probability 0.5), as an untrained head's are, so the masks are
    float noise inside each box; boxes and scores are the trained model's."""
    model = zoo.get("mask_rcnn_tiny")
    with torch.no_grad():
        model.roi_heads.mask_head.predictor.weight.mul_(1e-7)
        model.roi_heads.mask_head.predictor.bias.zero_()
    data = ShapesDataset("val", num_images=1, seed=77, image_size=96)
    inputs = ([{"image": data[0]["image"]}],)
    with torch.no_grad():
        out = model(*inputs)
    assert len(out[0]["instances"]) >= 2 and out[0]["instances"].pred_masks.any()
    return model, inputs, out


def _edit_masks(out, edit):
    out = copy.deepcopy(out)
    edit(out[0]["instances"].pred_masks)
    return out


def test_mask_pixels_at_the_threshold_do_not_fail(undecided_masks):
    """Flipping every mask pixel inside the boxes (where the probability is 0.5 up to
    float noise) changes nothing certain: the check passes and says how much was left out."""
    model, inputs, out = undecided_masks
    inside = [b.round().long().tolist() for b in out[0]["instances"].pred_boxes.tensor]

    def flip_inside(masks):
        for m, (x0, y0, x1, y1) in zip(masks, inside):
            m[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = ~m[y0 + 1:y1 - 1, x0 + 1:x1 - 1]

    flipped = _edit_masks(out, flip_inside)
    report = verify(model, replay([flipped]), [inputs])
    assert report.ok, report.format_table()
    assert report.rows[0]["mask_at_threshold"] > 0.5
    assert "mask_iou 1.0000, mask_at_threshold " in report.summary()
    # Without the margin the same flips are a mask error.
    assert not verify(model, replay([flipped]), [inputs], mask_margin=0.0).ok


def test_mask_error_outside_the_threshold_band_still_fails(undecided_masks):
    """Pixels far outside every box have probability 0: setting them is a real error."""
    model, inputs, out = undecided_masks

    def paint_corner(masks):
        masks[:, :3, :3] = True

    report = verify(model, replay([_edit_masks(out, paint_corner)]), [inputs])
    assert not report.ok and report.worst()[0].startswith("image 0 (96x96, input 0): mask_iou")


def test_broken_mask_lowering_fails_verification(tmp_path, monkeypatch):
    """An ONNX paste_masks lowering that thresholds at 0.7 instead of 0.5 drops the mask
    pixels of probability 0.5-0.7 (the trained model's mask edges): far outside the
    threshold band, so the export's own verification fails on mask IoU."""
    import dexport
    from dexport.backends import onnx as onnx_backend
    correct = onnx_backend.LOWERINGS["dexport::paste_masks"]

    def threshold_07(ctx, node):
        const = ctx.const
        ctx.const = lambda n, i: 0.7 if n is node and i == 3 else const(n, i)
        try:
            return correct(ctx, node)
        finally:
            ctx.const = const
    monkeypatch.setitem(onnx_backend.LOWERINGS, "dexport::paste_masks", threshold_07)
    data = ShapesDataset("val", num_images=3, seed=5, image_size=80)
    example = ([{"image": data[0]["image"]}],)
    checks = [([{"image": data[1]["image"]}, {"image": data[2]["image"]}],)]
    result = dexport.export(zoo.get("mask_rcnn_tiny"), example, tmp_path / "art", check_inputs=checks)
    assert not result.verification.ok
    assert all(f.startswith("mask_iou") for r in result.verification.rows for f in r["failures"])


# ---- loading an artifact whose verification failed ----------------------------------

def test_load_warns_about_a_failed_recorded_verification(mask_rcnn_artifact, tmp_path):
    import shutil

    import dexport
    from dexport.ir.errors import DexportError, DexportWarning
    art = tmp_path / "art"
    shutil.copytree(mask_rcnn_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    report = manifest["verification"]
    report["rows"][1].update(ok=False, failures=["mask_iou 0.9000 < 0.9900"])
    report.update(ok=False, worst=["image 1 (160x160, input 0): mask_iou 0.9000 < 0.9900"])
    (art / "manifest.json").write_text(json.dumps(manifest))

    with pytest.warns(DexportWarning, match=r"mask_iou on 1 of 5 images\); worst: image 1 \(160x160"):
        loaded = dexport.load(art)
    assert loaded([{"image": torch.rand(3, 64, 64) * 255}])  # it still runs
    with pytest.raises(DexportError, match="verification at export failed.*strict=True refuses it"):
        dexport.load(art, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DexportWarning)
        dexport.load(mask_rcnn_artifact, strict=True)  # a verified artifact: not a word
    # `dexport verify` compares again, and the artifact itself is fine.
    with pytest.warns(DexportWarning):
        assert main(["verify", str(art), "--images", "1", "--sizes", "64"]) == 0
