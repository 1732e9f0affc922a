"""nn.LSTM / nn.GRU (aten::lstm.input, aten::gru.input) as ONNX LSTM / GRU: captured on
one batch and sequence length, checked against torch on others (gate order, biases,
layers, directions, layouts and initial states all change the numbers)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dexport.backends.onnx import emit_onnx
from dexport.ir.errors import DexportError
from tests.backends.onnx_util import capture_fn, check

g = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=g)


CONFIGS = [
    dict(),
    dict(batch_first=True),
    dict(num_layers=2),
    dict(bidirectional=True, batch_first=True),
    dict(num_layers=2, bidirectional=True, bias=False),
]


def _ids(configs):
    return ["-".join(f"{k}={v}" for k, v in c.items()) or "default" for c in configs]


def _sequences(batch_first: bool, features: int):
    """(capture input, other inputs): other batch sizes and sequence lengths."""
    shapes = [(3, 2), (5, 1), (2, 4)]  # (seq, batch)
    return [randn(*((b, s) if batch_first else (s, b)), features) for s, b in shapes]


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("config", CONFIGS, ids=_ids(CONFIGS))
def test_recurrent_matches_torch(cls, config):
    torch.manual_seed(0)
    rnn = cls(4, 5, **config).eval()
    op = "aten::lstm.input" if cls is nn.LSTM else "aten::gru.input"
    first, *others = _sequences(config.get("batch_first", False), 4)
    check(rnn, (first,), *[(x,) for x in others], ops=[op], atol=1e-5)


class WithStates(nn.Module):
    """The layer called with initial states given as graph inputs."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *hidden):
        return self.rnn(x, tuple(hidden) if isinstance(self.rnn, nn.LSTM) else hidden[0])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_given_initial_states(cls):
    torch.manual_seed(0)
    rnn = cls(3, 4, num_layers=2, bidirectional=True).eval()
    layers_dirs = 4

    def states(batch):
        h = randn(layers_dirs, batch, 4)
        return (h, randn(layers_dirs, batch, 4)) if cls is nn.LSTM else (h,)
    check(WithStates(rnn), (randn(3, 2, 3), *states(2)), (randn(6, 3, 3), *states(3)), (randn(1, 1, 3), *states(1)))


def test_lstm_projection_is_refused():
    rnn = nn.LSTM(3, 4, proj_size=2).eval()
    graph = capture_fn(rnn, randn(2, 1, 3))
    with pytest.raises(DexportError, match="proj_size") as info:
        emit_onnx(graph)
    assert "nn.Linear" in info.value.hint
