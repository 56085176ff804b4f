"""Narrow-input convs (a first layer on grey or RGB images) unfolded: im2col on the host, a 1x1
conv on the GEMM core.

A conv with fewer input channels than the core's `block_in` fills one input block per kernel
tap, mostly with zeros: mnist-8's first conv (1 channel, 5x5) uses 1/16 of vta_default's lanes,
ResNet-18's (3 channels, 7x7) 3/16. Unfolded, the input becomes (N, C*KH*KW, OH, OW), every
output pixel's receptive field as channels (channel c*KH*KW + i*KW + j holds tap (i, j) of
input channel c, zero where the tap falls in the padding), and the conv a 1x1 conv by the
weight reshaped to (O, C*KH*KW, 1, 1): the same sums of the same products, so the integers are
the conv's. The core then pads C*KH*KW to whole blocks once (25 -> 32 lanes for mnist-8's, 147
-> 160 for ResNet-18's), at the price of the host writing the unfolded input (KH*KW/stride^2
times the input), in the blocks the core reads where the layers chain.

Whether that pays is a question of modelled cost (`unfolding_pays`); quantization decides it
per layer, as it places narrow-group convs (schedules.narrow_groups).
"""

from __future__ import annotations

import math

from codesign.host_work import host_seconds
from codesign.schedules.layer import ConvShape
from codesign.schedules.narrow_groups import accelerator_seconds
from codesign.schedules.tiling import TilingError


def is_narrow_input(shape: ConvShape, block_in: int) -> bool:
    """A dense (one group) conv with a kernel wider than 1x1 whose input channels fill less than one block."""
    return shape.groups == 1 and shape.kernel_h * shape.kernel_w > 1 and shape.in_channels < block_in


def unfolded(shape: ConvShape) -> ConvShape:
    """The 1x1 conv the core runs for `shape` after im2col."""
    return ConvShape(
        groups=1,
        batch=shape.batch,
        in_channels=shape.in_channels * shape.kernel_h * shape.kernel_w,
        out_channels=shape.out_channels,
        in_h=shape.out_h,
        in_w=shape.out_w,
    )


def unfolding_pays(shape: ConvShape, hw, alu_ops=(), weight_bits: int | None = None) -> bool:
    """Is the unfolded conv modelled faster? The core's time for each (analytic cost model under
    the tile rule's tiling, as `accelerator_seconds`), the unfolded one plus the host's extra
    work: the im2col (one op per element), which on a core whose blocks chain writes the blocks
    the conv reads (packed_layout.writes_blocks: reading the input and writing the columns
    instead of packing the input, two bytes per element of it), else writes NCHW columns that
    are packed in turn (two bytes per element, and two more for packing the columns instead of
    the input)."""
    core = hw.for_layer_weights(weight_bits)
    if not is_narrow_input(shape, core.block_in):
        return False
    flat = unfolded(shape)
    try:
        direct_seconds = accelerator_seconds(shape, hw, alu_ops, weight_bits)
        unfolded_seconds = accelerator_seconds(flat, hw, alu_ops, weight_bits)
    except TilingError:
        return False
    columns = flat.batch * flat.in_channels * flat.in_h * flat.in_w
    inputs = shape.batch * shape.in_channels * shape.in_h * shape.in_w
    chains = core.input_block == core.block_out == hw.block_out
    extra_bytes = columns - inputs if chains else 2.0 * columns + 2.0 * (columns - inputs)
    extra_host = host_seconds(columns, max(extra_bytes, 0), hw)
    return unfolded_seconds + extra_host < direct_seconds


def unfolded_weight(weight):
    """(O, C, KH, KW) -> (O, C*KH*KW, 1, 1), in the order im2col writes the taps."""
    return weight.reshape(weight.shape[0], math.prod(weight.shape[1:]), 1, 1)
