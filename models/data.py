"""The synthetic "shapes" dataset: deterministic images of circles, squares and triangles.

Each image is a sky/ground background (two "stuff" classes split at a random, slightly
tilted horizon, textured with noise) with 1-5 objects of three "thing" classes painted on
top in order, so later objects may partially hide earlier ones. Every object gets its
visible bitmask, the tight box of that mask, and (triangles) three keypoints: its vertices.

Generation is a pure function of (seed, split, index): each image draws from its own
numpy generator, so any image can be produced alone, in any order, on any machine, and
train and val never share a stream. Nothing is cached; an image takes about a millisecond.

Coordinates are continuous pixel coordinates (pixel i covers [i, i+1)), as detectron2 uses
internally; the COCO json stores keypoints shifted by -0.5 (COCO's pixel centres are integers).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from pycocotools import mask as mask_util

from dexport.ir.dialects.structures import Boxes, Instances

__all__ = [
    "THING_CLASSES",
    "STUFF_CLASSES",
    "SEM_SEG_CLASSES",
    "KEYPOINT_NAMES",
    "KEYPOINT_SKELETON",
    "ShapesDataset",
    "dataset_for_model",
    "coco_dict",
    "to_coco_json",
]

THING_CLASSES = ("circle", "square", "triangle")
# COCO category ids: fixed per class, so the keypoints-only split keeps triangle = 3.
THING_CATEGORY_IDS = {"circle": 1, "square": 2, "triangle": 3}
STUFF_CLASSES = ("sky", "ground")
# sem_seg labels follow PanopticFPN: 0 = "any thing", then the stuff classes.
SEM_SEG_CLASSES = ("things",) + STUFF_CLASSES
KEYPOINT_NAMES = ("apex", "base_left", "base_right")
KEYPOINT_SKELETON = ((1, 2), (2, 3), (3, 1))  # 1-based, as COCO writes it

_SPLIT_STREAM = {"train": 0, "val": 1}
_SKY_RGB = np.array([135.0, 180.0, 230.0])
_GROUND_RGB = np.array([110.0, 140.0, 70.0])
_MIN_COLOUR_DISTANCE = 90.0  # keeps objects distinguishable from the background
_MIN_VISIBLE_FRACTION = 0.5  # no object may be hidden (or clipped) more than this
_MIN_AREA = 24  # pixels; smaller objects are not annotated, so never placed


class ShapesDataset:
    """Synthetic detection/segmentation/keypoint data with the zoo's training input format.

    ``dataset[i]`` is ``{"image": f32[3,H,W] BGR 0..255, "height", "width", "image_id",
    "instances": Instances(gt_boxes, gt_classes, gt_masks, gt_keypoints), "sem_seg":
    i64[H,W]}``. ``image_size`` is an int or (h, w); ``size_range=(lo, hi)`` instead draws
    each image's height and width from [lo, hi]. ``keypoints_only=True`` makes every object
    a triangle and the single class "triangle" (for a 1-class keypoint model).
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        seed: int = 0,
        image_size: int | tuple[int, int] = 128,
        keypoints_only: bool = False,
        size_range: tuple[int, int] | None = None,
    ):
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
        self.split = split
        self.num_images = num_images if num_images is not None else (
            2000 if split == "train" else 200
        )
        self.seed = seed
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.size_range = tuple(size_range) if size_range is not None else None
        self.keypoints_only = keypoints_only
        self.thing_classes = ("triangle",) if keypoints_only else THING_CLASSES
        self.category_ids = tuple(THING_CATEGORY_IDS[c] for c in self.thing_classes)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        r = self.record(index)
        h, w = r["sem_seg"].shape
        instances = Instances(
            (h, w),
            gt_boxes=Boxes(r["boxes"]),
            gt_classes=r["classes"],
            gt_masks=r["masks"],
            gt_keypoints=r["keypoints"],
        )
        return {
            "image": r["image"],
            "height": h,
            "width": w,
            "image_id": index,
            "instances": instances,
            "sem_seg": r["sem_seg"],
        }

    def record(self, index: int) -> dict:
        """One image and its annotations as plain tensors (no zoo structures):
        image f32[3,H,W] BGR, sem_seg i64[H,W], boxes f32[N,4] XYXY, classes i64[N],
        masks bool[N,H,W], keypoints f32[N,3,3] (x, y, visibility; zeros for non-triangles)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        if self.size_range is not None:
            lo, hi = self.size_range
            h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        else:
            h, w = self.image_size
        return _generate(rng, h, w, self.keypoints_only)


def dataset_for_model(model_name: str, split: str, **kwargs) -> ShapesDataset:
    """The dataset a zoo model is trained and evaluated on: keypoint models see the
    triangles-only variant (their single class), everything else the full dataset."""
    return ShapesDataset(split, keypoints_only=model_name.startswith("keypoint"), **kwargs)


# ----------------------------------------------------------------------------- generation


def _generate(rng: np.random.Generator, h: int, w: int, keypoints_only: bool) -> dict:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # pixel centres
    image, sky = _background(rng, xs, ys)

    shapes: list[tuple[int, np.ndarray, np.ndarray | None]] = []  # (class, full mask, vertices)
    union = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(20):
            cls = 2 if keypoints_only else int(rng.integers(0, 3))
            mask, vertices, full_area = _draw_shape(rng, THING_CLASSES[cls], xs, ys, h, w)
            if mask.sum() < _MIN_VISIBLE_FRACTION * full_area or mask.sum() < _MIN_AREA:
                continue  # mostly outside the image
            # Every earlier object must keep half of its own (in-image) area visible.
            fulls = [s[1] for s in shapes]
            if all((vis & ~mask).sum() >= max(_MIN_VISIBLE_FRACTION * full.sum(), _MIN_AREA)
                   for full, vis in zip(fulls, _visible(fulls))):
                shapes.append((cls, mask, vertices))
                union |= mask
                image[:, mask] = _object_colour(rng)[:, None] + rng.normal(0, 4, (3, int(mask.sum())))
                break

    visible = _visible([s[1] for s in shapes])
    n = len(shapes)
    boxes = np.zeros((n, 4), dtype=np.float32)
    keypoints = np.zeros((n, len(KEYPOINT_NAMES), 3), dtype=np.float32)
    for i, ((cls, _, vertices), vis) in enumerate(zip(shapes, visible)):
        rows, cols = np.nonzero(vis.any(axis=1))[0], np.nonzero(vis.any(axis=0))[0]
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        if vertices is not None:
            later = np.zeros((h, w), dtype=bool)
            for _, m, _ in shapes[i + 1:]:
                later |= m
            for k, (x, y) in enumerate(vertices):
                inside = 0 <= x < w and 0 <= y < h
                hidden = inside and later[int(y), int(x)]
                keypoints[i, k] = (x, y, 2.0 if inside and not hidden else 0.0)

    sem_seg = np.where(union, 0, np.where(sky, 1, 2))
    bgr = np.clip(image[::-1], 0, 255).astype(np.float32)
    classes = [0 if keypoints_only else s[0] for s in shapes]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(bgr)),
        "sem_seg": torch.from_numpy(sem_seg.astype(np.int64)),
        "boxes": torch.from_numpy(boxes),
        "classes": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(visible) if n else np.zeros((0, h, w), dtype=bool)),
        "keypoints": torch.from_numpy(keypoints),
    }


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask minus everything painted after it."""
    out, above = [], None
    for m in reversed(masks):
        out.append(m if above is None else m & ~above)
        above = m.copy() if above is None else above | m
    return out[::-1]


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray):
    """RGB float image (3,H,W) of sky above / ground below a tilted horizon, and the sky mask."""
    h, w = xs.shape
    horizon = rng.uniform(0.3, 0.7) * h + rng.uniform(-0.15, 0.15) * (xs - w / 2)
    sky = ys < horizon
    sky_rgb = _SKY_RGB + rng.uniform(-20, 20, 3)
    ground_rgb = _GROUND_RGB + rng.uniform(-20, 20, 3)
    # Sky brightens towards the horizon; ground gets coarse blotches plus fine grain.
    gradient = 25.0 * (ys / h)[None]
    coarse = rng.normal(0, 12, (3, h // 8 + 1, w // 8 + 1)).repeat(8, axis=1).repeat(8, axis=2)
    image = np.where(
        sky[None],
        sky_rgb[:, None, None] + gradient,
        ground_rgb[:, None, None] + coarse[:, :h, :w],
    )
    return image + rng.normal(0, 5, (3, h, w)), sky


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    for _ in range(10):
        rgb = rng.uniform(0, 255, 3)
        if min(np.linalg.norm(rgb - _SKY_RGB), np.linalg.norm(rgb - _GROUND_RGB)) >= _MIN_COLOUR_DISTANCE:
            break
    return rgb


def _draw_shape(rng, kind: str, xs, ys, h: int, w: int):
    """Rasterise one random shape: (mask clipped to the image, vertices or None, full area)."""
    size = rng.uniform(0.15, 0.4) * min(h, w)
    cx = rng.uniform(0.2 * size, w - 0.2 * size)
    cy = rng.uniform(0.2 * size, h - 0.2 * size)
    if kind == "circle":
        r = size / 2
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r, None, math.pi * r * r
    angle = rng.uniform(-0.35, 0.35)  # radians; keeps the triangle's apex on top
    if kind == "square":
        half = size / 2
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    else:
        height = size * rng.uniform(0.8, 1.1)
        corners = np.array([
            [rng.uniform(-0.3, 0.3) * size, -height / 2],  # apex
            [-size / 2, height / 2 + rng.uniform(-0.1, 0.1) * height],  # base_left
            [size / 2, height / 2 + rng.uniform(-0.1, 0.1) * height],  # base_right
        ])
    c, s = math.cos(angle), math.sin(angle)
    vertices = corners @ np.array([[c, s], [-s, c]]) + (cx, cy)
    mask = _polygon_mask(vertices, xs, ys)
    return mask, (vertices if kind == "triangle" else None), _polygon_area(vertices)


def _polygon_mask(vertices: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels whose centre lies inside a convex polygon (either winding)."""
    sides = []
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        sides.append((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0))
    sides = np.stack(sides)
    return (sides >= 0).all(axis=0) | (sides <= 0).all(axis=0)


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ----------------------------------------------------------------------------- COCO export


def coco_dict(dataset: ShapesDataset) -> dict:
    """The dataset's ground truth in COCO format (images, annotations, categories)."""
    categories = []
    for name, cat_id in zip(dataset.thing_classes, dataset.category_ids):
        cat = {"id": cat_id, "name": name, "supercategory": "shape"}
        if name == "triangle":
            cat["keypoints"] = list(KEYPOINT_NAMES)
            cat["skeleton"] = [list(pair) for pair in KEYPOINT_SKELETON]
        categories.append(cat)

    images, annotations = [], []
    for index in range(len(dataset)):
        r = dataset.record(index)
        h, w = r["sem_seg"].shape
        images.append({"id": index, "file_name": f"{dataset.split}_{index:06d}.png",
                       "height": int(h), "width": int(w)})
        for box, cls, mask, kps in zip(r["boxes"].tolist(), r["classes"].tolist(),
                                      r["masks"], r["keypoints"]):
            x1, y1, x2, y2 = box
            rle = mask_util.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            ann = {
                "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                "image_id": index,
                "category_id": dataset.category_ids[cls],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
                "area": int(mask.sum()),
                "iscrowd": 0,
            }
            if dataset.thing_classes[cls] == "triangle":
                ann["keypoints"] = _coco_keypoints(kps)
                ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
            annotations.append(ann)

    return {
        "info": {"description": "dexport synthetic shapes", "split": dataset.split,
                 "seed": dataset.seed, "keypoints_only": dataset.keypoints_only},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _coco_keypoints(kps: torch.Tensor) -> list:
    """COCO's flat [x, y, v, ...]: integer pixel centres, and x = y = 0 where v = 0."""
    out = []
    for x, y, v in kps.tolist():
        out += [round(x - 0.5, 3), round(y - 0.5, 3), int(v)] if v > 0 else [0, 0, 0]
    return out


def to_coco_json(dataset: ShapesDataset, path: str | os.PathLike) -> None:
    """Write :func:`coco_dict` to ``path``; the same dataset always gives the same bytes."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(coco_dict(dataset), f, separators=(",", ":"))
        f.write("\n")
