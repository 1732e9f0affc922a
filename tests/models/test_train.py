"""The training loop, on a stand-in detector small enough to run in a fraction of a second."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dexport.ir.dialects.structures import Boxes, Instances
from dexport.models.train import lr_at, train


class StandInDetector(nn.Module):
    """Predicts one box and class per image; training returns a loss dict like the zoo's."""

    def __init__(self, nan_loss=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.head = nn.Linear(4, 4 + 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        self.nan_loss = nan_loss

    def forward(self, batched):
        images = torch.stack([x["image"] for x in batched]) / 255.0
        out = self.head(self.conv(images).mean(dim=(2, 3)))
        size = images.shape[-1]
        boxes = out[:, :4].sigmoid() * size
        boxes = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
        if self.training:
            gt = torch.stack([x["instances"].gt_boxes.tensor[0] for x in batched])
            cls = torch.stack([x["instances"].gt_classes[0] for x in batched])
            loss_box = (boxes - gt).abs().mean() / size
            if self.nan_loss:
                loss_box = loss_box * float("nan")
            return {"loss_cls": nn.functional.cross_entropy(out[:, 4:], cls), "loss_box": loss_box}
        return [{"instances": Instances((x["height"], x["width"]), pred_boxes=Boxes(b[None]),
                                        scores=o[4:].softmax(0).max()[None],
                                        pred_classes=o[4:].argmax()[None])}
                for x, b, o in zip(batched, boxes, out)]


def _run(out_dir, model):
    return train("stand_in", 3, out_dir, batch=2, lr=0.01, warmup=2, image_size=64,
                 num_train=6, num_val=3, threads=1, log_every=2, model=model,
                 command="pytest stand-in")


def test_train_writes_weights_and_record(tmp_path, capsys):
    model = StandInDetector()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = _run(tmp_path / "a", model)
    log = capsys.readouterr().out
    assert "iter 2/3" in log and "iter 3/3" in log and "loss_cls" in log and "bbox" in log

    weights = load_file(str(tmp_path / "a" / "stand_in.safetensors"))
    assert weights.keys() == before.keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(weights[k], before[k]) for k in before)  # it trained

    saved = json.loads((tmp_path / "a" / "stand_in.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert (saved["iters"], saved["seed"], saved["lr"], saved["batch"]) == (3, 0, 0.01, 2)
    assert (saved["train_images"], saved["val_images"]) == (6, 3)
    assert set(saved["ap"]) == {"bbox"} and set(saved["ap"]["bbox"]) == {"AP", "AP50", "AP75"}
    assert saved["command"] == "pytest stand-in"
    assert "--weights" in saved["eval_command"] and "--num-images 3" in saved["eval_command"]


def test_same_seed_same_weights(tmp_path):
    _run(tmp_path / "a", StandInDetector())
    _run(tmp_path / "b", StandInDetector())
    a = (tmp_path / "a" / "stand_in.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "stand_in.safetensors").read_bytes()


def test_non_finite_loss_is_reported(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss at iteration 0.*--lr"):
        _run(tmp_path, StandInDetector(nan_loss=True))


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(it, 100, 0.1, 10) for it in range(100)]
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[10] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.001, rel=0.05)


def test_cli_smoke_run_on_a_zoo_model(tmp_path):
    """Two real iterations of a tiny zoo model through the command line entry point."""
    from dexport.models import zoo
    from dexport.models.train import main

    out = tmp_path / "out"
    record = main(["--model", "retinanet_tiny", "--iters", "2", "--out", str(out), "--batch", "1",
                   "--image-size", "64", "--num-train", "2", "--num-val", "2", "--warmup", "1",
                   "--threads", "1"])
    assert record["command"].startswith("python -m dexport.models.train --model retinanet_tiny")
    assert set(record["ap"]) >= {"bbox"}
    trained = zoo.get("retinanet_tiny", weights=out / "retinanet_tiny.safetensors")
    init = zoo.get("retinanet_tiny", weights=None)
    changed = [k for k, v in init.state_dict().items() if not torch.equal(v, trained.state_dict()[k])]
    assert changed
