"""Per-channel activation scales in MobileNet-style blocks (conv -> HardSwish -> depthwise conv).

A depthwise conv mixes no channels, so a channel whose range is a small fraction of its
tensor's keeps few int8 levels through it under one scale per tensor. Where every reader can
take them, conv outputs and lookup tables get one scale per channel; the module stays equal to
the numpy integer program and gets closer to onnxruntime than per-tensor scales do. A tensor
read by a conv that mixes its channels gets SmoothQuant's balanced scales (the channel's share
of the range to the migration strength's power) instead, folded into that conv's weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.calibration import TensorRanges, tensor_ranges
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.packed_layout import plan_layouts
from codesign.pipeline import compile_model
from codesign.quantize import (
    CHANNEL_SCALE_FLOOR,
    INT8_MAX,
    MIXED_CHANNEL_MIGRATION,
    input_channel_scales,
    quantize_graph,
)
from codesign.reference import run_reference

CHANNELS = 32
# Output channels of the first conv spread over three decades, as BN-folded MobileNet convs do.
CHANNEL_GAINS = np.logspace(-2, 1, CHANNELS).astype(np.float32)


def save_block(path, name: str, nodes, inits):
    """A model x (1, CHANNELS, 8, 8) -> y of the same shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    graph = helper.make_graph(nodes, name, [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


def mobilenet_block(path):
    """conv -> HardSwish -> depthwise 3x3 -> HardSwish -> pointwise conv, plus a residual add of
    the second HardSwish (which rescales each channel with its own multiplier)."""
    rng = np.random.default_rng(3)
    stem = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.2
    stem *= CHANNEL_GAINS[:, None, None, None]
    # The depthwise weights undo the gains, so every channel matters equally downstream.
    depthwise = rng.standard_normal((CHANNELS, 1, 3, 3)).astype(np.float32) / CHANNEL_GAINS[:, None, None, None]
    pointwise = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.1
    inits = [numpy_helper.from_array(w, n) for n, w in (("stem", stem), ("dw", depthwise), ("pw", pointwise))]
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["c0"]),
        helper.make_node("HardSwish", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "dw"], ["c1"], group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "pw"], ["c2"]),
        helper.make_node("Add", ["c2", "a1"], ["y"]),
    ]
    return save_block(path, "block", nodes, inits)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("channel_scales")
    path = mobilenet_block(folder / "block.onnx")
    samples = np.random.default_rng(5).standard_normal((16, 1, CHANNELS, 8, 8)).astype(np.float32)
    np.save(folder / "calibration.npy", samples)
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calibration.npy", warn=print)
    return path, result, [{"x": sample} for sample in samples]


def test_depthwise_inputs_and_residual_adds_get_channel_scales(compiled):
    _, result, _ = compiled
    nodes = result.qgraph.nodes
    depthwise = next(n for n in nodes.values() if n.op == "conv2d" and n.params["groups"] == CHANNELS)
    lut_before = nodes[depthwise.inputs[0]]
    assert lut_before.op == "lut" and np.shape(lut_before.scale) == (CHANNELS,)
    assert lut_before.params["table"].shape == (CHANNELS, 256)
    assert np.shape(nodes[lut_before.inputs[0]].scale) == (CHANNELS,)  # the stem conv's output
    add = next(n for n in nodes.values() if n.op == "add")
    assert all(np.shape(nodes[i].scale) == (CHANNELS,) for i in add.inputs)
    assert np.ndim(add.scale) == 0  # the model's output: channel scales would gain nothing
    for key in ("multiplier_a", "multiplier_b", "shift"):
        assert np.shape(add.params[key]) == (CHANNELS,)
    # Each channel's multipliers take its input scales to the output's: m / 2**shift ~ ratio.
    for key, name in (("multiplier_a", add.inputs[0]), ("multiplier_b", add.inputs[1])):
        realised = add.params[key] / 2.0 ** add.params["shift"]
        np.testing.assert_allclose(realised, nodes[name].scale / add.scale, rtol=2**-14)
    # The spread is the calibrated one: channel scales follow the stem's gains.
    scales = nodes[lut_before.inputs[0]].scale
    assert scales.max() / scales.min() > 100


def test_module_equals_integer_reference(compiled):
    _, result, _ = compiled
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for seed in range(3):
        x = np.random.default_rng(50 + seed).standard_normal((1, CHANNELS, 8, 8)).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])


def test_channel_scales_beat_one_scale_per_tensor_against_onnxruntime(compiled):
    path, result, samples = compiled
    session = ort.InferenceSession(str(path))
    ranges = tensor_ranges(result.graph, result.imported, samples)
    per_tensor = quantize_graph(result.graph, TensorRanges(ranges.absmax), result.qgraph.config)
    assert all(np.ndim(n.scale) == 0 for n in per_tensor.nodes.values())
    inputs = np.random.default_rng(9).standard_normal((4, 1, CHANNELS, 8, 8)).astype(np.float32)
    expected = np.concatenate([session.run(None, {"x": x})[0] for x in inputs])
    channel = np.concatenate([run_reference(result.qgraph, {"x": x})[0] for x in inputs])
    tensor = np.concatenate([run_reference(per_tensor, {"x": x})[0] for x in inputs])
    assert cosine(channel, expected) > 0.995
    assert 1 - cosine(channel, expected) < 0.5 * (1 - cosine(tensor, expected))


def test_folded_input_scales_follow_the_groups():
    weight = np.ones((4, 2, 1, 1), dtype=np.float32)  # 2 groups of 2 outputs, 2 inputs each
    scales = np.array([1.0, 2.0, 3.0, 4.0])
    folded = input_channel_scales(scales, weight, groups=2)[:, :, 0, 0]
    assert folded.tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]


def pointwise_block(path):
    """conv -> HardSwish -> pointwise (dense 1x1) conv whose weights undo the stem's gains, so that
    every channel, small or large, matters equally in the output."""
    rng = np.random.default_rng(4)
    stem = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.2
    stem *= CHANNEL_GAINS[:, None, None, None]
    pointwise = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) / CHANNEL_GAINS[None, :, None, None]
    inits = [numpy_helper.from_array(w, n) for n, w in (("stem", stem), ("pw", pointwise))]
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["c0"]),
        helper.make_node("HardSwish", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "pw"], ["y"]),
    ]
    return save_block(path, "pointwise", nodes, inits)


@pytest.fixture(scope="module")
def pointwise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pointwise")
    path = pointwise_block(folder / "pointwise.onnx")
    samples = np.random.default_rng(6).standard_normal((16, 1, CHANNELS, 8, 8)).astype(np.float32)
    np.save(folder / "calibration.npy", samples)
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calibration.npy", warn=print)
    return path, result, [{"x": sample} for sample in samples]


def test_a_tensor_read_by_a_dense_conv_gets_a_balanced_share_of_its_channel_spread(pointwise):
    path, result, samples = pointwise
    nodes = result.qgraph.nodes
    lut = next(n for n in nodes.values() if n.op == "lut")
    assert any(n.op == "conv2d" and n.inputs == [lut.name] for n in nodes.values())
    # The HardSwish output's ranges, measured here with onnxruntime's float run of the stem.
    session = ort.InferenceSession(str(pointwise_stem(path)))
    values = np.concatenate([session.run(None, sample)[0] for sample in samples])
    channel_absmax = np.abs(values).max(axis=(0, 2, 3))
    absmax = channel_absmax.max()
    expected = absmax * (channel_absmax / absmax) ** MIXED_CHANNEL_MIGRATION / INT8_MAX
    symmetric = np.maximum(expected, absmax / INT8_MAX * CHANNEL_SCALE_FLOOR)
    # A one-sided channel (HardSwish's lowest value on the table's 256 inputs at most a third of
    # its top) gets a zero point and a scale spanning both sides with all 256 codes.
    x = np.arange(-128, 128)[None, :] * np.broadcast_to(nodes[lut.inputs[0]].scale, symmetric.shape)[:, None]
    reach_below = np.maximum(-(x * np.clip(x / 6 + 0.5, 0, 1)).min(axis=1), 0)
    one_sided = reach_below <= INT8_MAX * symmetric / 3
    assert one_sided.any()
    np.testing.assert_allclose(
        lut.scale, np.where(one_sided, (INT8_MAX * symmetric + reach_below) / 254, symmetric), rtol=1e-5
    )
    np.testing.assert_array_equal(lut.zero_point != 0, one_sided)


def pointwise_stem(path):
    """The pointwise block cut after its HardSwish (a0), as a model of its own."""
    model = onnx.load(path)
    model.graph.node.pop()  # the pointwise conv
    model.graph.output[0].name = "a0"
    stem_path = path.with_name("stem.onnx")
    onnx.save(model, stem_path)
    return stem_path


def test_balanced_scales_keep_the_module_exact_and_beat_one_scale_per_tensor(pointwise):
    path, result, samples = pointwise
    assert_exact_and_twice_as_close_as_per_tensor(path, result, samples, seed=10)


def assert_exact_and_twice_as_close_as_per_tensor(path, result, samples, seed: int):
    """The module equals the numpy integer program, whose error against onnxruntime is less than
    half that of the same graph quantized with one scale per tensor."""
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    inputs = np.random.default_rng(seed).standard_normal((4, 1, CHANNELS, 8, 8)).astype(np.float32)
    channel = []
    for x in inputs:
        channel.append(run_reference(result.qgraph, {"x": x})[0])
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), channel[-1])
    ranges = tensor_ranges(result.graph, result.imported, samples)
    per_tensor = quantize_graph(result.graph, TensorRanges(ranges.absmax), result.qgraph.config)
    session = ort.InferenceSession(str(path))
    expected = np.concatenate([session.run(None, {"x": x})[0] for x in inputs])
    tensor = np.concatenate([run_reference(per_tensor, {"x": x})[0] for x in inputs])
    assert 1 - cosine(np.concatenate(channel), expected) < 0.5 * (1 - cosine(tensor, expected))


def squeeze_excitation_block(path):
    """two convs -> add -> squeeze-and-excitation (global mean -> conv -> HardSigmoid ->
    multiply) -> pointwise conv, the stem's channel gains spread over three decades (PP-OCRv4's
    recogniser: its residual sums read by SE blocks span two)."""
    rng = np.random.default_rng(7)
    stem = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.2
    stem *= CHANNEL_GAINS[:, None, None, None]
    side = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.01
    excite = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) * 0.3
    pointwise = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32) / CHANNEL_GAINS[None, :, None, None]
    weights = (("stem", stem), ("side", side), ("excite", excite), ("pw", pointwise))
    inits = [numpy_helper.from_array(w, n) for n, w in weights]
    nodes = [
        helper.make_node("Conv", ["x", "stem"], ["c0"]),
        helper.make_node("Conv", ["x", "side"], ["c1"]),
        helper.make_node("Add", ["c0", "c1"], ["r0"]),
        helper.make_node("GlobalAveragePool", ["r0"], ["m0"]),
        helper.make_node("Conv", ["m0", "excite"], ["e0"]),
        helper.make_node("HardSigmoid", ["e0"], ["g0"]),
        helper.make_node("Mul", ["r0", "g0"], ["s0"]),
        helper.make_node("Conv", ["s0", "pw"], ["y"]),
    ]
    return save_block(path, "squeeze_excitation", nodes, inits)


# vta_default keeps the block in the core's blocked layout (host ops on blocked values); on
# narrow_1x16x32 (output blocks wider than input blocks) the host ops run on NCHW.
@pytest.mark.parametrize("hw_name", ["vta_default", "narrow_1x16x32"])
def test_adds_means_and_gates_rescale_each_channel_exactly(tmp_path, hw_name):
    path = squeeze_excitation_block(tmp_path / "se.onnx")
    samples = np.random.default_rng(8).standard_normal((16, 1, CHANNELS, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calibration.npy", samples)
    result = compile_model(path, load_hardware(hw_name), calibration=tmp_path / "calibration.npy", warn=print)
    nodes = result.qgraph.nodes
    for op in ("add", "mean", "multiply"):
        node = next(n for n in nodes.values() if n.op == op)
        assert np.shape(node.params["shift"]) == (CHANNELS,), op
    add = next(n for n in nodes.values() if n.op == "add")
    assert np.shape(add.scale) == (CHANNELS,) and add.scale.max() / add.scale.min() > 20
    packed = plan_layouts(result.qgraph, load_hardware(hw_name)).packed
    assert (add.name in packed) == (hw_name == "vta_default")
    assert_exact_and_twice_as_close_as_per_tensor(path, result, [{"x": s} for s in samples], seed=11)


def test_integer_adds_of_vectors_keep_one_multiplier(tmp_path):
    """An integer add of two 1-D tensors (matmuls of a vector) has no channel axis: its
    requantization takes one multiplier per input, and the module equals the integer program."""
    rng = np.random.default_rng(13)
    weights = {name: rng.standard_normal((16, 16)).astype(np.float32) * 0.3 for name in ("wa", "wb", "wc")}
    nodes = [
        helper.make_node("MatMul", ["x", "wa"], ["a"]),
        helper.make_node("MatMul", ["x", "wb"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("MatMul", ["s", "wc"], ["y"]),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [16])
    inits = [numpy_helper.from_array(w, name) for name, w in weights.items()]
    graph = helper.make_graph(nodes, "vector_add", [x_info], [y_info], inits)
    path = tmp_path / "vector_add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    np.save(tmp_path / "calibration.npy", rng.standard_normal((16, 16)).astype(np.float32))
    result = compile_model(path, load_hardware("vta_default"), calibration=tmp_path / "calibration.npy", warn=print)
    add = next(n for n in result.qgraph.nodes.values() if n.op == "add")
    assert len(add.shape) == 1 and np.ndim(add.params["multiplier_a"]) == 0
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = rng.standard_normal(16).astype(np.float32)
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert cosine(ours, expected) > 0.99
