"""Cycle models (event-level vs analytic), physical bounds, energy, area and the host model."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from conftest import TEST_MODELS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_counters import VTA_TUTORIAL_ALU

from codesign.cli import main
from codesign.compression import CompressionConfig
from codesign.deploy import read_manifest, write_module
from codesign.graph import extract_graph
from codesign.hardware import area_mm2, load_hardware, preset_names
from codesign.importer import import_onnx
from codesign.lowering import lower_to_relax, plan_layers
from codesign.pipeline import compile_model, quantize_model
from codesign.plan import LayerPlan, requant_alu_ops
from codesign.schedules.cost_model import estimate, layer_features, stack_features
from codesign.schedules.event_sim import simulate_program
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import choose_tiling
from codesign.schedules.packed_conv2d import packed_conv2d_func, schedule_packed_conv2d
from codesign.schedules.program import build_program
from codesign.schedules.schedule_walk import walk_schedule
from codesign.schedules.tiling import Tiling, TilingError
from codesign.simulator.energy import layer_energy_pj
from codesign.simulator.host import host_seconds
from codesign.simulator.simulate import simulate_plans

VTA = load_hardware("vta_default")


def both_models(shape: ConvShape, hw, alu_ops, tiling=None):
    tiling = tiling or choose_tiling(shape, hw)
    kernel = schedule_packed_conv2d(packed_conv2d_func(shape, hw, -128, 127), tiling, hw)
    program = build_program(shape, walk_schedule(kernel), hw, alu_ops, tiling.virtual_threads)
    event = simulate_program(program, hw)
    features = stack_features([layer_features(shape, tiling, hw, alu_ops)])
    analytic = estimate(features, hw.dram_latency_cycles, hw.dram_bytes_per_cycle, hw.alu_vectors_per_cycle)
    return event, {key: float(value[0]) for key, value in analytic.items()}, program


@pytest.mark.parametrize("model", sorted(TEST_MODELS))
def test_analytic_model_agrees_with_the_event_simulation_on_every_layer(model):
    path, name, shape = TEST_MODELS[model]
    imported = import_onnx(path, {name: shape})
    for preset in preset_names():
        hw = load_hardware(preset)
        _, qgraph, _ = quantize_model(imported, hw, warn=lambda message: None)
        for plan in lower_to_relax(qgraph, imported, hw).plans:
            if plan.placement != "accel":
                continue
            event, analytic, _ = both_models(plan.shape, hw, plan.alu_ops, plan.tiling)
            assert analytic["dram_bytes"] == event.dram_bytes
            error = abs(analytic["cycles"] - event.cycles) / event.cycles
            assert error <= 0.05, (
                f"{model} {plan.name} on {preset}: analytic {analytic['cycles']:.0f}, event {event.cycles:.0f}"
            )


@st.composite
def layer_and_core(draw):
    kernel = draw(st.sampled_from([1, 3, 5]))
    dilation_h, dilation_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    span_h, span_w = (kernel - 1) * dilation_h + 1, (kernel - 1) * dilation_w + 1
    shape = ConvShape(
        groups=1,
        batch=draw(st.integers(1, 3)),
        in_channels=draw(st.integers(1, 64)),
        out_channels=draw(st.integers(1, 64)),
        in_h=draw(st.integers(span_h, 16)),
        in_w=draw(st.integers(span_w, 16)),
        kernel_h=kernel,
        kernel_w=kernel,
        stride_h=draw(st.integers(1, 2)),
        stride_w=draw(st.integers(1, 2)),
        pad_top=draw(st.integers(0, span_h - 1)),
        pad_left=draw(st.integers(0, span_w - 1)),
        pad_bottom=draw(st.integers(0, span_h - 1)),
        pad_right=draw(st.integers(0, span_w - 1)),
        dilation_h=dilation_h,
        dilation_w=dilation_w,
    )
    hw = dataclasses.replace(
        VTA,
        batch=draw(st.sampled_from([1, 2, 4])),
        block_in=draw(st.sampled_from([4, 8, 16, 32])),
        block_out=draw(st.sampled_from([4, 8, 16, 32])),
        inp_buffer_bytes=2 ** draw(st.integers(12, 16)),
        wgt_buffer_bytes=2 ** draw(st.integers(14, 19)),
        acc_buffer_bytes=2 ** draw(st.integers(13, 18)),
        dram_bytes_per_cycle=draw(st.sampled_from([1.0, 4.0, 8.0, 32.0])),
        dram_latency_cycles=draw(st.integers(0, 200)),
        alu_vectors_per_cycle=draw(st.sampled_from([0.5, 1.0, 4.0])),
    )
    alu = draw(st.sampled_from([VTA_TUTORIAL_ALU, requant_alu_ops(np.ones(4), np.array([3, 5, 7, 9]), np.full(4, 9))]))
    return shape, hw, alu


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=layer_and_core())
def test_cycles_never_beat_compute_or_bandwidth_bounds(case):
    shape, hw, alu = case
    try:
        choose_tiling(shape, hw)
    except TilingError:
        return
    event, analytic, program = both_models(shape, hw, alu)
    counters = program.counters()
    compute_bound = shape.macs / hw.macs_per_cycle
    memory_bound = program.dram_bytes / hw.dram_bytes_per_cycle
    for cycles in (event.cycles, analytic["cycles"]):
        assert cycles >= max(compute_bound, memory_bound) - 1e-6
    assert counters["gemm_counter"] >= compute_bound
    assert 0 < event.utilization(hw) <= 1


def same_padded(channels, size, kernel, dilation, stride=1) -> ConvShape:
    """(in, out) channels; (height, width) size, kernel and dilation; padding keeps the size at stride 1."""
    (h, w), (kh, kw), (dh, dw) = size, kernel, dilation
    top, left = (kh - 1) * dh // 2, (kw - 1) * dw // 2
    return ConvShape(1, 1, channels[0], channels[1], h, w, kh, kw, stride, stride, top, left, top, left, dh, dw)


# Dilated layers as networks use them: DeepLab's atrous convs and ASPP, dilated ResNets, ENet's
# and the context module's growing dilations, WaveNet / TCN 1-D convs (height 1).
DILATED_LAYERS = [
    same_padded((32, 32), (17, 17), (3, 3), (2, 2)),
    same_padded((32, 32), (17, 17), (3, 3), (4, 4)),
    same_padded((32, 32), (17, 17), (3, 3), (6, 6)),
    same_padded((16, 32), (16, 16), (3, 3), (2, 2), stride=2),
    same_padded((16, 16), (14, 14), (5, 5), (2, 2)),
    same_padded((16, 16), (14, 14), (5, 5), (3, 3), stride=2),
    same_padded((24, 24), (16, 16), (3, 3), (2, 1)),
    same_padded((16, 16), (32, 32), (3, 3), (8, 8)),
    same_padded((32, 32), (16, 16), (3, 3), (16, 16)),
    same_padded((32, 32), (1, 64), (1, 3), (1, 2)),
    same_padded((32, 32), (1, 64), (1, 3), (1, 8)),
    same_padded((64, 64), (1, 128), (1, 2), (1, 16)),
]


@pytest.mark.parametrize("shape", DILATED_LAYERS, ids=lambda shape: shape.describe())
def test_analytic_model_agrees_with_the_event_simulation_on_dilated_layers(shape):
    alu_programs = [VTA_TUTORIAL_ALU, requant_alu_ops(np.ones(4), np.array([3, 5, 7, 9]), np.full(4, 9))]
    for preset in preset_names():
        hw = load_hardware(preset)
        try:
            tiling = choose_tiling(shape, hw)
        except TilingError as err:  # the dilated window of one output does not fit: a host layer
            assert "input buffer" in str(err)
            continue
        for alu in alu_programs:
            event, analytic, program = both_models(shape, hw, alu, tiling)
            assert analytic["dram_bytes"] == event.dram_bytes == program.dram_bytes
            error = abs(analytic["cycles"] - event.cycles) / event.cycles
            assert error <= 0.05, (
                f"{shape.describe()} on {preset}: analytic {analytic['cycles']:.0f}, event {event.cycles:.0f}"
            )


def test_energy_accounts_each_action_once():
    shape = ConvShape(1, 1, 64, 64, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    event, _, program = both_models(shape, VTA, VTA_TUTORIAL_ALU)
    counters = program.counters()
    resets = sum(i.iterations for i in program.instructions if i.kind == "GEMM_RESET")
    base = layer_energy_pj(counters, resets, event.cycles, VTA)
    assert base["mac"] == pytest.approx(counters["gemm_counter"] * 256 * VTA.energy_mac_pj)
    assert base["dram"] == pytest.approx(program.dram_bytes * VTA.energy_dram_pj_per_byte)
    assert base["total"] == pytest.approx(sum(v for k, v in base.items() if k != "total"))
    pricier = dataclasses.replace(VTA, energy_dram_pj_per_byte=2 * VTA.energy_dram_pj_per_byte)
    doubled = layer_energy_pj(counters, resets, event.cycles, pricier)
    assert doubled["dram"] == pytest.approx(2 * base["dram"])
    assert doubled["total"] - base["total"] == pytest.approx(base["dram"])


def test_area_follows_the_table():
    area = area_mm2(VTA)
    kib = (32 + 32 + 256 + 128) * VTA.area_inp_mm2_per_kib
    assert area["total"] == pytest.approx(256 * VTA.area_mac_mm2 + kib + VTA.area_fixed_mm2)
    bigger = area_mm2(dataclasses.replace(VTA, wgt_buffer_bytes=2 * VTA.wgt_buffer_bytes))
    assert bigger["total"] - area["total"] == pytest.approx(256 * VTA.area_wgt_mm2_per_kib)


def test_host_time_model():
    hw = VTA  # 650 MHz host, 4 ops and 2 bytes per cycle, 5 us per op
    assert host_seconds(0, 0, hw) == 0
    assert host_seconds(650e6 * 4, 0, hw) == pytest.approx(1 + 5e-6)
    assert host_seconds(1, 650e6 * 2, hw) == pytest.approx(1 + 5e-6)


def test_module_directory_and_model_simulate_identically(tmp_path, model_calibration):
    path, name, shape = TEST_MODELS["resnet"]
    result = compile_model(path, VTA, {name: shape}, model_calibration["resnet"])
    write_module(result, tmp_path / "module")
    from_lowering = simulate_plans(result.lowered.plans, VTA).to_dict()
    plans = [LayerPlan.from_dict(layer) for layer in read_manifest(tmp_path / "module")["layers"]]
    assert simulate_plans(plans, VTA).to_dict() == from_lowering
    totals = from_lowering["totals"]
    assert totals["accelerator_seconds"] > 0 and totals["host_seconds"] > 0
    assert totals["latency_seconds"] == pytest.approx(totals["accelerator_seconds"] + totals["host_seconds"])
    assert totals["edp_joule_seconds"] == pytest.approx(totals["energy_joules"] * totals["latency_seconds"])


@pytest.mark.parametrize("model", sorted(TEST_MODELS))
def test_plans_without_the_relax_program_equal_lowerings(model, model_calibration):
    """What `simulate` plans (plan_layers) is what lowering writes into the module."""
    path, name, shape = TEST_MODELS[model]
    imported = import_onnx(path, {name: shape})
    layers = [node.name for node in extract_graph(imported).gemm_nodes()]
    compression = CompressionConfig(dict.fromkeys(layers, 4), dict.fromkeys(layers[:-1], 0.25), schedule="auto")
    for hw, config in ((VTA, None), (load_hardware("edge_1x8x8"), compression)):
        _, qgraph, _ = quantize_model(imported, hw, model_calibration[model], 16, None, lambda m: None, config)
        lowered = [plan.to_dict() for plan in lower_to_relax(qgraph, imported, hw, config).plans]
        assert [plan.to_dict() for plan in plan_layers(qgraph, imported, hw, config)] == lowered


@pytest.mark.parametrize("preset", preset_names())
def test_cli_simulate_writes_json_for_every_preset(preset, tmp_path, capsys):
    out = tmp_path / "sim.json"
    path, _, _ = TEST_MODELS["mnist"]
    code = main(["simulate", str(path), "--hw", preset, "--model", "analytic", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["hardware"] == preset and report["model"] == "analytic"
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert {layers[n]["placement"] for n in ("conv2d_0", "conv2d_1", "matmul_0")} == {"accel"}
    for layer in report["layers"]:
        if layer["placement"] == "accel":
            assert layer["cycles"] > 0 and layer["bound"] in ("compute", "memory", "pipeline")
            assert set(layer["counters"]) >= {"gemm_counter", "alu_counter", "inp_load_nbytes"}
    assert "Simulation on" in capsys.readouterr().out


def test_cli_simulate_rejects_bad_model_name(capsys):
    path, _, _ = TEST_MODELS["mnist"]
    assert main(["simulate", str(path), "--hw", "vta_default", "--model", "magic"]) == 2
    assert "--model magic" in capsys.readouterr().err


def test_design_sweep_equals_the_per_design_tile_rule_and_analytic_model():
    from codesign.schedules.mapper import Layer
    from codesign.simulator.design_sweep import evaluate_designs

    layers = [
        Layer(ConvShape(1, 1, 64, 64, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1), tuple(VTA_TUTORIAL_ALU)),
        Layer(
            ConvShape(1, 1, 128, 256, 14, 14, 1, 1, 2, 2, 0, 0, 0, 0),
            tuple(requant_alu_ops(np.ones(2), np.array([3, 5]), np.full(2, 9))),
        ),
        Layer(ConvShape.dense(4, 512, 100), tuple(VTA_TUTORIAL_ALU)),
    ]
    rng = np.random.default_rng(4)
    designs = [
        dataclasses.replace(
            VTA,
            batch=int(rng.choice([1, 2, 4])),
            block_in=int(rng.choice([8, 16, 32])),
            block_out=int(rng.choice([8, 16, 32])),
            inp_buffer_bytes=int(2 ** rng.integers(10, 17)),
            wgt_buffer_bytes=int(2 ** rng.integers(12, 19)),
            acc_buffer_bytes=int(2 ** rng.integers(11, 18)),
            dram_bytes_per_cycle=float(rng.choice([4, 8, 16])),
            dram_latency_cycles=int(rng.integers(10, 100)),
        )
        for _ in range(80)
    ]
    swept = evaluate_designs(layers, designs)
    infeasible = 0
    for design, cycles in zip(designs, swept["cycles"]):
        try:
            tilings = [choose_tiling(layer.shape, design) for layer in layers]
        except TilingError:
            infeasible += 1
            assert np.isinf(cycles)
            continue
        features = stack_features(
            [layer_features(layer.shape, t, design, list(layer.alu_ops)) for layer, t in zip(layers, tilings)]
        )
        expected = estimate(
            features, design.dram_latency_cycles, design.dram_bytes_per_cycle, design.alu_vectors_per_cycle
        )
        assert cycles == pytest.approx(expected["cycles"].sum())
    assert 0 < infeasible < len(designs) // 2


@pytest.mark.parametrize("virtual_threads", [1, 2])
def test_event_trace_respects_dependencies_and_module_order(virtual_threads):
    shape = ConvShape(1, 1, 48, 64, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1)
    tiling = Tiling(1, 2, 1, 10, 20, virtual_threads)  # 3 steps, 4 output tiles
    kernel = schedule_packed_conv2d(packed_conv2d_func(shape, VTA, -128, 127), tiling, VTA)
    alu = requant_alu_ops(np.ones(4), np.array([3, 5, 7, 9]), np.full(4, 9))
    program = build_program(shape, walk_schedule(kernel), VTA, alu, virtual_threads)
    trace = []
    timing = simulate_program(program, VTA, trace)
    start = {index: s for index, s, _ in trace}
    end = {index: e for index, _, e in trace}
    assert len(trace) == len(program.instructions)
    assert any(ins.deps for ins in program.instructions if ins.kind == "LOAD_INP")  # WAR on the buffers
    for index, ins in enumerate(program.instructions):
        assert all(start[index] >= end[dep] for dep in ins.deps), (index, ins.kind)
    for module in ("load", "compute", "store"):
        order = [i for i, ins in enumerate(program.instructions) if ins.module == module]
        assert all(start[b] >= end[a] for a, b in itertools.pairwise(order))
    assert timing.cycles == max(end.values())


@pytest.mark.parametrize("virtual_threads", [1, 2])
def test_stage_split_adds_up_and_module_busy_times_follow_the_trace(virtual_threads):
    from codesign.simulator.energy import energy_by_stage_pj
    from codesign.simulator.simulate import stage_split

    shape = ConvShape(1, 1, 48, 64, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1)
    tiling = Tiling(1, 2, 1, 10, 20, virtual_threads)
    kernel = schedule_packed_conv2d(packed_conv2d_func(shape, VTA, -128, 127), tiling, VTA)
    program = build_program(shape, walk_schedule(kernel), VTA, VTA_TUTORIAL_ALU, virtual_threads)
    trace = []
    timing = simulate_program(program, VTA, trace)
    busy = {"load": 0.0, "store": 0.0}
    for index, start, end in trace:
        module = program.instructions[index].module
        if module in busy:
            busy[module] += end - start
    assert timing.load_cycles == pytest.approx(busy["load"]) and timing.store_cycles == pytest.approx(busy["store"])
    split = stage_split(timing, VTA)
    cycle = 1 / (VTA.clock_mhz * 1e6)
    assert sum(split.values()) == pytest.approx(timing.cycles * cycle)
    assert split["compute"] == pytest.approx((timing.gemm_cycles + timing.alu_cycles) * cycle)
    assert split["load"] / split["store"] == pytest.approx(busy["load"] / busy["store"])

    counters = program.counters()
    resets = sum(i.iterations for i in program.instructions if i.kind == "GEMM_RESET")
    stages = energy_by_stage_pj(counters, resets, timing.cycles, VTA)
    parts = layer_energy_pj(counters, resets, timing.cycles, VTA)
    assert sum(stages.values()) == pytest.approx(parts["total"])
    stored = counters["out_store_nbytes"]
    assert stages["store"] == pytest.approx(
        stored * VTA.energy_dram_pj_per_byte + 4 * stored * VTA.energy_acc_pj_per_byte  # an int32 read per int8
    )
    assert stages["static"] == parts["leakage"]


def test_every_layer_time_is_split_into_stages(model_calibration):
    path, name, shape = TEST_MODELS["resnet"]
    imported = import_onnx(path, {name: shape})
    _, qgraph, _ = quantize_model(imported, VTA, model_calibration["resnet"])
    plans = lower_to_relax(qgraph, imported, VTA).plans
    for model in ("event", "analytic"):
        for layer in simulate_plans(plans, VTA, model).layers:
            assert set(layer.stage_seconds) == {"load", "compute", "store", "host"}
            assert sum(layer.stage_seconds.values()) == pytest.approx(layer.accel_seconds + layer.host_seconds)
            assert min(layer.stage_seconds.values()) >= 0
            if layer.placement == "accel":
                assert sum(layer.stage_energy_pj.values()) == pytest.approx(layer.energy_pj["total"])
