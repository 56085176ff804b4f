"""Activations between accelerator layers run on int8 data: HardSwish, HardSigmoid, SiLU, Sigmoid,
Tanh, GELU, LeakyReLU as 256-entry tables, squeeze-and-excitation gates as an integer multiply.
The module equals the numpy integer program bit for bit and stays close to onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.corpus import cosine
from codesign.hardware import load_hardware
from codesign.lookup_tables import quantize_float32
from codesign.pipeline import compile_model
from codesign.reference import run_reference

RNG = np.random.default_rng(7)
CHANNELS = 16


def _conv(name, source, out):
    w = numpy_helper.from_array((RNG.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.15).astype(np.float32), name)
    return helper.make_node("Conv", [source, name], [out], pads=[1, 1, 1, 1]), w


def activation_model(path):
    """conv -> HardSwish (x * HardSigmoid(x), Paddle's form) -> conv -> SiLU -> conv -> LeakyReLU ->
    conv -> Tanh -> conv -> GELU (erf form) -> conv -> squeeze-excitation gate -> conv."""
    nodes, inits = [], []

    def conv(source, out):
        node, w = _conv(f"w{len(inits)}", source, out)
        nodes.append(node)
        inits.append(w)

    conv("x", "c0")
    nodes += [
        helper.make_node("HardSigmoid", ["c0"], ["hs"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["c0", "hs"], ["a0"]),
    ]
    conv("a0", "c1")
    nodes += [helper.make_node("Sigmoid", ["c1"], ["s1"]), helper.make_node("Mul", ["c1", "s1"], ["a1"])]
    conv("a1", "c2")
    nodes += [helper.make_node("LeakyRelu", ["c2"], ["a2"], alpha=0.1)]
    conv("a2", "c3")
    nodes += [helper.make_node("Tanh", ["c3"], ["a3"])]
    conv("a3", "c4")
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("sqrt2", np.sqrt(2)), ("one", 1), ("half", 0.5))]
    nodes += [
        helper.make_node("Div", ["c4", "sqrt2"], ["g0"]),
        helper.make_node("Erf", ["g0"], ["g1"]),
        helper.make_node("Add", ["g1", "one"], ["g2"]),
        helper.make_node("Mul", ["c4", "g2"], ["g3"]),
        helper.make_node("Mul", ["g3", "half"], ["a4"]),
    ]
    conv("a4", "c5")
    squeeze = numpy_helper.from_array((RNG.standard_normal((CHANNELS, CHANNELS, 1, 1)) * 0.3).astype(np.float32), "wse")
    inits.append(squeeze)
    nodes += [
        helper.make_node("GlobalAveragePool", ["c5"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "wse"], ["se"]),
        helper.make_node("HardSigmoid", ["se"], ["gate"]),
        helper.make_node("Mul", ["c5", "gate"], ["a5"]),
    ]
    conv("a5", "y")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    model = helper.make_model(
        helper.make_graph(nodes, "acts", [x], [y], inits), opset_imports=[helper.make_opsetid("", 13)]
    )
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acts")
    path = activation_model(folder / "acts.onnx")
    np.save(folder / "calib.npy", RNG.standard_normal((16, 1, CHANNELS, 8, 8)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calib.npy", warn=lambda m: None)
    return path, result


def test_activations_run_as_int8_tables_not_float(compiled):
    _, result = compiled
    ops = [node.op for node in result.qgraph.nodes.values()]
    assert ops.count("lut") == 6  # HardSwish, SiLU, LeakyReLU, Tanh, GELU, the gate's HardSigmoid
    assert "multiply" in ops  # the excitation gate times the features, in integers
    assert "float" not in ops
    assert ops.count("dequantize") == 1  # the model's output only


def test_module_equals_integer_reference_and_tracks_float(compiled):
    path, result = compiled
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(3):
        x = np.random.default_rng(100 + seed).standard_normal((1, CHANNELS, 8, 8)).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
        assert cosine(ours, session.run(None, {"x": x})[0]) > 0.99


def test_table_is_the_quantized_float_function(compiled):
    _, result = compiled
    tanh = next(n for n in result.qgraph.nodes.values() if n.op == "lut" and n.source.op == "relax.tanh")
    x_scale = np.asarray(result.qgraph.nodes[tanh.inputs[0]].scale, dtype=np.float32).reshape(-1, 1)
    x = np.arange(-128, 128).astype(np.float32) * x_scale  # one row per channel where scales are per channel
    expected = quantize_float32(np.tanh(x), tanh.scale).reshape(tanh.params["table"].shape)
    assert np.abs(tanh.params["table"].astype(int) - expected.astype(int)).max() <= 1  # tanh's float rounding


def test_concat_of_int8_branches_rescales_each_in_integers(tmp_path):
    """CSP-style: two branches of different ranges concatenated, then a conv."""
    nodes, inits = [], []
    for index, (source, out) in enumerate((("x", "a"), ("x", "b0"), ("cat", "y"))):
        node, w = _conv(f"w{index}", source, out)
        nodes.append(node)
        inits.append(w)
    inits[2] = numpy_helper.from_array(
        (RNG.standard_normal((CHANNELS, 2 * CHANNELS, 3, 3)) * 0.1).astype(np.float32), "w2"
    )
    inits.append(numpy_helper.from_array(np.float32(4.0), "four"))
    nodes[2:2] = [
        helper.make_node("Mul", ["b0", "four"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    graph = helper.make_graph(nodes, "csp", [x], [y], inits)
    path = tmp_path / "csp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    np.save(tmp_path / "calib.npy", RNG.standard_normal((8, 1, CHANNELS, 8, 8)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=tmp_path / "calib.npy", warn=lambda m: None)
    concat = next(n for n in result.qgraph.nodes.values() if n.op == "concat")
    assert len(set(concat.params["multipliers"])) == 2  # the branches had different scales
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = np.random.default_rng(3).standard_normal((1, CHANNELS, 8, 8)).astype(np.float32)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    assert cosine(ours, ort.InferenceSession(str(path)).run(None, {"x": x})[0]) > 0.99


def test_nearest_upsample_moves_int8_data(tmp_path):
    """FPN-style: conv -> nearest resize x2 (ONNX's default Resize) -> conv, all in integers."""
    first, w0 = _conv("w0", "x", "a")
    second, w1 = _conv("w1", "up", "y")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["a", "", "scales"], ["up"], mode="nearest")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    graph = helper.make_graph([first, resize, second], "fpn", [x], [y], [w0, w1, scales])
    path = tmp_path / "fpn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    np.save(tmp_path / "calib.npy", RNG.standard_normal((8, 1, CHANNELS, 4, 4)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=tmp_path / "calib.npy", warn=lambda m: None)
    assert [n.op for n in result.qgraph.nodes.values()].count("passthrough") == 1
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = np.random.default_rng(4).standard_normal((1, CHANNELS, 4, 4)).astype(np.float32)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    assert cosine(ours, ort.InferenceSession(str(path)).run(None, {"x": x})[0]) > 0.99
