"""Activations between accelerator layers run on int8 data: SiLU, Sigmoid, Tanh, GELU as
256-entry tables, squeeze-and-excitation gates as an integer multiply; HardSigmoid and ReLU6
fold into the preceding layer's requantization, and HardSwish and LeakyReLU join its ALU
program where the ALU has a multiplier (else they are tables too). The module equals the numpy
integer program bit for bit and stays close to onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.compression import CompressionConfig
from codesign.hardware import load_hardware
from codesign.lookup_tables import quantize_float32
from codesign.metrics import cosine
from codesign.pipeline import compile_model, quantize_model
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
    assert ops.count("lut") == 3  # SiLU, Tanh, GELU (HardSwish, LeakyReLU, HardSigmoid: on the accelerator)
    assert "multiply" in ops  # the excitation gate times the features, in integers
    assert "float" not in ops
    assert ops.count("dequantize") == 1  # the model's output only


def test_module_equals_integer_reference_and_tracks_float(compiled):
    path, result = compiled
    assert_exact_and_close(path, result, first_seed=100)


def assert_exact_and_close(path, result, first_seed: int, count: int = 3, size: int = 8) -> None:
    """On `count` random inputs the module equals the numpy integer program and stays within
    cosine 0.99 of onnxruntime."""
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(first_seed, first_seed + count):
        x = np.random.default_rng(seed).standard_normal((1, CHANNELS, size, size)).astype(np.float32)
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


def _gelu(x):
    erf = np.vectorize(math.erf)
    return x * 0.5 * (1 + erf(x / np.sqrt(2)))


@pytest.mark.parametrize(
    ("position", "reference"),
    [(0, lambda x: x / (1 + np.exp(-x))), (-1, _gelu)],
    ids=["silu (tabulated in numpy)", "gelu (erf: tabulated by a compiled Relax function)"],
)
def test_tables_of_both_tabulation_paths_are_the_quantized_float_function(compiled, position, reference):
    """SiLU's ops all run in codesign.float_numpy, GELU's erf does not: each table, whichever way
    it was computed, is the quantized function (float rounding moves at most an entry by 1)."""
    _, result = compiled
    products = [n for n in result.qgraph.nodes.values() if n.op == "lut" and n.source.op == "relax.multiply"]
    lut = products[position]  # SiLU's table comes first in the model, GELU's last
    x_scale = np.asarray(result.qgraph.nodes[lut.inputs[0]].scale, dtype=np.float64).reshape(-1, 1)
    x = np.arange(-128, 128) * x_scale
    expected = quantize_float32(reference(x).astype(np.float32), lut.scale).reshape(lut.params["table"].shape)
    difference = np.abs(lut.params["table"].astype(int) - expected.astype(int))
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.99


def compile_block(folder, name: str, nodes, inits, out_shape, size: int = 8):
    """A graph from x [1, CHANNELS, size, size] to y, saved and compiled for vta_default with
    calibration on random inputs: (its path, the CompileResult)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    path = folder / f"{name}.onnx"
    graph = helper.make_graph(nodes, name, [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    np.save(folder / "calib.npy", RNG.standard_normal((8, 1, CHANNELS, size, size)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calib.npy", warn=lambda m: None)
    return path, result


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
    path, result = compile_block(tmp_path, "csp", nodes, inits, [1, CHANNELS, 8, 8])
    concat = next(n for n in result.qgraph.nodes.values() if n.op == "concat")
    assert len(set(concat.params["multipliers"])) == 2  # the branches had different scales
    assert_exact_and_close(path, result, first_seed=3, count=1)


def test_nearest_upsample_moves_int8_data(tmp_path):
    """FPN-style: conv -> nearest resize x2 (ONNX's default Resize) -> conv, all in integers."""
    first, w0 = _conv("w0", "x", "a")
    second, w1 = _conv("w1", "up", "y")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    resize = helper.make_node("Resize", ["a", "", "scales"], ["up"], mode="nearest")
    path, result = compile_block(tmp_path, "fpn", [first, resize, second], [w0, w1, scales], [1, CHANNELS, 8, 8], 4)
    assert [n.op for n in result.qgraph.nodes.values()].count("passthrough") == 1
    assert_exact_and_close(path, result, first_seed=4, count=1, size=4)


def c2f_block():
    """YOLOv8's C2f block: conv -> SiLU -> Split into halves -> conv -> SiLU on the second half,
    added to it -> concat of both halves and the sum -> 1x1 conv."""
    half = CHANNELS // 2
    first, w0 = _conv("w0", "x", "c0")
    w1 = numpy_helper.from_array((RNG.standard_normal((half, half, 3, 3)) * 0.2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((RNG.standard_normal((CHANNELS, 3 * half, 1, 1)) * 0.2).astype(np.float32), "w2")
    sizes = numpy_helper.from_array(np.array([half, half], np.int64), "sizes")
    nodes = [
        first,
        helper.make_node("Sigmoid", ["c0"], ["s0"]),
        helper.make_node("Mul", ["c0", "s0"], ["a0"]),
        helper.make_node("Split", ["a0", "sizes"], ["left", "right"], axis=1),
        helper.make_node("Conv", ["right", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Mul", ["c1", "s1"], ["a1"]),
        helper.make_node("Add", ["right", "a1"], ["sum"]),
        helper.make_node("Concat", ["left", "right", "sum"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"]),
    ]
    return nodes, [w0, w1, w2, sizes]


def test_split_halves_stay_int8(tmp_path):
    """The split's parts keep their producer's scale: the SiLU before it is a table, the residual
    add and the concat run in integers, nothing is dequantized but the output, and the parts
    cost the host nothing (views of the split's input at batch 1)."""
    from codesign.host_work import node_work

    path, result = compile_block(tmp_path, "c2f", *c2f_block(), [1, CHANNELS, 8, 8])
    nodes = result.qgraph.nodes
    ops = {n.source.op if n.op == "passthrough" else n.op for n in nodes.values()}
    assert {"relax.split", "TupleGetItem", "lut", "add", "concat"} <= ops
    assert "float" not in ops and [n.op for n in nodes.values()].count("dequantize") == 1
    parts = [n for n in nodes.values() if n.op == "passthrough"]
    assert all(n.dtype == "int8" and n.scale == nodes["multiply_0"].scale for n in parts)
    assert all(node_work(n, result.qgraph) == (0.0, 0.0) for n in parts)
    assert_exact_and_close(path, result, first_seed=200)


# The ALU programs (opcodes in order) of codesign.plan.layer_alu_ops for this file's bias-free
# convs: the requantization, and before it HardSwish's gate (the requantization's steps on a
# copy, clamped to [0, one]) and product, or LeakyReLU's scaled copy, shift and max.
REQUANT = ["MUL", "ADD", "SHR", "MAX", "MIN"]
HARDSWISH = ["ADD", "MUL", "ADD", "SHR", "MAX", "MIN", "MUL"]
LEAKY_RELU = ["MUL", "SHR", "MAX"]


def bias_add(node) -> list[str]:
    """The ALU's bias ADD: every weighted layer has one under bias correction (the default)."""
    assert node.params["bias_corrected"]
    return ["ADD"]


def test_alu_activations_join_the_layer_program(compiled):
    """conv2d_0 -> HardSwish, conv2d_2 -> LeakyReLU, conv2d_6 (squeeze) -> HardSigmoid."""
    _, result = compiled
    nodes, plans = result.qgraph.nodes, {p.name: p for p in result.lowered.plans}
    assert nodes["conv2d_0"].params["activation"].kind == "hardswish"
    assert nodes["conv2d_2"].params["activation"].kind == "leakyrelu"
    assert nodes["conv2d_1"].inputs == ["conv2d_0"] and nodes["conv2d_3"].inputs == ["conv2d_2"]
    assert [op.opcode for op in plans["conv2d_1"].alu_ops] == bias_add(nodes["conv2d_1"]) + REQUANT
    assert [op.opcode for op in plans["conv2d_0"].alu_ops] == bias_add(nodes["conv2d_0"]) + HARDSWISH + REQUANT
    assert [op.opcode for op in plans["conv2d_2"].alu_ops] == bias_add(nodes["conv2d_2"]) + LEAKY_RELU + REQUANT
    # HardSigmoid(x) = clip(x / 6 + 0.5, 0, 1): weights / 6, a bias of 0.5 (one vector ADD), clamp [0, 1].
    squeeze = nodes["conv2d_6"]
    assert "activation" not in squeeze.params and squeeze.source.layer.clamp == (0.0, 1.0)
    assert squeeze.params["lo"] == 0 and squeeze.params["hi"] == min(127, round(1.0 / squeeze.scale))
    assert [op.opcode for op in plans["conv2d_6"].alu_ops] == ["ADD", *REQUANT]
    assert all(p.placement == "accel" for p in plans.values() if p.op == "conv2d")


def relu6_hardswish_model(path):
    """conv -> Clip(0, 6) -> conv -> HardSwish (ONNX's op) * 0.5 + 0.1 (PP-LCNetV3's learnable
    affine) -> depthwise conv -> conv."""
    first, w0 = _conv("w0", "x", "c0")
    second, w1 = _conv("w1", "r0", "c1")
    depthwise = numpy_helper.from_array((RNG.standard_normal((CHANNELS, 1, 3, 3)) * 0.5).astype(np.float32), "dw")
    last, w3 = _conv("w3", "d0", "y")
    constants = [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0), ("hi", 6), ("s", 0.5), ("b", 0.1))]
    nodes = [
        first,
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"]),
        second,
        helper.make_node("HardSwish", ["c1"], ["h1"]),
        helper.make_node("Mul", ["h1", "s"], ["m1"]),
        helper.make_node("Add", ["m1", "b"], ["a1"]),
        helper.make_node("Conv", ["a1", "dw"], ["d0"], group=CHANNELS, pads=[1, 1, 1, 1]),
        last,
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    graph = helper.make_graph(nodes, "relu6_hswish", [x], [y], [w0, w1, depthwise, w3, *constants])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


def test_relu6_folds_and_hardswish_joins_the_conv_program(tmp_path):
    path = relu6_hardswish_model(tmp_path / "model.onnx")
    np.save(tmp_path / "calib.npy", RNG.standard_normal((8, 1, CHANNELS, 8, 8)).astype(np.float32))
    # The depthwise conv on the host, where vta_default's model runs it fastest: it pads with the
    # zero point of the one-sided HardSwish output it reads.
    fastest = CompressionConfig(placement="fastest")
    calibration = tmp_path / "calib.npy"
    hw = load_hardware("vta_default")
    result = compile_model(path, hw, calibration=calibration, warn=lambda m: None, compression=fastest)
    nodes = result.qgraph.nodes
    assert nodes["conv2d_0"].source.layer.clamp == (0.0, 6.0) and nodes["conv2d_0"].params["lo"] == 0
    assert nodes["conv2d_1"].inputs == ["conv2d_0"]  # ReLU6 is the first conv's clamp
    hardswish = nodes[nodes["conv2d_2"].inputs[0]]
    assert hardswish.name == "conv2d_1" and hardswish.params["activation"].kind == "hardswish"
    assert np.shape(hardswish.scale) == (CHANNELS,)  # its reader, a depthwise conv, takes channel scales
    assert "lut" not in [n.op for n in nodes.values()]
    # + 0.1 after the activation: one more vector ADD, of an offset that the requantization
    # (multiplier / 2**shift, to the output's scale) takes to 0.1, plus the zero point the
    # one-sided result gets for the depthwise conv, which pads with it (real = (q - z) * scale).
    plans = {p.name: p for p in result.lowered.plans}
    assert [op.opcode for op in plans["conv2d_1"].alu_ops] == [*bias_add(hardswish), *HARDSWISH, "ADD", *REQUANT]
    p = hardswish.params
    assert np.all(hardswish.zero_point < 0)
    np.testing.assert_array_equal(nodes["conv2d_2"].params["pad_value"], hardswish.zero_point)
    real_offset = (p["offset"] * p["multiplier"] / 2.0 ** p["shift"] - hardswish.zero_point) * hardswish.scale
    assert np.allclose(real_offset, 0.1, rtol=0.01)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = np.random.default_rng(8).standard_normal((1, CHANNELS, 8, 8)).astype(np.float32)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    assert cosine(ours, ort.InferenceSession(str(path)).run(None, {"x": x})[0]) > 0.99


# Without an ALU multiplier the activations stay tables. So they do where the host is modelled
# faster: the fixture's 16-channel 8x8 convs hold 64 accumulator vectors, so HardSwish's 7 and
# LeakyReLU's 3 extra ALU ops take 448 and 192 cycles (4.5 and 1.9 us at vta_default's 100 MHz,
# one vector per cycle), while a table moving 1 KiB in and 1 KiB out takes 0.4 us on a host
# with no dispatch overhead and 8 B per cycle at 650 MHz (vta_default's: 5 us and 2 B).
@pytest.mark.parametrize(
    "change",
    [{"alu_has_multiplier": False}, {"host_op_overhead_us": 0.0, "host_bytes_per_cycle": 8.0}],
    ids=["shift_only", "fast_host"],
)
def test_hardswish_and_leaky_relu_stay_tables_without_multiplier_or_gain(compiled, change):
    path, result = compiled
    hw = load_hardware("vta_default").with_changes(**change)
    _, qgraph, _ = quantize_model(result.imported, hw, path.parent / "calib.npy", warn=lambda m: None)
    tables = {n.inputs[0]: n.source.op for n in qgraph.nodes.values() if n.op == "lut"}
    assert len(tables) == 5  # HardSwish, SiLU, LeakyReLU, Tanh, GELU
    assert tables["conv2d_0"] == "relax.multiply" and tables["conv2d_2"] == "relax.nn.leakyrelu"
    assert not any("activation" in n.params for n in qgraph.gemm_nodes())
    assert qgraph.nodes["conv2d_6"].source.layer.clamp == (0.0, 1.0)  # HardSigmoid still folds


@pytest.mark.parametrize("slope_shape", [(CHANNELS, 1, 1), (1,)], ids=["slope per channel", "one slope"])
def test_prelu_and_a_batch_norm_after_it_are_one_table_per_channel(tmp_path, slope_shape):
    """conv -> PReLU -> BatchNormalization (Keras puts one after the activation) -> conv: the
    PReLU and the batch norm (as Mul + Add by channel constants) are one int8 table, a row per
    channel, each row the quantized float function of its channel."""
    slope = (np.abs(RNG.standard_normal(slope_shape)) * 0.3).astype(np.float32)
    gamma, var = (np.abs(RNG.standard_normal(CHANNELS)).astype(np.float32) + 0.5 for _ in range(2))
    beta, mean = (RNG.standard_normal(CHANNELS).astype(np.float32) for _ in range(2))
    first, w0 = _conv("w0", "x", "c0")
    last, w1 = _conv("w1", "n0", "y")
    nodes = [
        first,
        helper.make_node("PRelu", ["c0", "slope"], ["p0"]),
        helper.make_node("BatchNormalization", ["p0", "gamma", "beta", "mean", "var"], ["n0"], epsilon=1e-3),
        last,
    ]
    constants = {"slope": slope, "gamma": gamma, "beta": beta, "mean": mean, "var": var}
    inits = [w0, w1, *(numpy_helper.from_array(value, name) for name, value in constants.items())]
    path, result = compile_block(tmp_path, "prelu_bn", nodes, inits, (1, CHANNELS, 8, 8))
    assert any("BatchNormalization after no conv -> Mul + Add" in note for note in result.imported.notes)
    ops = [n.op for n in result.qgraph.nodes.values()]
    assert ops == ["input", "quantize", "conv2d", "lut", "conv2d", "dequantize"]
    (table,) = [n for n in result.qgraph.nodes.values() if n.op == "lut"]
    assert table.params["table"].shape == (CHANNELS, 256)
    x_scale = np.asarray(result.qgraph.nodes[table.inputs[0]].scale, dtype=np.float32).reshape(-1, 1)
    x = np.arange(-128, 128).astype(np.float32) * x_scale
    per_channel = (CHANNELS, 1)
    prelu = np.where(x >= 0, x, x * np.broadcast_to(slope.reshape(-1, 1), per_channel))
    normed = (prelu - mean.reshape(per_channel)) / np.sqrt(var.reshape(per_channel) + 1e-3)
    expected = quantize_float32(normed * gamma.reshape(per_channel) + beta.reshape(per_channel), table.scale)
    assert np.abs(table.params["table"].astype(int) - expected.astype(int)).max() <= 1  # float rounding
    assert_exact_and_close(path, result, first_seed=300)


@pytest.mark.parametrize("normalised", [False, True], ids=["dense after the max", "float normalisation after it"])
def test_gelu_before_a_max_over_time_is_a_table_per_channel(tmp_path, normalised):
    """magika (tf2onnx): conv1d -> GELU (tanh form, spelled out) -> a per-channel (1, C, 1)
    scale -> max over time -> (a normalisation in float) -> dense. GELU and scale are one table
    with a row per channel, the max runs on int8 (rounding is monotone), also when float ops read
    it; the module equals the integer program (which runs integer programs only) and tracks
    onnxruntime."""
    length = 32
    gain = np.abs(RNG.standard_normal((1, CHANNELS, 1))).astype(np.float32) + 0.2
    weight = (RNG.standard_normal((CHANNELS, CHANNELS, 3)) * 0.2).astype(np.float32)
    dense = (RNG.standard_normal((CHANNELS, 4)) * 0.3).astype(np.float32)
    constants = {"weight": weight, "gain": gain, "dense": dense, "half": 0.5, "one": 1.0, "cube": 0.044715}
    constants.update(three=3.0, root=np.sqrt(2 / np.pi), eps=1e-3)
    nodes = [
        helper.make_node("Conv", ["x", "weight"], ["b"], pads=[1, 1]),
        helper.make_node("Pow", ["b", "three"], ["b3"]),
        helper.make_node("Mul", ["b3", "cube"], ["b3s"]),
        helper.make_node("Add", ["b", "b3s"], ["inner"]),
        helper.make_node("Mul", ["inner", "root"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["t1"]),
        helper.make_node("Mul", ["b", "t1"], ["bt"]),
        helper.make_node("Mul", ["bt", "half"], ["gelu"]),
        helper.make_node("Mul", ["gelu", "gain"], ["gained"]),
        helper.make_node("ReduceMax", ["gained"], ["pooled"], axes=[2], keepdims=0),
    ]
    if normalised:
        nodes += [
            helper.make_node("ReduceMean", ["pooled"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["pooled", "mean"], ["centred"]),
            helper.make_node("Mul", ["centred", "centred"], ["squares"]),
            helper.make_node("ReduceMean", ["squares"], ["var"], axes=[1], keepdims=1),
            helper.make_node("Add", ["var", "eps"], ["var_eps"]),
            helper.make_node("Sqrt", ["var_eps"], ["std"]),
            helper.make_node("Div", ["centred", "std"], ["normed"]),
        ]
    nodes.append(helper.make_node("MatMul", ["normed" if normalised else "pooled", "dense"], ["y"]))
    inits = [numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in constants.items()]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, length])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    path = tmp_path / "max_over_time.onnx"
    graph = helper.make_graph(nodes, "max_over_time", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    np.save(tmp_path / "calib.npy", RNG.standard_normal((8, 1, CHANNELS, length)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=tmp_path / "calib.npy", warn=lambda m: None)
    (table,) = [node for node in result.qgraph.nodes.values() if node.op == "lut"]
    assert table.params["table"].shape == (CHANNELS, 256)
    readers = [node for node in result.qgraph.nodes.values() if table.name in node.inputs]
    assert [(node.op, node.source.op) for node in readers] == [("passthrough", "relax.max")]
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(400, 404):
        sample = np.random.default_rng(seed).standard_normal((1, CHANNELS, length)).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(sample)).numpy()
        if not normalised:
            assert np.array_equal(ours, run_reference(result.qgraph, {"x": sample})[0])
        assert cosine(ours, session.run(None, {"x": sample})[0]) > 0.98


def test_listed_alu_activations_override_the_cost_model(compiled):
    """A tuned design lists the GEMMs whose activation its profile fused: on a host modelled
    faster (where no activation fuses) the listed one still does, and an empty list fuses none
    on vta_default (where HardSwish and LeakyReLU do); the placements are what quantization
    reports."""
    path, result = compiled
    fast_host = load_hardware("vta_default").with_changes(host_op_overhead_us=0.0, host_bytes_per_cycle=8.0)
    cases = [(fast_host, ("conv2d_2",), ("conv2d_2",)), (load_hardware("vta_default"), (), ())]
    for hw, listed, fused in cases:
        compression = CompressionConfig(alu_activations=listed)
        _, qgraph, _ = quantize_model(result.imported, hw, path.parent / "calib.npy", warn=lambda m: None,
                                      compression=compression)  # fmt: skip
        assert tuple(n.name for n in qgraph.gemm_nodes() if "activation" in n.params) == fused, hw.name
        assert qgraph.placements["alu_activations"] == fused
    assert result.qgraph.placements["alu_activations"] == ("conv2d_0", "conv2d_2")  # unlisted: by the cost model
