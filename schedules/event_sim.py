"""Event-level simulation of a layer's instruction stream.

The load, compute and store modules each execute their instructions in program order and run
concurrently; an instruction starts when its module is free and every instruction it depends on
(VTA's dependency tokens) has finished. DMA transfers (2-D loads and stores, micro-op and
accumulator loads) pay the description's per-transfer latency and then move their bytes over
the one DRAM port, which serialises data from all modules. GEMM issues one micro-op per cycle;
the ALU retires `alu.vectors_per_cycle` accumulator vectors per cycle.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from codesign.schedules.program import COMPUTE, LOAD, STORE, LayerProgram, build_program
from codesign.schedules.tile_geometry import tile_geometry


@dataclasses.dataclass(frozen=True)
class LayerTiming:
    cycles: float
    gemm_cycles: float  # GEMM core busy (micro-ops, reset included)
    alu_cycles: float
    dram_cycles: float  # DRAM port busy moving data
    dram_bytes: int
    macs: int
    load_cycles: float = 0.0  # load module busy (DRAM latency and waits for the port included)
    store_cycles: float = 0.0  # store module busy

    def utilization(self, hw) -> float:
        """Useful MACs over what the GEMM core could do in the layer's cycles."""
        return self.macs / (self.cycles * hw.macs_per_cycle) if self.cycles else 0.0

    @property
    def bound(self) -> str:
        """compute or memory when that resource is busy most of the time, else pipeline."""
        compute, memory = (self.gemm_cycles + self.alu_cycles) / self.cycles, self.dram_cycles / self.cycles
        if max(compute, memory) < 0.75:
            return "pipeline"
        return "compute" if compute >= memory else "memory"


def compute_cycles(kind: str, iterations: int, hw) -> float:
    if kind == "ALU":
        return math.ceil(iterations / hw.alu_vectors_per_cycle)
    return float(iterations)  # GEMM and GEMM_RESET: one micro-op per cycle


def simulate_program(program: LayerProgram, hw, trace: list | None = None) -> LayerTiming:
    """Discrete-event run: the next event is always the earliest one any module can start (ties
    to the lower instruction index); DMA transfers get the DRAM port in the order they reach it
    (after their latency). With `trace`, (instruction index, start, end) is appended for every
    instruction."""
    instructions = program.instructions
    modules = (LOAD, COMPUTE, STORE)
    queues = [[i for i, ins in enumerate(instructions) if ins.module == m] for m in modules]
    position, module_free, module_busy = [0, 0, 0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    end: list[float | None] = [None] * len(instructions)
    start: dict[int, float] = {}
    dram_free = gemm = alu = dram = 0.0
    transfers_done = [0, 0, 0]  # of each module's instruction partway through its 2-D transfers

    def head(m: int) -> tuple | None:
        """(event time, instruction index, ready time) of module m's next instruction, or None
        when it has none or waits for an unfinished one. A DMA transfer's event is when, after
        its latency, it reaches the DRAM port."""
        if position[m] == len(queues[m]):
            return None
        index = queues[m][position[m]]
        ins, ready = instructions[index], module_free[m]
        for dep in ins.deps:
            if (dep_end := end[dep]) is None:
                return None
            ready = max(ready, dep_end)
        return (ready + hw.dram_latency_cycles if ins.transfers else ready), index, ready

    heads = [head(m) for m in range(3)]
    while True:
        m = -1
        for k in range(3):
            if heads[k] is not None and (m < 0 or heads[k][:2] < heads[m][:2]):
                m = k
        if m < 0:
            break
        event, index, ready = heads[m]
        ins = instructions[index]
        start.setdefault(index, ready)
        if ins.transfers:
            data_start = max(event, dram_free)
            dram_free = module_free[m] = data_start + ins.nbytes / ins.transfers / hw.dram_bytes_per_cycle
            transfers_done[m] += 1
            if transfers_done[m] < ins.transfers:
                heads[m] = head(m)  # the instruction's next 2-D transfer; nothing else changed
                continue
            transfers_done[m] = 0
            dram += ins.nbytes / hw.dram_bytes_per_cycle
        else:
            busy = compute_cycles(ins.kind, ins.iterations, hw)
            module_free[m] = ready + busy
            if ins.kind == "ALU":
                alu += busy
            else:
                gemm += busy
        end[index] = module_free[m]
        module_busy[m] += end[index] - start[index]
        position[m] += 1
        # A finished instruction may release a waiting module; a module already able to start
        # keeps its head (its ready time depends on nothing that changed).
        heads = [head(k) if k == m or heads[k] is None else heads[k] for k in range(3)]
        if trace is not None:
            trace.append((index, start[index], end[index]))
    total = max(end, default=0.0)
    return LayerTiming(total, gemm, alu, dram, program.dram_bytes, program.macs, module_busy[0], module_busy[2])


@dataclasses.dataclass(frozen=True)
class PortTiming:
    """What the event simulation reads of a description besides the program's geometry."""

    dram_latency_cycles: float
    dram_bytes_per_cycle: float
    alu_vectors_per_cycle: float


@functools.lru_cache(maxsize=1 << 16)
def tiling_event_cycles(shape, alu_ops: tuple, tiling, core, timing: PortTiming) -> float:
    """Cycles of a layer's instruction stream under `tiling` on the core geometry `core` with the
    DRAM port and ALU `timing` (the schedule mapper's "auto" times its best few candidates so).
    Remembered: designs that differ only in scratchpad sizes share their candidates' timings."""
    return simulate_program(_tiling_program(shape, alu_ops, tiling, core), timing).cycles


@functools.lru_cache(maxsize=64)
def _tiling_program(shape, alu_ops: tuple, tiling, core) -> LayerProgram:
    """One program serves every DRAM port and ALU timing a sweep prices it with."""
    return build_program(shape, tile_geometry(shape, tiling, core), core, list(alu_ops), tiling.virtual_threads)
