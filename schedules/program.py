"""A layer's VTA instruction stream, and the counters VTA's functional simulator reports.

Per output tile (virtual threads interleave their tiles step by step, as VTA's do):
    load:    LOAD_UOP (first use of each micro-op kernel per thread; the runtime caches them)
    compute: GEMM_RESET
    per input-channel step:
        load:    LOAD_INP (one 2-D transfer per batch/channel block, `input_gather` of them for
                 a fused int4 core; padding inserted by the DMA, not transferred), LOAD_WGT
                 (one 2-D transfer)
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
    writer = _ProgramWriter(shape, geometry, hw, alu_ops, virtual_threads)
    threads = max(1, min(virtual_threads, geometry.tiles))
    for first in range(0, geometry.tiles, threads):
        writer.write_group(range(first, min(first + threads, geometry.tiles)))
    features = layer_features(shape, writer.tiling, hw, alu_ops)
    return LayerProgram(writer.program, shape.macs, threads, writer.kernel_sizes, features)


class _ProgramWriter:
    """Appends a layer's instructions one group of tiles at a time (a tile per virtual thread:
    the group's first tile is thread 0), keeping per thread the instructions its next ones
    depend on."""

    def __init__(self, shape: ConvShape, geometry: TileGeometry, hw, alu_ops: list[AluOp], virtual_threads: int):
        self.geometry, self.hw, self.alu_ops = geometry, hw, alu_ops
        self.tiling = geometry.tiling(virtual_threads)
        n_tile, co_tile, h_tile, w_tile = geometry.out_window
        self.acc_elements = n_tile * co_tile * h_tile * w_tile
        self.gemm_per_step = math.prod(geometry.gemm_loops) * hw.gemm_passes
        self.kernel_sizes = {
            "reset": kernel_uops(geometry.reset_loops),
            "gemm": kernel_uops(geometry.gemm_loops),
            "alu": len(alu_ops),
        }
        self.uop_bytes = UOP_BYTES * sum(self.kernel_sizes.values())
        self.vector_operands = sum(op.vector for op in alu_ops)
        self.windows = input_windows_inside(shape, self.tiling, hw)
        self.program: list[Instruction] = []
        self.last_compute: dict[int, int] = {}  # per thread: its latest compute instruction
        self.last_gemm: dict[int, int] = {}  # per thread: the latest GEMM reading its input/weight buffers
        self.last_store: dict[int, int] = {}
        self.uops: dict[int, int] = {}  # per thread: the load of its micro-op kernels
        self.operands: dict[int, int] = {}  # per thread: the latest load of its ALU operands
        self.last_alu: dict[int, int] = {}

    def emit(self, ins: Instruction) -> int:
        self.program.append(ins)
        return len(self.program) - 1

    def write_group(self, group: range) -> None:
        """The tiles of `group`, their instructions interleaved step by step as VTA's threads do."""
        for thread, tile in enumerate(group):
            self.start_tile(tile, thread)
        for _ in range(self.geometry.steps):
            loads = {thread: self.load_step(tile, thread) for thread, tile in enumerate(group)}
            for thread in range(len(group)):
                self.gemm(thread, loads[thread])
        for thread in range(len(group)):
            if self.vector_operands:  # after the step loads; overwrites operands the last ALU has read
                self.load_alu_operands(thread)
        for thread in range(len(group)):
            for _op in self.alu_ops:
                self.alu(thread)
        for thread in range(len(group)):
            self.store(thread)

    def start_tile(self, tile: int, thread: int) -> None:
        """The thread's micro-op kernels (on its first tile), then the accumulators' reset."""
        if tile == thread:  # first tile of this thread: its micro-op kernels
            self.uops[thread] = self.emit(
                Instruction("LOAD_UOP", LOAD, thread, self.uop_bytes, 1, y_size=1, x_size=self.uop_bytes // UOP_BYTES)
            )
        deps = [self.last_store[thread]] if thread in self.last_store else []
        self.last_compute[thread] = self.emit(
            Instruction("GEMM_RESET", COMPUTE, thread, iterations=self.acc_elements, deps=deps)
        )

    def load_step(self, tile: int, thread: int) -> list[int]:
        """The input and weight loads of one input-channel step."""
        war = [self.last_gemm[thread]] if thread in self.last_gemm else []
        return [self.emit(self._load_input(tile, thread, war)), self.emit(self._load_weights(thread, war))]

    def _load_input(self, tile: int, thread: int, deps: list[int]) -> Instruction:
        inp_window, hw = self.geometry.inp_window, self.hw
        blocks = inp_window[0] * inp_window[1]
        transfers = blocks * hw.input_gather  # a fused int4 core gathers each element from two layout blocks
        rows, cols = self.windows[tile]
        nbytes = blocks * rows * cols * hw.inp_elem_bytes
        padding = inp_window[2] * inp_window[3] - rows * cols
        return Instruction(
            "LOAD_INP", LOAD, thread, nbytes, transfers, y_size=rows, x_size=cols, pad_elements=padding, deps=deps
        )

    def _load_weights(self, thread: int, deps: list[int]) -> Instruction:
        co_w, ci_w, kh, kw = self.geometry.wgt_window
        nbytes = co_w * ci_w * kh * kw * self.hw.wgt_elem_bytes
        return Instruction("LOAD_WGT", LOAD, thread, nbytes, 1, y_size=co_w, x_size=ci_w * kh * kw, deps=deps)

    def gemm(self, thread: int, loads: list[int]) -> None:
        deps = [*loads, self.last_compute[thread], self.uops[thread]]
        self.last_gemm[thread] = self.last_compute[thread] = self.emit(
            Instruction("GEMM", COMPUTE, thread, iterations=self.gemm_per_step, deps=deps)
        )

    def load_alu_operands(self, thread: int) -> None:
        war = [self.last_alu[thread]] if thread in self.last_alu else []
        co_tile = self.geometry.out_window[1]
        nbytes = self.vector_operands * co_tile * self.hw.acc_elem_bytes
        self.operands[thread] = self.emit(
            Instruction("LOAD_ACC", LOAD, thread, nbytes, self.vector_operands, y_size=1, x_size=co_tile, deps=war)
        )

    def alu(self, thread: int) -> None:
        deps = [self.last_compute[thread], *([self.operands[thread]] if thread in self.operands else [])]
        self.last_alu[thread] = self.last_compute[thread] = self.emit(
            Instruction("ALU", COMPUTE, thread, iterations=self.acc_elements, deps=deps)
        )

    def store(self, thread: int) -> None:
        n_tile, co_tile, h_tile, w_tile = self.geometry.out_window
        nbytes = self.acc_elements * self.hw.out_elem_bytes
        deps = [self.last_compute[thread]]
        store = Instruction("STORE", STORE, thread, nbytes, n_tile * co_tile, y_size=h_tile, x_size=w_tile, deps=deps)
        self.last_store[thread] = self.emit(store)
