"""Each ATen/prim lowering against the IR interpreter: a small function is captured
on one input, emitted, and run by onnxruntime on inputs of other shapes (and on
empty tensors where detections can be empty)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dexport.backends.onnx import emit_onnx
from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.parser import parse
from tests.backends.onnx_util import capture_fn, check, compare

g = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=g)


def randint(lo, hi, *shape):
    return torch.randint(lo, hi, shape, generator=g)


def floats(*values):
    return torch.tensor(values, dtype=torch.float32)


def ints(*values):
    return torch.tensor(values, dtype=torch.int64)


# (name, fn, capture args, [other args...], ops that must be in the capture)
CASES = [
    # elementwise
    ("unary", lambda x: torch.relu(x) + torch.sigmoid(x) + torch.exp(x) * torch.tanh(x) - x.neg().abs()
     + x.floor() + x.ceil() + x.round(), (randn(3, 4),), [(randn(5, 2),)],
     ["aten::relu", "aten::sigmoid", "aten::exp", "aten::tanh", "aten::neg", "aten::abs",
      "aten::floor", "aten::ceil", "aten::round"]),
    ("log_sqrt", lambda x: torch.log(x) + torch.sqrt(x) + torch.rsqrt(x), (randn(3, 4).abs() + 0.1,),
     [(randn(2, 7).abs() + 0.1,)], ["aten::log", "aten::sqrt", "aten::rsqrt"]),
    ("log2_exact_powers", lambda x: torch.floor(torch.log2(x)),
     (floats(1, 2, 4, 8, 3, 0.5),), [(floats(16, 32, 1024, 0.25, 7, 9, 4096),)], ["aten::log2"]),
    ("add_sub_alpha", lambda x, y: torch.add(x, y, alpha=2) - torch.sub(y, x, alpha=3) + (x + 1.5) - 2,
     (randn(3, 4), randn(4)), [(randn(2, 5), randn(5))],
     ["aten::add.Tensor", "aten::sub.Tensor"]),
    ("int_times_float_promotes", lambda x: x * 0.5 + x * 2, (randint(-5, 5, 6),), [(randint(-9, 9, 3),)],
     ["aten::mul.Tensor"]),
    ("int_true_division_is_float", lambda x, y: x / y, (randint(-9, 9, 5), randint(1, 4, 5)),
     [(randint(-9, 9, 7), randint(1, 4, 7))], ["aten::div.Tensor"]),
    ("floor_trunc_division_ints", lambda x, y: torch.cat([torch.div(x, y, rounding_mode="floor"),
                                                         torch.div(x, y, rounding_mode="trunc"),
                                                         x // 3]),
     (ints(7, -7, 6, -6, 0), ints(2, 2, -4, -4, 3)), [(ints(-9, 9, -1), ints(-2, 4, 5))],
     ["aten::div.Tensor_mode"]),
    ("floor_trunc_division_floats", lambda x, y: torch.div(x, y, rounding_mode="floor")
     + torch.div(x, y, rounding_mode="trunc") * 10,
     (floats(7, -7, 6.5, -6.5), floats(2, 2, -4, -4)), [(randn(6) * 10, randn(6))],
     ["aten::div.Tensor_mode"]),
    ("remainder", lambda x, y: torch.cat([x % y, x % 3, torch.remainder(x, -4)]),
     (ints(7, -7, 6, -6), ints(2, 3, -4, -5)), [(ints(5, -11), ints(-3, 7))],
     ["aten::remainder.Tensor", "aten::remainder.Scalar"]),
    ("remainder_float", lambda x: x % 1.5 + torch.remainder(x, -2.0), (randn(6) * 5,), [(randn(3) * 5,)],
     ["aten::remainder.Scalar"]),
    ("rsub_pow", lambda x: (1 - x) + x ** 2 + torch.pow(x, 3), (randn(4),), [(randn(7),)],
     ["aten::rsub.Scalar", "aten::pow.Tensor_Scalar"]),
    ("compare", lambda x, y: torch.stack([x == y, x != y, x < y, x <= y, x > y, x >= y,
                                          x > 0.5, x == 1]),
     (randint(0, 3, 8).float(), randint(0, 3, 8).float()), [(randint(0, 3, 3).float(), randint(0, 3, 3).float())],
     ["aten::eq.Tensor", "aten::ne.Tensor", "aten::lt.Tensor", "aten::le.Tensor", "aten::gt.Tensor",
      "aten::ge.Tensor", "aten::gt.Scalar", "aten::eq.Scalar"]),
    ("int_vs_float_scalar_compares_in_float", lambda x: x > 0.5, (ints(0, 1, 2),), [(ints(1, 0),)],
     ["aten::gt.Scalar"]),
    ("bool_logic", lambda a, b: torch.stack([a & b, a | b, a ^ b, ~a, torch.logical_and(a, b)]),
     (randn(6) > 0, randn(6) > 0), [(randn(2) > 0, randn(2) > 0)],
     ["aten::__and__.Tensor", "aten::__or__.Tensor", "aten::__xor__.Tensor", "aten::bitwise_not"]),
    ("where_masked_fill", lambda x, y: torch.where(x > 0, x, y) + x.masked_fill(x < 0, 7.0)
     + torch.where(x > 1, x, 0.0), (randn(3, 4), randn(3, 4)), [(randn(2, 2), randn(2, 2))],
     ["aten::where.self", "aten::masked_fill.Scalar", "aten::where.ScalarOther"]),
    ("clamp_min_max", lambda x, y: x.clamp(-0.5, 0.5) + x.clamp(min=0) + x.clamp(max=0.1)
     + torch.minimum(x, y) + torch.maximum(x, y) + x.clamp_min(0.2),
     (randn(3, 4), randn(3, 4)), [(randn(5, 1), randn(5, 1))],
     ["aten::clamp", "aten::minimum", "aten::maximum", "aten::clamp_min"]),
    ("clamp_int_with_tensor_bounds", lambda x, lo: x.clamp(min=lo, max=lo + 3),
     (randint(-9, 9, 6), randint(-2, 2, 6)), [(randint(-9, 9, 2), randint(-2, 2, 2))], ["aten::clamp.Tensor"]),
    # reductions
    ("sum_mean", lambda x: torch.stack([x.sum(), x.mean(), x.amax(), x.max(), x.min()]),
     (randn(3, 4),), [(randn(5, 2),)], ["aten::sum", "aten::mean", "aten::max", "aten::min"]),
    ("sum_dims", lambda x: x.sum(dim=(0, -1), keepdim=True).sum() + x.sum(1).sum(0).sum() + x.mean(-1),
     (randn(2, 3, 4),), [(randn(3, 1, 2),)], ["aten::sum.dim_IntList", "aten::mean.dim"]),
    ("sum_bool_is_int64", lambda x: (x > 0).sum(1), (randn(3, 4),), [(randn(2, 6),), (randn(0, 3),)],
     ["aten::sum.dim_IntList"]),
    ("max_min_dim", lambda x: torch.max(x, 1) + torch.min(x, 0, keepdim=True), (randn(3, 4),),
     [(randn(5, 2),)], ["aten::max.dim", "aten::min.dim"]),
    ("max_dim_ties_first_index", lambda x: torch.max(x, 0)[1], (ints(3, 5, 5, 1),), [(ints(2, 2, 2),)],
     ["aten::max.dim"]),
    ("argmax", lambda x: torch.stack([x.argmax(), x.argmin()]) + x.argmax(1).sum() + x.argmax(0, keepdim=True).sum(),
     (randn(3, 4),), [(randn(5, 2),)], ["aten::argmax", "aten::argmin"]),
    ("any_all", lambda x: torch.cat([(x > 0).any(1), (x > 0).all(0), (x > 1).any().reshape(1)]),
     (randn(3, 4),), [(randn(2, 3),), (randn(0, 3),)], ["aten::any.dim", "aten::all.dim", "aten::any"]),
    ("cumsum", lambda x: torch.cumsum(x, 0) + torch.cumsum(x, -1), (randn(3, 4),), [(randn(5, 2),)],
     ["aten::cumsum"]),
    ("cumsum_bool_to_int", lambda x: torch.cumsum(x > 0, 0), (randn(6),), [(randn(2),)], ["aten::cumsum"]),
    ("softmax", lambda x: torch.softmax(x, -1) + torch.log_softmax(x, 0) + F.softmax(x, dim=1),
     (randn(3, 4),), [(randn(5, 2),)], ["aten::softmax.int", "aten::log_softmax.int"]),
    ("bincount", lambda x: torch.bincount(x, minlength=3), (ints(0, 1, 1, 4),), [(ints(2, 2, 7, 0, 0),), (ints(),)],
     ["aten::bincount"]),
    # shapes
    ("reshape_dynamic", lambda x: x.reshape(x.size(0), -1, 2) * 1 + x.view(-1).sum(),
     (randn(3, 4),), [(randn(5, 6),)], ["aten::reshape", "aten::view", "aten::size.int"]),
    ("reshape_empty", lambda x: x.reshape(-1, 2) + 1, (randn(3, 4),), [(randn(0, 4),)], ["aten::reshape"]),
    ("flatten", lambda x: x.flatten(1) * 2, (randn(2, 3, 4),), [(randn(3, 1, 5),), (randn(0, 2, 2),)],
     ["aten::flatten.using_ints"]),
    ("flatten_middle", lambda x: x.flatten(1, 2).sum(0), (randn(2, 3, 4, 5),), [(randn(1, 2, 2, 2),)],
     ["aten::flatten.using_ints"]),
    ("unflatten", lambda x: x.unflatten(1, (2, -1)) + 1, (randn(3, 8),), [(randn(2, 6),), (randn(0, 4),)],
     ["aten::unflatten.int"]),
    ("permute_transpose", lambda x: x.permute(2, 0, 1).transpose(0, -1) + 0, (randn(2, 3, 4),),
     [(randn(3, 1, 2),)], ["aten::permute", "aten::transpose.int"]),
    ("expand", lambda x, y: x.expand(y.size(0), -1) + y, (randn(1, 4), randn(3, 4)),
     [(randn(1, 2), randn(5, 2))], ["aten::expand"]),
    ("expand_as_repeat", lambda x, y: x.expand_as(y) + x.repeat(2, 1)[: y.size(0)] + x.repeat(1, 1, 1)[0],
     (randn(1, 4), randn(2, 4)), [(randn(1, 3), randn(2, 3))], ["aten::expand_as", "aten::repeat"]),
    ("squeeze_unsqueeze", lambda x: x.unsqueeze(-1).unsqueeze(0).squeeze(0).squeeze(-1) + x[:, :1].squeeze(1)[:, None],
     (randn(3, 4),), [(randn(2, 5),)], ["aten::unsqueeze", "aten::squeeze.dim"]),
    ("select", lambda x: x[1] + x[-1] + x[:, 0].sum(), (randn(3, 4),), [(randn(5, 4),)], ["aten::select.int"]),
    ("slice", lambda x: x[1:, ::2] * 1 + x[-2:, 1:3].sum() + x[: x.size(0) // 2].sum(),
     (randn(4, 5),), [(randn(6, 7),), (randn(2, 3),)], ["aten::slice.Tensor"]),
    ("narrow", lambda x: x.narrow(1, 1, 2) * 1, (randn(3, 4),), [(randn(2, 5),)], ["aten::narrow"]),
    ("flip", lambda x: x.flip(0, -1) * 1, (randn(3, 4),), [(randn(2, 5),), (randn(0, 2),)], ["aten::flip"]),
    ("cat_promotes", lambda x, y: torch.cat([x, y], -1), (randn(3, 2), randint(0, 5, 3, 4)),
     [(randn(2, 1), randint(0, 5, 2, 3))], ["aten::cat"]),
    ("stack", lambda x, y: torch.stack([x, y], 1) + torch.stack([x], 1), (randn(3, 2), randn(3, 2)),
     [(randn(4, 5), randn(4, 5))], ["aten::stack"]),
    ("unbind", lambda x: x.unbind(1)[0] * x.unbind(1)[1], (randn(3, 2),), [(randn(5, 2),)],
     ["aten::unbind.int", "prim::ListUnpack"]),
    ("meshgrid", lambda x, y: torch.stack(torch.meshgrid(x, y, indexing="ij"), -1).sum(-1)
     + torch.stack(torch.meshgrid(x, y, indexing="xy"), -1).sum(-1).t(),
     (randn(3), randn(4)), [(randn(5), randn(2))], ["aten::meshgrid.indexing"]),
    ("reshape_as", lambda x, y: x.reshape_as(y) + y, (randn(2, 6), randn(3, 4)), [(randn(3, 2), randn(2, 3))],
     ["aten::reshape_as"]),
    # creation
    ("like", lambda x: torch.stack([torch.zeros_like(x), torch.ones_like(x), torch.full_like(x, 3.5)]),
     (randn(3, 4),), [(randn(2, 5),), (randn(0, 2),)], ["aten::zeros_like", "aten::ones_like", "aten::full_like"]),
    ("full_like_int_dtype", lambda x: torch.full_like(x, 7, dtype=torch.int64), (randn(3),), [(randn(5),)],
     ["aten::full_like"]),
    ("new_zeros_dynamic_size", lambda x: x.new_zeros((x.size(0), 2)) + x.new_full((x.size(0), 1), 2.0)
     + x.new_ones(x.size(0), 2), (randn(3, 4),), [(randn(6, 1),), (randn(0, 1),)],
     ["aten::new_zeros", "aten::new_full", "aten::new_ones"]),
    ("zeros_dynamic", lambda x: torch.zeros(x.size(0), x.size(1) * 2) + torch.ones(x.size(1) * 2),
     (randn(3, 4),), [(randn(2, 1),)], ["aten::zeros", "aten::ones"]),
    ("arange", lambda x: torch.arange(x.size(0)) * 2 + torch.arange(1, x.size(0) + 1)
     + torch.arange(0, 2 * x.size(0), 2), (randn(4),), [(randn(7),), (randn(0),)],
     ["aten::arange", "aten::arange.start", "aten::arange.start_step"]),
    ("arange_float", lambda x: torch.arange(x.size(0), dtype=torch.float32) * 0.5
     + torch.arange(0.5, x.size(0) / 2 + 0.5, 0.5)[: x.size(0)], (randn(4),), [(randn(9),)],
     ["aten::arange"]),
    # indexing
    ("mask_1d_rows", lambda x, s: x[s > 0], (randn(5, 4), randn(5)),
     [(randn(7, 4), randn(7)), (randn(3, 4), -randn(3).abs())], ["aten::index.Tensor"]),
    ("mask_2d", lambda x: x[x > 0], (randn(3, 4),), [(randn(5, 2),), (-randn(2, 2).abs(),)], ["aten::index.Tensor"]),
    ("mask_on_second_dim", lambda x, s: x[:, s > 0], (randn(3, 4), randn(4)), [(randn(2, 6), randn(6))],
     ["aten::index.Tensor"]),
    ("mask_3d_on_dims_1_2", lambda x, m: x[:, m > 0], (randn(2, 3, 4), randn(3, 4)),
     [(randn(3, 2, 2), randn(2, 2))], ["aten::index.Tensor"]),
    ("int_index", lambda x, i: x[i] + x[:, i[:1]].sum(), (randn(5, 4), ints(0, 3, -1)),
     [(randn(6, 4), ints(3, 1)), (randn(2, 4), ints())], ["aten::index.Tensor"]),
    ("int_index_pair_broadcast", lambda x, i, j: x[i[:, None], j], (randn(4, 5), ints(0, 3), ints(1, 2, 4)),
     [(randn(3, 3), ints(2, 1, 0, 0), ints(2))], ["aten::index.Tensor"]),
    ("adjacent_indices_after_slice", lambda x, i, j: x[:, i, j], (randn(2, 4, 5), ints(0, 3), ints(1, 4)),
     [(randn(3, 3, 3), ints(2, 1, 0), ints(0, 1, 2))], ["aten::index.Tensor"]),
    ("split_indices_go_first", lambda x, i, j: x[i, :, j], (randn(4, 2, 5), ints(0, 3), ints(1, 4)),
     [(randn(3, 3, 3), ints(2, 1, 0), ints(0, 1, 2))], ["aten::index.Tensor"]),
    ("index_put_rows", lambda x, i, v: torch.index_put(x, (i,), v), (randn(5, 3), ints(4, 0), randn(2, 3)),
     [(randn(3, 2), ints(1), randn(1, 2))], ["aten::index_put"]),
    ("index_put_mask_scalar", lambda x: torch.index_put(x, (x > 0,), x.new_zeros(())), (randn(3, 4),),
     [(randn(2, 5),)], ["aten::index_put"]),
    ("index_put_second_dim_broadcast_values", lambda x, i, v: torch.index_put(x, (torch.arange(x.size(0))[:, None], i), v),
     (randn(3, 5), ints(1, 4), randn(2)), [(randn(2, 3), ints(0, 2), randn(2))], ["aten::index_put"]),
    ("index_put_three_broadcast_indices", lambda x, i, v: x.index_put(
        (torch.arange(x.size(0))[:, None, None], i[None, :, None], torch.arange(x.size(2))[None, None, :]), v),
     (randn(2, 4, 3), ints(3, 0), randn(2, 2, 3)), [(randn(3, 5, 2), ints(1), randn(3, 1, 2))], ["aten::index_put"]),
    ("index_put_accumulate", lambda x, i, v: torch.index_put(x, (i,), v, accumulate=True),
     (randn(4), ints(1, 1, 3), randn(3)), [(randn(2), ints(0, 0), randn(2))], ["aten::index_put"]),
    ("gather", lambda x, i: torch.gather(x, 1, i), (randn(3, 4), randint(0, 4, 3, 2)),
     [(randn(2, 5), randint(0, 5, 2, 3))], ["aten::gather"]),
    ("index_select", lambda x, i: x.index_select(1, i), (randn(3, 4), ints(3, 0)), [(randn(2, 2), ints(1, 1, 0))],
     ["aten::index_select"]),
    ("scatter_src_larger_than_index", lambda x, i, s: x.scatter(1, i, s),
     (torch.zeros(2, 5), ints(0, 3, 4, 1).reshape(2, 2), randn(2, 3)),
     [(torch.zeros(3, 4), ints(0, 1, 2, 3, 3, 2).reshape(3, 2), randn(4, 4))], ["aten::scatter.src"]),
    ("scatter_value_add", lambda x, i, s: x.scatter(0, i, 2.5) + x.scatter_add(0, i, s),
     (torch.zeros(4), ints(1, 3), randn(2)), [(torch.zeros(2), ints(0, 0, 1), randn(3))],
     ["aten::scatter.value", "aten::scatter_add"]),
    ("topk_dynamic_k", lambda x: torch.topk(x, x.size(0) // 2)[0] * 1 + torch.topk(x, 2, largest=False)[1].sum(),
     (randn(6),), [(randn(9),)], ["aten::topk"]),
    ("topk_2d_dim0", lambda x: torch.topk(x, 2, dim=0)[1], (randn(4, 3),), [(randn(5, 2),)], ["aten::topk"]),
    ("sort_stable_ties", lambda x: torch.sort(x, stable=True)[1] * 10 + torch.sort(x, descending=True, stable=True)[1],
     (ints(3, 1, 3, 2, 1),), [(ints(5, 5, 5, 0, 0, 7, 7),), (ints(),)], ["aten::sort.stable"]),
    ("argsort", lambda x: torch.argsort(x) * 10 + torch.argsort(x, dim=0, descending=True, stable=True),
     (ints(3, 1, 3, 2, 1),), [(ints(5, 5, 0, 7),)], ["aten::argsort", "aten::argsort.stable"]),
    ("sort_2d", lambda x: torch.sort(x, 0)[0] + torch.sort(x, -1, descending=True)[0], (randn(3, 4),),
     [(randn(2, 5),)], ["aten::sort"]),
    ("nonzero", lambda x: torch.nonzero(x > 0), (randn(3, 4),), [(randn(2, 5),), (-randn(2, 2).abs(),)],
     ["aten::nonzero"]),
    ("pad_dynamic", lambda x: F.pad(x, [0, 8 - x.size(-1) % 8, 1, 0], value=2.0), (randn(2, 3, 5),),
     [(randn(1, 2, 11),)], ["aten::pad"]),
    ("pad_modes", lambda x: F.pad(x, [1, 2, 2, 1], mode="reflect") + F.pad(x, [1, 2, 2, 1], mode="replicate"),
     (randn(1, 2, 4, 5),), [(randn(2, 1, 3, 6),)], ["aten::pad"]),
    ("pad_negative_crops", lambda x: F.pad(x, [-1, 1]), (randn(2, 4),), [(randn(3, 6),)], ["aten::pad"]),
    ("size_int_numtotensor", lambda x: x.sum(1) * x.size(1) + x.shape[0] // 2,
     (randn(3, 4),), [(randn(7, 2),)], ["aten::size.int"]),
    ("int_of_tensor", lambda x: F.pad(x, [0, torch._shape_as_tensor(x)[0] * 2 - 1]), (randn(3),), [(randn(5),)],
     ["aten::Int.Tensor"]),
    ("shape_as_tensor", lambda x: torch._shape_as_tensor(x).flip(0) * 2, (randn(3, 4),), [(randn(2, 5),)],
     ["aten::_shape_as_tensor"]),
    ("casts", lambda x: x.to(torch.int64) + x.int().long() + (x > 0).to(x.dtype).long() + x.type_as(torch.ones(1, dtype=torch.int32)),
     (randn(5) * 5,), [(randn(2) * 5,)], ["aten::to.dtype"]),
    # neural network
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1) + F.conv2d(x, w, None, 2, 1, 1).relu(),
     (randn(1, 3, 8, 8), randn(4, 3, 3, 3), randn(4)), [(randn(2, 3, 11, 7), randn(4, 3, 3, 3), randn(4))],
     ["aten::_convolution"]),
    ("conv2d_groups_dilation", lambda x, w: F.conv2d(x, w, padding=2, dilation=2, groups=2),
     (randn(1, 4, 9, 9), randn(6, 2, 3, 3)), [(randn(1, 4, 6, 13), randn(6, 2, 3, 3))], ["aten::_convolution"]),
    ("conv_transpose", lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
     (randn(1, 3, 4, 4), randn(3, 2, 3, 3)), [(randn(2, 3, 5, 3), randn(3, 2, 3, 3))], ["aten::_convolution"]),
    ("max_pool", lambda x: F.max_pool2d(x, 3, 2, 1) * 1 + F.max_pool2d(x, 1, 2).sum(),
     (randn(1, 2, 8, 8),), [(randn(2, 2, 9, 5),)], ["aten::max_pool2d"]),
    ("avg_pool", lambda x: F.avg_pool2d(x, 2, 2), (randn(1, 2, 8, 8),), [(randn(2, 2, 6, 4),)], ["aten::avg_pool2d"]),
    ("linear", lambda x, w, b: F.linear(x, w, b) + F.linear(x, w).sum(), (randn(3, 4), randn(5, 4), randn(5)),
     [(randn(0, 4), randn(5, 4), randn(5)), (randn(6, 4), randn(5, 4), randn(5))], ["aten::linear"]),
    ("linear_3d", lambda x, w, b: F.linear(x, w, b), (randn(2, 3, 4), randn(5, 4), randn(5)),
     [(randn(1, 6, 4), randn(5, 4), randn(5))], ["aten::linear"]),
    ("matmul", lambda x, y: x @ y + torch.bmm(x, y), (randn(2, 3, 4), randn(2, 4, 5)),
     [(randn(1, 2, 4), randn(1, 4, 3))], ["aten::matmul", "aten::bmm"]),
    ("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b, eps=1e-3) + F.group_norm(x, 4),
     (randn(1, 4, 5, 5), randn(4), randn(4)), [(randn(2, 4, 3, 7), randn(4), randn(4))],
     ["aten::group_norm"]),
    ("upsample_nearest", lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")[..., :-1, :-1]
     + F.interpolate(x, size=(2 * x.size(2) - 1, 2 * x.size(3) - 1), mode="nearest"),
     (randn(1, 2, 3, 4),), [(randn(2, 1, 5, 3),)], ["aten::upsample_nearest2d.vec"]),
    ("upsample_bilinear", lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
     + F.interpolate(x, size=(2 * x.size(2), 2 * x.size(3)), mode="bilinear", align_corners=True),
     (randn(1, 2, 3, 4),), [(randn(2, 1, 5, 3),)], ["aten::upsample_bilinear2d.vec"]),
    # attention: the default scale is 1/sqrt(E) of the run-time E; other batch, heads, lengths
    ("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
     (randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 6)),
     [(randn(2, 3, 4, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 2))], ["aten::scaled_dot_product_attention"]),
    ("sdpa_causal_scale", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
     + F.scaled_dot_product_attention(q, k, v, scale=0.3),
     (randn(2, 4, 4), randn(2, 4, 4), randn(2, 4, 3)), [(randn(1, 6, 5), randn(1, 6, 5), randn(1, 6, 2))],
     ["aten::scaled_dot_product_attention"]),
    ("sdpa_masks", lambda q, k, v, keep, bias: F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
     + F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
     (randn(1, 2, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4), randn(3, 5) > -1, randn(1, 1, 3, 5)),
     [(randn(2, 2, 4, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 4), randn(4, 6) > -1, randn(2, 1, 4, 6))],
     ["aten::scaled_dot_product_attention"]),
    ("sdpa_grouped_query", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
     (randn(1, 4, 3, 4), randn(1, 2, 5, 4), randn(1, 2, 5, 4)),
     [(randn(2, 6, 4, 4), randn(2, 2, 6, 4), randn(2, 2, 6, 4))], ["aten::scaled_dot_product_attention"]),
]


@pytest.mark.parametrize("name,fn,args,others,ops", CASES, ids=[c[0] for c in CASES])
def test_lowering_matches_interpreter(name, fn, args, others, ops):
    check(fn, args, *others, ops=ops)


SAMPLES_BY_NAME = {c[0]: c for c in CASES}


@pytest.mark.parametrize("opset", [18, 20, 21])
@pytest.mark.parametrize("name", ["sum_dims", "max_min_dim", "any_all", "unbind", "squeeze_unsqueeze",
                                  "pad_dynamic", "upsample_bilinear", "argmax", "bincount"])
def test_newer_opsets(name, opset):
    """Ops whose ONNX form changed across opsets (Reduce* axes, GridSample modes)."""
    _, fn, args, others, ops = SAMPLES_BY_NAME[name]
    check(fn, args, *others, ops=ops, opset=opset)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("mode,padding,align", [("bilinear", "zeros", False), ("nearest", "border", True),
                                                ("bilinear", "reflection", True)])
def test_grid_sample(mode, padding, align, opset):
    fn = lambda x, grid: F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align)  # noqa: E731
    check(fn, (randn(1, 2, 5, 6), torch.rand(1, 4, 3, 2, generator=g) * 2.4 - 1.2),
          (randn(2, 2, 4, 7), torch.rand(2, 5, 1, 2, generator=g) * 2.4 - 1.2),
          ops=["aten::grid_sampler"], opset=opset, atol=1e-5)


def test_sdpa_with_dropout_is_refused():
    graph = capture_fn(lambda q: F.scaled_dot_product_attention(q, q, q, dropout_p=0.5), randn(1, 3, 4))
    with pytest.raises(DexportError, match="dropout_p=0.5") as info:
        emit_onnx(graph)
    assert "dropout_p=0.0" in info.value.hint


def test_bitwise_on_ints_needs_opset_18():
    fn = lambda a, b: (a & b) | (a ^ b)  # noqa: E731
    args = (randint(0, 64, 5), randint(0, 64, 5))
    check(fn, args, (randint(0, 64, 2), randint(0, 64, 2)), ops=["aten::__and__.Tensor"], opset=18)
    with pytest.raises(UnsupportedOpsError, match="opset 18"):
        emit_onnx(capture_fn(fn, *args), opset=17)


def test_scalar_overloads_from_ir_text():
    """Overloads tracing folds away (``.Scalar`` with alpha, rsub) still lower."""
    graph = parse("""graph(%x: f32[N], %i: i64[N]) {
  %two: int = prim::Constant() {value=2}
  %half: float = prim::Constant() {value=0.5}
  %a: f32[N] = aten::add.Scalar(%x, %half, %two)
  %b: f32[N] = aten::sub.Scalar(%a, %two, %two)
  %c: f32[N] = aten::mul.Scalar(%b, %half)
  %d: f32[N] = aten::div.Scalar(%c, %two)
  %e: f32[N] = aten::rsub.Scalar(%d, %half, %two)
  %f: f32[N] = aten::mul.Scalar(%i, %half)
  %floor: str = prim::Constant() {value="floor"}
  %g: i64[N] = aten::div.Scalar_mode(%i, %two, %floor)
  return (%e, %f, %g)
}""")
    model = emit_onnx(graph)
    for n in (3, 0):
        compare(graph, model, (randn(n), randint(-5, 5, n)))


def test_scalar_int_ops_from_ir_text():
    """Scripted graphs compute on IR ints; they become 0-d int64 tensors."""
    graph = parse("""graph(%x: f32[N,4]) {
  %0: int = prim::Constant() {value=0}
  %1: int = prim::Constant() {value=3}
  %n: int = aten::size.int(%x, %0)
  %a: int = aten::add.int(%n, %1)
  %b: int = aten::floordiv.int(%a, %1)
  %c: int = aten::mul.int(%b, %n)
  %d: bool = aten::gt.int(%c, %1)
  %t: i64[] = prim::NumToTensor(%c)
  return (%t, %d)
}""")
    model = emit_onnx(graph)
    for n in (0, 2, 7):
        compare(graph, model, (torch.zeros(n, 4),))


def test_list_of_sizes_unpacked():
    graph = parse("""graph(%x: f32[A,B]) {
  %s: list[int] = aten::size(%x)
  %a: int, %b: int = prim::ListUnpack(%s)
  %p: int = aten::mul.int(%a, %b)
  %t: i64[] = prim::NumToTensor(%p)
  return (%t)
}""")
    model = emit_onnx(graph)
    compare(graph, model, (torch.zeros(3, 5),))
    compare(graph, model, (torch.zeros(0, 2),))


def test_conv2d_overload_from_ir_text():
    """aten::conv2d (what scripting and torch.export produce) as well as _convolution."""
    graph = parse("""graph(%x: f32[N,2,H,W]) {
  %w: f32[3,2,3,3] = prim::Param() {name="w"}
  %one: int = prim::Constant() {value=1}
  %none: None = prim::Constant() {value=None}
  %s: list[int] = prim::ListConstruct(%one, %one)
  %y: f32[N,3,H,W] = aten::conv2d(%x, %w, %none, %s, %s, %s, %one)
  return (%y)
}""", params={"w": randn(3, 2, 3, 3)})
    model = emit_onnx(graph)
    compare(graph, model, (randn(2, 2, 5, 6),), atol=1e-5)
