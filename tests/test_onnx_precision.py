"""Half-precision models: float16 (and bfloat16) tensors, casts and declared inputs are widened
to float32 on import, so such models compile and match onnxruntime's float16 run."""

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
from codesign.onnx_passes.precision import widen_half_precision
from codesign.pipeline import compile_model, import_model


def half_model(path, input_type=TensorProto.FLOAT):
    """x -> Cast(float16) -> Conv (float16 weights) -> Relu -> Cast(float32) -> y, or an fp16 input."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float16), "w")
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["x16", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    x = helper.make_tensor_value_info("x", input_type, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])
    graph = helper.make_graph(nodes, "half", [x], [y], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.mark.parametrize("input_type", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_float16_model_compiles_and_matches_onnxruntime(tmp_path, input_type):
    path = half_model(tmp_path / "half.onnx", input_type)
    notes = []
    imported = import_model(path, warn=notes.append)
    assert [spec.dtype for spec in imported.inputs] == ["float32"]  # a float16 input is widened too
    assert any("float16" in note for note in notes)
    samples = np.random.default_rng(1).standard_normal((8, 1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calibration.npy", samples)
    result = compile_model(path, load_hardware("vta_default"), calibration=tmp_path / "calibration.npy", warn=print)
    assert [n.op for n in result.qgraph.gemm_nodes()] == ["conv2d"]
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    dtype = np.float16 if input_type == TensorProto.FLOAT16 else np.float32
    ours = np.concatenate([vm["main"](tvm.runtime.tensor(x)).numpy() for x in samples])
    theirs = np.concatenate([session.run(None, {"x": x.astype(dtype)})[0] for x in samples])
    assert cosine(ours, theirs) > 0.999


def test_widening_reaches_constants_and_subgraphs():
    half = numpy_helper.from_array(np.array([1.5], dtype=np.float16), "c")
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=half)],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT16, [1])],
    )
    nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=then_branch, else_branch=then_branch)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert widen_half_precision(model) != []
    branch = model.graph.node[0].attribute[0].g
    assert branch.node[0].attribute[0].t.data_type == TensorProto.FLOAT
    assert numpy_helper.to_array(branch.node[0].attribute[0].t).tolist() == [1.5]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert widen_half_precision(model) == []  # nothing left to widen
