"""Evaluate many hardware designs on a network at once with the analytic model.

For each layer and GEMM core shape, every candidate tiling is enumerated once (cached) with
its footprint, DRAM traffic and features; each design then picks its tiling with the tile
rule of `schedules.tiling.choose_tiling` as a masked argmin over the candidates that fit its
scratchpads, and all designs of a core shape are estimated in one vectorised call.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import numpy as np

from codesign.hardware import CoreGeometry, area_mm2
from codesign.plan import AluOp
from codesign.schedules.layer import ConvShape
from codesign.schedules.tiling import candidate_tilings, dram_traffic_bytes, tile_footprint
from codesign.simulator.analytic import estimate, tiling_features
from codesign.simulator.energy import layer_energy_pj

CORE_FIELDS = ("batch", "block_in", "block_out", "input_bits", "weight_bits", "acc_bits", "output_bits")


@dataclasses.dataclass(frozen=True)
class Layer:
    shape: ConvShape
    alu_ops: tuple[AluOp, ...]
    weight_bits: int | None = None  # narrower than the core's: packed, fewer bytes


@functools.cache
def _candidates(layer: Layer, core) -> dict[str, np.ndarray]:
    """Every candidate tiling of a layer on a core shape: footprints, tile rule rank, features."""
    tilings = _candidate_tilings(layer, core)
    fields = {
        k: np.array([getattr(t, k) for t in tilings]) for k in ("n_tile", "co_tile", "ci_tile", "h_tile", "w_tile")
    }
    arrays = types.SimpleNamespace(**fields, virtual_threads=np.ones(len(tilings), dtype=np.int64))
    footprint = tile_footprint(layer.shape, arrays, core)
    traffic = dram_traffic_bytes(layer.shape, arrays, core)
    volume = np.prod(np.stack(list(fields.values())), axis=0)
    # choose_tiling's key: least traffic, then the bigger tile, then the wider one.
    rank = np.empty(len(tilings), dtype=np.int64)
    rank[np.lexsort((-fields["w_tile"], -volume, traffic))] = np.arange(len(tilings))
    features = tiling_features(layer.shape, core, vars(arrays), list(layer.alu_ops))
    return {
        "inp": footprint.inp_bytes,
        "wgt": footprint.wgt_bytes,
        "acc": footprint.acc_bytes,
        "uop": footprint.uop_bytes,
        "rank": rank,
        "features": features,
    }


def _choose(candidates: dict, designs, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(index of the chosen candidate, fits) per design for a virtual-thread count."""
    fits = (
        (candidates["inp"] * threads <= designs.inp_buffer_bytes[:, None])
        & (candidates["wgt"] * threads <= designs.wgt_buffer_bytes[:, None])
        & (candidates["acc"] * threads <= designs.acc_buffer_bytes[:, None])
        & (candidates["uop"] * threads <= designs.uop_buffer_bytes[:, None])
    )
    ranked = np.where(fits, candidates["rank"], np.iinfo(np.int64).max)
    chosen, usable = ranked.argmin(axis=1), fits.any(axis=1)
    if threads > 1:  # as choose_tiling: double buffering only with tiles to alternate between
        usable &= candidates["features"]["tiles"][chosen] >= threads
    return chosen, usable


def _design_arrays(designs: list) -> types.SimpleNamespace:
    fields = [f.name for f in dataclasses.fields(designs[0]) if f.name != "name"]
    arrays = types.SimpleNamespace(**{f: np.array([getattr(d, f) for d in designs], dtype=np.float64) for f in fields})
    for name in ("inp_elem_bytes", "wgt_elem_bytes", "acc_elem_bytes", "out_elem_bytes", "macs_per_cycle"):
        setattr(arrays, name, np.array([getattr(d, name) for d in designs], dtype=np.float64))
    return arrays


def _choose_fastest(candidates: dict, designs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate, threads, fits) per design: the fitting tiling with the fewest modelled cycles,
    with one or two virtual threads (schedule tuning with the analytic model)."""
    best_cycles = np.full(len(designs.batch), np.inf)
    best, best_threads = np.zeros(len(designs.batch), dtype=np.int64), np.ones(len(designs.batch), dtype=np.int64)
    for threads in (1, 2):
        fits = (
            (candidates["inp"] * threads <= designs.inp_buffer_bytes[:, None])
            & (candidates["wgt"] * threads <= designs.wgt_buffer_bytes[:, None])
            & (candidates["acc"] * threads <= designs.acc_buffer_bytes[:, None])
            & (candidates["uop"] * threads <= designs.uop_buffer_bytes[:, None])
        )
        features = dict(candidates["features"])
        features["threads"] = np.minimum(threads, features["tiles"])
        cycles = estimate(
            features,
            designs.dram_latency_cycles[:, None],
            designs.dram_bytes_per_cycle[:, None],
            designs.alu_vectors_per_cycle[:, None],
        )["cycles"]
        cycles = np.where(fits, cycles, np.inf)
        choice = cycles.argmin(axis=1)
        chosen_cycles = cycles[np.arange(len(choice)), choice]
        better = chosen_cycles < best_cycles
        best = np.where(better, choice, best)
        best_threads = np.where(better, threads, best_threads)
        best_cycles = np.where(better, chosen_cycles, best_cycles)
    return best, best_threads, np.isfinite(best_cycles)


def evaluate_designs(layers: list[Layer], designs: list, schedule: str = "rule") -> dict[str, np.ndarray]:
    """cycles, seconds, energy (pJ) and area (mm2) of the accelerated layers, per design;
    cycles are inf where some layer has no tiling that fits. `schedule`: "rule" takes the tile
    rule's tiling, "auto" the tiling (and virtual threads) with the fewest modelled cycles."""
    count = len(designs)
    result = {key: np.zeros(count) for key in ("cycles", "seconds", "energy_pj", "area_mm2")}
    groups: dict[tuple, list[int]] = {}
    for index, design in enumerate(designs):
        groups.setdefault(tuple(getattr(design, f) for f in CORE_FIELDS), []).append(index)
    for indices in groups.values():
        idx = np.array(indices)
        group = _design_arrays([designs[i] for i in indices])
        core = designs[indices[0]]
        cycles = np.zeros(len(idx))
        energy = np.zeros(len(idx))
        for layer in layers:
            candidates = _candidates(layer, _core_key(core, layer.weight_bits))
            if schedule == "auto":
                chosen, threads, single_fits = _choose_fastest(candidates, group)
            else:
                double, double_fits = _choose(candidates, group, 2)
                single, single_fits = _choose(candidates, group, 1)
                chosen = np.where(double_fits, double, single)
                threads = np.where(double_fits, 2, 1)
            features = {key: value[chosen] for key, value in candidates["features"].items()}
            features["threads"] = np.minimum(threads, features["tiles"])
            timing = estimate(
                features, group.dram_latency_cycles, group.dram_bytes_per_cycle, group.alu_vectors_per_cycle
            )
            layer_cycles = np.where(single_fits, timing["cycles"], np.inf)
            cycles += layer_cycles
            energy += layer_energy_pj(
                _counters(features), features["tiles"] * features["acc_elements"], layer_cycles, group
            )["total"]
        result["cycles"][idx] = cycles
        result["seconds"][idx] = cycles / (group.clock_mhz * 1e6)
        result["energy_pj"][idx] = energy
        result["area_mm2"][idx] = area_mm2(group)["total"]
    return result


def _counters(f: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """VTA counters implied by the features of a chosen tiling (as LayerProgram.counters)."""
    return {
        "inp_load_nbytes": f["inp_bytes"],
        "wgt_load_nbytes": f["tiles"] * f["steps"] * f["wgt_bytes_per_step"],
        "acc_load_nbytes": f["tiles"] * f["acc_bytes_per_tile"],
        "uop_load_nbytes": f["threads"] * f["uop_bytes"],
        "out_store_nbytes": f["tiles"] * f["out_bytes_per_tile"],
        "gemm_counter": f["tiles"] * f["steps"] * f["gemm_per_step"],
        "alu_counter": f["tiles"] * f["alu_ops"] * f["acc_elements"],
    }


@dataclasses.dataclass(frozen=True)
class _Core(CoreGeometry):
    """The fields of a description that candidate enumeration depends on (hashable for the cache)."""

    batch: int
    block_in: int
    block_out: int
    input_bits: int
    weight_bits: int
    acc_bits: int
    output_bits: int


def _core_key(design, weight_bits: int | None = None) -> _Core:
    return _Core(*(getattr(design, f) for f in CORE_FIELDS)).for_layer_weights(weight_bits)


def select_tiling(shape: ConvShape, hw, alu_ops, weight_bits: int | None = None, mode: str = "rule"):
    """A layer's tiling: the tile rule's, or ("auto") the one with the fewest modelled cycles,
    exactly as `evaluate_designs` picks it."""
    from codesign.schedules.tiling import Tiling, choose_tiling

    if mode == "rule":
        return choose_tiling(shape, hw.for_layer_weights(weight_bits))
    layer = Layer(shape, tuple(alu_ops), weight_bits)
    candidates = _candidates(layer, _core_key(hw, weight_bits))
    chosen, threads, fits = _choose_fastest(candidates, _design_arrays([hw]))
    if not fits[0]:
        return choose_tiling(shape, hw)  # raises TilingError naming the scratchpad that is too small
    features = candidates["features"]
    pick = int(chosen[0])
    fields = ("n_tile", "co_tile", "ci_tile", "h_tile", "w_tile")
    values = _candidate_tilings(layer, _core_key(hw, weight_bits))[pick]
    return Tiling(*(getattr(values, f) for f in fields), virtual_threads=int(min(threads[0], features["tiles"][pick])))


@functools.cache
def _candidate_tilings(layer: Layer, core) -> list:
    return list(candidate_tilings(layer.shape, core))
