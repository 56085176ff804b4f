"""The cost model: latency, energy, area and EDP of many designs at once.

Each compression profile's offloaded layers, as the design's core geometry runs them, go through
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

    def cost(self, groups: list[tuple[CompressionProfile, list[HardwareSpec]]]) -> list[list[dict]]:
        """The costs of every design of a batch, grouped by profile: per group, one dict per design
        (latency, energy, area, edp, accelerator_seconds, host_seconds; SI units)."""
        return [self._cost_group(profile, designs) for profile, designs in groups]

    def _cost_group(self, profile: CompressionProfile, designs: list[HardwareSpec]) -> list[dict]:
        """One sweep per core geometry among the designs (its layers' shapes and host work)."""
        slots_by_core: dict = {}
        for slot, hw in enumerate(designs):
            slots_by_core.setdefault(core_key(hw), []).append(slot)
        costs: list[dict] = [{}] * len(designs)
        for slots in slots_by_core.values():
            same_core = [designs[slot] for slot in slots]
            perf = evaluate_designs(profile.layers(same_core[0]), same_core, schedule=self.schedule)
            for position, slot in enumerate(slots):
                costs[slot] = _costs(perf, position, profile, designs[slot])
        return costs


def _costs(perf: dict, slot: int, profile: CompressionProfile, hw: HardwareSpec) -> dict:
    accel = float(perf["seconds"][slot])
    host = sum(host_seconds(ops, nbytes, hw) for ops, nbytes in profile.host_work(hw))
    costs = {
        "latency": accel + host,
        "energy": float(perf["energy_pj"][slot]) * 1e-12,
        "area": float(perf["area_mm2"][slot]),
        "accelerator_seconds": accel,
        "host_seconds": host,
    }
    costs["edp"] = costs["energy"] * costs["latency"]
    return costs
