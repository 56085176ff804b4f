"""Instruction accounting against VTA's published fsim counters (../shared/notes/vta-reference.md)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from codesign.hardware import load_hardware, preset_names
from codesign.plan import AluOp
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import choose_tiling
from codesign.schedules.packed_conv2d import packed_conv2d_func, schedule_packed_conv2d
from codesign.schedules.program import LayerProgram, build_program
from codesign.schedules.schedule_walk import walk_schedule
from codesign.schedules.tile_geometry import input_windows_inside, tile_counts, tile_geometry
from codesign.schedules.tiling import Tiling, kernel_uops

VTA = load_hardware("vta_default")
# VTA tutorials' requantization: SHR 8, MAX 0, MIN 127, all immediates.
VTA_TUTORIAL_ALU = [AluOp("SHR"), AluOp("MAX"), AluOp("MIN")]


def counters_for(shape: ConvShape, tiling: Tiling, alu_ops) -> dict[str, int]:
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, VTA, 0, 127), tiling, VTA)
    facts = walk_schedule(scheduled)
    assert facts.tiling(tiling.virtual_threads) == tiling
    program = build_program(shape, facts, VTA, alu_ops, tiling.virtual_threads)
    assert instruction_tally(program) == program.counters()
    return program.counters()


def instruction_tally(program: LayerProgram) -> dict[str, int]:
    """The counters as fsim counts them: bytes of every load and store, GEMM micro-ops and ALU
    vector ops of every instruction (reset GEMMs not counted)."""
    kinds = {
        "LOAD_INP": "inp_load_nbytes",
        "LOAD_WGT": "wgt_load_nbytes",
        "LOAD_ACC": "acc_load_nbytes",
        "LOAD_UOP": "uop_load_nbytes",
        "STORE": "out_store_nbytes",
        "GEMM": "gemm_counter",
        "ALU": "alu_counter",
    }
    totals = dict.fromkeys(kinds.values(), 0)
    for ins in program.instructions:
        if ins.kind in kinds:
            totals[kinds[ins.kind]] += ins.iterations if ins.kind in ("GEMM", "ALU") else ins.nbytes
    return totals


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


GEOMETRY_SHAPES = [
    ConvShape(1, 1, 64, 64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1),
    ConvShape(1, 1, 3, 64, 224, 224, 7, 7, 2, 2, 3, 3, 3, 3),
    ConvShape(1, 2, 40, 24, 9, 13, 5, 3, 2, 1, 2, 0, 1, 1),
    ConvShape.dense(16, 64, 64, groups=4),
]


@pytest.mark.parametrize("shape", GEOMETRY_SHAPES)
def test_walked_counters_agree_with_the_geometry(shape):
    """Bytes and operations from the TIR walk equal what the tiling implies."""
    hw = load_hardware("batched_4x16x16") if shape.batch > 1 else VTA
    tiling = choose_tiling(shape, hw)
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, 0, 127), tiling, hw)
    facts = walk_schedule(scheduled)
    assert facts.tiling(tiling.virtual_threads) == tiling
    program = build_program(shape, facts, hw, VTA_TUTORIAL_ALU, tiling.virtual_threads)
    counters = program.counters()
    assert instruction_tally(program) == counters
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


def several_tiles(shape: ConvShape, hw) -> Tiling:
    """The smallest blocks, and rows and columns split in two or more tiles where they can be."""

    def split(n: int) -> int:
        return max((d for d in range(1, n) if n % d == 0), default=1)

    return Tiling(1, 1, 1, split(shape.out_h), split(shape.out_w))


@pytest.mark.parametrize("shape", [*GEOMETRY_SHAPES, ConvShape(1, 1, 32, 32, 17, 17, 3, 3, 1, 1, 4, 4, 4, 4, 4, 4)])
@pytest.mark.parametrize("preset", preset_names())
def test_the_walked_schedule_has_the_shared_tile_geometry(shape, preset):
    """The TIR walk (the kernel as it runs) and tile_geometry (from the tiling) agree."""
    hw = load_hardware(preset)
    double = dataclasses.replace(several_tiles(shape, hw), virtual_threads=2)
    for tiling in (choose_tiling(shape, hw), several_tiles(shape, hw), double):
        walked = walk_schedule(schedule_packed_conv2d(packed_conv2d_func(shape, hw, 0, 127), tiling, hw))
        geometry = tile_geometry(shape, tiling, hw)
        assert geometry.same_tiles(walked), (walked, geometry)
        assert walked.gemm_uops == geometry.tiles * geometry.steps * math.prod(geometry.gemm_loops)


@pytest.mark.parametrize("shape", [*GEOMETRY_SHAPES, ConvShape(1, 1, 8, 8, 12, 10, 3, 5, 2, 1, 1, 0, 2, 3, 3, 2)])
def test_input_windows_inside_count_the_pixels_each_tile_reads(shape):
    """Each tile loads its window from the first to the last input row (column) its outputs read,
    the part inside the input."""
    hw = load_hardware("batched_4x16x16")
    tiling = several_tiles(shape, hw)

    def inside(first_output: int, outputs: int, stride: int, kernel: int, dilation: int, pad: int, size: int):
        read = [(first_output + o) * stride + k * dilation - pad for o in range(outputs) for k in range(kernel)]
        return len(set(range(min(read), max(read) + 1)) & set(range(size)))

    expected = [
        (
            inside(y0, tiling.h_tile, shape.stride_h, shape.kernel_h, shape.dilation_h, shape.pad_top, shape.in_h),
            inside(x0, tiling.w_tile, shape.stride_w, shape.kernel_w, shape.dilation_w, shape.pad_left, shape.in_w),
        )
        for y0 in range(0, shape.out_h, tiling.h_tile)
        for x0 in range(0, shape.out_w, tiling.w_tile)
    ]
    channel_tiles = tile_counts(shape, tiling, hw).channel_tiles
    assert input_windows_inside(shape, tiling, hw) == expected * channel_tiles
