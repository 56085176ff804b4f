"""1-D Conv and ConvTranspose rewritten into 2-D Conv plus data movement compute what the originals compute
(onnxruntime on both), and each ConvTranspose becomes one Conv that wastes no more MACs than its zero taps."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from codesign.errors import ModelError
from codesign.onnx_passes.conv import rewrite_convs

ort = pytest.importorskip("onnxruntime")

DATA_MOVEMENT = {"Reshape", "Transpose", "Slice", "Unsqueeze", "Squeeze"}


def make_model(op_type, x_shape, weight_shape, attrs, *, bias=True, opset=17, seed=0) -> onnx.ModelProto:
    """One `op_type` node named 'layer' reading graph input x and initializers w (and b), writing graph output y."""
    rng = np.random.default_rng(seed)
    out_channels = weight_shape[0] if op_type == "Conv" else weight_shape[1] * attrs.get("group", 1)
    initializers = [numpy_helper.from_array(rng.standard_normal(weight_shape).astype(np.float32), "w")]
    if bias:
        initializers.append(numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b"))
    node = helper.make_node(op_type, ["x", "w", "b"][: 1 + len(initializers)], ["y"], name="layer", **attrs)
    graph = helper.make_graph(
        [node],
        "single",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def rewrite_and_compare(model: onnx.ModelProto, x_shape, seed: int = 1) -> list[str]:
    """Rewrites `model` in place; it must pass the full checker and give the same outputs as before."""
    x = np.random.default_rng(seed).standard_normal(x_shape).astype(np.float32)
    expected = run(model, x)
    notes = rewrite_convs(model)
    onnx.checker.check_model(model, full_check=True)
    got = run(model, x)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    return notes


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_one_conv_and_data_movement(model: onnx.ModelProto, notes: list[str]) -> onnx.NodeProto:
    assert len(notes) == 1
    assert op_types(model).count("Conv") == 1
    assert set(op_types(model)) <= {"Conv"} | DATA_MOVEMENT
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    assert len(weights[conv.input[1]].dims) == 4
    assert "w" not in weights  # the original weight is gone
    return conv


def assert_phase_conv_cost(model, notes, x_shape, weight_shape, *, strides, pads, out_shape, dilations=None, group=1):
    """The ConvTranspose became one Conv with Kp/s taps per phase that computes just the phase rows q (output
    positions s*q .. s*q + s-1 before the crop) the output touches. So its MACs are at most (Kp_h*Kp_w)/(K_h*K_w)
    times the ConvTranspose's (every input pixel times every tap), times the phase rows over the input size where
    the output touches more rows than the input has (the halo of the edge taps: one row for a 4x4 stride-2 pad-1
    upsampling, so no single phase-stacked Conv can meet the bound without that factor)."""
    conv = assert_one_conv_and_data_movement(model, notes)
    spatial = len(x_shape) - 2
    dilations = dilations or [1] * spatial
    kernel, sizes = list(weight_shape[2:]), list(x_shape[2:])
    kernel_padded = [math.ceil(((k - 1) * d + 1) / s) * s for k, d, s in zip(kernel, dilations, strides)]
    rows = [(b + out - 1) // s - b // s + 1 for b, out, s in zip(pads[:spatial], out_shape, strides)]

    inferred = onnx.shape_inference.infer_shapes(model).graph
    infos = {info.name: info for info in [*inferred.value_info, *inferred.output]}
    conv_out = [dim.dim_value for dim in infos[conv.output[0]].type.tensor_type.shape.dim]
    conv_weight = next(t for t in model.graph.initializer if t.name == conv.input[1]).dims
    assert list(conv_weight[2:])[-spatial:] == [kp // s for kp, s in zip(kernel_padded, strides)]
    assert conv_out[2:][-spatial:] == rows

    transpose_macs = x_shape[0] * x_shape[1] * weight_shape[1] * math.prod(sizes) * math.prod(kernel)
    conv_macs = x_shape[0] * math.prod(conv_out[1:]) * math.prod(conv_weight[1:])
    zero_taps = math.prod(kp / k for kp, k in zip(kernel_padded, kernel))
    halo = math.prod(max(1.0, row / size) for row, size in zip(rows, sizes))
    assert conv_macs <= transpose_macs * zero_taps * halo * (1 + 1e-9)
    assert next(attr.i for attr in conv.attribute if attr.name == "group") == group


# --- 1-D Conv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("pads", [(0, 0), (1, 2)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_conv1d(kernel, stride, pads, dilation, group, bias, opset):
    x_shape = [2, 4, 11]
    attrs = {"strides": [stride], "pads": list(pads), "dilations": [dilation], "group": group}
    model = make_model("Conv", x_shape, [6, 4 // group, kernel], attrs, bias=bias, opset=opset)
    notes = rewrite_and_compare(model, x_shape)
    conv = assert_one_conv_and_data_movement(model, notes)
    assert op_types(model) == ["Unsqueeze", "Conv", "Squeeze"]
    assert conv.input[2:] == (["b"] if bias else [])  # the bias is used as it is


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv1d_auto_pad(auto_pad):
    model = make_model("Conv", [1, 3, 10], [5, 3, 4], {"strides": [3], "auto_pad": auto_pad})
    assert_one_conv_and_data_movement(model, rewrite_and_compare(model, [1, 3, 10]))


def test_conv2d_untouched():
    model = make_model("Conv", [1, 3, 8, 8], [4, 3, 3, 3], {"pads": [1, 1, 1, 1]})
    assert rewrite_convs(model) == []
    assert op_types(model) == ["Conv"]


# --- ConvTranspose -----------------------------------------------------------------------------


def output_size(size, kernel, stride, pad_begin, pad_end, extra, dilation=1):
    return stride * (size - 1) + extra + (kernel - 1) * dilation + 1 - pad_begin - pad_end


SQUARE_CASES = [
    (kernel, stride, pads, extra, bias, opset)
    for kernel, stride, pads, extra, bias, opset in itertools.product(
        [2, 3, 4], [1, 2, 3], [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0)], [0, 1], [True, False], [11, 17]
    )
    if extra < stride
]


@pytest.mark.parametrize(("kernel", "stride", "pads", "extra", "bias", "opset"), SQUARE_CASES)
def test_conv_transpose_2d(kernel, stride, pads, extra, bias, opset):
    x_shape, weight_shape = [2, 4, 5, 6], [4, 3, kernel, kernel]
    attrs = {"strides": [stride] * 2, "pads": list(pads), "output_padding": [extra] * 2}
    model = make_model("ConvTranspose", x_shape, weight_shape, attrs, bias=bias, opset=opset)
    notes = rewrite_and_compare(model, x_shape)
    out_shape = [output_size(size, kernel, stride, pads[i], pads[i + 2], extra) for i, size in enumerate([5, 6])]
    assert_phase_conv_cost(model, notes, x_shape, weight_shape, strides=[stride] * 2, pads=pads, out_shape=out_shape)


# (kernel, stride, pads, output_padding, dilation, group)
GENERAL_CASES = [
    ((3, 4), (2, 3), (1, 0, 2, 1), (1, 2), (1, 1), 1),
    ((1, 5), (1, 2), (0, 2, 0, 1), (0, 1), (1, 1), 1),
    ((4, 2), (3, 1), (2, 0, 1, 0), (2, 0), (1, 1), 1),
    ((2, 3), (2, 2), (0, 0, 0, 0), (0, 0), (1, 1), 1),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (2, 2), 1),
    ((3, 2), (1, 2), (0, 1, 2, 0), (0, 1), (2, 3), 1),
    ((2, 2), (3, 3), (0, 0, 0, 0), (1, 2), (2, 1), 1),
    ((4, 4), (2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 2),
    ((4, 4), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 4),  # depthwise
    ((3, 5), (2, 3), (2, 1, 0, 3), (0, 2), (1, 1), 2),
    ((2, 2), (2, 2), (2, 3, 3, 2), (0, 0), (1, 1), 1),  # pads as large as the kernel: the Conv reads fewer rows
]


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize(("kernel", "stride", "pads", "extra", "dilation", "group"), GENERAL_CASES)
def test_conv_transpose_2d_general(kernel, stride, pads, extra, dilation, group, opset):
    x_shape, weight_shape = [1, 4, 5, 7], [4, 6 // group, *kernel]  # group 4: depthwise
    attrs = {"strides": list(stride), "pads": list(pads), "output_padding": list(extra), "dilations": list(dilation)}
    model = make_model("ConvTranspose", x_shape, weight_shape, {**attrs, "group": group}, opset=opset)
    notes = rewrite_and_compare(model, x_shape)
    out_shape = [
        output_size(size, kernel[i], stride[i], pads[i], pads[i + 2], extra[i], dilation[i])
        for i, size in enumerate([5, 7])
    ]
    geometry = {"strides": stride, "pads": pads, "out_shape": out_shape, "dilations": dilation, "group": group}
    assert_phase_conv_cost(model, notes, x_shape, weight_shape, **geometry)


CASES_1D = [
    case
    for case in itertools.product([1, 2, 3, 5], [1, 2, 3], [(0, 0), (1, 2)], [0, 1], [True, False])
    if case[3] < case[1]
]


@pytest.mark.parametrize(("kernel", "stride", "pads", "extra", "bias"), CASES_1D)
def test_conv_transpose_1d(kernel, stride, pads, extra, bias):
    x_shape, weight_shape = [2, 4, 9], [4, 3, kernel]
    attrs = {"strides": [stride], "pads": list(pads), "output_padding": [extra]}
    model = make_model("ConvTranspose", x_shape, weight_shape, attrs, bias=bias, opset=11 if bias else 17)
    notes = rewrite_and_compare(model, x_shape)
    assert "1-D" in notes[0]
    out_shape = [output_size(9, kernel, stride, pads[0], pads[1], extra)]
    assert_phase_conv_cost(model, notes, x_shape, weight_shape, strides=[stride], pads=pads, out_shape=out_shape)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 3, 4])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_transpose_auto_pad(auto_pad, kernel, stride):
    for x_shape in ([1, 2, 5, 6], [1, 2, 5]):
        weight_shape = [2, 3] + [kernel] * (len(x_shape) - 2)
        model = make_model("ConvTranspose", x_shape, weight_shape, {"strides": [stride] * (len(x_shape) - 2)})
        model.graph.node[0].attribute.append(helper.make_attribute("auto_pad", auto_pad))
        assert_one_conv_and_data_movement(model, rewrite_and_compare(model, x_shape))


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("extra_size", [-3, -2, -1, 0, 1])  # output_shape vs the full output size (1 past: zeros)
def test_conv_transpose_output_shape(auto_pad, extra_size):
    full = output_size(5, 4, 2, 0, 0, 0)
    attrs = {"strides": [2, 2], "output_shape": [full + extra_size, full - 1], "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attrs["pads"] = [1, 0, 2, 1]  # output_shape overrides them
    model = make_model("ConvTranspose", [1, 2, 5, 5], [2, 3, 4, 4], attrs)
    assert_one_conv_and_data_movement(model, rewrite_and_compare(model, [1, 2, 5, 5]))


@pytest.mark.parametrize("opset", [7, 9, 10, 12, 13])
def test_op_forms_of_old_and_new_opsets(opset):
    """Slice takes its bounds as attributes before opset 10, Unsqueeze/Squeeze their axes before 13."""
    for op_type, x_shape, weight_shape, attrs in [
        ("ConvTranspose", [1, 4, 6], [4, 2, 3], {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
        ("ConvTranspose", [1, 4, 5, 6], [4, 2, 3, 4], {"strides": [2, 3], "pads": [1, 2, 0, 1]}),
        ("Conv", [1, 4, 6], [3, 4, 3], {"pads": [1, 1]}),
    ]:
        model = make_model(op_type, x_shape, weight_shape, attrs, opset=opset)
        assert_one_conv_and_data_movement(model, rewrite_and_compare(model, x_shape))


# --- whole graphs ------------------------------------------------------------------------------


def test_graph_of_several_nodes_keeps_names_and_drops_dead_weights():
    """Unnamed nodes, a weight shared by two ConvTransposes and one in a Constant node; downstream nodes
    read the same tensor names as before."""
    rng = np.random.default_rng(3)
    conv_weight = numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w_conv")
    up_weight = numpy_helper.from_array(rng.standard_normal((4, 4, 4)).astype(np.float32), "w_up")
    constant_weight = helper.make_tensor("w_const", TensorProto.FLOAT, [4, 2, 2], rng.standard_normal(16).tolist())
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["a"], pads=[1, 1]),
        helper.make_node("ConvTranspose", ["a", "w_up"], ["b"], strides=[2], pads=[1, 1]),
        helper.make_node("ConvTranspose", ["b", "w_up"], ["c"], strides=[2], pads=[1, 1]),
        helper.make_node("Constant", [], ["w_c"], value=constant_weight),
        helper.make_node("ConvTranspose", ["c", "w_c"], ["d"], strides=[3]),
        helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 3)],
        [conv_weight, up_weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    notes = rewrite_and_compare(model, [1, 2, 7])
    assert len(notes) == 4
    assert "ConvTranspose" not in op_types(model) and op_types(model).count("Conv") == 4
    assert "Constant" not in op_types(model)
    assert not {"w_conv", "w_up"} & {tensor.name for tensor in model.graph.initializer}
    names = [node.name for node in model.graph.node]
    assert len(names) == len(set(names)) and all(names)
    assert model.graph.node[-1].input == ["d"]


def test_runtime_weight_left_alone():
    """A weight computed at run time cannot go to the accelerator: the node stays as it is."""
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
        "runtime_weight",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite_convs(model) == []
    assert op_types(model) == ["ConvTranspose"]


def test_dynamic_input_shape_is_an_error_naming_the_node():
    model = make_model("ConvTranspose", ["N", 2, "H", "W"], [2, 3, 2, 2], {"strides": [2, 2]})
    with pytest.raises(ModelError, match="ConvTranspose 'layer'"):
        rewrite_convs(model)
