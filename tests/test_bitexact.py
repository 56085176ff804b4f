"""Whole models: the compiled module equals the numpy integer reference bit for bit, and the
hardware description changes the schedule, never the numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm
from conftest import TEST_MODELS, sample_inputs
from tvm import relax

from codesign.errors import HardwareError
from codesign.hardware import hardware_from_dict, load_hardware, preset_names
from codesign.importer import import_onnx
from codesign.lowering import lower_to_relax
from codesign.pipeline import compile_model, quantize_model
from codesign.reference import run_reference
from codesign.target import target

INTEGER_MODELS = ["mnist", "resnet", "mobilenet"]


def run_module(result, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("preset", preset_names())
@pytest.mark.parametrize("model", INTEGER_MODELS)
def test_whole_model_equals_the_integer_reference(model, preset, model_calibration):
    path, name, shape = TEST_MODELS[model]
    result = compile_model(path, load_hardware(preset), {name: shape}, model_calibration[model])
    assert any(p.placement == "accel" for p in result.lowered.plans)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for x in sample_inputs(model, 3, seed=7):
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        expected = run_reference(result.qgraph, {name: x})[0]
        assert got.dtype == expected.dtype == np.float32
        assert np.array_equal(got, expected)


def random_description(rng: np.random.Generator) -> dict:
    block_in, block_out = (int(2 ** rng.integers(2, 7)) for _ in range(2))
    batch = int(2 ** rng.integers(0, 3))
    return {
        "name": "random",
        "gemm": {"batch": batch, "block_in": block_in, "block_out": block_out},
        "bits": {"input": 8, "weight": 8, "accumulator": 32, "output": 8},
        "scratchpad_bytes": {
            "uop": int(2 ** rng.integers(9, 16)),
            "input": int(2 ** rng.integers(8, 17)),
            "weight": int(2 ** rng.integers(12, 19)),
            "accumulator": int(2 ** rng.integers(9, 18)),
        },
        "memory": {"clock_mhz": 100, "dram_bytes_per_cycle": 8, "dram_latency_cycles": 32},
        # One ALU for all draws: the requantization, not the core, decides the numbers.
        "alu": {"has_multiplier": True, "multiplier_bits": 16, "vectors_per_cycle": 1},
    }


def test_random_descriptions_change_schedules_never_numbers(model_calibration):
    path, name, shape = TEST_MODELS["mnist"]
    imported = import_onnx(path, {name: shape})
    same_alu = dataclasses.replace(load_hardware("vta_default"), alu_multiplier_bits=16)
    _, qgraph, _ = quantize_model(imported, same_alu, model_calibration["mnist"])
    inputs = sample_inputs("mnist", 2, seed=11)
    expected = [run_reference(qgraph, {name: x})[0] for x in inputs]
    rng = np.random.default_rng(2026)
    compiled = rejected = 0
    tilings = set()
    while compiled + rejected < 16:
        try:
            hw = hardware_from_dict(random_description(rng))
        except HardwareError as err:
            assert "cannot hold one" in str(err)
            rejected += 1
            continue
        try:
            lowered = lower_to_relax(qgraph, imported, hw)
        except HardwareError as err:
            assert "scratchpad too small" in str(err) and "layer '" in str(err)
            rejected += 1
            continue
        tilings.add(tuple(p.tiling for p in lowered.plans if p.tiling))
        vm = relax.VirtualMachine(tvm.compile(lowered.mod, target=target()), tvm.cpu())
        for x, reference in zip(inputs, expected):
            assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), reference), hw
        compiled += 1
    assert compiled >= 10 and len(tilings) >= 7


def test_shift_only_and_multiplier_alus_differ_only_in_requantization(model_calibration):
    path, name, shape = TEST_MODELS["resnet"]
    hw = load_hardware("vta_default")
    shift_only = dataclasses.replace(hw, alu_has_multiplier=False, alu_multiplier_bits=0)
    result = compile_model(path, shift_only, {name: shape}, model_calibration["resnet"])
    for node in result.qgraph.gemm_nodes():
        if node.placement == "accel":
            assert np.all(node.params["multiplier"] & (node.params["multiplier"] - 1) == 0)
    x = sample_inputs("resnet", 1, seed=3)[0]
    assert np.array_equal(run_module(result, x), run_reference(result.qgraph, {name: x})[0])
