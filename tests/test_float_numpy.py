"""Calibration's numpy executor against the TVM float build of the same graph, and the import
pre-pass that skips onnxslim when a graph has nothing to fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from codesign import float_numpy
from codesign.calibration import build_float_module, float_runs, random_samples, run_float
from codesign.graph import extract_graph
from codesign.importer import import_onnx
from codesign.onnx_file import load_onnx, model_sha256
from codesign.onnx_passes import fold


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def many_ops_model(path) -> None:
    """Every kind of node float_numpy runs: grouped, strided and dilated convs, max pools (ceil
    mode), average pools with and without the padding counted, broadcasting adds and multiplies
    of tensors of different ranks, concat, transpose, means, reshapes, matmuls with a constant
    and of two tensors, the unary activations, PReLU, softmax, slices, a nearest upsampling, a
    batch norm after a conv that other nodes also read (the one after no conv is a Mul and an
    Add by then), a split and a gather."""
    rng = np.random.default_rng(3)
    weights = [
        _const("w_grouped", rng.standard_normal((6, 2, 3, 3))),
        _const("b_grouped", rng.standard_normal(6)),
        _const("w_dilated", rng.standard_normal((6, 6, 3, 3))),
        _const("channel_scale", rng.standard_normal((6, 1, 1))),
        _const("w_dense", rng.standard_normal((12, 5))),
        numpy_helper.from_array(np.array([1, 20, 12], dtype=np.int64), "rows_shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "batch_axis"),
    ]
    nearest_floor = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    uneven_pool = {"kernel_shape": [2, 3], "strides": [2, 1], "pads": [0, 1, 0, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w_grouped", "b_grouped"], ["g"], group=2, strides=[2, 1], pads=[1, 0, 2, 1]),
        helper.make_node("Relu", ["g"], ["g_relu"]),
        helper.make_node("Conv", ["g_relu", "w_dilated"], ["d"], dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Add", ["d", "channel_scale"], ["d_biased"]),
        helper.make_node(
            "MaxPool", ["d_biased"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1
        ),
        helper.make_node("AveragePool", ["d_biased"], ["avg"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["g_relu"], ["avg_pad"], count_include_pad=1, **uneven_pool),
        helper.make_node("ReduceMean", ["avg_pad"], ["avg_mean"], axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["avg_mean", "batch_axis"], ["per_channel"]),  # [6, 1, 1]: a lower rank
        helper.make_node("Mul", ["pooled", "per_channel"], ["mixed"]),
        helper.make_node("Relu", ["mixed"], ["mixed_relu"]),  # after a multiply: a clamp node of its own
        helper.make_node("Concat", ["mixed_relu", "avg"], ["joined"], axis=1),
        helper.make_node("Sigmoid", ["joined"], ["gate"]),
        helper.make_node("Tanh", ["joined"], ["squashed"]),
        helper.make_node("Sub", ["gate", "squashed"], ["diff"]),
        helper.make_node("Transpose", ["diff"], ["moved"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["moved", "rows_shape"], ["rows"]),
        helper.make_node("Transpose", ["rows"], ["columns"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["columns", "rows"], ["gram"]),
        helper.make_node("MatMul", ["rows", "w_dense"], ["dense"]),
        helper.make_node("BatchNormalization", ["d", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["d_normed"]),
        helper.make_node("GlobalAveragePool", ["d_normed"], ["global"]),
        helper.make_node("Flatten", ["global"], ["flat"]),
        helper.make_node("Div", ["flat", "flat_norm"], ["scaled"]),
        helper.make_node("ReduceSum", ["dense", "sum_axes"], ["dense_sum"], keepdims=0),
        helper.make_node("Pow", ["dense_sum", "two"], ["squared"]),
        helper.make_node("Sqrt", ["squared"], ["root"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("Slice", ["diff", "starts", "ends", "axes", "steps"], ["sliced"]),
        helper.make_node("PRelu", ["sliced", "slopes"], ["sliced_prelu"]),
        helper.make_node("Exp", ["sliced_prelu"], ["sliced_exp"]),
        helper.make_node("Resize", ["mixed_relu", "", "upsample_scales"], ["upsampled"], **nearest_floor),
        helper.make_node("BatchNormalization", ["upsampled", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["normed"]),
        helper.make_node("Split", ["normed", "split_sizes"], ["normed_head", "normed_tail"], axis=1),
        helper.make_node("Gather", ["normed_tail", "picked"], ["picked_rows"], axis=2),
    ]
    weights += [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in (("split_sizes", [2, 4]),)]
    weights.append(numpy_helper.from_array(np.array([7, 0, 3], dtype=np.int64), "picked"))
    weights.append(_const("upsample_scales", [1.0, 1.0, 2.0, 4.0]))
    weights += [_const(f"bn_{name}", rng.uniform(0.5, 2.0, 6)) for name in ("scale", "bias", "mean", "var")]
    slice_args = {"starts": [1, -4], "ends": [10, 100], "axes": [1, 3], "steps": [2, 1]}
    weights += [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in slice_args.items()]
    weights.append(_const("two", 2.0))
    weights.append(_const("slopes", rng.uniform(0.1, 0.3, (5, 1, 1))))
    weights += [_const("flat_norm", [3.0]), numpy_helper.from_array(np.array([1], dtype=np.int64), "sum_axes")]
    graph = helper.make_graph(
        nodes,
        "many_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 13, 11])],
        [
            helper.make_tensor_value_info("gram", TensorProto.FLOAT, [1, 12, 12]),
            helper.make_tensor_value_info("root", TensorProto.FLOAT, [1, 5]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 6]),
            helper.make_tensor_value_info("sliced_exp", TensorProto.FLOAT, [1, 5, 4, 4]),
            helper.make_tensor_value_info("normed", TensorProto.FLOAT, [1, 6, 8, 20]),
            helper.make_tensor_value_info("normed_head", TensorProto.FLOAT, [1, 2, 8, 20]),
            helper.make_tensor_value_info("picked_rows", TensorProto.FLOAT, [1, 4, 3, 20]),
        ],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)


@pytest.fixture(scope="module")
def many_ops(tmp_path_factory):
    path = tmp_path_factory.mktemp("float_numpy") / "many_ops.onnx"
    many_ops_model(path)
    imported = import_onnx(path)
    return extract_graph(imported), imported


def test_numpy_run_equals_the_tvm_float_build_on_every_tensor(many_ops):
    graph, imported = many_ops
    assert float_numpy.supports(graph)
    ops = {node.op for node in graph.nodes.values()}
    assert {"gemm", "clamp", "relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.concat", "relax.mean"} <= ops
    assert {"relax.permute_dims", "relax.sigmoid", "relax.tanh", "relax.sum", "relax.divide"} <= ops
    assert {"relax.power", "relax.sqrt", "relax.nn.softmax", "relax.strided_slice", "relax.exp"} <= ops
    assert {"relax.image.resize2d", "relax.nn.batch_norm", "TupleGetItem", "relax.split", "relax.take"} <= ops
    assert "relax.nn.prelu" in ops
    taps = [name for name, node in graph.nodes.items() if node.shape is not None]
    samples = random_samples(imported.inputs, 5, seed=4)
    ours = list(float_runs(graph, imported, samples, taps))
    tvm_runs = run_float(build_float_module(graph, imported, taps), samples, [spec.name for spec in imported.inputs])
    for sample_ours, sample_tvm in zip(ours, tvm_runs, strict=True):
        for name, mine, theirs in zip(graph.outputs + taps, sample_ours, sample_tvm, strict=True):
            assert mine.shape == theirs.shape, name
            assert mine.dtype == theirs.dtype == np.float32, name
            assert np.isfinite(theirs).all(), name
            scale = max(float(np.abs(theirs).max()), 1e-6)
            # float32 rounding in another summation order; TVM's tanh is a polynomial good to 2e-5
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=3e-5 * scale, err_msg=name)


def test_sample_chunks_cover_every_sample_once_and_bound_the_memory(many_ops, monkeypatch):
    graph, imported = many_ops
    samples = random_samples(imported.inputs, 7)
    sample_bytes = sum(4 * int(np.prod(node.shape)) for node in graph.nodes.values() if node.shape)
    monkeypatch.setattr(float_numpy, "CHUNK_BYTES", 3 * sample_bytes)
    chunks = list(float_numpy.sample_chunks(graph, samples))
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert [id(s) for chunk in chunks for s in chunk] == [id(s) for s in samples]


def test_a_graph_with_other_ops_runs_through_tvm(monkeypatch):
    from conftest import TEST_MODELS

    path, name, shape = TEST_MODELS["transformer"]
    imported = import_onnx(path, {name: shape})
    graph = extract_graph(imported)
    assert not float_numpy.supports(graph)  # layer norm
    monkeypatch.setattr(float_numpy, "run_graph", lambda *args: pytest.fail("numpy path taken"))
    outputs = next(float_runs(graph, imported, random_samples(imported.inputs, 1), []))
    assert outputs[0].shape == imported.outputs[0].shape


def _graph_with(nodes, initializers) -> onnx.GraphProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return helper.make_graph(nodes, "g", [x], [y], initializers)


def test_constant_work_is_shape_ops_and_nodes_of_constants_only():
    shape = numpy_helper.from_array(np.array([4, 1], dtype=np.int64), "shape")
    weight = _const("w", np.ones((4, 4)))
    reshape_weight = helper.make_node("Reshape", ["w", "shape16"], ["w16"])
    shape16 = numpy_helper.from_array(np.array([16], dtype=np.int64), "shape16")
    clean = _graph_with([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])
    stored_reshape = _graph_with([reshape_weight, helper.make_node("Add", ["x", "w16"], ["y"])], [weight, shape16])
    with_shape = _graph_with(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])], []
    )
    computed = _graph_with(
        [
            helper.make_node("Concat", ["shape", "shape"], ["twice"], axis=0),
            helper.make_node("Reshape", ["x", "twice"], ["y"]),
        ],
        [shape],
    )
    chained = _graph_with(
        [reshape_weight, helper.make_node("Mul", ["w16", "w16"], ["sq"]), helper.make_node("Add", ["x", "sq"], ["y"])],
        [weight, shape16],
    )
    assert not fold.has_constant_work(clean)
    assert not fold.has_constant_work(stored_reshape)  # the frontend takes it, relax_fold folds it
    assert fold.has_constant_work(with_shape)
    assert fold.has_constant_work(computed)
    assert fold.has_constant_work(chained)
    # onnxslim also runs for any op outside the plain ones (its fusions, codesign's rewrites)
    assert not fold.needs_onnxslim(clean)
    bounds = [numpy_helper.from_array(np.array([b], dtype=np.int64), n) for n, b in (("starts", 0), ("ends", 2))]
    sliced = _graph_with([helper.make_node("Slice", ["x", "starts", "ends"], ["y"])], bounds)
    assert not fold.has_constant_work(sliced) and fold.needs_onnxslim(sliced)


def test_a_clean_graph_imports_without_onnxslim(monkeypatch):
    from conftest import TEST_MODELS

    path, name, shape = TEST_MODELS["resnet"]
    folded = import_onnx(path, {name: shape})
    import onnxslim

    monkeypatch.setattr(onnxslim, "slim", lambda *args, **kwargs: pytest.fail("onnxslim called"))
    skipped = import_onnx(path, {name: shape})
    monkeypatch.undo()
    monkeypatch.setattr(fold, "needs_onnxslim", lambda graph: True)
    slimmed = import_onnx(path, {name: shape})
    graphs = [extract_graph(m) for m in (folded, skipped, slimmed)]
    # onnxslim's node order is kept: layers keep the names they have when the graph is slimmed
    names = [[(name, node.op, node.shape) for name, node in graph.nodes.items()] for graph in graphs]
    assert names[1] == names[2] and "conv2d_7" in graphs[1].nodes
    sample = random_samples(skipped.inputs, 1)
    outputs = [next(float_runs(graph, m, sample, []))[0] for graph, m in zip(graphs, (folded, skipped, slimmed))]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[1], outputs[2], rtol=1e-5, atol=1e-5)


def test_load_after_hash_takes_the_parse_only_of_an_unchanged_file(tmp_path):
    path = tmp_path / "m.onnx"
    first = helper.make_model(_graph_with([helper.make_node("Relu", ["x"], ["y"])], []))
    second = helper.make_model(_graph_with([helper.make_node("Sigmoid", ["x"], ["y"])], []))
    onnx.save(first, path)
    model_sha256(path)
    onnx.save(second, path)
    model, _ = load_onnx(path)
    assert model.graph.node[0].op_type == "Sigmoid"
    model_sha256(path)
    model, sha256 = load_onnx(path)
    assert model.graph.node[0].op_type == "Sigmoid" and sha256 == model_sha256(path)
