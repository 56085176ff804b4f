"""Quantization rules that real exports need for accuracy, each on a tiny model reproducing the
failure it prevents, checked against onnxruntime (float) and the numpy integer reference.

A Conv1d exports as Unsqueeze -> 2-D Conv -> Squeeze, so its ReLU follows a Squeeze instead of the
conv (silero-vad's encoder). Unless the ReLU is folded into the conv across the Squeeze, the conv's
int8 output covers its negative values too, which the ReLU then discards: with pre-activations
mostly negative, the kept positive values get a few int8 levels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.reference import run_reference

CHANNELS, LENGTH = 16, 32


def conv1d_relu_stack(path):
    """Two Conv1d + ReLU layers where half the channels are switched off by a large negative bias
    (their pre-activations dominate the conv's range, their ReLU outputs are 0), then a pointwise
    Conv1d."""
    rng = np.random.default_rng(0)
    switched_off = np.repeat(np.float32([-40.0, 0.0]), 16)
    weights = {
        "w0": rng.standard_normal((32, CHANNELS, 3)).astype(np.float32) * 0.1,
        "b0": switched_off,
        "w1": rng.standard_normal((32, 32, 3)).astype(np.float32) * 0.2,
        "b1": switched_off,
        "w2": rng.standard_normal((8, 32, 1)).astype(np.float32) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, LENGTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, LENGTH])
    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    graph = helper.make_graph(nodes, "conv1d_relu", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv1d_relu")
    path = conv1d_relu_stack(folder / "model.onnx")
    samples = np.random.default_rng(1).standard_normal((16, 1, CHANNELS, LENGTH)).astype(np.float32) * 2
    np.save(folder / "calibration.npy", samples)
    result = compile_model(path, load_hardware("vta_default"), calibration=folder / "calibration.npy", warn=print)
    evaluation = np.random.default_rng(2).standard_normal((4, 1, CHANNELS, LENGTH)).astype(np.float32) * 2
    return path, result, evaluation


def test_relu_behind_a_squeeze_is_folded_into_the_conv(compiled):
    _, result, _ = compiled
    convs = [n for n in result.qgraph.nodes.values() if n.op == "conv2d"]
    assert len(convs) == 3 and all(n.placement == "accel" for n in convs)
    assert [n.params["lo"] for n in convs[:2]] == [0, 0]  # the ReLUs, in the convs' requantization
    assert not any(n.op == "clamp" for n in result.qgraph.nodes.values())


def test_int8_result_is_close_to_onnxruntime(compiled):
    path, result, evaluation = compiled
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    ours = np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy().ravel() for x in evaluation])
    theirs = np.concatenate([session.run(None, {"x": x})[0].ravel() for x in evaluation])
    # One int8 scale over the pre-ReLU range (the ReLU left unfolded) gives 0.994 here.
    assert cosine(ours, theirs) > 0.999


def test_module_equals_the_integer_reference(compiled):
    _, result, evaluation = compiled
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for x in evaluation:
        expected = run_reference(result.qgraph, {"x": x})[0]
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), expected)
