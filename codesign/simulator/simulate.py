"""Simulate a whole model, layer by layer, from its LayerPlans (fresh from lowering, or read back
from a compiled module's manifest): accelerator counters, cycles, energy for offloaded layers,
the host model for the rest, totals and area."""

from __future__ import annotations

import dataclasses

from codesign.hardware import area_mm2
from codesign.plan import LayerPlan
from codesign.schedules.cost_model import estimate, reset_elements
from codesign.schedules.event_sim import LayerTiming, simulate_program
from codesign.schedules.program import build_program
from codesign.schedules.tile_geometry import tile_geometry
from codesign.simulator.energy import energy_by_stage_pj, layer_energy_pj
from codesign.simulator.host import host_seconds

MODELS = ("event", "analytic")
STAGES = ("load", "compute", "store", "host")


@dataclasses.dataclass
class LayerResult:
    name: str
    op: str
    placement: str
    shape: str
    macs: int
    host_seconds: float  # host work: the op itself, or packing for an offloaded layer
    cycles: float = 0.0
    utilization: float = 0.0
    bound: str = ""
    dram_bytes: int = 0
    counters: dict[str, int] | None = None
    energy_pj: dict[str, float] | None = None
    accel_seconds: float = 0.0
    # Latency by stage (sums to accel_seconds + host_seconds) and accelerator energy by stage.
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    stage_energy_pj: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SimulationReport:
    hardware: str
    model: str  # event | analytic
    layers: list[LayerResult]
    area_mm2: dict[str, float]

    @property
    def accel_seconds(self) -> float:
        return sum(layer.accel_seconds for layer in self.layers)

    @property
    def host_seconds(self) -> float:
        return sum(layer.host_seconds for layer in self.layers)

    @property
    def energy_pj(self) -> float:
        return sum(layer.energy_pj["total"] for layer in self.layers if layer.energy_pj)

    def totals(self) -> dict:
        offloaded = [layer for layer in self.layers if layer.counters]
        counters = (
            {key: sum(layer.counters[key] for layer in offloaded) for key in offloaded[0].counters} if offloaded else {}
        )
        seconds = self.accel_seconds + self.host_seconds
        energy_j = self.energy_pj * 1e-12
        return {
            "accelerator_cycles": sum(layer.cycles for layer in offloaded),
            "accelerator_seconds": self.accel_seconds,
            "host_seconds": self.host_seconds,
            "latency_seconds": seconds,
            "macs": sum(layer.macs for layer in offloaded),
            "dram_bytes": sum(layer.dram_bytes for layer in offloaded),
            "energy_joules": energy_j,
            "edp_joule_seconds": energy_j * seconds,
            "area_mm2": self.area_mm2["total"],
            "counters": counters,
        }

    def to_dict(self) -> dict:
        return {
            "hardware": self.hardware,
            "model": self.model,
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": self.totals(),
            "area_mm2": self.area_mm2,
        }


def _accelerated(plan: LayerPlan, hw, model: str) -> tuple[LayerTiming, dict[str, int], int]:
    """(timing, counters, accumulator resets) of an offloaded layer on the core as it uses it."""
    # Narrow weights packed; lowering checked the kernel against its tiling (schedules.schedule_walk).
    shape, tiling, hw = plan.shape, plan.tiling, hw.for_layer(plan.weight_bits, plan.input_bits)
    geometry = tile_geometry(shape, tiling, hw)
    program = build_program(shape, geometry, hw, plan.alu_ops, tiling.virtual_threads)
    counters = program.counters()
    resets = int(reset_elements(program.features)[0])
    if model == "event":
        return simulate_program(program, hw), counters, resets
    result = {
        k: float(v[0])
        for k, v in estimate(
            program.features, hw.dram_latency_cycles, hw.dram_bytes_per_cycle, hw.alu_vectors_per_cycle
        ).items()
    }
    timing = LayerTiming(
        result["cycles"],
        result["gemm_cycles"],
        result["alu_cycles"],
        result["dram_cycles"],
        int(result["dram_bytes"]),
        shape.macs,
        result["load_cycles"],
        result["store_cycles"],
    )
    return timing, counters, resets


def stage_split(timing: LayerTiming, hw) -> dict[str, float]:
    """A layer's accelerator time by stage: compute while the GEMM core or ALU is busy, and the
    exposed rest (compute waiting for data) split between load and store in proportion to how
    long each module was busy. The three add up to the layer's cycles."""
    compute = min(timing.gemm_cycles + timing.alu_cycles, timing.cycles)
    exposed = timing.cycles - compute
    moving = timing.load_cycles + timing.store_cycles
    load = exposed * timing.load_cycles / moving if moving else exposed
    seconds_per_cycle = 1 / (hw.clock_mhz * 1e6)
    return {
        "load": load * seconds_per_cycle,
        "compute": compute * seconds_per_cycle,
        "store": (exposed - load) * seconds_per_cycle,
    }


def _simulate_accelerated(result: LayerResult, plan: LayerPlan, hw, model: str) -> None:
    """An offloaded layer's cycles, counters and energy into its result. Energy is priced by the
    core's multipliers and SRAMs, on the elements of the core as the layer uses it."""
    timing, counters, reset_elements = _accelerated(plan, hw, model)
    layer_core = hw.for_layer(plan.weight_bits, plan.input_bits)
    result.cycles = timing.cycles
    # Cycles and counters are the executed (super-grouped, zero-padded) work's; utilization counts
    # the layer's useful MACs, of the MACs per cycle the core can do for it.
    result.utilization = dataclasses.replace(timing, macs=plan.macs).utilization(layer_core)
    result.bound = timing.bound
    result.dram_bytes = timing.dram_bytes
    result.counters = counters
    result.energy_pj = layer_energy_pj(counters, reset_elements, timing.cycles, hw, layer_core)
    result.stage_energy_pj = energy_by_stage_pj(counters, reset_elements, timing.cycles, hw, layer_core)
    result.accel_seconds = timing.cycles / (hw.clock_mhz * 1e6)
    result.stage_seconds = stage_split(timing, hw)


def simulate_plans(plans: list[LayerPlan], hw, model: str = "event") -> SimulationReport:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}")
    layers = []
    for plan in plans:
        result = LayerResult(
            plan.name,
            plan.op,
            plan.placement,
            plan.describe(),
            plan.macs,
            host_seconds(plan.host_ops, plan.host_bytes, hw),
        )
        if plan.placement == "accel":
            _simulate_accelerated(result, plan, hw, model)
        result.stage_seconds = {**dict.fromkeys(STAGES[:3], 0.0), **result.stage_seconds, "host": result.host_seconds}
        layers.append(result)
    return SimulationReport(hw.name, model, layers, area_mm2(hw))
