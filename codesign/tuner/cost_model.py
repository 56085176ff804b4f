"""The cost model: latency, energy, area and EDP of many designs at once.

Each compression profile's offloaded layers, as the design's core geometry runs them with its
grouped convs placed as the design says (`sched.grouped_convs`), go through
the vectorised design sweep (`design_sweep.evaluate_designs`: every layer's tiling chosen for
each design, with the space's schedule mode, and priced by that mode's cycle model,
`tuner.front.cycle_model`), and its host work on that geometry through the host model, priced
by each design's [host] table.
"""

from __future__ import annotations

from codesign.hardware import HardwareSpec
from codesign.schedules.mapper import core_key
from codesign.simulator.design_sweep import evaluate_designs
from codesign.simulator.host import host_seconds
from codesign.tuner.profile_builder import CompressionProfile


class CostModel:
    def __init__(self, schedule: str):
        self.schedule = schedule  # "rule" or "auto", as the space's [schedule] mode

    def cost(self, groups: list[tuple[CompressionProfile, list[tuple[HardwareSpec, str]]]]) -> list[list[dict]]:
        """The costs of every design of a batch, grouped by profile: per group, one dict per
        design, given as (hardware, grouped-conv placement) (latency, energy, area, edp,
        accelerator_seconds, host_seconds; SI units)."""
        return [self._cost_group(profile, designs) for profile, designs in groups]

    def _cost_group(self, profile: CompressionProfile, designs: list[tuple[HardwareSpec, str]]) -> list[dict]:
        """One sweep per (placement, core geometry) among the designs (its layers' shapes and host work)."""
        slots_by_variant: dict = {}
        for slot, (hw, grouped_convs) in enumerate(designs):
            slots_by_variant.setdefault((grouped_convs, core_key(hw)), []).append(slot)
        costs: list[dict] = [{}] * len(designs)
        for (grouped_convs, _), slots in slots_by_variant.items():
            same_core = [designs[slot][0] for slot in slots]
            layers = profile.layers(same_core[0], grouped_convs)
            perf = evaluate_designs(layers, same_core, schedule=self.schedule)
            for position, (slot, hw) in enumerate(zip(slots, same_core)):
                costs[slot] = _costs(perf, position, profile.host_work(hw, grouped_convs), hw)
        return costs


def _costs(perf: dict, slot: int, host_work: list[tuple[float, float]], hw: HardwareSpec) -> dict:
    accel = float(perf["seconds"][slot])
    host = sum(host_seconds(ops, nbytes, hw) for ops, nbytes in host_work)
    costs = {
        "latency": accel + host,
        "energy": float(perf["energy_pj"][slot]) * 1e-12,
        "area": float(perf["area_mm2"][slot]),
        "accelerator_seconds": accel,
        "host_seconds": host,
    }
    costs["edp"] = costs["energy"] * costs["latency"]
    return costs
