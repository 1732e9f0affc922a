"""The zoo: model loader. The one compiler module that imports the reference zoo
(``dexport.models``), always inside a function, so ``import dexport`` never loads it;
everything in the compiler that needs a zoo model, its synthetic data or its
evaluation goes through here."""
from __future__ import annotations

from dexport.ir.errors import DexportError


def names() -> list[str]:
    """The zoo's model names."""
    from dexport.models import zoo
    return zoo.names()


def get(name: str, weights: str | None = "default"):
    """The zoo model ``name`` (``dexport zoo`` lists them), built in eval mode; ``weights``
    as ``dexport.models.zoo.get`` takes them."""
    from dexport.models import zoo
    if name not in zoo.names():
        raise DexportError(f"unknown zoo model {name!r}", hint="run `dexport zoo` for the list of names")
    return zoo.get(name, weights=weights)


def shapes_dataset(split: str, **kwargs):
    """The synthetic shapes data (``dexport.models.data.ShapesDataset``)."""
    from dexport.models.data import ShapesDataset
    return ShapesDataset(split, **kwargs)


def dataset_for_model(name: str, split: str, **kwargs):
    """The synthetic data the zoo model ``name`` is trained and evaluated on."""
    from dexport.models.data import dataset_for_model as for_model
    return for_model(name, split, **kwargs)


def evaluate(predictor, source, iou_types, **kwargs) -> dict:
    """COCO AP (and PQ) of ``predictor`` on ``source`` (``dexport.models.evaluation.evaluate``)."""
    from dexport.models import evaluation
    return evaluation.evaluate(predictor, source, iou_types, **kwargs)


def normalize_images(images, image_sizes, mean, std, size_divisibility: int):
    """The zoo detectors' input normalisation (what ``forward_batched`` feeds its backbone)."""
    from dexport.models.batched import normalize_images as normalize
    return normalize(images, image_sizes, mean, std, size_divisibility)
