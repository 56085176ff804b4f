"""Single ONNX layers of random shapes, compiled end to end, equal the integer reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.errors import HardwareError
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.reference import run_reference


def save(model: onnx.ModelProto, path) -> str:
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def conv_model(path, rng, n, c, h, w, o, k, stride, pads, relu: bool) -> str:
    weight = numpy_helper.from_array(rng.standard_normal((o, c, k, k)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], strides=[stride, stride], pads=pads)]
    nodes.append(helper.make_node("Relu" if relu else "Identity", ["conv"], ["y"]))
    out_h = (h + pads[0] + pads[2] - k) // stride + 1
    out_w = (w + pads[1] + pads[3] - k) // stride + 1
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, o, out_h, out_w])],
        [weight, bias],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def gemm_model(path, rng, rows, k, n) -> str:
    weight = numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])],
        [weight, bias],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def assert_module_equals_reference(path, shape, hw, rng, tmp_path, weight_bits=None):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, rng.standard_normal((8, *shape)).astype(np.float32))
    result = compile_model(path, hw, {"x": shape}, calibration, weight_bits=weight_bits)
    assert [p.placement for p in result.lowered.plans if p.op in ("conv2d", "matmul")] == ["accel"]
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for _ in range(2):
        x = rng.standard_normal(shape).astype(np.float32)
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), run_reference(result.qgraph, {"x": x})[0])
    return result


@pytest.mark.parametrize("seed", range(8))
def test_random_conv_layer(seed, tmp_path):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 3, 5, 7]))
    n, c, o = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 70))
    h, w = int(rng.integers(k, 20)), int(rng.integers(k, 20))
    pads = [int(p) for p in rng.integers(0, k, 4)]
    path = conv_model(tmp_path / "conv.onnx", rng, n, c, h, w, o, k, int(rng.integers(1, 3)), pads, bool(seed % 2))
    hw = load_hardware(["vta_default", "edge_1x8x8", "batched_4x16x16", "narrow_1x16x32"][seed % 4])
    assert_module_equals_reference(path, (n, c, h, w), hw, rng, tmp_path)


@pytest.mark.parametrize("seed", range(4))
def test_random_dense_layer(seed, tmp_path):
    rng = np.random.default_rng(100 + seed)
    rows, k, n = int(rng.integers(1, 9)), int(rng.integers(1, 300)), int(rng.integers(1, 300))
    path = gemm_model(tmp_path / "gemm.onnx", rng, rows, k, n)
    hw = load_hardware(["vta_default", "wide_1x32x32", "batched_4x16x16", "edge_1x8x8"][seed])
    assert_module_equals_reference(path, (rows, k), hw, rng, tmp_path)


def test_int4_weights_on_a_4_bit_core_halve_the_weight_tiles(tmp_path):
    rng = np.random.default_rng(7)
    path = conv_model(tmp_path / "conv.onnx", rng, 1, 16, 10, 10, 32, 3, 1, [1, 1, 1, 1], True)
    int4_core = dataclasses.replace(load_hardware("vta_default"), weight_bits=4)
    result = assert_module_equals_reference(path, (1, 16, 10, 10), int4_core, rng, tmp_path)
    (layer,) = result.qgraph.gemm_nodes()
    assert layer.params["weight"].min() >= -8 and layer.params["weight"].max() <= 7
    assert np.abs(layer.params["weight"]).max() == 7
    (plan,) = [p for p in result.lowered.plans if p.placement == "accel"]
    weight_elements = plan.tiling.co_tile * plan.tiling.ci_tile * 9
    assert plan.footprint["local.wgt_buffer"] == weight_elements * 16 * 16 // 2


def test_int4_weights_on_an_8_bit_core_are_allowed_but_not_the_reverse(tmp_path):
    rng = np.random.default_rng(8)
    path = conv_model(tmp_path / "conv.onnx", rng, 1, 8, 6, 6, 8, 3, 1, [1, 1, 1, 1], False)
    result = assert_module_equals_reference(path, (1, 8, 6, 6), load_hardware("vta_default"), rng, tmp_path, 4)
    assert np.abs(result.qgraph.gemm_nodes()[0].params["weight"]).max() == 7
    int4_core = dataclasses.replace(load_hardware("vta_default"), weight_bits=4)
    with pytest.raises(HardwareError, match=r"8-bit weights \(all layers\) do not fit"):
        compile_model(path, int4_core, {"x": (1, 8, 6, 6)}, weight_bits=8)
