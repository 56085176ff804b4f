"""A layer's VTA instruction stream, and the counters VTA's functional simulator reports.

Per output tile (virtual threads interleave their tiles step by step, as VTA's do):
    load:    LOAD_UOP (first use of each micro-op kernel per thread; the runtime caches them)
    compute: GEMM_RESET
    per input-channel step:
        load:    LOAD_INP (one 2-D transfer per batch/channel block; padding inserted by the
                 DMA, not transferred), LOAD_WGT (one 2-D transfer)
        compute: GEMM
    load:    LOAD_ACC per vector ALU operand (bias, multiplier, shift), needed only by the ALU
    compute: ALU ops of the requantization
    store:   STORE (one 2-D transfer per batch/output-channel block)

Dependencies are VTA's tokens as explicit edges: a GEMM waits for its step's loads (RAW), a
load into a thread's buffers waits for the previous GEMM of that thread (WAR), a STORE waits
for the tile's ALU ops (RAW), and a thread's next GEMM_RESET waits for its previous STORE (WAR).
VTA issues micro-op and accumulator loads from its compute module; here the load module issues
them (micro-ops first, ALU operands after the tile's last input load), so that the compute
module only computes (the counters do not depend on which module moves the bytes).

Micro-op kernels: the first two non-unit loops of a kernel's loop nest are its affine loops,
the remaining loops are unrolled into the micro-op list (VTA's compression).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from codesign.plan import AluOp
from codesign.schedules.cost_model import layer_features, vta_counters
from codesign.schedules.layer import ConvShape
from codesign.schedules.tile_geometry import TileGeometry, input_windows_inside
from codesign.schedules.tiling import UOP_BYTES, kernel_uops

LOAD, COMPUTE, STORE = "load", "compute", "store"


@dataclasses.dataclass
class Instruction:
    kind: str  # LOAD_INP, LOAD_WGT, LOAD_UOP, LOAD_ACC, GEMM_RESET, GEMM, ALU, STORE
    module: str  # load | compute | store
    thread: int
    nbytes: int = 0  # bytes moved between DRAM and a scratchpad
    transfers: int = 0  # 2-D DMA transfers (each pays the DRAM latency)
    _: dataclasses.KW_ONLY
    y_size: int = 0  # shape of each transfer in scratchpad elements: rows ...
    x_size: int = 0  # ... by elements per row
    pad_elements: int = 0  # zero elements the DMA inserts per transfer (input padding)
    iterations: int = 0  # micro-op executions (GEMM) or vector operations (ALU)
    deps: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LayerProgram:
    instructions: list[Instruction]
    macs: int  # useful multiply-accumulates of the layer
    virtual_threads: int
    uop_kernel_sizes: dict[str, int]
    features: dict[str, np.ndarray]  # the cost model's features of the tiling (arrays of length 1)

    def counters(self) -> dict[str, int]:
        """VTA fsim's counters (reset GEMMs are not counted, as in fsim), from the one count of
        the cost model; the instructions move exactly these bytes."""
        return {key: int(value[0]) for key, value in vta_counters(self.features).items()}

    @property
    def dram_bytes(self) -> int:
        return sum(ins.nbytes for ins in self.instructions)


def build_program(
    shape: ConvShape, geometry: TileGeometry, hw, alu_ops: list[AluOp], virtual_threads: int = 1
) -> LayerProgram:
    """The instruction stream of a layer whose tiles lie as `geometry` says (the tiling's, or
    the ScheduleFacts the schedule walk read from the TIR)."""
    tiling = geometry.tiling(virtual_threads)
    n_tile, co_tile, h_tile, w_tile = geometry.out_window
    co_w, ci_w, kh, kw = geometry.wgt_window
    acc_elements = n_tile * co_tile * h_tile * w_tile
    gemm_per_step = math.prod(geometry.gemm_loops)
    kernel_sizes = {
        "reset": kernel_uops(geometry.reset_loops),
        "gemm": kernel_uops(geometry.gemm_loops),
        "alu": len(alu_ops),
    }
    uop_bytes = UOP_BYTES * sum(kernel_sizes.values())
    vector_operands = sum(op.vector for op in alu_ops)
    windows = input_windows_inside(shape, tiling, hw)
    window_elements = geometry.inp_window[2] * geometry.inp_window[3]
    wgt_bytes = co_w * ci_w * kh * kw * hw.wgt_elem_bytes
    inp_transfers = geometry.inp_window[0] * geometry.inp_window[1]

    program: list[Instruction] = []

    def load_input(tile: int, thread: int, deps: list[int]) -> Instruction:
        rows, cols = windows[tile]
        nbytes = inp_transfers * rows * cols * hw.inp_elem_bytes
        padding = window_elements - rows * cols
        return Instruction(
            "LOAD_INP", LOAD, thread, nbytes, inp_transfers, y_size=rows, x_size=cols, pad_elements=padding, deps=deps
        )

    def emit(ins: Instruction) -> int:
        program.append(ins)
        return len(program) - 1

    last_compute: dict[int, int] = {}  # per thread: its latest compute instruction
    last_gemm: dict[int, int] = {}  # per thread: the latest GEMM reading its input/weight buffers
    last_store: dict[int, int] = {}
    uops: dict[int, int] = {}  # per thread: the load of its micro-op kernels
    operands: dict[int, int] = {}  # per thread: the latest load of its ALU operands
    last_alu: dict[int, int] = {}
    threads = max(1, min(virtual_threads, geometry.tiles))
    for first in range(0, geometry.tiles, threads):
        group = range(first, min(first + threads, geometry.tiles))
        for tile in group:
            thread = tile - first
            if tile == thread:  # first tile of this thread: its micro-op kernels
                uops[thread] = emit(
                    Instruction("LOAD_UOP", LOAD, thread, uop_bytes, 1, y_size=1, x_size=uop_bytes // UOP_BYTES)
                )
            deps = [last_store[thread]] if thread in last_store else []
            last_compute[thread] = emit(Instruction("GEMM_RESET", COMPUTE, thread, iterations=acc_elements, deps=deps))
        for _ in range(geometry.steps):
            loads = {}
            for tile in group:
                thread = tile - first
                war = [last_gemm[thread]] if thread in last_gemm else []
                loads[thread] = [
                    emit(load_input(tile, thread, war)),
                    emit(
                        Instruction(
                            "LOAD_WGT", LOAD, thread, wgt_bytes, 1, y_size=co_w, x_size=ci_w * kh * kw, deps=war
                        )
                    ),
                ]
            for tile in group:
                thread = tile - first
                deps = [*loads[thread], last_compute[thread], uops[thread]]
                last_gemm[thread] = last_compute[thread] = emit(
                    Instruction("GEMM", COMPUTE, thread, iterations=gemm_per_step, deps=deps)
                )
        for tile in group:
            thread = tile - first
            if vector_operands:  # after the step loads; overwrites operands the last ALU has read
                war = [last_alu[thread]] if thread in last_alu else []
                acc_bytes = vector_operands * co_tile * hw.acc_elem_bytes
                operands[thread] = emit(
                    Instruction(
                        "LOAD_ACC", LOAD, thread, acc_bytes, vector_operands, y_size=1, x_size=co_tile, deps=war
                    )
                )
        for tile in group:
            thread = tile - first
            for _op in alu_ops:
                deps = [last_compute[thread], *([operands[thread]] if thread in operands else [])]
                last_alu[thread] = last_compute[thread] = emit(
                    Instruction("ALU", COMPUTE, thread, iterations=acc_elements, deps=deps)
                )
        for tile in group:
            thread = tile - first
            out_bytes = acc_elements * hw.out_elem_bytes
            last_store[thread] = emit(
                Instruction(
                    "STORE",
                    STORE,
                    thread,
                    out_bytes,
                    n_tile * co_tile,
                    y_size=h_tile,
                    x_size=w_tile,
                    deps=[last_compute[thread]],
                )
            )
    features = layer_features(shape, tiling, hw, alu_ops)
    return LayerProgram(program, shape.macs, threads, kernel_sizes, features)
