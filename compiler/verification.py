"""Eager vs exported, the way a detection user judges it.

``verify(model, exported, inputs_list)`` runs both on inputs not used for capture and
compares them image by image. Detections are matched by IoU within the same class
(greedy, best eager score first), so detections whose scores tie within float error
and come out in another order still pair up; what is left unmatched on either side is
a count mismatch. For every image the report holds detection counts, the largest box
error in pixels (and relative to the image size, which the tolerance is on), score
error, the smallest mask IoU and largest keypoint distance of matched pairs, the
semantic segmentation agreement (equal argmax pixels) and panoptic agreement (equal
segment category per pixel) where the model has them, and the raw max abs / rel error
over every output tensor. Models that are not detectors get only the raw figures.

``compare_ap`` scores both with COCO AP, and panoptic quality for panoptic models
(dataset-level evidence that the differences do not matter), on the synthetic shapes val
split or a user COCO json + image folder (AP only).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dexport.ir.errors import DexportError, DexportWarning
from dexport.passes.manager import max_abs_error


@dataclass(frozen=True)
class Tolerances:
    """What counts as "the same". ``box`` is relative to the image's longer side."""
    box: float = 1e-3
    score: float = 1e-4
    mask_iou: float = 0.99
    mask_margin: float = 1e-4  # pixels whose eager mask probability is this close to the threshold
    keypoint_px: float = 0.5
    sem_seg: float = 0.999
    panoptic: float = 0.999
    atol: float = 1e-4        # raw max abs error, for models that are not detectors
    match_iou: float = 0.5    # a pair of detections below this IoU is not the same detection

    def __post_init__(self):
        # A NaN limit compares False both ways and would switch its check off silently.
        # A negative one is a typo that fails or passes everything; refuse both.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise DexportError(f"tolerance {f.name}={value!r} is not a number >= 0",
                                   hint=f"give {f.name} a number >= 0 (default {f.default})")

    def replace(self, **overrides) -> "Tolerances":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise DexportError(f"unknown tolerance(s) {unknown}",
                               hint=f"choose from {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# figure -> (tolerance field, True when a larger value is worse); the order is the table's.
_FIGURES = {
    "box_error_rel": ("box", True),
    "score_error": ("score", True),
    "mask_iou": ("mask_iou", False),
    "keypoint_error_px": ("keypoint_px", True),
    "sem_seg_agreement": ("sem_seg", False),
    "panoptic_agreement": ("panoptic", False),
    "raw_max_abs": ("atol", True),
}

# What extremes() and summary() report, in order: the figures, and after mask_iou the
# share of mask pixels it left out (no limit: it says how much the mask IoU compared).
def _extreme_figures() -> dict[str, bool]:
    out = {}
    for figure, (_, larger_is_worse) in _FIGURES.items():
        out[figure] = larger_is_worse
        if figure == "mask_iou":
            out["mask_at_threshold"] = True
    return out


_EXTREMES = _extreme_figures()


@dataclass
class VerificationReport:
    """``rows``: one dict per image (detectors) or per input (other models), each with
    its figures, ``failures`` (texts naming the figure, its value and the limit) and
    ``ok``."""
    kind: str
    tolerances: Tolerances
    rows: list[dict]

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)

    def worst(self, n: int = 5) -> list[str]:
        """The failing images, worst first: "image 3 (96x160, input 1): <failures>"."""
        bad = sorted((r for r in self.rows if not r["ok"]), key=lambda r: (-r["severity"], r["index"]))
        return [f"{_row_name(self.kind, r)}: {'; '.join(r['failures'])}" for r in bad[:n]]

    def extremes(self) -> dict:
        """Per figure, the worst value over all rows and the row it came from; also the
        largest share of mask pixels left out at the threshold (``mask_at_threshold``)."""
        out = {}
        for figure, larger_is_worse in _EXTREMES.items():
            present = [r for r in self.rows if r.get(figure) is not None]
            if present:
                pick = (max if larger_is_worse else min)(present, key=lambda r: (r[figure], -r["index"]))
                out[figure] = {"value": pick[figure], "index": pick["index"]}
        return out

    def to_dict(self) -> dict:
        return _jsonable({"kind": self.kind, "ok": self.ok, "tolerances": dataclasses.asdict(self.tolerances),
                          "rows": [{k: v for k, v in r.items() if k != "severity"} for r in self.rows],
                          "worst": self.worst(), "extremes": self.extremes()})

    def to_json(self) -> str:
        """Canonical json (sorted keys, infinities as "inf"): same comparison, same text."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2) + "\n"

    def summary(self) -> str:
        """One line: how many images passed and the worst figures."""
        what = "image" if self.kind == "detection" else "input"
        passed = sum(r["ok"] for r in self.rows)
        figures = ", ".join(f"{name} {_fmt(v['value'])}" for name, v in self.extremes().items()
                            if self.kind == "detection" or name == "raw_max_abs")
        verdict = "ok" if self.ok else "MISMATCH"
        return f"{passed}/{len(self.rows)} {what}s match eager ({figures}) -> {verdict}"

    def format_table(self) -> str:
        """A terminal table, one line per image, failing ones marked, then the worst."""
        if self.kind == "detection":
            present = [f for f in _FIGURES if f != "raw_max_abs" and any(r.get(f) is not None for r in self.rows)]
            head = ["image", "input", "size", "dets", "matched", "box px"] + [_SHORT[f] for f in present] + ["raw abs", ""]
            lines = [[str(r["index"]), str(r["input"]), "x".join(map(str, r["size"])),
                      f"{r['detections'][0]}/{r['detections'][1]}", str(r["matched"]), _fmt(r["box_error_px"])]
                     + [_fmt(r.get(f)) for f in present] + [_fmt(r["raw_max_abs"]), "ok" if r["ok"] else "FAIL"]
                     for r in self.rows]
        else:
            head = ["input", "tensors", "max abs", "max rel", ""]
            lines = [[str(r["index"]), str(r["tensors"]), _fmt(r["raw_max_abs"]), _fmt(r["raw_max_rel"]),
                      "ok" if r["ok"] else "FAIL"] for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        text = ["  ".join(x.rjust(w) for x, w in zip(row, widths)).rstrip() for row in [head] + lines]
        text.append(self.summary())
        text += ["  " + line for line in self.worst()]
        return "\n".join(text)


def check_recorded_verification(directory, manifest: dict, *, strict: bool = False) -> None:
    """Warn (``DexportWarning``), or with ``strict`` refuse (``DexportError``), when the
    verification report an export stored in ``manifest`` says the artifact did not match
    eager: which checks failed, on how many images, and the worst one."""
    report = manifest.get("verification")
    if not isinstance(report, dict) or report.get("ok") is not False:
        return
    rows = [r for r in report.get("rows") or [] if isinstance(r, dict)]
    failed = [r for r in rows if r.get("ok") is False]
    checks = sorted({str(f).split()[0] for r in failed for f in r.get("failures") or []})
    worst = next(iter(report.get("worst") or []), None)
    what = "image" if report.get("kind") == "detection" else "input"
    text = (f"{directory}: its verification at export failed ({', '.join(checks) or 'unknown checks'} "
            f"on {len(failed)} of {len(rows)} {what}s)" + (f"; worst: {worst}" if worst else ""))
    hint = (f"re-check it with `dexport verify {directory}`, re-export it, or loosen the tolerance "
            "if the difference is acceptable")
    if strict:
        raise DexportError(text + "; strict=True refuses it", hint=hint)
    warnings.warn(DexportWarning(f"{text}. What to do: {hint} (strict=True refuses such artifacts)"),
                  stacklevel=3)


_SHORT = {"box_error_rel": "box rel", "score_error": "score", "mask_iou": "mask IoU",
          "keypoint_error_px": "kp px", "sem_seg_agreement": "sem seg", "panoptic_agreement": "panoptic"}


def verify(model: Callable, exported: Callable, inputs_list: Sequence[tuple], *,
           tolerances: Tolerances | None = None, **overrides) -> VerificationReport:
    """Run ``model(*inputs)`` and ``exported(*inputs)`` for every input tuple and
    compare. Detectors (outputs are lists of dicts with ``instances``) are compared
    per image, everything else by its raw output tensors. ``overrides`` replace single
    tolerances, e.g. ``verify(m, art, inputs, box=1e-2)``."""
    tol = (tolerances or Tolerances()).replace(**overrides)
    rows, kind = [], None
    with torch.no_grad():
        for i, inputs in enumerate(inputs_list):
            with _MaskPastes() as pastes:
                expected = model(*inputs)
            actual = exported(*inputs)
            bands = _mask_bands(model, inputs, expected, tol.mask_margin) if pastes.count else None
            this = "detection" if _is_detection(expected) else "raw"
            if kind not in (None, this):
                raise DexportError("the model returned detections for some inputs and not for others",
                                   hint="verify detectors and other models separately")
            kind = this
            if this == "detection":
                if not isinstance(actual, list) or len(actual) != len(expected):
                    raise DexportError(f"input {i}: the exported model returned {_describe(actual)} "
                                       f"for {len(expected)} images", hint="is this the artifact of this model?")
                for k, (e, a) in enumerate(zip(expected, actual)):
                    rows.append(compare_detections(e, a, tol, index=len(rows), input_index=i,
                                                   mask_band=bands[k] if bands else None))
            else:
                rows.append(compare_raw(expected, actual, tol, index=i))
    return VerificationReport(kind or "raw", tol, rows)


def compare_outputs(expected, actual, *, tolerances: Tolerances | None = None,
                    **overrides) -> VerificationReport:
    """``verify`` for outputs already computed (one call of the model and one of the
    exported model on the same inputs), e.g. when the exported run is timed elsewhere."""
    return verify(lambda: expected, lambda: actual, [()], tolerances=tolerances, **overrides)


def _is_detection(outputs) -> bool:
    return isinstance(outputs, list) and all(isinstance(o, dict) and "instances" in o for o in outputs)


def _describe(obj) -> str:
    return f"a list of {len(obj)}" if isinstance(obj, list) else type(obj).__name__


def match_detections(expected, actual, min_iou: float = 0.5) -> list[tuple[int, int]]:
    """Pairs (eager index, exported index): eager detections in score order (ties: the
    earlier one) each take the unmatched exported detection of the same class with the
    highest IoU (ties: the earlier one), if that IoU reaches ``min_iou``. Output order
    does not matter, so score ties that swap places still match."""
    from dexport.ir.dialects.structures import Boxes, pairwise_iou
    if not len(expected) or not len(actual):
        return []
    iou = pairwise_iou(Boxes(_boxes(expected)), Boxes(_boxes(actual)))
    same_class = expected.pred_classes.view(-1, 1) == actual.pred_classes.view(1, -1)
    iou = torch.where(same_class, iou, torch.full_like(iou, -1.0))
    order = sorted(range(len(expected)), key=lambda k: (-float(expected.scores[k]), k))
    taken = torch.zeros(len(actual), dtype=torch.bool)
    pairs = []
    for k in order:
        row = iou[k].masked_fill(taken, -1.0)
        best = int(torch.argmax(row))  # first index among equal maxima
        if row[best] >= min_iou:
            pairs.append((k, best))
            taken[best] = True
    return sorted(pairs)


def _boxes(inst) -> torch.Tensor:
    b = inst.pred_boxes
    return (b.tensor if hasattr(b, "tensor") else b).float()


def compare_detections(expected: dict, actual: dict, tol: Tolerances, *, index: int = 0,
                       input_index: int = 0, mask_band: torch.Tensor | None = None) -> dict:
    """One image's result dicts (``instances``, optional ``sem_seg`` / ``panoptic_seg``)
    as a report row. ``mask_band`` (bool, like eager's ``pred_masks``): the pixels whose
    eager mask probability is within ``tol.mask_margin`` of the threshold, left out of
    the mask IoU (see ``_mask_bands``)."""
    ie, ia = expected["instances"], actual["instances"]
    h, w = (int(x) for x in ie.image_size)
    pairs = match_detections(ie, ia, tol.match_iou)
    pe = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    pa = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    box_px = _max_abs(_boxes(ie)[pe], _boxes(ia)[pa])
    row = {"index": index, "input": input_index, "size": [h, w], "detections": [len(ie), len(ia)],
           "matched": len(pairs), "unmatched_eager": len(ie) - len(pairs),
           "unmatched_exported": len(ia) - len(pairs), "box_error_px": box_px,
           "box_error_rel": box_px / max(h, w, 1), "score_error": _max_abs(ie.scores[pe], ia.scores[pa])}
    if ie.has("pred_masks"):
        band = mask_band[pe] if mask_band is not None else None
        row["mask_iou"] = _min_mask_iou(ie.pred_masks[pe], ia.pred_masks[pa], band) if ia.has("pred_masks") else 0.0
        if band is not None:
            row["mask_at_threshold"] = _at_threshold_fraction(ie.pred_masks[pe], band)
    if ie.has("pred_keypoints"):
        if ia.has("pred_keypoints"):
            d = ie.pred_keypoints[pe][..., :2].double() - ia.pred_keypoints[pa][..., :2].double()
            row["keypoint_error_px"] = d.norm(dim=-1).max().item() if d.numel() else 0.0
        else:
            row["keypoint_error_px"] = math.inf
    if "sem_seg" in expected:
        row["sem_seg_agreement"] = _agreement(expected["sem_seg"].argmax(0),
                                              actual["sem_seg"].argmax(0) if "sem_seg" in actual else None)
    if "panoptic_seg" in expected:
        row["panoptic_agreement"] = _agreement(_panoptic_categories(expected["panoptic_seg"]),
                                               _panoptic_categories(actual.get("panoptic_seg")))
    row["raw_max_abs"], row["raw_max_rel"], _ = _raw_errors(expected, actual)
    return _judge(row, tol, detection=True)


def compare_raw(expected: Any, actual: Any, tol: Tolerances, *, index: int = 0) -> dict:
    """Any model's outputs: the largest abs error and the largest error relative to a
    tensor's largest magnitude, over every output tensor (inf when shapes differ)."""
    abs_err, rel_err, count = _raw_errors(expected, actual)
    return _judge({"index": index, "tensors": count, "raw_max_abs": abs_err, "raw_max_rel": rel_err},
                  tol, detection=False)


def _judge(row: dict, tol: Tolerances, *, detection: bool) -> dict:
    """Add ``failures`` (one text per figure past its limit), ``ok`` and a ``severity``
    to sort failing rows by (how far past the limit, a lost detection counting most)."""
    failures, severity = [], 0.0
    if detection:
        missing, extra = row["unmatched_eager"], row["unmatched_exported"]
        if missing or extra:
            failures.append(f"detections {row['detections'][0]} eager vs {row['detections'][1]} exported, "
                            f"{missing} eager and {extra} exported unmatched")
            severity = 1e6 * (missing + extra)
    for figure, (limit_name, larger_is_worse) in _FIGURES.items():
        value = row.get(figure)
        if value is None or (detection and figure == "raw_max_abs") or (not detection and figure != "raw_max_abs"):
            continue
        limit = getattr(tol, limit_name)
        bad = value > limit if larger_is_worse else value < limit
        if bad or math.isnan(value):
            extra_px = f" ({_fmt(row['box_error_px'])} px)" if figure == "box_error_rel" else ""
            failures.append(f"{figure} {_fmt(value)}{extra_px} {'>' if larger_is_worse else '<'} {_fmt(limit)}")
            ratio = value / limit if larger_is_worse else (1 - value) / max(1 - limit, 1e-12)
            severity = max(severity, ratio if not math.isnan(ratio) else math.inf)
    row.update(failures=failures, ok=not failures, severity=severity)
    return row


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return max_abs_error(a, b)


def _min_mask_iou(me: torch.Tensor, ma: torch.Tensor, band: torch.Tensor | None = None) -> float:
    """The smallest IoU of matched masks, over the pixels outside ``band`` (where the
    eager probability sits at the threshold and either answer is right)."""
    if not me.numel() and len(me) == len(ma):
        return 1.0
    if me.shape != ma.shape or (band is not None and band.shape != me.shape):
        return 0.0
    me, ma = me.flatten(1) > 0.5, ma.flatten(1) > 0.5
    if band is not None:
        certain = ~band.flatten(1)
        me, ma = me & certain, ma & certain
    inter, union = (me & ma).sum(1).double(), (me | ma).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return iou.min().item()


def _at_threshold_fraction(me: torch.Tensor, band: torch.Tensor) -> float:
    """The share of eager's mask pixels and band pixels that are in the band."""
    if band.shape != me.shape or not band.numel():
        return 0.0
    total = ((me > 0.5) | band).sum().item()
    return band.sum().item() / total if total else 0.0


# ----------------------------------------------------------------------------- mask noise floor

# The op that turns mask probabilities into masks (prob >= threshold), by its schema name.
PASTE_MASKS_OP = "dexport::paste_masks"


class _MaskPastes(TorchDispatchMode):
    """Counts the mask pastes of an eager run; with ``margin`` set, each paste returns
    its band instead (probability within ``margin`` of its threshold)."""

    def __init__(self, margin: float | None = None):
        super().__init__()
        self.margin = margin
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(getattr(func, "_schema", None), "name", None) != PASTE_MASKS_OP:
            return func(*args, **kwargs)
        self.count += 1
        if self.margin is None:
            return func(*args, **kwargs)
        masks, boxes, image_size, threshold = args
        if threshold < 0:  # probabilities, not masks: no threshold to sit at
            return torch.zeros_like(func(*args, **kwargs))
        probs = func(masks, boxes, image_size, -1.0)  # the op's probabilities, before the threshold
        return (probs - threshold).abs() <= self.margin


def _mask_bands(model: Callable, inputs: tuple, expected, margin: float) -> list | None:
    """Per image of ``expected`` (the eager run on ``inputs``), a bool tensor like its
    ``pred_masks``: the pixels whose eager mask probability is within ``margin`` of the
    threshold. An untrained mask head puts most logits at 0 (probability 0.5), where
    float noise of 1e-7 flips pixels; those pixels say nothing about the export. Made by
    running eager once more with every ``dexport::paste_masks`` returning its band, so
    the band goes through the model's own cropping and splitting. None when that run's
    detections are not eager's (then masks are compared pixel for pixel)."""
    if not _is_detection(expected) or not any(o["instances"].has("pred_masks") for o in expected):
        return None
    with _MaskPastes(margin):
        banded = model(*inputs)
    if not _is_detection(banded) or len(banded) != len(expected):
        return None
    bands = []
    for e, b in zip(expected, banded):
        ie, ib = e["instances"], b["instances"]
        if (len(ie) != len(ib) or not ie.has("pred_masks") or not ib.has("pred_masks")
                or not torch.equal(_boxes(ie), _boxes(ib)) or ib.pred_masks.shape != ie.pred_masks.shape):
            return None
        bands.append(ib.pred_masks > 0.5)
    return bands


def _agreement(a: torch.Tensor, b: torch.Tensor | None) -> float:
    if b is None or a.shape != b.shape:
        return 0.0
    return (a == b).double().mean().item() if a.numel() else 1.0


def _panoptic_categories(panoptic) -> torch.Tensor | None:
    """Per pixel, the category of its segment (things and stuff kept apart), -1 for void."""
    if panoptic is None:
        return None
    seg, info = panoptic
    seg = seg.long()
    ids, cats, thing = info["id"].long(), info["category_id"].long(), info["isthing"].long()
    size = int(max(seg.max().item() if seg.numel() else 0, ids.max().item() if ids.numel() else 0)) + 1
    lookup = torch.full((size,), -1, dtype=torch.long)
    lookup[ids] = cats * 2 + thing
    return lookup[seg.clamp(min=0)]


def _raw_errors(expected, actual) -> tuple[float, float, int]:
    from dexport.ir.schema import flatten
    try:
        fe, fa = flatten(expected, "eager")[0], flatten(actual, "exported")[0]
    except DexportError:
        return math.inf, math.inf, 0
    if len(fe) != len(fa):
        return math.inf, math.inf, len(fe)
    worst_abs = worst_rel = 0.0
    for x, y in zip(fe, fa):
        if x.shape != y.shape:
            return math.inf, math.inf, len(fe)
        if x.numel():
            err = max_abs_error(x, y)
            scale = x.double().abs().max().item()
            worst_abs = max(worst_abs, err)
            worst_rel = max(worst_rel, err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
    return worst_abs, worst_rel, len(fe)


def _row_name(kind: str, row: dict) -> str:
    if kind == "detection":
        return f"image {row['index']} ({'x'.join(map(str, row['size']))}, input {row['input']})"
    return f"input {row['index']}"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        if v == 0:
            return "0"
        return f"{v:.4f}" if 0.01 <= abs(v) < 1000 else f"{v:.1e}"
    return str(v)


def _jsonable(obj):
    """Infinities and NaN have no json spelling: "inf" / "-inf" / null."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- dataset AP


class CocoFolder:
    """A user's COCO json and image folder, in the shape ``compare_ap`` reads.

    No image decoder (PIL, OpenCV) is a dexport dependency, so images are read as
    ``.npy`` or ``.pt`` files holding f32/u8 [3, H, W] in the model's own channel order
    (the zoo: BGR 0..255): for an entry ``file_name: a/b.png`` the folder may hold
    ``a/b.png.npy``, ``a/b.npy``, ``a/b.png.pt`` or ``a/b.pt``. Model class ``i`` is the
    ``i``-th category by id."""

    def __init__(self, coco_json: str | os.PathLike, image_dir: str | os.PathLike):
        try:
            self.coco = json.loads(Path(coco_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DexportError(f"cannot read the COCO json {coco_json}: {e}") from None
        self.image_dir = Path(image_dir)
        self.images = sorted(self.coco.get("images", []), key=lambda im: im["id"])
        self.category_ids = tuple(sorted(c["id"] for c in self.coco.get("categories", [])))
        if not self.images or not self.category_ids:
            raise DexportError(f"{coco_json} has no images or no categories",
                               hint="pass a COCO instances json (images, annotations, categories)")

    def __len__(self) -> int:
        return len(self.images)

    def eval_input(self, i: int) -> tuple[int, dict]:
        """(image id, the predictor's input dict) of the ``i``-th image by id."""
        image = self.image(i)
        entry = self.images[i]
        return entry["id"], {"image": image, "height": entry.get("height", image.shape[1]),
                             "width": entry.get("width", image.shape[2])}

    def image(self, i: int) -> torch.Tensor:
        from dexport.inputs import read_image_file
        name = Path(self.images[i]["file_name"])
        candidates = [self.image_dir / f"{name}.npy", self.image_dir / name.with_suffix(".npy"),
                      self.image_dir / f"{name}.pt", self.image_dir / name.with_suffix(".pt")]
        for path in candidates:
            if path.is_file():
                return read_image_file(path)
        raise DexportError(f"no image for {name} in {self.image_dir}",
                           hint="store each image as <file_name>.npy or .pt, [3, H, W] in the model's channel order")


def compare_ap(eager: Callable, exported: Callable, source, *, iou_types=None,
               batch_size: int = 4, notes: list | None = None) -> dict:
    """COCO AP of both predictors on ``source``: a ``ShapesDataset`` or a
    :class:`CocoFolder`; on a ``ShapesDataset`` also panoptic quality (PQ / SQ / RQ /
    PQ_th / PQ_st) when the predictions carry ``panoptic_seg``. Returns
    ``{iou_type: {metric: {"eager", "exported", "diff"}}}`` (percent; NaN where the data
    has no ground truth of that type). What could not be evaluated (PQ on a COCO folder:
    its panoptic ground truth would be PNGs, and no image decoder is installed) is
    skipped with a one-line message appended to ``notes`` (a warning when ``notes`` is
    None)."""
    skipped: list[str] = []
    scores = [_ap(p, source, iou_types, batch_size, skipped) for p in (eager, exported)]
    for note in dict.fromkeys(skipped):  # both runs skip the same things: say each once
        if notes is None:
            warnings.warn(note, stacklevel=2)
        else:
            notes.append(note)
    out = {}
    for t in scores[0]:
        out[t] = {}
        for m, e in scores[0][t].items():
            x = scores[1].get(t, {}).get(m, math.nan)
            out[t][m] = {"eager": e, "exported": x, "diff": x - e}
    return out


def _ap(predictor, source, iou_types, batch_size, notes: list) -> dict:
    from dexport import zoo
    try:
        return zoo.evaluate(predictor, source, iou_types, batch_size=batch_size, notes=notes)
    except ValueError as err:  # unknown iou_types
        raise DexportError(str(err)) from None


def ap_ok(table: dict, max_diff: float = 0.1) -> bool:
    """Every AP (and PQ / SQ / RQ) figure of the exported model within ``max_diff``
    points of eager."""
    return all(not (abs(v["diff"]) > max_diff) for metrics in table.values() for v in metrics.values())


def format_ap_table(table: dict) -> str:
    """One line per (type, metric), metric names as the table has them (AP / AP50 /
    AP75, or PQ / SQ / RQ / PQ_th / PQ_st for panoptic)."""
    lines = [f"{'type':<10}{'metric':<8}{'eager':>8}{'exported':>10}{'diff':>8}"]
    for t, metrics in table.items():
        for m, v in metrics.items():
            lines.append(f"{t:<10}{m:<8}{v['eager']:8.2f}{v['exported']:10.2f}{v['diff']:+8.2f}")
    return "\n".join(lines)


__all__ = ["CocoFolder", "Tolerances", "VerificationReport", "ap_ok", "check_recorded_verification",
           "compare_ap", "compare_detections", "compare_raw", "format_ap_table", "match_detections", "verify"]
