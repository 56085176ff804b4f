"""Narrow-input convs unfolded (im2col on the host + a 1x1 conv on the core): the same integers
as the direct conv (numpy, the reference and the compiled module, bit for bit), chosen where
the cost model says it pays, and simulated faster where it is chosen."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import codesign.quantize
from codesign.compression import CompressionConfig, compression_from_dict, validate_compression
from codesign.demo import MNIST_MODEL
from codesign.errors import UsageError
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.lowering import plan_layers
from codesign.packed_layout import plan_layouts
from codesign.pipeline import compile_model, import_model, quantize_model
from codesign.reference import conv2d_accumulate, im2col, run_reference
from codesign.schedules.layer import ConvShape
from codesign.schedules.narrow_inputs import unfolded, unfolded_weight, unfolding_pays
from codesign.simulator.simulate import simulate_plans

VTA = load_hardware("vta_default")

# (kernel, strides, padding (t, l, b, r), dilation)
CONVS = [
    ((7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),
    ((5, 5), (1, 1), (2, 2, 2, 2), (1, 1)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 1)),
    ((3, 3), (1, 2), (2, 2, 1, 2), (2, 2)),
]


@pytest.mark.parametrize(("kernel", "strides", "padding", "dilation"), CONVS)
def test_im2col_then_1x1_conv_equals_the_conv(kernel, strides, padding, dilation):
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (2, 3, 13, 11), dtype=np.int8)
    weight = rng.integers(-128, 128, (5, 3, *kernel), dtype=np.int8)
    direct = conv2d_accumulate(x, weight, strides, padding, 1, dilation)
    p = {"kernel": kernel, "strides": strides, "padding": padding, "dilation": dilation}
    columns = im2col(x, p)
    assert columns.shape == (2, 3 * kernel[0] * kernel[1], *direct.shape[2:])
    flat = conv2d_accumulate(columns, unfolded_weight(weight), (1, 1), (0, 0, 0, 0), 1, (1, 1))
    assert np.array_equal(flat, direct)
    shape = ConvShape.conv2d(x.shape, weight.shape, 1, strides, padding, dilation)
    assert unfolded(shape).macs == shape.macs
    assert (unfolded(shape).in_h, unfolded(shape).in_w) == direct.shape[2:]


def first_layer_model(path, channels=3, out_channels=64, kernel=7, stride=2, size=(32, 30), seed=0) -> str:
    """x -> Conv (padding kernel // 2) -> Relu -> Conv 3x3 (64 channels: not narrow) -> y."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((out_channels, channels, kernel, kernel)).astype(np.float32)
    w2 = rng.standard_normal((16, out_channels, 3, 3)).astype(np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[stride] * 2, pads=[pad] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1] * 4),
    ]
    graph = helper.make_graph(
        nodes,
        "first_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def first_layer(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("narrow_inputs")
    model = first_layer_model(tmp / "first_layer.onnx")
    calibration = tmp / "calibration.npy"
    np.save(calibration, np.random.default_rng(1).standard_normal((8, 3, 32, 30)).astype(np.float32))
    return model, str(calibration)


def test_first_layer_is_unfolded_and_bit_exact(first_layer, monkeypatch):
    model, calibration = first_layer
    result = compile_model(model, VTA, calibration=calibration, warn=lambda m: None)
    plans = {plan.name: plan for plan in result.lowered.plans}
    first, second = (n for n in result.qgraph.gemm_nodes())
    assert plans[f"{first.name}.im2col"].placement == "host"
    assert (plans[first.name].shape.in_channels, plans[first.name].shape.kernel_h) == (3 * 7 * 7, 1)
    assert plans[second.name].shape.kernel_h == 3  # 16 input channels: nothing to unfold

    x = np.random.default_rng(2).standard_normal((1, 3, 32, 30)).astype(np.float32)
    expected = run_reference(result.qgraph, {"x": x})[0]
    out = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    assert np.array_equal(out.numpy(), expected)

    # The same model quantized with the direct conv computes the same integers.
    monkeypatch.setattr(codesign.quantize, "unfolding_pays", lambda *args: False)
    imported = import_model(model, warn=lambda m: None)
    _, direct, _ = quantize_model(imported, VTA, calibration, warn=lambda m: None)
    assert all(node.op != "im2col" for node in direct.nodes.values())
    assert np.array_equal(run_reference(direct, {"x": x})[0], expected)

    # and is simulated slower than the unfolded one, as the decision modelled.
    unfolded_latency = simulate_plans(result.lowered.plans, VTA).totals()["latency_seconds"]
    direct_latency = simulate_plans(plan_layers(direct, imported, VTA), VTA).totals()["latency_seconds"]
    assert unfolded_latency < direct_latency


def test_an_unfolded_conv_after_a_blocked_op_unfolds_its_nchw_value(tmp_path):
    """conv -> relu -> max pool -> narrow conv (8 channels, 5x5), both convs unfolded: the first
    im2col writes the blocks its conv reads; the second reads the pool's value, which could stay
    blocked, so it reads it as NCHW (the pool then computes NCHW) and its output is packed. The
    module equals the numpy integer program."""
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["m0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m0", "w1"], ["y"], pads=[2, 2, 2, 2]),
    ]
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("w0", (8, 3, 3, 3)), ("w1", (16, 8, 5, 5)))]  # fmt: skip
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])
    graph = helper.make_graph(nodes, "pooled_narrow", [x_info], [y_info], weights)
    path = tmp_path / "pooled_narrow.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, rng.standard_normal((8, 3, 12, 12)).astype(np.float32))
    compression = CompressionConfig(unfold=("conv2d_0", "conv2d_1"))
    result = compile_model(path, VTA, calibration=calibration, warn=lambda m: None, compression=compression)
    layouts = plan_layouts(result.qgraph, VTA)
    assert "conv2d_0.im2col" in layouts.packed and "conv2d_1.im2col" not in layouts.packed
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    out = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    assert np.array_equal(out.numpy(), run_reference(result.qgraph, {"x": x})[0])


def test_unfolding_is_chosen_where_the_simulated_model_is_faster(mnist_calibration):
    """On cores whose blocks chain, the im2col writes the blocks the conv reads (no packing
    pass), and the cost model prices it so: on wide_1x32x32 mnist-8 unfolded simulates faster
    (146.5 against 189.0 us by the analytic model), and quantization unfolds it."""
    imported = import_model(MNIST_MODEL, warn=lambda m: None)
    wide = load_hardware("wide_1x32x32")
    latency = {}
    for unfold in ((), ("conv2d_0",)):
        compression = CompressionConfig(unfold=unfold)
        _, qgraph, _ = quantize_model(imported, wide, mnist_calibration, warn=lambda m: None, compression=compression)
        plans = plan_layers(qgraph, imported, wide, compression)
        latency[unfold] = simulate_plans(plans, wide).totals()["latency_seconds"]
    assert latency[("conv2d_0",)] < latency[()]
    _, chosen, _ = quantize_model(imported, wide, mnist_calibration, warn=lambda m: None)
    assert chosen.placements["unfold"] == ("conv2d_0",)


def test_unfolding_follows_the_modelled_cost():
    first = ConvShape.conv2d((1, 3, 224, 224), (64, 3, 7, 7), 1, (2, 2), (3, 3, 3, 3), (1, 1))
    assert unfolding_pays(first, VTA)  # 49 input blocks of 16 lanes -> 10
    wide = ConvShape.conv2d((1, 16, 56, 56), (64, 16, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1))
    pointwise = ConvShape.conv2d((1, 3, 56, 56), (64, 3, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1))
    depthwise = ConvShape.conv2d((1, 8, 56, 56), (8, 1, 3, 3), 8, (1, 1), (1, 1, 1, 1), (1, 1))
    assert not any(unfolding_pays(shape, VTA) for shape in (wide, pointwise, depthwise))
    # A host that moves a byte in a thousand cycles: writing the unfolded input costs more than it saves.
    slow_host = VTA.with_changes(name="slow_host_memory", host_bytes_per_cycle=VTA.host_bytes_per_cycle / 1000)
    assert not unfolding_pays(first, slow_host)


def test_a_listed_unfolding_overrides_the_cost_model(mnist_calibration):
    """A tuned design lists the convs its profile unfolded: the list decides, whatever the
    hardware compiled for would pick; an empty list unfolds nothing."""
    imported = import_model(MNIST_MODEL, warn=lambda m: None)
    wide = load_hardware("wide_1x32x32")
    # A host that moves a byte in a thousand cycles: mnist-8's first conv is not worth unfolding.
    slow = wide.with_changes(name="wide_slow_host", host_bytes_per_cycle=wide.host_bytes_per_cycle / 1000)
    cases = [(VTA, None, ["conv2d_0"]), (slow, None, []), (slow, ("conv2d_0",), ["conv2d_0"]), (VTA, (), [])]
    for hw, unfold, expected in cases:
        compression = CompressionConfig(unfold=unfold)
        _, qgraph, _ = quantize_model(imported, hw, mnist_calibration, warn=lambda m: None, compression=compression)
        unfolded_layers = [n.name for n in qgraph.gemm_nodes() if qgraph.nodes[n.inputs[0]].op == "im2col"]
        assert unfolded_layers == expected, (hw.name, unfold)


def test_a_bad_unfold_list_is_named():
    with pytest.raises(UsageError, match=r"unfold = \"conv2d_0\" \(expected a list of layer names\)"):
        compression_from_dict({"unfold": "conv2d_0"})
    graph = extract_graph(import_model(MNIST_MODEL, warn=lambda m: None))
    with pytest.raises(UsageError, match="unfold: 'matmul_0' is not a conv"):
        validate_compression(CompressionConfig(unfold=("matmul_0",)), graph)
    with pytest.raises(UsageError, match="unfold: unknown layer 'conv9'"):
        validate_compression(CompressionConfig(unfold=("conv9",)), graph)
