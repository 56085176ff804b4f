"""int4 weights packed two per byte in the module's weight image (element 2k in the low nibble,
2k + 1 in the high one, two's complement, a last odd one's high nibble 0), unpacked by the
module at run time, bit-exact, and counted that way by the plan, the manifest and the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
import tvm_ffi
from conftest import TEST_MODELS, sample_inputs
from test_narrow_groups import calibration_file, conv_layer_model
from tvm import relax, te

from codesign.compression import CompressionConfig
from codesign.console_tables import placement_summary
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.reference import run_reference
from codesign.schedules.packed_conv2d import pack_int4_numpy, pack_weight_numpy, unpack_int4_te
from codesign.simulator.simulate import simulate_plans

PLAIN = load_hardware("vta_default")
INT4_VALUES = np.arange(-8, 8, dtype=np.int8)


def unpacked_by_tvm(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The module's unpacking (`unpack_int4_te`), compiled and run on `image`."""
    packed = te.placeholder(image.shape, "uint8", name="packed")
    func = tvm.compile(tvm.IRModule({"main": te.create_prim_func([packed, unpack_int4_te(packed, shape)])}), "llvm")
    out = tvm.runtime.tensor(np.zeros(shape, dtype=np.int8))
    func(tvm.runtime.tensor(image), out)
    return out.numpy()


def test_the_nibble_order_is_low_then_high_in_twos_complement():
    assert pack_int4_numpy(np.array([-8, 7], dtype=np.int8)).tolist() == [0x78]
    assert pack_int4_numpy(np.array([1, -2, -1], dtype=np.int8)).tolist() == [0xE1, 0x0F]
    with pytest.raises(ValueError, match=r"-8\.\.7"):
        pack_int4_numpy(np.array([8], dtype=np.int8))


def test_every_int4_value_round_trips_in_both_nibbles_with_an_odd_count():
    low, high = np.meshgrid(INT4_VALUES, INT4_VALUES, indexing="ij")  # every (low, high) pair
    values = np.concatenate([np.stack([low.ravel(), high.ravel()], axis=1).ravel(), [-5]]).astype(np.int8)
    shape = (27, 19)  # 513 values, odd: the last byte's high nibble pads
    image = pack_int4_numpy(values.reshape(shape))
    assert image.dtype == np.uint8 and image.shape == (257,)
    assert image[-1] == 0x0B  # -5 alone, the padding nibble 0
    assert np.array_equal(unpacked_by_tvm(image, shape), values.reshape(shape))


def constants_by_kernel(mod: tvm.IRModule) -> dict[str, np.ndarray]:
    """Kernel name -> the weight constant each accelerated kernel is called with."""
    weights = {}

    def on_call(call):
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir":
            name = call.args[0].name_hint
            if name.startswith("gemm_"):
                weights[name] = call.args[1].fields[1].value.numpy()

    tvm_ffi.structural_walk(mod["main"], [(relax.Call, on_call)], order="post")
    return weights


def test_an_int4_module_stores_half_the_weight_bytes_and_is_bit_exact(model_calibration):
    path, name, shape = TEST_MODELS["mnist"]
    result = compile_model(path, PLAIN, {name: shape}, model_calibration["mnist"], weight_bits=4)
    stored = constants_by_kernel(result.lowered.mod)
    weights = {node.name: node.params["weight"] for node in result.qgraph.gemm_nodes()}
    # mnist-8 on a 16x16 core: conv 8x1x5x5, unfolded (schedules.narrow_inputs), fills two 16x16
    # blocks with its 25 taps, 16x8x5x5 one block per tap, the 256x10 matmul 16 input blocks of
    # one output block; int8 would take a byte per lane.
    expected_bytes = {"conv2d_0": 16 * 16 * 2 // 2, "conv2d_1": 16 * 16 * 25 // 2, "matmul_0": 16 * 16 * 16 // 2}
    simulation = simulate_plans(result.lowered.plans, PLAIN, "analytic")
    loaded = {layer.name: layer.counters["wgt_load_nbytes"] for layer in simulation.layers if layer.counters}
    for plan in (p for p in result.lowered.plans if p.placement == "accel"):
        image = stored[f"gemm_{plan.name}"]
        assert image.dtype == np.uint8 and image.nbytes == expected_bytes[plan.name]
        assert plan.weight_bytes == plan.to_dict()["weight_bytes"] == expected_bytes[plan.name]
        oihw = weights[plan.name] if plan.op == "conv2d" else weights[plan.name].T[:, :, None, None]  # as unfolded
        blocked = pack_weight_numpy(oihw[None], PLAIN)
        assert np.array_equal(unpacked_by_tvm(image, blocked.shape), blocked)
        t = plan.tiling  # every weight block loaded once per spatial tile
        reloads = math.ceil(plan.shape.out_h / t.h_tile) * math.ceil(plan.shape.out_w / t.w_tile)
        assert loaded[plan.name] == reloads * expected_bytes[plan.name]
    assert placement_summary(result.lowered.plans)["weight_bytes"] == sum(expected_bytes.values())
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for x in sample_inputs("mnist", 3, seed=4):
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), run_reference(result.qgraph, {name: x})[0])


def test_a_host_conv_with_an_odd_weight_count_is_packed_and_bit_exact(tmp_path):
    # A 3-channel depthwise 3x3 conv runs on vta_default's host, where it is modelled faster
    # (placement "fastest"): 27 int4 weights, 14 bytes.
    path = conv_layer_model(tmp_path / "depthwise.onnx", 3, 3, 3, 3, 1, (8, 8))
    calibration = calibration_file(tmp_path, (1, 3, 8, 8))
    fastest = CompressionConfig(placement="fastest")
    result = compile_model(path, PLAIN, {"x": (1, 3, 8, 8)}, calibration, weight_bits=4, compression=fastest)
    (plan,) = [p for p in result.lowered.plans if p.op == "conv2d"]
    assert plan.placement == "host" and plan.weight_bytes == 14
    (node,) = result.qgraph.gemm_nodes()
    assert np.array_equal(pack_int4_numpy(node.params["weight"]), uint8_constants(result.lowered.mod)[0])
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), run_reference(result.qgraph, {"x": x})[0])


def uint8_constants(mod: tvm.IRModule) -> list[np.ndarray]:
    found = []

    def on_const(const):
        if const.value.dtype == "uint8":
            found.append(const.value.numpy())

    tvm_ffi.structural_walk(mod["main"], [(type(relax.const(0)), on_const)], order="post")
    return found
