"""The mapper: its two front-ends agree, and each mode picks what a plain search over every
candidate tiling picks (written out here, one tiling at a time)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codesign.hardware import load_hardware, preset_names
from codesign.plan import requant_alu_ops
from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.event_sim import simulate_program
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import (
    TIMED_CANDIDATES,
    Layer,
    candidate_tilings,
    design_arrays,
    map_layer,
    select_tiling,
)
from codesign.schedules.program import build_program
from codesign.schedules.tile_geometry import tile_geometry
from codesign.schedules.tiling import Tiling, TilingError, fits, tile_footprint

SHAPES = [
    ConvShape(1, 1, 64, 64, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1),
    ConvShape(1, 1, 3, 64, 224, 224, 7, 7, 2, 2, 3, 3, 3, 3),
    ConvShape(1, 1, 256, 256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1),
    ConvShape(1, 1, 128, 256, 28, 28, 1, 1, 2, 2),
    ConvShape(1, 2, 40, 24, 9, 13, 5, 3, 2, 1, 2, 0, 1, 1),
    ConvShape(1, 1, 32, 32, 17, 17, 3, 3, 1, 1, 4, 4, 4, 4, 4, 4),
    ConvShape.dense(1, 512, 1000),
    ConvShape.dense(64, 64, 64, groups=8),
]
ALU = tuple(requant_alu_ops(np.ones(4), np.array([3, 5, 7, 9]), np.full(4, 9)))
PRESETS = {name: load_hardware(name) for name in preset_names()}


def scratchpad_variants(hw) -> list:
    """The description and valid ones with smaller scratchpads on the same core (the smallest
    too small for some layers)."""

    def shrunk(shrink: int):
        return dataclasses.replace(
            hw,
            inp_buffer_bytes=max(hw.inp_buffer_bytes >> shrink, hw.inp_elem_bytes),
            wgt_buffer_bytes=max(hw.wgt_buffer_bytes >> shrink, hw.wgt_elem_bytes),
            acc_buffer_bytes=max(hw.acc_buffer_bytes >> shrink, hw.acc_elem_bytes),
        )

    return [hw] + [shrunk(shrink) for shrink in (1, 3, 6)]


@pytest.mark.parametrize("mode", ["rule", "auto"])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_scalar_and_vectorised_front_ends_choose_the_same_tiling(preset, mode):
    designs = scratchpad_variants(PRESETS[preset])
    infeasible = 0
    for shape in SHAPES:
        for weight_bits in (None, 4):
            mapping = map_layer(Layer(shape, ALU, weight_bits), designs[0], design_arrays(designs), mode)
            for index, design in enumerate(designs):
                if not mapping.fits[index]:
                    infeasible += 1
                    with pytest.raises(TilingError, match="scratchpad too small"):
                        select_tiling(shape, design, ALU, weight_bits, mode)
                    continue
                assert mapping.tiling(index) == select_tiling(shape, design, ALU, weight_bits, mode)
    assert infeasible > 0  # the smallest scratchpads exercise the error path


def output_tiles(shape: ConvShape, tiling: Tiling, hw) -> int:
    packed = shape.blocks(hw)
    return (
        shape.groups
        * (packed.n_blocks // tiling.n_tile)
        * (packed.co_blocks // tiling.co_tile)
        * (shape.out_h // tiling.h_tile)
        * (shape.out_w // tiling.w_tile)
    )


def traffic(shape: ConvShape, tiling: Tiling, hw) -> int:
    """Every output tile loads its input and weight tiles once per input-channel step; the
    output is stored once."""
    steps = shape.blocks(hw).ci_blocks // tiling.ci_tile
    fp = tile_footprint(shape, tiling, hw)
    outputs = output_tiles(shape, tiling, hw) * tiling.n_tile * tiling.co_tile * tiling.h_tile * tiling.w_tile
    return output_tiles(shape, tiling, hw) * steps * (fp.inp_bytes + fp.wgt_bytes) + outputs * hw.out_elem_bytes


def volume(tiling: Tiling) -> int:
    return tiling.n_tile * tiling.co_tile * tiling.ci_tile * tiling.h_tile * tiling.w_tile


def rule_by_search(shape: ConvShape, hw) -> Tiling | None:
    """Least traffic, then the bigger tile, then the wider one; double buffered when that tiling
    fits twice and has two output tiles to alternate between."""

    def best(threads: int) -> Tiling | None:
        fitting = [t for t in candidate_tilings(shape, hw) if fits(tile_footprint(shape, t, hw), hw, threads)]
        return min(fitting, key=lambda t: (traffic(shape, t, hw), -volume(t), -t.w_tile), default=None)

    double = best(2)
    if double is not None and output_tiles(shape, double, hw) >= 2:
        return dataclasses.replace(double, virtual_threads=2)
    return best(1)


def fastest_by_search(shape: ConvShape, hw, alu_ops) -> Tiling | None:
    """Auto's choice by brute force: every fitting (tiling, threads), two threads only with two
    output tiles to alternate between, priced by the closed form; of the TIMED_CANDIDATES
    cheapest (ties to fewer threads, then the earlier candidate), the fastest by an event
    simulation of its instruction stream (ties to the cheaper)."""
    priced = []
    for index, candidate in enumerate(candidate_tilings(shape, hw)):
        for threads in (1, 2):
            tiling = dataclasses.replace(candidate, virtual_threads=threads)
            if fits(tile_footprint(shape, tiling, hw), hw, threads) and output_tiles(shape, tiling, hw) >= threads:
                features = layer_features(shape, tiling, hw, alu_ops)
                cycles = estimate(features, hw.dram_latency_cycles, hw.dram_bytes_per_cycle, hw.alu_vectors_per_cycle)
                priced.append((cycles["cycles"][0], threads, index, tiling))
    shortlist = [entry[3] for entry in sorted(priced, key=lambda entry: entry[:3])[:TIMED_CANDIDATES]]
    return min(shortlist, key=lambda tiling: event_cycles(shape, tiling, hw, alu_ops)) if shortlist else None


def event_cycles(shape: ConvShape, tiling: Tiling, hw, alu_ops) -> float:
    program = build_program(shape, tile_geometry(shape, tiling, hw), hw, alu_ops, tiling.virtual_threads)
    return simulate_program(program, hw).cycles


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_mode_picks_what_a_search_over_every_tiling_picks(preset):
    for hw in scratchpad_variants(PRESETS[preset])[:2]:
        for shape in SHAPES:
            expected = {"rule": rule_by_search(shape, hw), "auto": fastest_by_search(shape, hw, ALU)}
            for mode, tiling in expected.items():
                if tiling is None:
                    with pytest.raises(TilingError):
                        select_tiling(shape, hw, ALU, mode=mode)
                else:
                    assert select_tiling(shape, hw, ALU, mode=mode) == tiling, (shape.describe(), hw.name, mode)


def test_narrow_weights_are_mapped_on_the_narrowed_core():
    shape = ConvShape(1, 1, 256, 256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    small = dataclasses.replace(PRESETS["vta_default"], wgt_buffer_bytes=1 << 14)
    for mode in ("rule", "auto"):
        narrow = small.for_layer_weights(4)
        assert select_tiling(shape, small, ALU, 4, mode) == select_tiling(shape, narrow, ALU, 4, mode)
    assert rule_by_search(shape, small.for_layer_weights(4)) != rule_by_search(shape, small)


def test_no_fitting_tiling_names_the_scratchpads():
    shape = ConvShape(1, 1, 16, 16, 8, 8, 5, 5, 1, 1, 2, 2, 2, 2)
    tiny = dataclasses.replace(PRESETS["vta_default"], inp_buffer_bytes=256, acc_buffer_bytes=32)
    for mode in ("rule", "auto"):
        with pytest.raises(TilingError) as err:
            select_tiling(shape, tiny, ALU, mode=mode)
        assert str(err.value) == (
            "scratchpad too small for one tile of 16x8x8 -> 16x8x8 k5x5: "
            "input buffer needs 400 bytes, has 256; accumulator buffer needs 64 bytes, has 32"
        )
