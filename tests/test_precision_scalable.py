"""The precision-scalable GEMM core (issue 12): int4-weight layers run two weights per multiplier
(Bit Fusion's fused mode), so they reduce over twice the input lanes per GEMM micro-op; int8
layers are unchanged; the MACs cost the cited area and energy factors; numbers stay bit-exact."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tvm
from conftest import TEST_MODELS, sample_inputs
from test_sim_counters import VTA_TUTORIAL_ALU
from tvm import relax

from codesign.errors import HardwareError, UsageError
from codesign.hardware import (
    SCALABLE_MAC_AREA_OVERHEAD,
    SCALABLE_MAC_ENERGY_OVERHEAD,
    area_mm2,
    hardware_from_dict,
    load_hardware,
)
from codesign.lowering import plan_accelerated_layer
from codesign.pipeline import compile_model
from codesign.reference import run_reference
from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.event_sim import simulate_program
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import Layer, select_tiling
from codesign.schedules.packed_conv2d import count_gemm_uops
from codesign.schedules.program import build_program
from codesign.schedules.tile_geometry import tile_geometry
from codesign.simulator.design_sweep import evaluate_designs
from codesign.simulator.energy import layer_energy_pj
from codesign.tuner.space import space_from_dict

PLAIN = load_hardware("vta_default")
SCALABLE = PLAIN.with_changes(precision_scalable=True)
# 64 input channels fill two 32-lane fused blocks as they fill four 16-lane plain ones.
WIDE_CONV = ConvShape(1, 1, 64, 64, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)


def description(**gemm) -> dict:
    return {
        "name": "t",
        "gemm": {"batch": 1, "block_in": 16, "block_out": 16, **gemm},
        "bits": {"input": 8, "weight": 8, "accumulator": 32, "output": 8},
        "scratchpad_bytes": {"uop": 32768, "input": 32768, "weight": 262144, "accumulator": 131072},
        "memory": {"clock_mhz": 100, "dram_bytes_per_cycle": 8, "dram_latency_cycles": 32},
        "alu": {"has_multiplier": True, "multiplier_bits": 8, "vectors_per_cycle": 1},
    }


def gemm_uops(shape: ConvShape, hw, input_lanes: int) -> int:
    """GEMM micro-ops of a layer from its shape alone: one per (batch block, output block, input
    block, output pixel, kernel tap)."""
    blocks = math.ceil(shape.batch / hw.batch) * math.ceil(shape.out_channels / hw.block_out)
    taps = shape.out_h * shape.out_w * shape.kernel_h * shape.kernel_w
    return shape.groups * blocks * math.ceil(shape.in_channels / input_lanes) * taps


def event_run(shape: ConvShape, hw, weight_bits):
    """(counters, timing) of a layer in the event simulator, tiled by the tile rule."""
    core = hw.for_layer_weights(weight_bits)
    tiling = select_tiling(shape, hw, VTA_TUTORIAL_ALU, weight_bits)
    program = build_program(shape, tile_geometry(shape, tiling, core), core, VTA_TUTORIAL_ALU, tiling.virtual_threads)
    return program.counters(), simulate_program(program, core)


# ---- the description field ----------------------------------------------------------------------


def test_the_option_defaults_to_off_and_round_trips():
    assert hardware_from_dict(description()).precision_scalable is False
    assert PLAIN.precision_scalable is False
    assert hardware_from_dict(description(precision_scalable=True)).precision_scalable is True
    toml = SCALABLE.to_toml()
    assert "precision_scalable = true" in toml and "scalable_mac_overhead" in toml


@pytest.mark.parametrize("bad", ["yes", 1, 0, [True]])
def test_a_bad_value_is_one_error_naming_the_field(bad):
    with pytest.raises(HardwareError) as err:
        hardware_from_dict(description(precision_scalable=bad))
    message = str(err.value)
    assert "'gemm.precision_scalable'" in message and "(expected true or false)" in message
    assert message.count("is invalid") == 1


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"bits": {"input": 8, "weight": 4, "accumulator": 32, "output": 8}}, "needs 'bits.weight' = 8"),
        ({"gemm": {"batch": 1, "block_in": 256, "block_out": 16}}, "needs 'gemm.block_in' at most 128"),
        ({"scratchpad_bytes": {"uop": 32768, "input": 16, "weight": 4096, "accumulator": 64}}, "(32 bytes)"),
    ],
)
def test_a_core_it_cannot_fuse_is_rejected(changes, phrase):
    doc = {**description(), **changes}
    doc["gemm"] = {**doc["gemm"], "precision_scalable": True}
    with pytest.raises(HardwareError, match=r"precision.scalable") as err:
        hardware_from_dict(doc)
    assert phrase in str(err.value)
    doc["gemm"]["precision_scalable"] = False
    hardware_from_dict(doc)  # the same core, plain, is valid


@pytest.mark.parametrize("bad", [0.5, "2", True])
def test_the_overheads_are_validated_fields(bad):
    doc = {**description(precision_scalable=True), "area": {"scalable_mac_overhead": bad}}
    with pytest.raises(HardwareError, match=r"'area.scalable_mac_overhead' = .* is invalid"):
        hardware_from_dict(doc)


def test_fingerprints_tell_the_cores_apart():
    assert SCALABLE.fingerprint() != PLAIN.fingerprint()
    assert SCALABLE.with_changes(precision_scalable=False).fingerprint() == PLAIN.fingerprint()


# ---- the core a layer sees ----------------------------------------------------------------------


def test_int4_layers_see_twice_the_input_lanes_int8_layers_the_core():
    fused = SCALABLE.for_layer_weights(4)
    assert (fused.batch, fused.block_in, fused.block_out) == (1, 2 * PLAIN.block_in, PLAIN.block_out)
    assert fused.macs_per_cycle == 2 * PLAIN.macs_per_cycle
    assert fused.inp_elem_bytes == 2 * PLAIN.inp_elem_bytes
    assert fused.wgt_elem_bytes == PLAIN.wgt_elem_bytes  # twice the weights at half the bits
    assert fused.acc_elem_bytes == PLAIN.acc_elem_bytes
    assert fused.prices() == SCALABLE.prices()  # priced by the core's own multipliers
    assert SCALABLE.for_layer_weights(8) is SCALABLE and SCALABLE.for_layer_weights(None) is SCALABLE
    assert fused.for_layer_weights(4) is fused
    assert PLAIN.for_layer_weights(4).block_in == PLAIN.block_in  # a plain core: packing only


def test_the_scheduled_kernel_runs_half_the_gemm_micro_ops():
    counted = {}
    for hw in (PLAIN, SCALABLE):
        kernel, _ = plan_accelerated_layer("conv", "conv2d", WIDE_CONV, hw, (-128, 127), VTA_TUTORIAL_ALU, 4)
        counted[hw.precision_scalable] = count_gemm_uops(kernel)
    assert counted[False] == gemm_uops(WIDE_CONV, PLAIN, PLAIN.block_in)
    assert counted[True] == gemm_uops(WIDE_CONV, PLAIN, 2 * PLAIN.block_in) == counted[False] // 2


# ---- the simulators --------------------------------------------------------------------------


def test_int4_layers_take_half_the_gemm_micro_ops_and_compute_cycles():
    plain_counters, plain_timing = event_run(WIDE_CONV, PLAIN, 4)
    fused_counters, fused_timing = event_run(WIDE_CONV, SCALABLE, 4)
    assert plain_counters["gemm_counter"] == gemm_uops(WIDE_CONV, PLAIN, PLAIN.block_in)
    assert fused_counters["gemm_counter"] == gemm_uops(WIDE_CONV, PLAIN, 2 * PLAIN.block_in)
    resets = WIDE_CONV.out_h * WIDE_CONV.out_w * math.ceil(WIDE_CONV.out_channels / PLAIN.block_out)
    assert fused_timing.gemm_cycles - resets == (plain_timing.gemm_cycles - resets) / 2
    assert fused_timing.cycles < 0.75 * plain_timing.cycles  # compute-bound: the layer speeds up
    assert fused_timing.utilization(SCALABLE.for_layer_weights(4)) <= 1


def test_int4_input_loads_gather_two_layout_blocks_per_element():
    """The fused core reads the 16-channel blocks every layer's activations are stored in, two
    per 32-lane element: each input-channel block is two DMA transfers of the same bytes in all,
    and the analytic model counts them as the event simulation does."""
    fused = SCALABLE.for_layer_weights(4)
    assert (fused.input_gather, fused.input_block) == (2, PLAIN.block_in)
    assert (SCALABLE.input_gather, PLAIN.for_layer_weights(4).input_gather) == (1, 1)
    tiling = select_tiling(WIDE_CONV, SCALABLE, VTA_TUTORIAL_ALU, 4)
    program = build_program(WIDE_CONV, tile_geometry(WIDE_CONV, tiling, fused), fused, VTA_TUTORIAL_ALU, 1)
    loads = [ins for ins in program.instructions if ins.kind == "LOAD_INP"]
    blocks = tiling.n_tile * tiling.ci_tile
    assert all(ins.transfers == 2 * blocks for ins in loads)
    rows, cols = WIDE_CONV.input_rows(tiling.h_tile), WIDE_CONV.input_cols(tiling.w_tile)
    assert sum(ins.nbytes for ins in loads) <= len(loads) * blocks * rows * cols * fused.inp_elem_bytes
    features = layer_features(WIDE_CONV, dataclasses.replace(tiling, virtual_threads=1), fused, VTA_TUTORIAL_ALU)
    assert features["inp_transfers"][0] == 2 * blocks
    analytic = estimate(features, fused.dram_latency_cycles, fused.dram_bytes_per_cycle, fused.alu_vectors_per_cycle)
    event = simulate_program(program, fused)
    assert analytic["dram_bytes"][0] == event.dram_bytes
    assert analytic["cycles"][0] == pytest.approx(event.cycles, rel=0.05)


def test_int8_layers_run_as_on_the_plain_core():
    plain_counters, plain_timing = event_run(WIDE_CONV, PLAIN, None)
    scalable_counters, scalable_timing = event_run(WIDE_CONV, SCALABLE, None)
    assert scalable_counters == plain_counters
    assert scalable_timing == plain_timing


def test_the_design_sweep_separates_the_cores_and_halves_int4_compute():
    layers = [Layer(WIDE_CONV, tuple(VTA_TUTORIAL_ALU), 4)]
    faster_dram = [hw.with_changes(dram_bytes_per_cycle=64) for hw in (PLAIN, SCALABLE)]
    swept = evaluate_designs(layers, faster_dram)
    plain_cycles, fused_cycles = swept["cycles"]
    assert fused_cycles < 0.75 * plain_cycles
    assert swept["area_mm2"][1] - swept["area_mm2"][0] == pytest.approx(extra_mac_area(SCALABLE))


# ---- the prices ------------------------------------------------------------------------------


def test_the_default_factors_are_the_cited_bit_fusion_figures():
    # Bit Fusion's authors' 45 nm synthesis (hsharma35/bitfusion, results/systolic_array_synth.csv):
    # Fusion Unit (8 to 2 bits) against a fixed 8-bit MAC, one unit each.
    assert SCALABLE_MAC_AREA_OVERHEAD == round(1733.129989 / 687.6072, 2)
    assert SCALABLE_MAC_ENERGY_OVERHEAD == round(279960 / 148845, 2)
    assert (SCALABLE.area_scalable_mac_overhead, SCALABLE.energy_scalable_mac_overhead) == (
        SCALABLE_MAC_AREA_OVERHEAD,
        SCALABLE_MAC_ENERGY_OVERHEAD,
    )


def extra_mac_area(hw) -> float:
    return hw.macs_per_cycle * hw.area_mac_mm2 * (hw.area_scalable_mac_overhead - 1)


@pytest.mark.parametrize("overhead", [None, 3.0])
def test_area_per_mac_follows_the_factor(overhead):
    hw = SCALABLE if overhead is None else SCALABLE.with_changes(area_scalable_mac_overhead=overhead)
    plain, scalable = area_mm2(PLAIN), area_mm2(hw)
    assert plain["mac_scaling"] == 0
    assert scalable["gemm_core"] == plain["gemm_core"]
    assert scalable["mac_scaling"] == pytest.approx(extra_mac_area(hw))
    assert scalable["total"] - plain["total"] == pytest.approx(extra_mac_area(hw))
    assert hw.energy_leakage_pj_per_cycle > PLAIN.energy_leakage_pj_per_cycle  # leakage follows area


def mac_energy_per_mac(shape: ConvShape, hw, weight_bits) -> float:
    """MAC energy (plain and scaling parts) of a layer per MAC its GEMM micro-ops fire."""
    counters, timing = event_run(shape, hw, weight_bits)
    core = hw.for_layer_weights(weight_bits)
    parts = layer_energy_pj(counters, 0, timing.cycles, hw, core)
    return (parts["mac"] + parts["mac_scaling"]) / (counters["gemm_counter"] * core.macs_per_cycle)


@pytest.mark.parametrize("overhead", [None, 1.5])
def test_energy_per_mac_follows_the_factor(overhead):
    hw = SCALABLE if overhead is None else SCALABLE.with_changes(energy_scalable_mac_overhead=overhead)
    factor = hw.energy_scalable_mac_overhead
    assert mac_energy_per_mac(WIDE_CONV, PLAIN, None) == pytest.approx(PLAIN.energy_mac_pj)
    assert mac_energy_per_mac(WIDE_CONV, PLAIN, 4) == pytest.approx(PLAIN.energy_mac_pj)
    assert mac_energy_per_mac(WIDE_CONV, hw, None) == pytest.approx(PLAIN.energy_mac_pj * factor)
    assert mac_energy_per_mac(WIDE_CONV, hw, 4) == pytest.approx(PLAIN.energy_mac_pj * factor / 2)


# ---- the search space -------------------------------------------------------------------------


def test_the_option_is_a_searchable_knob():
    space = space_from_dict({"hardware": {"precision_scalable": [False, True]}})
    assert space.knobs["hw.precision_scalable"] == [False, True]
    assert space.hardware({"hw.precision_scalable": True}).precision_scalable is True
    with pytest.raises(UsageError, match=r"hardware.precision_scalable"):
        space_from_dict({"hardware": {"precision_scalable": ["yes"]}})


# ---- bit-exactness -----------------------------------------------------------------------------


def test_mnist_with_int4_layers_is_bit_exact_on_the_scalable_core(model_calibration):
    path, name, shape = TEST_MODELS["mnist"]
    result = compile_model(path, SCALABLE, {name: shape}, model_calibration["mnist"], weight_bits=4)
    offloaded = [plan for plan in result.lowered.plans if plan.placement == "accel"]
    assert offloaded and all(plan.weight_bits == 4 for plan in offloaded)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for x in sample_inputs("mnist", 3, seed=12):
        expected = run_reference(result.qgraph, {name: x})[0]
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)
    for plan in offloaded:  # mnist-8's convs have 1 and 8 input channels: one block either way
        assert count_gemm_uops(plan.kernel) == gemm_uops(plan.shape, PLAIN, 2 * PLAIN.block_in)


def test_a_compiled_wide_layer_is_bit_exact_with_half_the_micro_ops(tmp_path):
    from test_single_layers import conv_model

    rng = np.random.default_rng(12)
    path = conv_model(tmp_path / "conv.onnx", rng, 1, 64, 10, 10, 32, 3, 1, [1, 1, 1, 1], True)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, rng.standard_normal((8, 1, 64, 10, 10)).astype(np.float32))
    x = rng.standard_normal((1, 64, 10, 10)).astype(np.float32)
    outputs, uops = [], []
    for hw in (PLAIN, SCALABLE):
        result = compile_model(path, hw, {"x": (1, 64, 10, 10)}, calibration, weight_bits=4)
        (plan,) = [p for p in result.lowered.plans if p.placement == "accel"]
        vm = relax.VirtualMachine(result.executable, tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
        assert np.array_equal(outputs[-1], run_reference(result.qgraph, {"x": x})[0])
        uops.append(count_gemm_uops(plan.kernel))
    assert np.array_equal(outputs[0], outputs[1])  # the core changes the schedule, never the numbers
    assert uops[1] * 2 == uops[0]
