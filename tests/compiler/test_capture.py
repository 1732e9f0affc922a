"""Capture by tracing: a graph captured at one resolution runs at another and matches
eager; nodes keep module scopes and user source lines; failures name the module."""
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dexport
from dexport.frontends import jit_importer
from dexport.ir import CaptureError
from dexport.ir.verifier import verify
from dexport.ir.dialects.structures import Boxes, Instances

TOL = 1e-5


def _line_of(func, text: str) -> int:
    lines, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so eval-mode batch norm is not the identity."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a - b).abs().max().item() if a.numel() else 0.0


# --------------------------------------------------------------------------- (a) ResNet-style CNN

class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = _randomize_bn(TinyResNet())
    return model, dexport.capture(model, (torch.randn(2, 3, 32, 32),))


def test_resnet_runs_at_another_resolution(resnet):
    model, graph = resnet
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert _max_diff(graph(x), model(x)) < TOL


def test_nodes_carry_module_scope_and_user_source(resnet):
    _, graph = resnet
    convs = {n.meta.scope: n for n in graph.nodes() if n.op == "aten::_convolution"}
    assert {"stem.0", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.shortcut.0"} <= set(convs)
    line = _line_of(BasicBlock.forward, "self.conv1(x)")
    assert convs["layer1.0.conv1"].meta.source.endswith(f"test_capture.py:{line}")
    sources = [n.meta.source for n in graph.nodes() if n.meta.source]
    assert sources and not any(s.startswith("/") or "site-packages" in s for s in sources)


def test_params_and_inputs_are_named(resnet):
    model, graph = resnet
    assert [v.name_hint for v in graph.inputs] == ["x"]
    assert set(graph.params) == set(model.state_dict()) - {
        k for k in model.state_dict() if k.endswith("num_batches_tracked")}
    assert torch.equal(graph.params["layer1.0.conv1.weight"], model.layer1[0].conv1.weight)
    names = [n.attrs["name"] for n in graph.nodes() if n.op == "prim::Param"]
    assert len(names) == len(set(names))


def test_capture_is_deterministic(resnet):
    model, graph = resnet
    again = dexport.capture(model, (torch.randn(2, 3, 32, 32),))
    assert str(again) == str(graph)


# --------------------------------------------------------------------------- (b) FPN-style outputs

class TinyFPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bottom_up = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, 2, 1)
                                       for c_in, c_out in [(3, 8), (8, 12), (12, 16)])
        self.lateral = nn.ModuleList(nn.Conv2d(c, 8, 1) for c in (8, 12, 16))
        self.output = nn.ModuleList(nn.Conv2d(8, 8, 3, 1, 1) for _ in range(3))

    def forward(self, x):
        feats = []
        for conv in self.bottom_up:
            x = F.relu(conv(x))
            feats.append(x)
        results, prev = [], None
        for i in (2, 1, 0):
            lat = self.lateral[i](feats[i])
            if prev is not None:
                lat = lat + F.interpolate(prev, size=lat.shape[-2:], mode="nearest")
            prev = lat
            results.insert(0, self.output[i](lat))
        pooled = [r.mean(dim=(2, 3)) for r in results]
        return {f"p{i + 2}": r for i, r in enumerate(results)}, pooled


def test_fpn_dict_and_list_outputs_at_another_resolution():
    torch.manual_seed(0)
    model = TinyFPN().eval()
    graph = dexport.capture(model, (torch.randn(1, 3, 32, 32),))
    x = torch.randn(2, 3, 40, 56)  # odd sizes: 20x28 -> 10x14 -> 5x7
    with torch.no_grad():
        features, pooled = graph(x)
        ref_features, ref_pooled = model(x)
    assert list(features) == ["p2", "p3", "p4"] and features["p4"].shape == (2, 8, 5, 7)
    for key in ref_features:
        assert _max_diff(features[key], ref_features[key]) < TOL
    assert len(pooled) == 3 and all(_max_diff(a, b) < TOL for a, b in zip(pooled, ref_pooled))
    scopes = {n.meta.scope for n in graph.nodes()}
    assert {"bottom_up.0", "lateral.2", "output.1"} <= scopes


# --------------------------------------------------------------------------- (c) list of dicts -> Instances

def _image_size(image):
    # Kept as 0-d tensors while tracing so the graph computes the size (structures.py).
    if torch.jit.is_tracing():
        size = torch._shape_as_tensor(image)
        return size[-2], size[-1]
    return tuple(image.shape[-2:])


class TinyDetector(nn.Module):
    def __init__(self, num_classes=3, top_k=5):
        super().__init__()
        self.top_k = top_k
        self.body = nn.Conv2d(3, 8, 3, 4, 1)
        self.head = nn.Conv2d(8, 4 + num_classes, 1)

    def forward(self, batched_inputs):
        results = []
        for item in batched_inputs:
            image = item["image"]
            out = self.head(F.relu(self.body(image[None])))[0]
            deltas, logits = out[:4].flatten(1).t(), out[4:].flatten(1).t()
            size = torch._shape_as_tensor(image)[[2, 1]].to(torch.float32)  # (w, h)
            top_left = torch.sigmoid(deltas[:, :2]) * size / 2
            # Boxes as big as the image: every one reaches past its right/bottom edge.
            boxes = torch.cat([top_left, top_left + size * torch.sigmoid(deltas[:, 2:]) + size / 2], dim=1)
            scores, classes = logits.softmax(dim=1).max(dim=1)
            keep = scores.topk(self.top_k).indices
            instances = Instances(_image_size(image), pred_boxes=Boxes(boxes[keep]), scores=scores[keep],
                                  pred_classes=classes[keep])
            instances.pred_boxes.clip(instances.image_size)
            results.append({"instances": instances})
        return results


def test_list_of_dicts_to_instances_at_another_resolution():
    torch.manual_seed(0)
    model = TinyDetector().eval()
    example = [{"image": torch.rand(3, 32, 40)}, {"image": torch.rand(3, 24, 32)}]
    graph = dexport.capture(model, (example,))
    assert [v.name_hint for v in graph.inputs] == ["batched_inputs.0.image", "batched_inputs.1.image"]
    other = [{"image": torch.rand(3, 48, 36)}, {"image": torch.rand(3, 40, 64)}]
    with torch.no_grad():
        got, ref = graph(other), model(other)
    assert len(got) == 2
    for g, r in zip(got, ref):
        gi, ri = g["instances"], r["instances"]
        assert gi.image_size == ri.image_size == tuple(int(s) for s in ri.image_size)
        assert list(gi.get_fields()) == ["pred_boxes", "scores", "pred_classes"]
        assert isinstance(gi.pred_boxes, Boxes)
        assert _max_diff(gi.pred_boxes.tensor, ri.pred_boxes.tensor) < TOL
        assert _max_diff(gi.scores, ri.scores) < TOL
        assert torch.equal(gi.pred_classes, ri.pred_classes)
    # Boxes are clipped to the new image size, not to the one seen at capture.
    assert (got[1]["instances"].pred_boxes.tensor[:, 2:] == torch.tensor([64.0, 40.0])).all()


# --------------------------------------------------------------------------- constants and params

class WithConstants(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied: stored once
        # plain attributes: traced constants, a big one (> SMALL_TENSOR_NUMEL) and a small one
        self.table = torch.linspace(0, 1, 32).reshape(4, 8)
        self.offset = torch.tensor([0.5, -0.5, 1.0, 2.0, 0.0, 1.5, -1.0, 3.0])

    def forward(self, x):
        y = self.b(self.a(x)) @ self.table + self.offset
        return y.to(torch.float64)


def test_constants_params_and_enum_attributes():
    model = WithConstants()
    graph = dexport.capture(model, (torch.randn(2, 4),))
    assert sorted(graph.params) == ["_const.0", "a.bias", "a.weight", "b.bias"]
    assert torch.equal(graph.params["_const.0"], model.table)
    small = [n.attrs["value"] for n in graph.nodes()
             if n.op == "prim::Constant" and isinstance(n.attrs["value"], torch.Tensor)]
    assert len(small) == 1 and torch.equal(small[0], model.offset)
    to = next(n for n in graph.nodes() if n.op == "aten::to.dtype")
    assert to.inputs[1].node.attrs["value"] is torch.float64
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert _max_diff(graph(x), model(x)) < TOL


# --------------------------------------------------------------------------- control flow

class Gate(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 0):
            y = x * 2
        else:
            y = -x
        for i in range(x.shape[0]):
            y = y + i
        return y


class WithScriptedPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.gate = torch.jit.script(Gate())

    def forward(self, x):
        return self.gate(self.lin(x))


def test_scripted_submodule_control_flow_becomes_blocks():
    torch.manual_seed(0)
    model = WithScriptedPart()
    graph = dexport.capture(model, (torch.randn(2, 3),))
    assert len(graph.find_nodes("prim::If")) == 1 and len(graph.find_nodes("prim::Loop")) == 1
    for x in (torch.randn(4, 3) + 5, torch.randn(5, 3) - 5):
        with torch.no_grad():
            assert _max_diff(graph(x), model(x)) < TOL


# --------------------------------------------------------------------------- failures

class Exploding(nn.Module):
    def forward(self, x):
        raise ValueError("boom: bad input")


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1))
        self.head = nn.ModuleDict({"bad": Exploding()})

    def forward(self, x):
        return self.head["bad"](self.backbone(x))


def test_a_model_that_raises_gives_capture_error():
    with pytest.raises(CaptureError) as info:
        dexport.capture(Wrapper(), (torch.randn(1, 3, 8, 8),))
    err = info.value
    assert err.scope == "head.bad"
    assert "ValueError: boom: bad input" in err.what
    line = _line_of(Exploding.forward, "raise ValueError")
    assert err.source.endswith(f"test_capture.py:{line}")
    assert err.hint and isinstance(err.__cause__, ValueError)


class CallsPython(nn.Module):
    class Square(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, grad):
            return grad

    def forward(self, x):
        return self.Square.apply(x) + 1


def test_opaque_python_functions_are_refused():
    with pytest.raises(CaptureError, match="Python function Square") as info:
        dexport.capture(CallsPython(), (torch.ones(2),))
    assert "custom_op" in info.value.hint


def test_unknown_ops_are_listed_together(monkeypatch):
    monkeypatch.setattr(jit_importer, "has_op", lambda name: name not in ("aten::relu", "aten::max_pool2d"))
    with pytest.raises(CaptureError, match="2 op") as info:
        dexport.capture(TinyResNet().eval(), (torch.randn(1, 3, 16, 16),))
    assert "aten::relu  # stem.2" in info.value.context
    assert "aten::max_pool2d  # stem.3" in info.value.context


def test_unknown_method():
    with pytest.raises(CaptureError, match="unknown capture method 'magic'"):
        dexport.capture(TinyResNet(), (torch.randn(1, 3, 16, 16),), method="magic")


# --------------------------------------------------------------------------- zoo

def test_tiny_zoo_model_at_another_resolution():
    from dexport.models import zoo
    model = zoo.get("faster_rcnn_tiny", weights=None)
    torch.manual_seed(0)
    graph = dexport.capture(model, ([{"image": torch.rand(3, 64, 80) * 255}],))
    assert graph.find_nodes("dexport::roi_align") and graph.find_nodes("dexport::batched_nms")
    verify(graph)
    other = [{"image": torch.rand(3, 96, 72) * 255}]
    with torch.no_grad():
        (got,), (ref,) = graph(other), model(other)
    gi, ri = got["instances"], ref["instances"]
    assert gi.image_size == ri.image_size == (96, 72)
    assert list(gi.get_fields()) == list(ri.get_fields()) and len(gi) == len(ri) > 0
    assert _max_diff(gi.pred_boxes.tensor, ri.pred_boxes.tensor) < TOL
    assert _max_diff(gi.scores, ri.scores) < TOL
    assert torch.equal(gi.pred_classes, ri.pred_classes)


def test_zoo_op_nodes_point_at_the_calling_line_not_the_wrapper():
    from dexport.ir.dialects import dexport as ops

    class Keep(torch.nn.Module):
        def forward(self, boxes, scores):
            return ops.nms(boxes, scores, 0.5)  # the line the node must name

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    graph = dexport.capture(Keep(), (boxes, torch.tensor([0.9, 0.8])))
    (node,) = [n for n in graph.nodes() if n.op == "dexport::nms"]
    line = _line_of(Keep.forward, "the line the node must name")
    assert node.meta.source.endswith(f"test_capture.py:{line}")
