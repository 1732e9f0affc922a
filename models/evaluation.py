"""COCO evaluation of any predictor with the zoo's I/O on the synthetic shapes dataset.

``evaluate`` only calls ``predictor(list_of_input_dicts)`` and reads the returned
``Instances`` (and ``panoptic_seg`` where present), so the same code scores an eager
model and an exported artifact.

Besides COCO AP (pycocotools) for bbox / segm / keypoints, it computes panoptic quality
(PQ, Kirillov et al. 2019) with :func:`panoptic_quality`, our own implementation of the
published definition, against ground truth built by :func:`panoptic_ground_truth`.

CLI: ``python -m dexport.models.evaluation --model mask_rcnn_tiny [--weights PATH]
[--num-images N]`` prints AP / AP50 / AP75 per IoU type (PQ / SQ / RQ for panoptic).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import warnings

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dexport.models.data import ShapesDataset, coco_dict, dataset_for_model

__all__ = ["KEYPOINT_OKS_SIGMAS", "PanopticStats", "evaluate", "format_table", "main",
           "panoptic_ground_truth", "panoptic_prediction", "panoptic_quality"]

# OKS falloff per keypoint (apex, base_left, base_right). A triangle's vertices are sharp,
# unambiguous corners, so they get one shared value between COCO's facial points (~0.025)
# and its joints (~0.08): at sigma 0.05, on a triangle of 200 px area (20 px wide and high),
# a 1 px error scores OKS ≈ 0.78 and a 3 px error ≈ 0.1.
KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05)
IOU_TYPES = ("bbox", "segm", "keypoints")  # the COCOeval types
EVAL_TYPES = IOU_TYPES + ("panoptic",)
_METRICS = ("AP", "AP50", "AP75")  # COCOeval.stats[0:3] for every IoU type
PANOPTIC_METRICS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")


def evaluate(predictor, dataset, iou_types=None, *, batch_size: int = 1,
             verbose: bool = False, notes: list | None = None) -> dict:
    """Run ``predictor`` over ``dataset`` and score it with pycocotools' COCOeval, and
    with panoptic quality where the predictions carry ``panoptic_seg``.

    ``dataset``: a ``ShapesDataset``, or any source of images with COCO ground truth:
    ``len()``, ``category_ids`` (model class i is ``category_ids[i]``), ``coco`` (a COCO
    instances dict) and ``eval_input(i) -> (image_id, {"image", "height", "width"})``
    (e.g. ``dexport.verification.CocoFolder``). Panoptic ground truth exists only for a
    ``ShapesDataset``; elsewhere PQ is skipped with a one-line message appended to
    ``notes`` (a warning when ``notes`` is None).

    Each call gets ``batch_size`` dicts ``{"image", "height", "width"}`` and must return
    one ``{"instances": Instances(pred_boxes, scores, pred_classes, [pred_masks],
    [pred_keypoints]), ["panoptic_seg": (seg, segments_info)]}`` per image. ``iou_types``
    defaults to "bbox" plus "segm" / "keypoints" / "panoptic" when the predictions carry
    masks / keypoints / a panoptic segmentation. Returns ``{iou_type: {"AP", "AP50",
    "AP75"}}`` in percent, and ``{"panoptic": {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}}``
    (see :func:`panoptic_quality`); NaN where the dataset holds no ground truth for that
    type. COCOeval's printing is suppressed unless ``verbose``.
    """
    if iou_types is not None:
        unknown = [t for t in iou_types if t not in EVAL_TYPES]
        if unknown:
            raise ValueError(f"unknown iou_types {unknown}; choose from {list(EVAL_TYPES)}")
    shapes = isinstance(dataset, ShapesDataset)
    results: dict[str, list] = {t: [] for t in IOU_TYPES}
    panoptic = PanopticStats()
    predicted = set()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            ids, inputs = zip(*(_eval_input(dataset, i)
                                for i in range(start, min(start + batch_size, len(dataset)))))
            for image_id, output in zip(ids, predictor(list(inputs))):
                predicted |= _append_results(results, image_id, output["instances"], dataset)
                if "panoptic_seg" not in output:
                    continue
                predicted.add("panoptic")
                if shapes and (iou_types is None or "panoptic" in iou_types):
                    record = dataset.record(image_id)
                    panoptic.add(*panoptic_ground_truth(record["sem_seg"], record["masks"],
                                                        record["classes"]),
                                 *panoptic_prediction(output["panoptic_seg"]))

    if iou_types is None:
        iou_types = [t for t in EVAL_TYPES if t in predicted]
    if "panoptic" in iou_types and not shapes:
        iou_types = [t for t in iou_types if t != "panoptic"]
        note = ("PQ skipped: a COCO json + image folder has no panoptic ground truth dexport can "
                "read (COCO panoptic annotations are PNGs and no image decoder is installed)")
        if notes is None:
            warnings.warn(note, stacklevel=2)
        else:
            notes.append(note)

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    out = {}
    with quiet:
        gt = COCO()
        gt.dataset = coco_dict(dataset) if shapes else dataset.coco
        gt.createIndex()
        for t in iou_types:
            if t == "panoptic":
                out[t] = panoptic.summary() if "panoptic" in predicted else {m: math.nan for m in PANOPTIC_METRICS}
            else:
                out[t] = _coco_eval(gt, results[t], t)
    return out


def _eval_input(dataset, index: int) -> tuple[int, dict]:
    """(COCO image id, the predictor's input dict) of one image of ``dataset``."""
    if not isinstance(dataset, ShapesDataset):
        return dataset.eval_input(index)
    image = dataset.record(index)["image"]
    return index, {"image": image, "height": image.shape[1], "width": image.shape[2]}


def _append_results(results: dict, image_id: int, inst, dataset) -> set:
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


# ----------------------------------------------------------------------------- panoptic quality
#
# Category convention, shared by predictions and ground truth: a category is the pair
# (isthing, category_id). Things: category_id is the contiguous thing class index, the
# model's pred_classes (ShapesDataset.record's "classes": 0 circle, 1 square, 2 triangle).
# Stuff: category_id is the semantic label (sem_seg: 1 sky, 2 ground; label 0 is "any thing"
# and never a stuff segment). This is what PanopticFPN's segments_info holds
# (combine_batched: category_id = the instance's class, or the stuff label), so the pair is
# needed: thing class 1 (square) and stuff label 1 (sky) are different categories.
# Segment id 0 is void (unlabelled) on both sides.


def panoptic_ground_truth(sem_seg: torch.Tensor, masks: torch.Tensor, classes: torch.Tensor):
    """Panoptic ground truth of one ShapesDataset image: ``(seg i64[H, W], {id: (isthing,
    category_id)})``. Each thing instance is a segment (its visible mask, ids 1..N in
    annotation order), each stuff label present is one segment (its pixels not covered by
    a thing, ids N+1, ...); pixels of neither are void (0)."""
    seg = torch.zeros(sem_seg.shape, dtype=torch.int64)
    categories = {}
    for k, (mask, cls) in enumerate(zip(masks, classes.tolist()), start=1):
        seg[mask.bool() & (seg == 0)] = k
        categories[k] = (True, int(cls))
    free = seg == 0
    for label in sorted(set(sem_seg[free].tolist()) - {0}):
        segment_id = len(categories) + 1
        seg[free & (sem_seg == label)] = segment_id
        categories[segment_id] = (False, int(label))
    return seg, categories


def panoptic_prediction(panoptic_seg):
    """A predicted ``(seg, segments_info)`` as ``(seg i64[H, W], {id: (isthing,
    category_id)})``. ``segments_info`` is the zoo's dict of tensors (``id``,
    ``category_id``, ``isthing``, ...) or detectron2's list of dicts."""
    seg, info = panoptic_seg
    if isinstance(info, dict):
        info = [dict(zip(info, row)) for row in zip(*(v.tolist() for v in info.values()))]
    categories = {int(s["id"]): (bool(s["isthing"]), int(s["category_id"])) for s in info}
    return seg.detach().cpu().to(torch.int64), categories


class PanopticStats:
    """Per-category TP / FP / FN counts and the IoU sum of TP, accumulated image by image
    (:meth:`add`), summarised by :meth:`summary`.

    The definition (Kirillov et al., "Panoptic Segmentation", 2019): within one image and
    one category, a predicted and a ground-truth segment match when their IoU is > 0.5
    (which makes the matching unique). Void ground-truth pixels (id 0) are removed from
    the predicted segment before its IoU is taken, and an unmatched predicted segment more
    than half void is ignored rather than counted as FP. There are no crowd regions.
    """

    def __init__(self):
        self.per_category: dict[tuple, list] = {}  # (isthing, category_id) -> [tp, fp, fn, iou_sum]

    def _row(self, category) -> list:
        return self.per_category.setdefault(category, [0, 0, 0, 0.0])

    def add(self, gt_seg: torch.Tensor, gt_categories: dict, pred_seg: torch.Tensor,
            pred_categories: dict) -> None:
        """One image: segment maps (0 = void) and their ``{id: (isthing, category_id)}``."""
        gt_seg, pred_seg = torch.as_tensor(gt_seg).long(), torch.as_tensor(pred_seg).long()
        if gt_seg.shape != pred_seg.shape:
            raise ValueError(f"panoptic_seg of shape {tuple(pred_seg.shape)} for an image of "
                             f"{tuple(gt_seg.shape)}")
        for name, seg, categories in (("ground truth", gt_seg, gt_categories),
                                      ("prediction", pred_seg, pred_categories)):
            unknown = set(seg.unique().tolist()) - set(categories) - {0}
            if unknown:
                raise ValueError(f"{name} segment ids {sorted(unknown)} are not in its segments_info")
        # Joint histogram of (gt id, pred id) over all pixels.
        stride = int(pred_seg.max()) + 1 if pred_seg.numel() else 1
        joint = torch.bincount((gt_seg * stride + pred_seg).flatten())
        pairs = {(i // stride, i % stride): int(n) for i, n in enumerate(joint.tolist()) if n}
        gt_area, pred_area = {}, {}
        for (g, p), n in pairs.items():
            gt_area[g] = gt_area.get(g, 0) + n
            pred_area[p] = pred_area.get(p, 0) + n

        matched_gt, matched_pred = set(), set()
        for (g, p), inter in pairs.items():
            if g == 0 or p == 0 or gt_categories[g] != pred_categories[p]:
                continue
            union = pred_area[p] + gt_area[g] - inter - pairs.get((0, p), 0)
            iou = inter / union
            if iou > 0.5:
                row = self._row(gt_categories[g])
                row[0] += 1
                row[3] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g in gt_area:
            if g != 0 and g not in matched_gt:
                self._row(gt_categories[g])[2] += 1
        for p in pred_area:  # segments listed but without pixels do not exist
            if p != 0 and p not in matched_pred and pairs.get((0, p), 0) <= 0.5 * pred_area[p]:
                self._row(pred_categories[p])[1] += 1

    def category_metrics(self) -> dict:
        """``{(isthing, category_id): {"PQ", "SQ", "RQ", "TP", "FP", "FN"}}`` (fractions)."""
        out = {}
        for category, (tp, fp, fn, iou_sum) in sorted(self.per_category.items()):
            denominator = tp + 0.5 * fp + 0.5 * fn
            out[category] = {"PQ": iou_sum / denominator, "SQ": iou_sum / tp if tp else 0.0,
                             "RQ": tp / denominator, "TP": tp, "FP": fp, "FN": fn}
        return out

    def summary(self) -> dict:
        """PQ, SQ, RQ averaged over the categories present in ground truth or predictions,
        and PQ over thing / stuff categories only (PQ_th, PQ_st), in percent; NaN where no
        category (of that kind) occurred."""
        per = self.category_metrics()

        def mean(key, isthing=None):
            values = [m[key] for (thing, _), m in per.items() if isthing is None or thing == isthing]
            return 100.0 * sum(values) / len(values) if values else math.nan

        return {"PQ": mean("PQ"), "SQ": mean("SQ"), "RQ": mean("RQ"),
                "PQ_th": mean("PQ", True), "PQ_st": mean("PQ", False)}


def panoptic_quality(ground_truth, predictions) -> dict:
    """PQ / SQ / RQ / PQ_th / PQ_st (percent) of ``predictions`` against
    ``ground_truth``, two equally long sequences of ``(seg, {id: (isthing,
    category_id)})`` per image (see :class:`PanopticStats` for the definition)."""
    stats = PanopticStats()
    for (gt_seg, gt_cats), (pred_seg, pred_cats) in zip(ground_truth, predictions, strict=True):
        stats.add(gt_seg, gt_cats, pred_seg, pred_cats)
    return stats.summary()


def format_table(metrics: dict) -> str:
    """One row per type; a header line whenever the metric names change (AP / AP50 /
    AP75 for the COCO types, PQ / SQ / RQ / PQ_th / PQ_st for panoptic)."""
    if not metrics:
        return f"{'type':<10}" + "".join(f"{m:>8}" for m in _METRICS)
    lines, names = [], None
    for iou_type, values in metrics.items():
        if tuple(values) != names:
            names = tuple(values)
            lines.append(f"{'type':<10}" + "".join(f"{m:>8}" for m in names))
        lines.append(f"{iou_type:<10}" + "".join(f"{values[m]:8.1f}" for m in names))
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
