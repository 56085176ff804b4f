"""The work a node of the integer program leaves on the host CPU: (operations, bytes moved).

Reshapes are free (views), and so are a tuple's parts and a split into contiguous blocks; layout
and elementwise ops move their inputs and outputs and do one to a few operations per element;
float ops with transcendental functions (softmax, layer norm, GELU ...) count more per element;
host convolutions count 2 per MAC. Accelerated layers add the host's packing of their input and
unpacking of their output, where `codesign.packed_layout` says the module converts (a chained
layer reads and writes the blocked layout as is), and elementwise ops on blocked tensors move
their padded sizes. Lowering records it in each LayerPlan; `host_seconds` turns it into time,
priced by the description's [host] (the simulator uses it, and quantization to place
narrow-group convs):

    seconds = overhead + max(ops / (clock * ops_per_cycle), bytes / (clock * bytes_per_cycle))

an op's fixed dispatch overhead plus whichever is longer, its arithmetic or its memory traffic.
"""

from __future__ import annotations

import math

from codesign.packed_layout import Layouts
from codesign.schedules.row_bands import band_input_width

FREE_OPS = {"reshape", "flatten", "squeeze", "expand_dims"}
# Arithmetic per output element of float host ops (exp, division and reductions count more).
FLOAT_OPS_PER_ELEMENT = {"softmax": 12, "layer_norm": 10, "gelu": 12, "sigmoid": 10, "tanh": 10, "exp": 8}


def _elements(shape) -> int:
    return math.prod(shape) if shape else 0


def node_work(node, qgraph, layouts: Layouts = Layouts()) -> tuple[float, float]:  # noqa: B008 (frozen)
    """(operations, bytes) the host spends on one node of the integer program; without `layouts`
    (quantization placing a layer, before layouts are planned), every layer converts."""
    inputs = [qgraph.nodes[i] for i in node.inputs]
    out = _elements(node.shape)
    if node.op == "lut" and node.params.get("fused_into"):  # looked up in its reader's pass
        return 0.0, 0.0
    if node.op in ("conv2d", "matmul") and node.placement == "accel":
        lookups = out if "table" in node.params else 0  # a row-banded conv's merged tables
        lookups += _elements(inputs[0].shape) if "input_table" in node.params else 0
        element_bytes = node.params.get("input_bits", 8) // 8  # a wide layer converts int16 values
        return float(lookups), _conversion_bytes(node, inputs, layouts) * element_bytes
    if node.name in layouts.packed:
        return _blocked_host_work(node, inputs, layouts)
    moved = sum(_elements(i.shape) * _itemsize(i.dtype) for i in inputs) + out * _itemsize(node.dtype)
    op = (
        node.source.op.rsplit(".", 1)[-1]
        if node.source is not None and node.op in ("passthrough", "float")
        else node.op
    )
    if node.op == "conv2d":
        return _host_conv_ops(node, out, _elements(inputs[0].shape)), moved
    if node.op == "float" and node.source.op == "gemm":  # a layer kept in float (--float-layers)
        weight = node.source.layer.weight
        reduction = weight[0].size if node.source.layer.kind == "conv2d" else inputs[0].shape[-1]
        return 2.0 * out * reduction, moved
    if op in FREE_OPS or op == "TupleGetItem" or (op == "split" and _splits_into_views(node, inputs[0].shape)):
        return 0.0, 0.0
    if op == "max_pool2d" or node.op == "avg_pool2d":
        return float(out * _pool_window(node)), moved
    return float(max(out, sum(_elements(i.shape) for i in inputs)) * _ops_per_element(node, op)), moved


def _host_conv_ops(node, out: int, read: int) -> float:
    """Two per MAC, one per output for a merged table's lookup, and one per input element
    read for a merged input table's (looked up as the conv pads its input)."""
    lookups = (out if "table" in node.params else 0) + (read if "input_table" in node.params else 0)
    return 2.0 * out * node.params["weight"][0].size + lookups


def _pool_window(node) -> int:
    """The cells a max or average pool reads per output."""
    return math.prod(int(k) for k in node.source.call.attrs.pool_size)


def _splits_into_views(node, in_shape) -> bool:
    """Does a split cut contiguous blocks (every axis before its own of length 1, e.g. channels
    at batch 1), so that its parts are views of its input?"""
    axis = int(node.source.call.attrs.axis) % len(in_shape)
    return all(size == 1 for size in in_shape[:axis])


def _ops_per_element(node, op: str) -> int:
    return FLOAT_OPS_PER_ELEMENT.get(op, 1 if node.op in ("passthrough", "clamp", "lut", "im2col") else 3)


def _conversion_bytes(node, inputs, layouts: Layouts) -> float:
    """Packing the inputs and unpacking the output an accelerated layer converts: read and
    write each once; and the pass that pads an input with its zero point (`quantize.prepadded`),
    on the blocks where the layer reads them as they are: it reads them and writes the padded ones."""
    packed_inputs = sum(_elements(i.shape) for i in inputs if not layouts.reads_packed(node, i.name))
    unpacked_output = _elements(node.shape) if layouts.writes_nchw(node) else 0
    if node.params.get("row_bands"):
        return _row_band_bytes(node, inputs[0], layouts)
    if "pad_value" not in node.params:
        return 2.0 * (packed_inputs + unpacked_output)
    n, c, h, w = inputs[0].shape
    top, left, bottom, right = node.params["padding"]
    padded = (n, c, h + top + bottom, w + left + right)
    if layouts.reads_packed(node, inputs[0].name):
        pad_pass = _elements(layouts.packed_shape(inputs[0].shape)) + _elements(layouts.packed_shape(padded))
        return pad_pass + 2.0 * unpacked_output
    return 2.0 * (packed_inputs + _elements(padded) + unpacked_output)


def _row_band_bytes(node, source, layouts: Layouts) -> float:
    """A depthwise conv on the core's row bands (schedules.row_bands, bands of the layout's
    block): the host reads its input (NCHW, or the blocks where it reads them as they are) and
    writes the rows padded and widened to whole bands, then reads the output bands and writes
    them (NCHW, or the blocks where it is computed blocked, unpacked too where a reader needs NCHW)."""
    pixels = layouts.block
    n, c, h, _ = source.shape
    top, _, bottom, _ = node.params["padding"]
    out_n, out_c, out_h, out_w = node.shape
    kernel_w, stride_w = node.params["weight"].shape[3], node.params["strides"][1]
    out_bands = math.ceil(out_w / pixels)
    rows_written = n * c * (h + top + bottom) * band_input_width(out_bands, kernel_w, stride_w, pixels)
    bands_read = out_n * out_c * out_h * out_bands * pixels
    blocked_in, blocked_out = layouts.reads_packed(node, source.name), node.name in layouts.packed
    read = _elements(layouts.packed_shape(source.shape) if blocked_in else source.shape)
    written = _elements(layouts.packed_shape(node.shape) if blocked_out else node.shape)
    unpacked = 2.0 * _elements(node.shape) if blocked_out and layouts.writes_nchw(node) else 0.0
    return float(read + rows_written + bands_read + written + unpacked)


def _blocked_host_work(node, inputs, layouts: Layouts) -> tuple[float, float]:
    """An int8 host op on blocked tensors, as on NCHW ones but at their padded sizes, plus
    unpacking its output where a consumer needs NCHW."""
    if node.op == "passthrough" and node.source.op in ("relax.split", "TupleGetItem"):
        return _blocked_split_work(node, inputs, layouts)
    out = _elements(layouts.packed_shape(node.shape))
    if node.op == "im2col":  # reads its NCHW input, writes the blocks (packed_layout.writes_blocks)
        return float(out), _elements(inputs[0].shape) + out
    read = sum(_elements(layouts.packed_shape(i.shape)) for i in inputs)
    unpacked = 2.0 * _elements(node.shape) if layouts.writes_nchw(node) else 0.0
    if node.op == "conv2d":
        ops = _host_conv_ops(node, out, read)
    elif node.op == "avg_pool2d" or (node.op == "passthrough" and node.source.op == "relax.nn.max_pool2d"):
        ops = float(out * _pool_window(node))
    else:
        ops = float(max(out, read) * _ops_per_element(node, node.op))
    return ops, read + out + unpacked


def _blocked_split_work(node, inputs, layouts: Layouts) -> tuple[float, float]:
    """A split of whole channel blocks cuts contiguous runs of the blocked layout when it has
    one row block (free, as a split into views is on NCHW tensors), else it copies them; a part
    is free, plus its unpacking where a consumer needs NCHW."""
    if node.source.op == "TupleGetItem":
        return 0.0, 2.0 * _elements(node.shape) if layouts.writes_nchw(node) else 0.0
    blocked = _elements(layouts.packed_shape(inputs[0].shape))
    row_blocks = layouts.packed_shape(inputs[0].shape)[1]
    return (0.0, 0.0) if row_blocks == 1 else (float(blocked), 2.0 * blocked)


def host_seconds(ops: float, nbytes: float, hw) -> float:
    """The host's time for (operations, bytes) of work, by the formula above."""
    if ops == 0 and nbytes == 0:
        return 0.0
    clock = hw.host_clock_mhz * 1e6
    return hw.host_op_overhead_us * 1e-6 + max(
        ops / (clock * hw.host_ops_per_cycle), nbytes / (clock * hw.host_bytes_per_cycle)
    )


def _itemsize(dtype: str) -> int:
    return {"int8": 1, "int16": 2}.get(dtype, 4)
