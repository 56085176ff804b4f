"""Narrow-group convs (depthwise included) on the GEMM core, as block-diagonal super-groups.

A grouped conv with fewer channels per group than the core's `block_in` would fill one input
block per group, mostly with zeros. Packing k = block_in // channels_per_group consecutive groups
into one super-group, whose weight is block-diagonal (each group's weights on the diagonal, zeros
between them), runs k groups per block instead: the grouped packed-conv kernel computes it
unchanged. The zeros add nothing, so the integers equal the grouped conv's; the groups and
channels a last, partial super-group lacks are zero-padded (zero inputs and weights), and their
outputs dropped.

Whether that beats the host is a question of modelled cost (`accelerator_seconds` here against
`codesign.host_work.host_seconds`); quantization decides it per layer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import select_tiling


def is_narrow(shape: ConvShape, block_in: int) -> bool:
    """A grouped conv whose groups each fill less than one input block of the core."""
    return shape.groups > 1 and shape.in_channels < block_in


def super_grouped(shape: ConvShape, block_in: int) -> ConvShape:
    """The conv the core runs for a narrow-group one: k groups per super-group, as many
    super-groups as it takes (the last one padded). Other convs are returned as they are."""
    if not is_narrow(shape, block_in):
        return shape
    k = block_in // shape.in_channels
    return dataclasses.replace(
        shape,
        groups=math.ceil(shape.groups / k),
        in_channels=k * shape.in_channels,
        out_channels=k * shape.out_channels,
    )


def block_diagonal_weight(weight: np.ndarray, shape: ConvShape) -> np.ndarray:
    """A grouped conv's weight (O, I/g, KH, KW) as `shape`'s (G, O/G, I/G, KH, KW): for a
    super-grouped `shape`, each super-group's groups on its diagonal, zeros elsewhere."""
    group_inputs, kh, kw = weight.shape[1:]
    k = shape.in_channels // group_inputs
    group_outputs = shape.out_channels // k
    groups = weight.shape[0] // group_outputs
    by_group = np.zeros((shape.groups * k, group_outputs, group_inputs, kh, kw), dtype=weight.dtype)
    by_group[:groups] = weight.reshape(groups, group_outputs, group_inputs, kh, kw)
    by_group = by_group.reshape(shape.groups, k, group_outputs, group_inputs, kh, kw)
    diagonal = np.zeros((shape.groups, k, group_outputs, k, group_inputs, kh, kw), dtype=weight.dtype)
    for member in range(k):
        diagonal[:, member, :, member] = by_group[:, member]
    return diagonal.reshape(shape.groups, shape.out_channels, shape.in_channels, kh, kw)


def accelerator_seconds(shape: ConvShape, hw, alu_ops=(), weight_bits: int | None = None, mode: str = "rule") -> float:
    """The analytic cost model's time for `shape` on the core, under the tiling the mapper
    picks for it (as lowering does, and as `simulate --model analytic` prices it). Raises
    TilingError when no tiling fits the scratchpads."""
    tiling = select_tiling(shape, hw, alu_ops, weight_bits, mode)
    layer_hw = hw.for_layer_weights(weight_bits)
    features = layer_features(shape, tiling, layer_hw, alu_ops)
    cycles = estimate(features, hw.dram_latency_cycles, hw.dram_bytes_per_cycle, hw.alu_vectors_per_cycle)["cycles"]
    return float(cycles[0]) / (hw.clock_mhz * 1e6)
