"""Import: real exported ONNX models enter Relax with static shapes; folding keeps the float math."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import TEST_MODELS, sample_inputs

from codesign.calibration import float_outputs
from codesign.errors import UsageError
from codesign.graph import extract_graph
from codesign.importer import import_onnx
from codesign.onnx_file import parse_input_shapes


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("model", sorted(TEST_MODELS))
def test_folded_float_graph_matches_onnxruntime(model):
    path, name, shape = TEST_MODELS[model]
    imported = import_onnx(path, {name: shape})
    graph = extract_graph(imported)
    session = ort.InferenceSession(str(path))
    inputs = sample_inputs(model, 3)
    ours = [o[0] for o in float_outputs(graph, imported, [{name: x} for x in inputs])]
    for x, got in zip(inputs, ours):
        expected = session.run(None, {name: x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_batch_norm_and_bias_are_folded_into_convs():
    path, name, shape = TEST_MODELS["resnet"]
    assert "BatchNormalization" in op_types(path)
    graph = extract_graph(import_onnx(path, {name: shape}))
    ops = {node.op for node in graph.nodes.values()}
    assert not any("batch_norm" in op or op == "TupleGetItem" for op in ops)
    convs = [n for n in graph.gemm_nodes() if n.layer.kind == "conv2d"]
    assert len(convs) == 8 and all(n.layer.bias is not None for n in convs)


def test_relu6_clip_folds_into_the_conv_clamp_and_depthwise_stays_grouped():
    path, name, shape = TEST_MODELS["mobilenet"]
    assert "Clip" in op_types(path)
    graph = extract_graph(import_onnx(path, {name: shape}))
    clamps = {n.layer.clamp for n in graph.gemm_nodes()}
    assert (0.0, 6.0) in clamps
    assert not any(n.op == "clamp" for n in graph.nodes.values())
    assert any(n.layer.groups > 1 for n in graph.gemm_nodes())


def test_transformer_shape_computation_is_folded():
    path, name, shape = TEST_MODELS["transformer"]
    assert {"Shape", "Gather", "Concat", "Reshape", "MatMul", "Softmax", "LayerNormalization"} <= op_types(path)
    graph = extract_graph(import_onnx(path, {name: shape}))
    assert all(node.shape is not None for node in graph.nodes.values())
    assert not any("shape" in node.op.lower() for node in graph.nodes.values() if node.op != "relax.reshape")
    runtime_matmuls = [n for n in graph.gemm_nodes() if n.layer.weight is None]
    assert len(runtime_matmuls) == 4  # Q.K^T and attention.V in two layers
    assert {n.layer.out_scale for n in runtime_matmuls} == {0.25, 1.0}


def test_same_upper_padding_becomes_explicit():
    path, _, _ = TEST_MODELS["mnist"]
    model = onnx.load(path)
    assert any(a.name == "auto_pad" and a.s == b"SAME_UPPER" for n in model.graph.node for a in n.attribute)
    convs = [n for n in extract_graph(import_onnx(path)).gemm_nodes() if n.layer.kind == "conv2d"]
    assert [n.layer.padding for n in convs] == [(2, 2, 2, 2), (2, 2, 2, 2)]


def test_one_model_binds_several_shapes():
    path, name, _ = TEST_MODELS["transformer"]
    for shape in [(1, 16, 64), (2, 8, 64)]:
        imported = import_onnx(path, {name: shape})
        assert imported.inputs[0].shape == shape
        assert imported.outputs[0].shape == (shape[0], 10)


def test_unbound_dynamic_input_is_a_usage_error():
    path, name, _ = TEST_MODELS["transformer"]
    with pytest.raises(
        UsageError, match=f"input '{name}' has dynamic shape \\[batch, seq, 64\\].*--input-shape {name}=N,N,64"
    ):
        import_onnx(path)


def test_input_shape_that_contradicts_the_model_is_rejected():
    path, name, _ = TEST_MODELS["transformer"]
    with pytest.raises(UsageError, match="does not match the model's shape"):
        import_onnx(path, {name: (1, 16, 32)})


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1,3,224,224", "a=b=2"]) == {"x": (1, 3, 224, 224), "a=b": (2,)}
    for bad in ["x", "x=", "x=1,a", "=1,2", "x=0,1"]:
        with pytest.raises(UsageError):
            parse_input_shapes([bad])


FOLDED_MODELS = {  # (path, input shapes, frozen input values)
    "mobilenet": (TEST_MODELS["mobilenet"][0], {"input": (1, 3, 32, 32)}, {}),
    "transformer": (TEST_MODELS["transformer"][0], {"tokens_embedded": (1, 16, 64)}, {}),
    # torch's export of silero-vad gathers dims from shape_of (take, shape_to_tensor)
    "silero_vad": (
        Path(__file__).parent / "models" / "real" / "silero_vad_16k_op15.onnx",
        {"input": (1, 576), "state": (2, 1, 128)},
        {"sr": ["16000"]},
    ),
}


@pytest.mark.parametrize("model", sorted(FOLDED_MODELS))
def test_numpy_folding_gives_relax_fold_constants_program_bit_for_bit(model):
    """Folding with numpy first, then FoldConstant (if numpy left calls on constants), gives the
    program (constants' bytes included) FoldConstant alone makes."""
    import tvm_ffi
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from codesign.importer import bind_input_shapes, freeze_inputs, load_onnx, prepare_static_graph
    from codesign.relax_fold import fold_constants, fold_with_numpy

    path, shapes, values = FOLDED_MODELS[model]
    onnx_model, _ = load_onnx(path)
    freeze_inputs(onnx_model, values, dict(shapes), str(path))
    bind_input_shapes(onnx_model, shapes, str(path))
    onnx_model, _ = prepare_static_graph(onnx_model, str(path))

    def imported():
        return from_onnx(onnx_model, shape_dict={n: list(s) for n, s in shapes.items()}, keep_params_in_input=False)

    def calls(mod) -> int:
        return sum(isinstance(b.value, relax.Call) for block in mod["main"].body.blocks for b in block.bindings)

    numpy_folded, _ = fold_with_numpy(imported())
    assert calls(numpy_folded) < calls(imported())  # it folded something
    expected = relax.transform.FoldConstant()(imported())
    assert tvm_ffi.structural_equal(relax.transform.FoldConstant()(numpy_folded), expected, map_free_vars=True)
    assert tvm_ffi.structural_equal(fold_constants(imported()), expected, map_free_vars=True)
