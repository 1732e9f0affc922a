"""The weights shipped in models/weights/: they load into their zoo models and detect."""

import json

import pytest
from safetensors.torch import load_file

from dexport.models import zoo
from dexport.models.data import dataset_for_model
from dexport.models.evaluation import evaluate

SHIPPED = sorted(p.stem for p in zoo.WEIGHTS_DIR.glob("*.safetensors"))


def test_the_four_trained_models_ship():
    assert {"mask_rcnn_tiny", "keypoint_rcnn_tiny", "retinanet_tiny", "panoptic_fpn_tiny"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_and_record_their_training(name):
    record = json.loads((zoo.WEIGHTS_DIR / f"{name}.json").read_text())
    assert record["model"] == name
    assert record["command"].startswith(f"python -m dexport.models.train --model {name} ")
    assert record["ap"]["bbox"]["AP"] >= 50
    weights = load_file(str(zoo.WEIGHTS_DIR / f"{name}.safetensors"))
    model = zoo.get(name)  # "default" loads the shipped file, strictly
    state = model.state_dict()
    assert weights.keys() == state.keys()
    assert all((state[k] == v).all() for k, v in weights.items())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_detect_on_a_few_val_images(name):
    """A handful of images cannot reproduce the recorded AP, but trained weights must be
    far above an untrained model's ~0 on them."""
    dataset = dataset_for_model(name, "val", num_images=4)
    metrics = evaluate(zoo.get(name), dataset, batch_size=4)
    assert metrics["bbox"]["AP50"] > 50, metrics
