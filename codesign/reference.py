"""A numpy interpreter of the integer program (QuantizedGraph), independent of TVM.

It is the oracle for bit-exactness: the compiled module must reproduce its int8 results bit
for bit. Float host ops (softmax, layer norm, ...) are outside its scope: it raises on them.
"""

from __future__ import annotations

import numpy as np

from codesign.float_numpy import strided_slice
from codesign.graph import split_points
from codesign.quantize import QNode, QuantizedGraph

INT8_MIN, INT8_MAX = -128, 127


# Float host ops that only move data: exact in any dtype, so the reference runs them too.
DATA_MOVEMENT_OPS = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims", "relax.permute_dims")


def requantize(
    acc: np.ndarray, bias, multiplier, shift, lo: int, hi: int, channel_axis: int, dtype: str = "int8"
) -> np.ndarray:
    value = acc.astype(np.int64) + _per_channel(bias, acc.ndim, channel_axis)
    return rescale(value, multiplier, shift, lo, hi, channel_axis).astype(dtype)


def rescale(value: np.ndarray, multiplier, shift, lo: int, hi: int, channel_axis: int) -> np.ndarray:
    """clamp((value * multiplier + round) >> shift, lo, hi) in int64, round = (1 << shift) >> 1."""
    shift64 = _per_channel(shift, value.ndim, channel_axis)
    scaled = value * _per_channel(multiplier, value.ndim, channel_axis) + ((1 << shift64) >> 1)
    return np.clip(scaled >> shift64, lo, hi)


def _per_channel(values, ndim: int, channel_axis: int) -> np.ndarray:
    if np.ndim(values) == 0:
        return np.asarray(values, dtype=np.int64)
    shape = [1] * ndim
    shape[channel_axis] = -1
    return np.asarray(values, dtype=np.int64).reshape(shape)


def gemm_output(acc: np.ndarray, p: dict, channel_axis: int, dtype: str = "int8") -> np.ndarray:
    """An accelerated layer's int8 output (a wide layer's int16: `dtype`): its fused activation
    (codesign.plan.AluActivation) on acc + bias, then the requantization."""
    activation = p.get("activation")
    if activation is None:
        return requantize(acc, p["bias"], p["multiplier"], p["shift"], p["lo"], p["hi"], channel_axis, dtype)
    value = acc.astype(np.int64) + _per_channel(p["bias"], acc.ndim, channel_axis)
    if activation.kind == "hardswish":
        gate_input = value + _per_channel(p["gate_bias"], acc.ndim, channel_axis)
        value = value * rescale(gate_input, p["gate_multiplier"], p["gate_shift"], 0, activation.one, channel_axis)
    else:
        value = np.maximum(value << activation.fraction_bits, value * activation.slope)
    value = value + _per_channel(p["offset"], acc.ndim, channel_axis)
    return rescale(value, p["multiplier"], p["shift"], p["lo"], p["hi"], channel_axis).astype(np.int8)


def conv2d_accumulate(
    x: np.ndarray, w: np.ndarray, strides, padding, groups: int, dilation=(1, 1), pad_value=0
) -> np.ndarray:
    """int8 NCHW x int8 OIHW -> int64 NCHW accumulators; the padding holds `pad_value` (the
    input's zero point: an int or one per channel).

    Summed in float64 (BLAS), which is exact: every partial sum is an integer far below 2**53
    (|int8 x int8| <= 2**14, so 2**39 products would be needed to reach it)."""
    n, _c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    top, left, bottom, right = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    if np.any(pad_value):
        inside = np.zeros(xp.shape[2:], dtype=bool)
        inside[top : top + h, left : left + wd] = True
        values = np.broadcast_to(np.asarray(pad_value, dtype=np.float64).reshape(1, -1, 1, 1), (1, xp.shape[1], 1, 1))
        xp = np.where(inside, xp, values)
    out_h = (h + top + bottom - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (wd + left + right - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    og = o // groups
    acc = np.zeros((n, o, out_h, out_w), dtype=np.float64)
    weights = w.astype(np.float64)
    if cg == 1:  # depthwise (with a channel multiplier og): output channel k reads input channel k // og
        xp = xp[:, np.arange(o) // og]
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation[0], j * dilation[1]
            rows = slice(y0, y0 + (out_h - 1) * strides[0] + 1, strides[0])
            cols = slice(x0, x0 + (out_w - 1) * strides[1] + 1, strides[1])
            if cg == 1:
                acc += weights[:, 0, i, j][None, :, None, None] * xp[:, :, rows, cols]
                continue
            for g in range(groups):
                patch = xp[:, g * cg : (g + 1) * cg, rows, cols]
                products = np.tensordot(patch, weights[g * og : (g + 1) * og, :, i, j], axes=([1], [1]))
                acc[:, g * og : (g + 1) * og] += products.transpose(0, 3, 1, 2)
    return acc.astype(np.int64)


def im2col(x: np.ndarray, p: dict) -> np.ndarray:
    """(N, C, H, W) -> (N, C*KH*KW, OH, OW): channel c*KH*KW + i*KW + j holds tap (i, j) of
    channel c under each output pixel of the conv `p` describes, zero in its padding."""
    (kh, kw), (sh, sw), (dh, dw) = p["kernel"], p["strides"], p["dilation"]
    top, left, bottom, right = p["padding"]
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    taps = [
        xp[:, :, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.stack(taps, axis=2).reshape(n, c * kh * kw, out_h, out_w)


def max_pool2d(x: np.ndarray, attrs, out_shape) -> np.ndarray:
    kh, kw = (int(k) for k in attrs.pool_size)
    sh, sw = (int(s) for s in attrs.strides)
    dh, dw = (int(d) for d in attrs.dilation)
    top, left, bottom, right = (int(p) for p in attrs.padding)
    out_h, out_w = out_shape[2], out_shape[3]
    need_h = (out_h - 1) * sh + (kh - 1) * dh + 1
    need_w = (out_w - 1) * sw + (kw - 1) * dw + 1
    extra_h = max(need_h - (x.shape[2] + top + bottom), 0)
    extra_w = max(need_w - (x.shape[3] + left + right), 0)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom + extra_h), (left, right + extra_w)), constant_values=INT8_MIN)
    out = np.full(out_shape, INT8_MIN, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw]
            out = np.maximum(out, window)
    return out


def layer_output(node: QNode, acc: np.ndarray) -> np.ndarray:
    """A GEMM layer's int8 result from its accumulators, through its merged table if it has one."""
    output = gemm_output(acc, node.params, gemm_channel_axis(node), node.dtype)
    return lookup(node.params["table"], output) if "table" in node.params else output


def lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """table[x + 128], or table[c, x + 128] with one row per channel (axis 1)."""
    index = x.astype(np.int32) + 128
    if table.ndim == 1:
        return table[index]
    channel = np.arange(table.shape[0]).reshape(-1, *[1] * (index.ndim - 2))
    return table[channel, index]


def avg_pool2d(x: np.ndarray, p: dict) -> np.ndarray:
    """Window sums over the zero-padded input, times each output's multiplier, shifted."""
    (kh, kw), (sh, sw), (top, left, bottom, right) = p["kernel"], p["strides"], p["padding"]
    out_h, out_w = p["multiplier"].shape[1:]
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    total = sum(
        xp[:, :, i : i + (out_h - 1) * sh + 1 : sh, j : j + (out_w - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    )
    scaled = total * p["multiplier"] + ((1 << p["shift"]) >> 1)
    return np.clip(scaled >> p["shift"], INT8_MIN, INT8_MAX).astype(np.int8)


def split(x: np.ndarray, attrs) -> tuple[np.ndarray, ...]:
    """relax.split: into equal sections (an int) or at the given indices."""
    return tuple(np.split(x, split_points(attrs), axis=int(attrs.axis) % x.ndim))


def passthrough(node: QNode, x: np.ndarray) -> np.ndarray:
    op = node.source.op
    if op in ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims"):
        return x.reshape(node.shape)
    if op == "relax.permute_dims":
        axes = node.source.call.attrs.axes
        return np.transpose(x, None if axes is None else [int(a) for a in axes])
    if op == "relax.nn.max_pool2d":
        return max_pool2d(x, node.source.call.attrs, node.shape)
    if op == "relax.split":
        return split(x, node.source.call.attrs)
    if op == "TupleGetItem":
        return x[node.source.call.index]
    if op == "relax.max":  # a reduction (quantize.INT8_PASSTHROUGH_OPS)
        attrs = node.source.call.attrs
        axes = None if attrs.axis is None else tuple(int(axis) for axis in attrs.axis)
        return np.max(x, axis=axes, keepdims=bool(attrs.keepdims))
    if op == "relax.strided_slice":  # constant bounds, positive steps (float_numpy.is_static_slice)
        return strided_slice(node.source, x)
    if op == "relax.image.resize2d":  # nearest, whole factors (quantize.is_nearest_upsample)
        factor_h, factor_w = node.shape[2] // x.shape[2], node.shape[3] // x.shape[3]
        return x.repeat(factor_h, axis=2).repeat(factor_w, axis=3)
    raise NotImplementedError(f"reference has no int8 {op}")


def gemm_channel_axis(node: QNode) -> int:
    return 1 if node.op == "conv2d" else len(node.shape) - 1


def accumulate(node: QNode, args: list[np.ndarray]) -> np.ndarray:
    """A GEMM layer's int64 accumulators, before its bias."""
    p = node.params
    if node.op == "conv2d":
        return conv2d_accumulate(
            args[0], p["weight"], p["strides"], p["padding"], p["groups"], p["dilation"], p.get("pad_value", 0)
        )
    b = p["weight"] if p["weight"] is not None else args[1]
    return np.matmul(args[0].astype(np.float64), b.astype(np.float64)).astype(np.int64)  # exact: see conv2d_accumulate


def evaluate(node: QNode, args: list[np.ndarray]) -> np.ndarray:
    p = node.params
    if node.op == "quantize":
        scaled = args[0].astype(np.float32) * p["inv_scale"] + np.float32(0.5)
        return np.clip(np.floor(scaled), p.get("lo", INT8_MIN), p.get("hi", INT8_MAX)).astype(node.dtype)
    if node.op == "dequantize":
        return (args[0].astype(np.int32) - p.get("zero_point", 0)).astype(np.float32) * p["scale"]
    if node.op in ("conv2d", "matmul"):
        return layer_output(node, accumulate(node, args))
    if node.op == "add":
        a, b = (x.astype(np.int64) for x in args)
        total = a * _per_channel(p["multiplier_a"], a.ndim, 1) + b * _per_channel(p["multiplier_b"], b.ndim, 1)
        return requantize(total, 0, 1, p["shift"], p["lo"], p["hi"], channel_axis=1)
    if node.op == "concat":
        parts = [requantize(x, 0, m, p["shift"], INT8_MIN, INT8_MAX, 0) for x, m in zip(args, p["multipliers"])]
        return np.concatenate(parts, axis=p["axis"])
    if node.op == "multiply":
        product = args[0].astype(np.int64) * args[1].astype(np.int64)
        return requantize(product, 0, p["multiplier"], p["shift"], INT8_MIN, INT8_MAX, channel_axis=1)
    if node.op == "mean":
        total = args[0].astype(np.int64).sum(axis=p["axes"], keepdims=p["keepdims"])
        return requantize(total, 0, p["multiplier"], p["shift"], INT8_MIN, INT8_MAX, channel_axis=1)
    if node.op == "avg_pool2d":
        return avg_pool2d(args[0], p)
    if node.op == "im2col":
        return im2col(args[0], p)
    if node.op == "clamp":
        return np.clip(args[0], p["lo"], p["hi"]).astype(np.int8)
    if node.op == "lut":
        return lookup(p["table"], args[0])
    if node.op == "passthrough" or (node.op == "float" and node.source.op in DATA_MOVEMENT_OPS):
        return passthrough(node, args[0])
    raise NotImplementedError(f"reference does not evaluate {node.op} ({node.source.op if node.source else ''})")


def run_reference(qgraph: QuantizedGraph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    values: dict[str, np.ndarray] = dict(inputs)
    for node in qgraph.nodes.values():
        if node.op != "input":
            values[node.name] = evaluate(node, [values[i] for i in node.inputs])
    return [values[name] for name in qgraph.outputs]
