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
import math

from codesign.simulator.program import COMPUTE, LOAD, STORE, LayerProgram


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
    """Discrete-event run: the next event is always the earliest one any module can start;
    DMA transfers get the DRAM port in the order they reach it (after their latency).
    With `trace`, (instruction index, start, end) is appended for every instruction."""
    instructions = program.instructions
    queues = {m: [i for i, ins in enumerate(instructions) if ins.module == m] for m in (LOAD, COMPUTE, STORE)}
    position = dict.fromkeys(queues, 0)
    module_free = dict.fromkeys(queues, 0.0)
    transfers_done = dict.fromkeys(queues, 0)
    end: list[float | None] = [None] * len(instructions)
    start: dict[int, float] = {}
    dram_free = gemm = alu = dram = 0.0
    module_busy = dict.fromkeys(queues, 0.0)
    while (best := _next_event(instructions, queues, position, module_free, end, hw)) is not None:
        event, index, module, ready = best
        ins = instructions[index]
        start.setdefault(index, ready)
        if ins.transfers:
            data_start = max(event, dram_free)
            dram_free = module_free[module] = data_start + ins.nbytes / ins.transfers / hw.dram_bytes_per_cycle
            transfers_done[module] += 1
            if transfers_done[module] < ins.transfers:
                continue  # the instruction's next 2-D transfer
            transfers_done[module] = 0
            dram += ins.nbytes / hw.dram_bytes_per_cycle
        else:
            busy = compute_cycles(ins.kind, ins.iterations, hw)
            module_free[module] = ready + busy
            if ins.kind == "ALU":
                alu += busy
            else:
                gemm += busy
        end[index] = module_free[module]
        module_busy[module] += end[index] - start[index]
        position[module] += 1
        if trace is not None:
            trace.append((index, start[index], end[index]))
    total = max(end, default=0.0)
    return LayerTiming(total, gemm, alu, dram, program.dram_bytes, program.macs, module_busy[LOAD], module_busy[STORE])


def _next_event(instructions, queues, position, module_free, end, hw) -> tuple | None:
    """(event time, instruction index, module, ready time) of the earliest event any module can
    start (ties to the lower index), or None when no module's next instruction can start.
    A DMA transfer's event is when, after its latency, it reaches the DRAM port."""
    best = None
    for module, queue in queues.items():
        if position[module] == len(queue):
            continue
        index = queue[position[module]]
        ins = instructions[index]
        dep_ends = [end[d] for d in ins.deps]
        if any(e is None for e in dep_ends):
            continue
        ready = max([module_free[module], *dep_ends])
        event = ready + hw.dram_latency_cycles if ins.transfers else ready
        if best is None or (event, index) < best[:2]:
            best = (event, index, module, ready)
    return best
