"""Per-channel activation scales in MobileNet-style blocks (conv -> HardSwish -> depthwise conv).

A depthwise conv mixes no channels, so a channel whose range is a small fraction of its
tensor's keeps few int8 levels through it under one scale per tensor. Where every reader can
take them, conv outputs and lookup tables get one scale per channel; the module stays equal to
the numpy integer program and gets closer to onnxruntime than per-tensor scales do.
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
from codesign.corpus import cosine
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.quantize import input_channel_scales, quantize_graph
from codesign.reference import run_reference

CHANNELS = 32
# Output channels of the first conv spread over three decades, as BN-folded MobileNet convs do.
CHANNEL_GAINS = np.logspace(-2, 1, CHANNELS).astype(np.float32)


def mobilenet_block(path):
    """conv -> HardSwish -> depthwise 3x3 -> HardSwish -> pointwise conv, plus a residual add of
    the second HardSwish (which must then keep one scale per tensor)."""
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
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    graph = helper.make_graph(nodes, "block", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("channel_scales")
    path = mobilenet_block(folder / "block.onnx")
    samples = np.random.default_rng(5).standard_normal((16, 1, CHANNELS, 8, 8)).astype(np.float32)
    np.save(folder / "calibration.npy", samples)
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calibration.npy", warn=print)
    return path, result, [{"x": sample} for sample in samples]


def test_depthwise_inputs_get_channel_scales_and_residual_reads_keep_one(compiled):
    _, result, _ = compiled
    nodes = result.qgraph.nodes
    depthwise = next(n for n in nodes.values() if n.op == "conv2d" and n.params["groups"] == CHANNELS)
    lut_before = nodes[depthwise.inputs[0]]
    assert lut_before.op == "lut" and np.shape(lut_before.scale) == (CHANNELS,)
    assert lut_before.params["table"].shape == (CHANNELS, 256)
    assert np.shape(nodes[lut_before.inputs[0]].scale) == (CHANNELS,)  # the stem conv's output
    add = next(n for n in nodes.values() if n.op == "add")
    assert all(np.ndim(nodes[i].scale) == 0 for i in add.inputs)  # an integer add needs one scale per input
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


def test_models_without_grouped_convs_or_tables_keep_per_tensor_scales(mnist_calibration):
    from codesign.demo import MNIST_MODEL

    result = compile_model(MNIST_MODEL, load_hardware("vta_default"), calibration=mnist_calibration, warn=print)
    assert all(np.ndim(n.scale) == 0 for n in result.qgraph.nodes.values())
