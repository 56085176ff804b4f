"""Data movement of a model's float inputs runs on int8: the input is quantized where it enters.

YOLOX's Focus stem slices the image four ways (every other row and column) and concatenates the
slices before its first conv; tf2onnx's exports transpose an NHWC input to NCHW. Quantized after
those moves, they move float values; quantized where the input enters, a quarter of the bytes.
The module stays equal to the numpy integer program and close to onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import helper
from test_import_passes import const, float_import_matches_onnxruntime, save, tensor, weight
from tvm import relax

from codesign.hardware import load_hardware
from codesign.host_work import node_work
from codesign.metrics import cosine
from codesign.packed_layout import plan_layouts
from codesign.pipeline import compile_model
from codesign.reference import run_reference

SIZE = 16
SLICES = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (first row, first column) of each Focus slice


def _focus_stem(tmp_path):
    """x -> four stride-2 slices -> concat (12 channels) -> 3x3 conv -> relu -> 1x1 conv."""
    nodes, inits = [], [const("axes", [2, 3]), const("ends", [SIZE, SIZE]), const("steps", [2, 2])]
    for index, (row, column) in enumerate(SLICES):
        inits.append(const(f"starts{index}", [row, column]))
        nodes.append(helper.make_node("Slice", ["x", f"starts{index}", "ends", "axes", "steps"], [f"s{index}"]))
    nodes += [
        helper.make_node("Concat", [f"s{i}" for i in range(4)], ["focus"], axis=1),
        helper.make_node("Conv", ["focus", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    inits += [weight("w1", 16, 12, 3, 3), weight("w2", 8, 16, 1, 1)]
    half = SIZE // 2
    inputs, outputs = [tensor("x", [1, 3, SIZE, SIZE])], [tensor("y", [1, 8, half, half])]
    return save(tmp_path / "focus.onnx", nodes, inputs, outputs, inits)


def _nhwc_input(tmp_path):
    """x (NHWC) -> transpose to NCHW -> 3x3 conv -> relu -> 1x1 conv."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"]),
    ]
    inits = [weight("w1", 16, 3, 3, 3), weight("w2", 8, 16, 1, 1)]
    inputs, outputs = [tensor("x", [1, SIZE, SIZE, 3])], [tensor("y", [1, 8, SIZE, SIZE])]
    return save(tmp_path / "nhwc.onnx", nodes, inputs, outputs, inits)


@pytest.mark.parametrize("build", [_focus_stem, _nhwc_input])
def test_moves_of_the_input_run_on_int8_quantized_where_it_enters(tmp_path, build):
    path = build(tmp_path)
    imported = float_import_matches_onnxruntime(path, {})
    shape = tuple(imported.inputs[0].shape)
    rng = np.random.default_rng(0)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, rng.standard_normal((8, *shape[1:])).astype(np.float32))
    hw = load_hardware("vta_default")
    result = compile_model(path, hw, calibration=calibration, warn=lambda m: None)
    qgraph = result.qgraph
    quantize = [node for node in qgraph.nodes.values() if node.op == "quantize"]
    assert [node.inputs for node in quantize] == [["x"]]  # one quantization, of the input itself
    moves = [node for node in qgraph.nodes.values() if node.source is not None and node.source.op != "gemm"]
    moves = [node for node in moves if node.op != "dequantize" and node.source.op != "relax.nn.relu"]
    assert moves and all(node.dtype == "int8" and node.op in ("passthrough", "concat") for node in moves)
    assert "float" not in {node.op for node in qgraph.nodes.values()}

    # Each move reads and writes int8 (independent count: one byte per element).
    layouts = plan_layouts(qgraph, hw)
    elements = int(np.prod(shape))
    for node in moves:
        expected = sum(int(np.prod(qgraph.nodes[i].shape)) for i in node.inputs) + int(np.prod(node.shape))
        if node.op == "passthrough":
            assert node_work(node, qgraph, layouts)[1] == expected, node.name
    if build is _focus_stem:
        slices = [node for node in moves if node.source.op == "relax.strided_slice"]
        assert len(slices) == 4
        assert sum(node_work(n, qgraph, layouts)[1] for n in slices) == 4 * (elements + elements // 4)

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(2):
        x = np.random.default_rng(10 + seed).standard_normal(shape).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(ours, run_reference(qgraph, {"x": x})[0])
        assert cosine(ours, session.run(None, {"x": x})[0]) > 0.99
