"""Average pools in integers and variadic `Sum` as `Add`s (the ONNX model zoo's caffe2 exports:
DenseNet's transitions, Inception's pool branches, ResNet-50's residual sums)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import helper
from test_import_passes import float_import_matches_onnxruntime, save, tensor, weight
from tvm import relax

from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.reference import avg_pool2d, run_reference

INTEGER_OPS = {"input", "quantize", "im2col", "conv2d", "lut", "clamp", "add", "avg_pool2d", "dequantize"}
INTEGER_OPS |= {"passthrough"}


def _pooled_block(tmp_path, count_include_pad: int):
    """conv -> relu -> {3x3 stride-1 padded pool, 2x2 stride-2 pool after a conv} and a Sum of
    three tensors, each feeding a conv."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node(
            "AveragePool", ["r1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=count_include_pad
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"]),
        helper.make_node("Conv", ["r1", "w3"], ["c3"]),
        helper.make_node("Sum", ["c2", "c3", "r1"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w4"], ["y"]),
    ]
    inits = [weight("w1", 16, 3, 3, 3), weight("w2", 16, 16, 1, 1), weight("w3", 16, 16, 1, 1)]
    inits.append(weight("w4", 8, 16, 1, 1))
    name = f"pooled_{count_include_pad}.onnx"
    return save(tmp_path / name, nodes, [tensor("x", [1, 3, 10, 10])], [tensor("y", [1, 8, 5, 5])], inits)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pools_and_sums_run_in_integers(tmp_path, count_include_pad):
    path = _pooled_block(tmp_path, count_include_pad)
    imported = float_import_matches_onnxruntime(path, {})
    assert any("1 Sum -> Add" in note for note in imported.notes)
    assert "relax.stack" not in {node.op for node in extract_graph(imported).nodes.values()}
    result = compile_model(path, load_hardware("vta_default"), warn=lambda m: None)
    ops = [node.op for node in result.qgraph.nodes.values()]
    assert set(ops) <= INTEGER_OPS and ops.count("avg_pool2d") == 2 and ops.count("add") == 2
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((1, 3, 10, 10)).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
        assert cosine(ours, session.run(None, {"x": x})[0]) > 0.99


def test_integer_average_pool_divides_each_window_by_its_cells():
    """The reference's pool against a direct count: a window of the padded 3x3 pool at a corner
    covers 4 cells without count_include_pad, 9 with it; multipliers of 1/count at shift 16."""
    x = np.arange(-8, 8, dtype=np.int8).reshape(1, 1, 4, 4) * 8
    for include_pad in (False, True):
        counts = np.full((4, 4), 9.0)
        if not include_pad:
            inside = np.pad(np.ones((4, 4)), 1)
            counts = sum(inside[i : i + 4, j : j + 4] for i in range(3) for j in range(3))
        p = {"kernel": (3, 3), "strides": (1, 1), "padding": (1, 1, 1, 1), "shift": 16}
        p["multiplier"] = np.round(2**16 / counts).astype(np.int64)[None]
        padded = np.pad(x[0, 0].astype(np.float64), 1)
        sums = np.array([[padded[i : i + 3, j : j + 3].sum() for j in range(4)] for i in range(4)])
        expected = np.clip(np.floor(sums * p["multiplier"][0] / 2**16 + 0.5), -128, 127)
        assert np.array_equal(avg_pool2d(x, p)[0, 0], expected)
