"""COCO evaluation of any predictor with the zoo's I/O on the synthetic shapes dataset.

``evaluate`` only calls ``predictor(list_of_input_dicts)`` and reads the returned
``Instances``, so the same code scores an eager model and, later, an exported artifact.

CLI: ``python -m dexport.models.evaluation --model mask_rcnn_tiny [--weights PATH]
[--num-images N]`` prints AP / AP50 / AP75 per IoU type.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dexport.models.data import ShapesDataset, coco_dict, dataset_for_model

__all__ = ["KEYPOINT_OKS_SIGMAS", "evaluate", "format_table", "main"]

# OKS falloff per keypoint (apex, base_left, base_right). A triangle's vertices are sharp,
# unambiguous corners, so they get one shared value between COCO's facial points (~0.025)
# and its joints (~0.08): at sigma 0.05, on a triangle of 200 px area (20 px wide and high),
# a 1 px error scores OKS ≈ 0.78 and a 3 px error ≈ 0.1.
KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05)
IOU_TYPES = ("bbox", "segm", "keypoints")
_METRICS = ("AP", "AP50", "AP75")  # COCOeval.stats[0:3] for every IoU type


def evaluate(predictor, dataset: ShapesDataset, iou_types=None, *, batch_size: int = 1,
             verbose: bool = False) -> dict:
    """Run ``predictor`` over ``dataset`` and score it with pycocotools' COCOeval.

    Each call gets ``batch_size`` dicts ``{"image", "height", "width"}`` and must return
    one ``{"instances": Instances(pred_boxes, scores, pred_classes, [pred_masks],
    [pred_keypoints])}`` per image. ``iou_types`` defaults to "bbox" plus "segm" /
    "keypoints" when the predictions carry masks / keypoints. Returns
    ``{iou_type: {"AP", "AP50", "AP75"}}`` in percent; NaN where the dataset holds no
    ground truth for that type. COCOeval's printing is suppressed unless ``verbose``.
    """
    results: dict[str, list] = {t: [] for t in IOU_TYPES}
    predicted = set()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = range(start, min(start + batch_size, len(dataset)))
            inputs = []
            for index in indices:
                image = dataset.record(index)["image"]
                inputs.append({"image": image, "height": image.shape[1], "width": image.shape[2]})
            for index, output in zip(indices, predictor(inputs)):
                predicted |= _append_results(results, index, output["instances"], dataset)

    if iou_types is None:
        iou_types = [t for t in IOU_TYPES if t in predicted]
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown:
        raise ValueError(f"unknown iou_types {unknown}; choose from {list(IOU_TYPES)}")

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = coco_dict(dataset)
        gt.createIndex()
        return {t: _coco_eval(gt, results[t], t) for t in iou_types}


def _append_results(results: dict, image_id: int, inst, dataset: ShapesDataset) -> set:
    """Convert one image's Instances to COCO result dicts; returns the types it covered."""
    boxes = getattr(inst.pred_boxes, "tensor", inst.pred_boxes).detach().float().cpu()
    scores = inst.scores.detach().float().cpu().tolist()
    classes = inst.pred_classes.detach().cpu().tolist()
    cat_ids = [dataset.category_ids[c] for c in classes]
    covered = {"bbox"}
    for (x1, y1, x2, y2), score, cat in zip(boxes.tolist(), scores, cat_ids):
        results["bbox"].append({"image_id": image_id, "category_id": cat,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    if inst.has("pred_masks"):
        covered.add("segm")
        masks = inst.pred_masks.detach().cpu()
        masks = masks if masks.dtype == torch.bool else masks >= 0.5
        for mask, score, cat in zip(masks, scores, cat_ids):
            rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results["segm"].append({"image_id": image_id, "category_id": cat,
                                    "segmentation": rle, "score": score})
    if inst.has("pred_keypoints"):
        covered.add("keypoints")
        kps = inst.pred_keypoints.detach().float().cpu().clone()
        kps[:, :, :2] -= 0.5  # continuous coordinates -> COCO's integer pixel centres
        for kp, score, cat in zip(kps, scores, cat_ids):
            results["keypoints"].append({"image_id": image_id, "category_id": cat,
                                         "keypoints": kp.flatten().tolist(), "score": score})
    return covered


def _coco_eval(gt: COCO, results: list, iou_type: str) -> dict:
    cat_ids = sorted(c["id"] for c in gt.dataset["categories"]
                     if iou_type != "keypoints" or "keypoints" in c)
    if not cat_ids or not gt.getAnnIds(catIds=cat_ids):
        return {m: math.nan for m in _METRICS}
    results = [r for r in results if r["category_id"] in cat_ids]
    if not results:  # loadRes rejects an empty list; nothing predicted scores zero
        return {m: 0.0 for m in _METRICS}
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, iou_type)
    ev.params.catIds = cat_ids
    if iou_type == "keypoints":
        ev.params.kpt_oks_sigmas = np.array(KEYPOINT_OKS_SIGMAS)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    # COCOeval reports -1 where no ground truth falls in the category/area range.
    return {m: (100.0 * float(v) if v >= 0 else math.nan) for m, v in zip(_METRICS, ev.stats)}


def format_table(metrics: dict) -> str:
    lines = [f"{'type':<10}" + "".join(f"{m:>8}" for m in _METRICS)]
    for iou_type, values in metrics.items():
        lines.append(f"{iou_type:<10}" + "".join(f"{values[m]:8.1f}" for m in _METRICS))
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m dexport.models.evaluation",
        description="COCO AP of a zoo model on the synthetic shapes val split.")
    parser.add_argument("--model", required=True, help="zoo name, e.g. mask_rcnn_tiny")
    parser.add_argument("--weights", default="default",
                        help='"default" (shipped weights), "none" (deterministic init) or a .safetensors path')
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (one is fastest on a shared, busy CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dexport.models import zoo

    weights = None if args.weights == "none" else args.weights
    model = zoo.get(args.model, weights=weights).eval()
    dataset = dataset_for_model(args.model, "val", num_images=args.num_images,
                                seed=args.seed, image_size=args.image_size)
    metrics = evaluate(model, dataset, batch_size=args.batch)
    print(f"{args.model} (weights: {args.weights}) on shapes val, {len(dataset)} images, "
          f"{args.image_size}px, seed {args.seed}")
    print(format_table(metrics))
    return metrics


if __name__ == "__main__":
    main()
