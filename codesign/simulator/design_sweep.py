"""Evaluate many hardware designs on a network at once with the cost model.

Designs are grouped by core shape. For each layer the mapper picks the tiling of every design of
a group in one vectorised call (`schedules.mapper.map_layers`, the code lowering runs for one
design), and the cost model prices the chosen tilings: cycles, energy and area per design.
"""

from __future__ import annotations

import types

import numpy as np

from codesign.hardware import area_mm2
from codesign.schedules.cost_model import estimate, reset_elements, vta_counters
from codesign.schedules.mapper import Layer, core_key, core_of, design_arrays, map_layers
from codesign.simulator.energy import layer_energy_pj


def evaluate_designs(layers: list[Layer], designs: list, schedule: str = "rule") -> dict[str, np.ndarray]:
    """cycles, seconds, energy (pJ) and area (mm2) of the accelerated layers, per design;
    cycles are inf where some layer has no tiling that fits. `schedule`: "rule" takes the tile
    rule's tiling, "auto" the tiling (and virtual threads) the mapper times fastest, at its event
    cycles (schedules.mapper)."""
    result = {key: np.zeros(len(designs)) for key in ("cycles", "seconds", "energy_pj", "area_mm2")}
    for indices in _core_groups(designs):
        group = design_arrays([designs[i] for i in indices])
        layer_cycles, layer_energy = _layer_costs(layers, designs[indices[0]], group, schedule)
        result["cycles"][indices] = _sum_in_order(layer_cycles)
        # Each layer's seconds, then their sum: the simulator's order, so that a design's latency
        # is its simulation's to the last bit.
        result["seconds"][indices] = _sum_in_order(layer_cycles / (group.clock_mhz * 1e6))
        result["energy_pj"][indices] = _sum_in_order(layer_energy)
        result["area_mm2"][indices] = area_mm2(group)["total"]
    return result


def _sum_in_order(rows: np.ndarray) -> np.ndarray:
    """The sum of the rows (layers) one after the other, as the simulator adds them: numpy's
    own sum adds a contiguous run pairwise, which rounds differently from 9 layers on."""
    return rows.cumsum(axis=0)[-1] if len(rows) else np.zeros(rows.shape[1:])


def _core_groups(designs: list) -> list[np.ndarray]:
    """Indices of the designs that share a core shape (and so the candidate tilings)."""
    groups: dict[tuple, list[int]] = {}
    for index, design in enumerate(designs):
        groups.setdefault(core_key(design), []).append(index)
    return [np.array(indices) for indices in groups.values()]


def _layer_costs(layers: list[Layer], core, group, schedule: str) -> tuple[np.ndarray, np.ndarray]:
    """(cycles, energy in pJ) of each layer (rows) on each design of one core shape (columns).
    The cost model prices every layer's chosen tilings in one call (layers x designs): its cost
    is mostly numpy's per-call overhead, not the element count."""
    if not layers:
        return np.zeros((0, len(group.batch))), np.zeros((0, len(group.batch)))
    mappings = map_layers(layers, core, group, schedule)
    features = {key: np.stack([m.features[key] for m in mappings]) for key in mappings[0].features}
    fits = np.stack([m.fits for m in mappings])
    if schedule == "auto":  # the mapper timed the chosen tilings with the event simulation
        cycles = np.stack([m.cycles for m in mappings])
    else:
        timing = estimate(features, group.dram_latency_cycles, group.dram_bytes_per_cycle, group.alu_vectors_per_cycle)
        cycles = timing["cycles"]
    layer_cycles = np.where(fits, cycles, np.inf)
    counters, resets = vta_counters(features), reset_elements(features)
    energy = layer_energy_pj(counters, resets, layer_cycles, group, _layer_cores(layers, core))["total"]
    return layer_cycles, energy


def _layer_cores(layers: list[Layer], core) -> types.SimpleNamespace:
    """The element sizes of the core as each layer uses it (`for_layer`), one row per layer."""
    views = [core_of(core, layer.weight_bits, layer.input_bits) for layer in layers]
    return types.SimpleNamespace(
        **{size: np.array([[getattr(view, size)] for view in views]) for size in ("inp_elem_bytes", "wgt_elem_bytes")}
    )
