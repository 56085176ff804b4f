"""Dilated convs on the accelerator: the scheduled kernel against the integer reference, the staged
input window, and the simulator's counters against a count written out here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_schedules import random_operands, run_scheduled
from test_sim_counters import VTA_TUTORIAL_ALU

from codesign.hardware import load_hardware
from codesign.reference import conv2d_accumulate, requantize
from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.gemm_intrin import ACC_SCOPE, INP_SCOPE, WGT_SCOPE
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import choose_tiling
from codesign.schedules.packed_conv2d import (
    check_footprint,
    measured_footprint,
    packed_conv2d_func,
    schedule_packed_conv2d,
)
from codesign.schedules.program import build_program
from codesign.schedules.schedule_walk import walk_schedule
from codesign.schedules.tiling import Tiling, fits, kernel_uops, tile_footprint


def dilated_shape(kernel: int, stride: int, dilation: tuple[int, int], **overrides) -> ConvShape:
    """20 -> 24 channels on a 13x11 input, 'same'-style padding with one row less at the bottom."""
    dh, dw = dilation
    top, left = (kernel - 1) * dh // 2, (kernel - 1) * dw // 2
    fields = dict(groups=1, batch=1, in_channels=20, out_channels=24, in_h=13, in_w=11, kernel_h=kernel)
    fields.update(kernel_w=kernel, stride_h=stride, stride_w=stride, dilation_h=dh, dilation_w=dw)
    fields.update(pad_top=top, pad_left=left, pad_bottom=max(top - 1, 0), pad_right=left)
    return ConvShape(**{**fields, **overrides})


def reference_output(shape: ConvShape, ops) -> np.ndarray:
    """codesign.reference's integer conv and requantization, group by group: (G, N, O, H, W) int8."""
    strides, dilation = (shape.stride_h, shape.stride_w), (shape.dilation_h, shape.dilation_w)
    padding = (shape.pad_top, shape.pad_left, shape.pad_bottom, shape.pad_right)
    groups = []
    for g in range(shape.groups):
        acc = conv2d_accumulate(ops.x[g], ops.w[g], strides, padding, 1, dilation)
        groups.append(requantize(acc, ops.bias[g], ops.multiplier[g], ops.shift[g], ops.lo, ops.hi, channel_axis=1))
    return np.stack(groups)


def small_tiling(shape: ConvShape) -> Tiling:
    """Several output tiles along each axis longer than one (their windows overlap) and one input
    block per step."""

    def largest_proper_divisor(n: int) -> int:
        return max((d for d in range(1, n) if n % d == 0), default=1)

    return Tiling(1, 1, 1, largest_proper_divisor(shape.out_h), largest_proper_divisor(shape.out_w))


@pytest.mark.parametrize("preset", ["vta_default", "edge_1x8x8", "wide_1x32x32"])
@pytest.mark.parametrize("dilation", [(2, 2), (3, 3), (2, 1)], ids=["d2", "d3", "d2x1"])
@pytest.mark.parametrize("stride", [1, 2], ids=["s1", "s2"])
@pytest.mark.parametrize("kernel", [3, 5], ids=["k3", "k5"])
def test_dilated_conv_equals_the_reference(preset, dilation, stride, kernel):
    hw = load_hardware(preset)
    shape = dilated_shape(kernel, stride, dilation)
    ops = random_operands(shape, seed=kernel * 100 + stride * 10 + dilation[0] * 3 + dilation[1])
    expected = reference_output(shape, ops)
    for tiling in (choose_tiling(shape, hw), small_tiling(shape)):
        got, _ = run_scheduled(shape, hw, tiling, ops)
        assert np.array_equal(got, expected), f"{shape.describe()} on {preset} with {tiling}"


def test_dilated_grouped_batched_conv_equals_the_reference():
    hw = load_hardware("batched_4x16x16")
    shape = dilated_shape(3, 1, (2, 3), groups=2, batch=3, in_channels=16, out_channels=20)
    ops = random_operands(shape, seed=7)
    for tiling in (choose_tiling(shape, hw), small_tiling(shape)):
        got, _ = run_scheduled(shape, hw, tiling, ops)
        assert np.array_equal(got, reference_output(shape, ops)), str(tiling)


def rows_read(tile_rows: range, stride: int, kernel: int, dilation: int, pad: int) -> range:
    """Input rows (unpadded coordinates) from the first to the last one the tile's outputs read."""
    read = [y * stride + i * dilation - pad for y in tile_rows for i in range(kernel)]
    return range(min(read), max(read) + 1)


DILATED_LAYERS = [
    dilated_shape(3, 1, (2, 2)),
    dilated_shape(5, 2, (3, 3)),
    dilated_shape(3, 2, (2, 1)),
    dilated_shape(3, 1, (1, 4), in_channels=40, in_h=1, in_w=40, kernel_h=1, pad_top=0, pad_bottom=0),
]


@pytest.mark.parametrize("shape", DILATED_LAYERS, ids=lambda s: s.describe())
def test_the_whole_dilated_window_is_staged_in_the_input_buffer(shape):
    hw = load_hardware("vta_default")
    for tiling in (choose_tiling(shape, hw), small_tiling(shape)):
        scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, -128, 127), tiling, hw)
        facts = walk_schedule(scheduled)
        rows = rows_read(range(tiling.h_tile), shape.stride_h, shape.kernel_h, shape.dilation_h, 0)
        cols = rows_read(range(tiling.w_tile), shape.stride_w, shape.kernel_w, shape.dilation_w, 0)
        assert facts.inp_window == (tiling.n_tile, tiling.ci_tile, len(rows), len(cols))
        assert (shape.input_rows(tiling.h_tile), shape.input_cols(tiling.w_tile)) == (len(rows), len(cols))
        used, predicted = measured_footprint(scheduled, hw), tile_footprint(shape, tiling, hw)
        assert used == {INP_SCOPE: predicted.inp_bytes, WGT_SCOPE: predicted.wgt_bytes, ACC_SCOPE: predicted.acc_bytes}
        assert check_footprint(used, predicted, hw, tiling.virtual_threads) == []


def test_the_dilated_window_decides_what_fits():
    """A 3x3 conv dilated by 16 reads a 33x33 window for a single output: 8,712 bytes on edge_1x8x8's
    8 KiB input buffer does not fit, the same conv undilated does."""
    hw = load_hardware("edge_1x8x8")
    shape = ConvShape(1, 1, 8, 8, 16, 16, 3, 3, 1, 1, 16, 16, 16, 16, 16, 16)
    unit = Tiling(1, 1, 1, 1, 1)
    assert tile_footprint(shape, unit, hw).inp_bytes == 33 * 33 * 8
    assert not fits(tile_footprint(shape, unit, hw), hw)
    undilated = ConvShape(1, 1, 8, 8, 16, 16, 3, 3, 1, 1, 1, 1, 1, 1)
    assert fits(tile_footprint(undilated, unit, hw), hw)


def expected_counters(shape: ConvShape, tiling: Tiling, hw, alu_ops) -> dict[str, int]:
    """VTA fsim's counters of the layer, counted tile by tile from the geometry."""
    packed = shape.blocks(hw)
    steps = packed.ci_blocks // tiling.ci_tile
    channel_tiles = shape.groups * (packed.n_blocks // tiling.n_tile) * (packed.co_blocks // tiling.co_tile)
    inside = 0  # input elements (pixels) inside the image over all output tiles, per batch/channel block
    for y0 in range(0, shape.out_h, tiling.h_tile):
        rows = rows_read(range(y0, y0 + tiling.h_tile), shape.stride_h, shape.kernel_h, shape.dilation_h, shape.pad_top)
        for x0 in range(0, shape.out_w, tiling.w_tile):
            cols = range(x0, x0 + tiling.w_tile)
            cols = rows_read(cols, shape.stride_w, shape.kernel_w, shape.dilation_w, shape.pad_left)
            inside += len(set(rows) & set(range(shape.in_h))) * len(set(cols) & set(range(shape.in_w)))
    tiles = channel_tiles * (shape.out_h // tiling.h_tile) * (shape.out_w // tiling.w_tile)
    out_elements = shape.groups * packed.n_blocks * packed.co_blocks * shape.out_h * shape.out_w
    kernel = shape.kernel_h * shape.kernel_w
    gemm_nest = (tiling.n_tile, tiling.co_tile, tiling.h_tile, tiling.ci_tile, shape.kernel_h, shape.kernel_w)
    reset_nest = (tiling.n_tile, tiling.co_tile, tiling.h_tile, tiling.w_tile)
    uops = kernel_uops((*gemm_nest, tiling.w_tile)) + kernel_uops(reset_nest) + len(alu_ops)
    return {
        "inp_load_nbytes": channel_tiles * tiling.n_tile * packed.ci_blocks * inside * hw.inp_elem_bytes,
        "wgt_load_nbytes": tiles * steps * tiling.co_tile * tiling.ci_tile * kernel * hw.wgt_elem_bytes,
        "acc_load_nbytes": 0,
        "uop_load_nbytes": min(tiling.virtual_threads, tiles) * 4 * uops,
        "out_store_nbytes": out_elements * hw.out_elem_bytes,
        "gemm_counter": out_elements * packed.ci_blocks * kernel,
        "alu_counter": len(alu_ops) * out_elements,
    }


@pytest.mark.parametrize("shape", DILATED_LAYERS, ids=lambda s: s.describe())
@pytest.mark.parametrize("preset", ["vta_default", "edge_1x8x8"])
def test_dilated_layer_counters_equal_an_independent_count(shape, preset):
    hw = load_hardware(preset)
    double = dataclasses.replace(small_tiling(shape), virtual_threads=2)
    for tiling in (choose_tiling(shape, hw), small_tiling(shape), double):
        scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, 0, 127), tiling, hw)
        facts = walk_schedule(scheduled)
        assert facts.tiling(tiling.virtual_threads) == tiling
        program = build_program(shape, facts, hw, VTA_TUTORIAL_ALU, tiling.virtual_threads)
        assert program.counters() == expected_counters(shape, tiling, hw, VTA_TUTORIAL_ALU)
        # The analytic model moves the same bytes as the instruction stream.
        features = layer_features(shape, tiling, hw, VTA_TUTORIAL_ALU)
        assert features["inp_bytes"][0] == program.counters()["inp_load_nbytes"]
        analytic = estimate(features, hw.dram_latency_cycles, hw.dram_bytes_per_cycle, hw.alu_vectors_per_cycle)
        assert analytic["dram_bytes"][0] == program.dram_bytes
