"""Instruction accounting against VTA's published fsim counters (../shared/notes/vta-reference.md)."""

from __future__ import annotations

import pytest

from codesign.hardware import load_hardware
from codesign.plan import AluOp
from codesign.schedules.layer import ConvShape
from codesign.schedules.packed_conv2d import packed_conv2d_func, schedule_packed_conv2d
from codesign.schedules.tiling import Tiling, choose_tiling, kernel_uops
from codesign.simulator.program import build_program
from codesign.simulator.schedule_walk import walk_schedule

VTA = load_hardware("vta_default")
# VTA tutorials' requantization: SHR 8, MAX 0, MIN 127, all immediates.
VTA_TUTORIAL_ALU = [AluOp("SHR"), AluOp("MAX"), AluOp("MIN")]


def counters_for(shape: ConvShape, tiling: Tiling, alu_ops) -> dict[str, int]:
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, VTA, 0, 127), tiling, VTA)
    facts = walk_schedule(scheduled)
    assert facts.tiling(tiling.virtual_threads) == tiling
    return build_program(shape, facts, VTA, alu_ops, tiling.virtual_threads).counters()


def test_matrix_multiply_tutorial():
    """A: (1x256).(256x256), input and weight loaded per 16-wide K slice, no ALU."""
    counters = counters_for(ConvShape.dense(1, 256, 256), Tiling(1, 16, 1, 1, 1), [])
    assert counters == {
        "inp_load_nbytes": 256,
        "wgt_load_nbytes": 65536,
        "acc_load_nbytes": 0,
        "uop_load_nbytes": 8,
        "out_store_nbytes": 256,
        "gemm_counter": 256,
        "alu_counter": 0,
    }


def test_matrix_multiply_opt_tutorial():
    """B: (1x1024).(1024x1024) in blocks of 16 output and 16 K blocks; SHR, MAX, MIN."""
    counters = counters_for(ConvShape.dense(1, 1024, 1024), Tiling(1, 16, 16, 1, 1), VTA_TUTORIAL_ALU)
    assert counters == {
        "inp_load_nbytes": 4096,
        "wgt_load_nbytes": 1048576,
        "acc_load_nbytes": 0,
        "uop_load_nbytes": 20,
        "out_store_nbytes": 1024,
        "gemm_counter": 4096,
        "alu_counter": 192,
    }


def test_convolution_opt_tutorial():
    """C: ResNet-18's 3x3 conv at 14x14, 256 -> 256 channels, oc 8 / ic 1 / h 7 / w 14 blocks,
    2 virtual threads, padding done by the DMA load."""
    shape = ConvShape(1, 1, 256, 256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    counters = counters_for(shape, Tiling(1, 8, 1, 7, 14, virtual_threads=2), VTA_TUTORIAL_ALU)
    assert counters == {
        "inp_load_nbytes": 114688,
        "wgt_load_nbytes": 1179648,
        "acc_load_nbytes": 0,
        "uop_load_nbytes": 1144,
        "out_store_nbytes": 50176,
        "gemm_counter": 451584,
        "alu_counter": 9408,
    }


def test_kernel_compression_keeps_two_affine_loops():
    assert kernel_uops((1, 8, 7, 1, 3, 3, 14)) == 126  # convolution_opt's GEMM kernel
    assert kernel_uops((1, 16, 1, 16, 1, 1, 1)) == 1
    assert kernel_uops((1, 1, 1, 1)) == 1


@pytest.mark.parametrize(
    "shape",
    [
        ConvShape(1, 1, 64, 64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1),
        ConvShape(1, 1, 3, 64, 224, 224, 7, 7, 2, 2, 3, 3, 3, 3),
        ConvShape(1, 2, 40, 24, 9, 13, 5, 3, 2, 1, 2, 0, 1, 1),
        ConvShape.dense(16, 64, 64, groups=4),
    ],
)
def test_walked_counters_agree_with_the_geometry(shape):
    """Bytes and operations from the TIR walk equal what the tiling implies."""
    hw = load_hardware("batched_4x16x16") if shape.batch > 1 else VTA
    tiling = choose_tiling(shape, hw)
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, 0, 127), tiling, hw)
    facts = walk_schedule(scheduled)
    assert facts.tiling(tiling.virtual_threads) == tiling
    counters = build_program(shape, facts, hw, VTA_TUTORIAL_ALU, tiling.virtual_threads).counters()
    packed = shape.blocks(hw)
    out_elements = shape.groups * packed.n_blocks * packed.co_blocks * shape.out_h * shape.out_w
    assert counters["gemm_counter"] == facts.gemm_uops  # every micro-op in the TIR, counted once
    assert counters["gemm_counter"] * hw.macs_per_cycle >= shape.macs
    assert counters["out_store_nbytes"] == out_elements * hw.out_elem_bytes
    assert counters["alu_counter"] == 3 * out_elements
    weight_bytes = (
        shape.groups * packed.co_blocks * packed.ci_blocks * shape.kernel_h * shape.kernel_w * hw.wgt_elem_bytes
    )
    output_tiles_per_weight = facts.tiles // (shape.groups * packed.co_blocks // tiling.co_tile)
    assert counters["wgt_load_nbytes"] == weight_bytes * output_tiles_per_weight
    # Input: every tile loads its window; padding is never transferred, so at most the window.
    window = facts.inp_window[0] * facts.inp_window[1] * facts.inp_window[2] * facts.inp_window[3]
    assert 0 < counters["inp_load_nbytes"] <= facts.tiles * facts.steps * window * hw.inp_elem_bytes


def test_convolution_opt_transfer_shapes_and_padding_on_load():
    """C's input loads: 8 rows (7 plus the halo row that is not padding) by 14 columns; the DMA
    inserts the other 9 x 16 - 8 x 14 = 32 zero elements; weights load as 8 x (1 x 3 x 3)."""
    shape = ConvShape(1, 1, 256, 256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    tiling = Tiling(1, 8, 1, 7, 14, virtual_threads=2)
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, VTA, 0, 127), tiling, VTA)
    program = build_program(shape, walk_schedule(scheduled), VTA, VTA_TUTORIAL_ALU, 2)
    loads = [i for i in program.instructions if i.kind == "LOAD_INP"]
    assert len(loads) == 64
    assert {(i.y_size, i.x_size, i.pad_elements, i.transfers) for i in loads} == {(8, 14, 32, 1)}
    weights = {(i.y_size, i.x_size) for i in program.instructions if i.kind == "LOAD_WGT"}
    assert weights == {(8, 9)}
    stores = [i for i in program.instructions if i.kind == "STORE"]
    assert {(i.y_size, i.x_size, i.transfers) for i in stores} == {(7, 14, 8)}
