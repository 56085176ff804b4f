"""Narrow-group convs (depthwise included) on the GEMM core as block-diagonal super-groups: the
compiled module equals the integer reference bit for bit (and onnxruntime's float conv up to
quantization), placement follows the modelled costs, and MAC shares count the layers' real MACs."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.compression import CompressionConfig, compression_from_dict, validate_compression
from codesign.console_tables import placement_summary
from codesign.errors import UsageError
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.lowering import plan_layers
from codesign.pipeline import compile_model, import_model, quantize_model
from codesign.plan import LayerPlan, requant_alu_ops
from codesign.reference import run_reference
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import select_tiling
from codesign.schedules.narrow_groups import block_diagonal_weight, super_grouped
from codesign.simulator.simulate import simulate_plans

ort = pytest.importorskip("onnxruntime")

VTA = load_hardware("vta_default")
# vta_default's core with a host that does a sixteenth of the arithmetic per cycle: the core wins
# every narrow-group conv below, so each one is compiled onto it.
SLOW_HOST = VTA.with_changes(name="vta_slow_host", host_ops_per_cycle=VTA.host_ops_per_cycle / 16)
# Each narrow-group conv on the host or the core, whichever is modelled faster (the default
# runs every one on the core).
FASTEST = CompressionConfig(placement="fastest")

# (channels, groups, out channels, kernel, stride, (height, width)): depthwise 3x3 and 5x5 at
# stride 1 and 2, 2 and 4 channels per group, a channel multiplier; no channel count a multiple of 16.
LAYERS = {
    "depthwise3x3": (40, 40, 40, 3, 1, (10, 10)),
    "depthwise3x3_s2": (24, 24, 24, 3, 2, (11, 11)),
    "depthwise5x5": (20, 20, 20, 5, 1, (9, 7)),
    "depthwise5x5_s2": (36, 36, 36, 5, 2, (12, 12)),
    "depthwise_x2": (12, 12, 24, 3, 1, (8, 8)),
    "two_per_group": (38, 19, 38, 3, 1, (9, 9)),
    "four_per_group": (44, 11, 22, 3, 2, (10, 10)),
}


def saved_model(path, nodes, name: str, x_shape, weights: dict) -> str:
    """A graph of `nodes` from float input x (`x_shape`) to y, with `weights` as initializers,
    checked and saved at `path` (opset 17)."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [numpy_helper.from_array(np.asarray(w, dtype=np.float32), key) for key, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def conv_layer_model(path, channels, groups, out_channels, kernel, stride, size, seed=0) -> str:
    """x -> grouped Conv (padding kernel // 2 each side) -> Relu -> y."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((out_channels, channels // groups, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], strides=[stride] * 2, pads=[pad] * 4, group=groups),
        helper.make_node("Relu", ["conv"], ["y"]),
    ]
    return saved_model(path, nodes, "grouped_conv", (1, channels, *size), {"w": weight, "b": bias})


def calibration_file(tmp_path, shape, seed=1) -> str:
    path = tmp_path / "calibration.npy"
    np.save(path, np.random.default_rng(seed).standard_normal((8, *shape)).astype(np.float32))
    return str(path)


def onnxruntime_output(path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def grouped_conv_numpy(x: np.ndarray, weight: np.ndarray, groups: int, stride: int, pad: int) -> np.ndarray:
    """Integer grouped conv, written out: (N, C, H, W) by (O, C/groups, K, K) -> int64."""
    n, _, h, w = x.shape
    out_channels, group_inputs, k, _ = weight.shape
    group_outputs = out_channels // groups
    padded = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, out_channels, out_h, out_w), dtype=np.int64)
    for o in range(out_channels):
        first = (o // group_outputs) * group_inputs
        for dy in range(k):
            for dx in range(k):
                window = padded[:, first : first + group_inputs, dy : dy + stride * out_h : stride]
                window = window[..., dx : dx + stride * out_w : stride]
                out[:, o] += np.einsum("nchw,c->nhw", window, weight[o, :, dy, dx].astype(np.int64))
    return out


@pytest.mark.parametrize("block_in", [8, 16, 32])
@pytest.mark.parametrize("layer", LAYERS.values(), ids=LAYERS.keys())
def test_block_diagonal_super_groups_compute_the_grouped_conv(layer, block_in):
    """The super-grouped conv (zero-padded input channels, block-diagonal weight, a dense conv
    per super-group) gives the grouped conv's integers, the padding channels' outputs dropped."""
    channels, groups, out_channels, kernel, stride, size = layer
    rng = np.random.default_rng(channels)
    x = rng.integers(-128, 128, (1, channels, *size)).astype(np.int8)
    weight = rng.integers(-127, 128, (out_channels, channels // groups, kernel, kernel)).astype(np.int8)
    shape = ConvShape.conv2d(x.shape, weight.shape, groups, (stride, stride), (kernel // 2,) * 4, (1, 1))
    packed = super_grouped(shape, block_in)
    assert packed.in_channels <= block_in and packed.groups * packed.in_channels >= channels
    diagonal = block_diagonal_weight(weight, packed)
    assert diagonal.shape == (packed.groups, packed.out_channels, packed.in_channels, kernel, kernel)
    padded_x = np.zeros((1, packed.groups * packed.in_channels, *size), dtype=np.int8)
    padded_x[:, :channels] = x
    dense_weight = diagonal.reshape(-1, packed.in_channels, kernel, kernel)
    got = grouped_conv_numpy(padded_x, dense_weight, packed.groups, stride, kernel // 2)[:, :out_channels]
    assert np.array_equal(got, grouped_conv_numpy(x, weight, groups, stride, kernel // 2))


def test_groups_of_at_least_block_in_channels_are_left_as_they_are():
    shape = ConvShape(4, 1, 16, 16, 8, 8, 3, 3)
    assert super_grouped(shape, 16) == shape
    assert super_grouped(ConvShape(1, 1, 3, 8, 8, 8), 16) == ConvShape(1, 1, 3, 8, 8, 8)


@pytest.mark.parametrize("layer", LAYERS.values(), ids=LAYERS.keys())
def test_super_grouped_module_equals_the_reference_and_onnxruntime(layer, tmp_path):
    channels, _, _, _, _, size = layer
    shape = (1, channels, *size)
    path = conv_layer_model(tmp_path / "conv.onnx", *layer)
    result = compile_model(path, SLOW_HOST, {"x": shape}, calibration_file(tmp_path, shape))
    (plan,) = [p for p in result.lowered.plans if p.op == "conv2d"]
    assert plan.placement == "accel" and plan.layer_shape is not None and plan.shape.in_channels <= VTA.block_in
    assert_module_matches(result, path, shape, seed=2, least_cosine=0.995)


def assert_module_matches(result, path, shape, seed: int, least_cosine: float) -> None:
    """On two random inputs, the module's output equals the integer reference bit for bit, and
    onnxruntime's float output with a cosine above `least_cosine`."""
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x = rng.standard_normal(shape).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.array_equal(got, run_reference(result.qgraph, {"x": x})[0])
        expected = onnxruntime_output(path, x)
        assert got.shape == expected.shape
        cosine = np.dot(got.ravel(), expected.ravel()) / (np.linalg.norm(got) * np.linalg.norm(expected))
        assert cosine > least_cosine


def modelled_seconds(qnode, shape: ConvShape, hw, chained: bool = False) -> tuple[float, float]:
    """(core, host) modelled seconds of a narrow-group conv, counted here: the core runs the
    super-grouped plan (the simulator's analytic model) after the host packs its input and
    unpacks its output (not `chained`: between blocked values, it reads and writes them as they
    are); the host conv does a multiply and an add per real MAC and reads and writes its tensors
    once (int8)."""
    in_bytes = math.prod((shape.batch, shape.groups * shape.in_channels, shape.in_h, shape.in_w))
    out_bytes = math.prod((shape.batch, shape.groups * shape.out_channels, shape.out_h, shape.out_w))
    packed = super_grouped(shape, hw.block_in)
    p = qnode.params
    alu_ops = requant_alu_ops(p["bias"], p["multiplier"], p["shift"])
    tiling = select_tiling(packed, hw, alu_ops)
    packing = 0.0 if chained else 2.0 * (in_bytes + out_bytes)
    on_core = LayerPlan("core", "conv2d", "accel", packed, tiling, alu_ops=alu_ops, host_bytes=packing)
    on_host = LayerPlan("host", "conv2d", "host", shape, host_ops=2.0 * shape.macs, host_bytes=in_bytes + out_bytes)
    core_layer, host_layer = simulate_plans([on_core, on_host], hw, "analytic").layers
    return core_layer.accel_seconds + core_layer.host_seconds, host_layer.host_seconds


PLACED = {
    "ppocr_depthwise5x5": (200, 200, 200, 5, 1, (2, 96)),
    "depthwise3x3_large": (64, 64, 64, 3, 1, (40, 40)),
    "four_per_group": (64, 16, 64, 3, 1, (28, 28)),
    "two_per_group": (64, 32, 64, 3, 1, (28, 28)),
    "depthwise3x3_small": (40, 40, 40, 3, 2, (12, 12)),
}


@pytest.mark.parametrize("hw", [VTA, SLOW_HOST, load_hardware("wide_1x32x32")], ids=lambda hw: hw.name)
def test_placement_follows_the_modelled_costs(hw, tmp_path):
    placements = set()
    for name, layer in PLACED.items():
        channels, groups, out_channels, kernel, stride, (height, width) = layer
        shape = (1, channels, height, width)
        imported = import_model(conv_layer_model(tmp_path / f"{name}.onnx", *layer), {"x": shape})
        calibration = calibration_file(tmp_path, shape)
        _, qgraph, _ = quantize_model(imported, hw, calibration, warn=lambda _: None, compression=FASTEST)
        (qnode,) = [n for n in qgraph.nodes.values() if n.op == "conv2d"]
        pad = kernel // 2
        conv = ConvShape(
            groups, 1, channels // groups, out_channels // groups, height, width, kernel, kernel, stride, stride,
            pad, pad, pad, pad,
        )  # fmt: skip
        core, host = modelled_seconds(qnode, conv, hw)
        assert qnode.placement == ("accel" if core < host else "host"), (name, hw.name, core, host)
        placements.add(qnode.placement)
    if hw is VTA:
        assert placements == {"accel", "host"}  # both outcomes are exercised on one description


def test_by_default_every_narrow_conv_runs_on_the_core(tmp_path):
    """The default placement ("accelerator") runs every narrow-group conv on the core, those
    the host would run faster on vta_default too (above), so all their MACs are the core's."""
    for name, layer in PLACED.items():
        channels, *_, (height, width) = layer
        shape = (1, channels, height, width)
        imported = import_model(conv_layer_model(tmp_path / f"{name}.onnx", *layer), {"x": shape})
        _, qgraph, _ = quantize_model(imported, VTA, calibration_file(tmp_path, shape), warn=lambda _: None)
        plans = plan_layers(qgraph, imported, VTA)
        assert [p.placement for p in plans if p.op == "conv2d"] == ["accel"], name
        assert qgraph.placements["host_convs"] == ()
        assert placement_summary(plans)["accel_mac_share"] == 1.0


def between_dense_convs_model(path, channels, groups, out_channels, kernel, stride, size, seed=0) -> str:
    """x -> 1x1 Conv -> HardSwish -> the grouped conv -> Relu -> 1x1 Conv -> y: on the core,
    the grouped conv would read and write blocked values (HardSwish is a host table on
    vta_default, in the 1x1 conv's ALU program on wide_1x32x32)."""
    rng = np.random.default_rng(seed)
    weights = {
        "w_in": rng.standard_normal((channels, channels, 1, 1)),
        "w": rng.standard_normal((out_channels, channels // groups, kernel, kernel)),
        "w_out": rng.standard_normal((channels, out_channels, 1, 1)),
    }
    pad = kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "w_in"], ["a"]),
        helper.make_node("HardSwish", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["g"], strides=[stride] * 2, pads=[pad] * 4, group=groups),
        helper.make_node("Relu", ["g"], ["s"]),
        helper.make_node("Conv", ["s", "w_out"], ["y"]),
    ]
    return saved_model(path, nodes, "between_dense_convs", (1, channels, *size), weights)


@pytest.mark.parametrize("hw", [VTA, load_hardware("wide_1x32x32")], ids=lambda hw: hw.name)
def test_a_grouped_conv_between_core_convs_is_priced_chained(hw, tmp_path):
    """Between two dense convs on the core, a narrow-group conv on the core would chain (no
    packing), as a host conv would run on the blocks: its placement compares the core's time
    alone with the host's. On wide_1x32x32 that moves a layer the packing kept on the host,
    and the whole program's modelled latency is the lower of the two placements'."""
    moved = []
    for name, layer in PLACED.items():
        channels, groups, out_channels, kernel, stride, (height, width) = layer
        shape = (1, channels, height, width)
        path = between_dense_convs_model(tmp_path / f"{name}.onnx", *layer)
        imported = import_model(path, {"x": shape})
        calibration = calibration_file(tmp_path, shape)
        _, qgraph, _ = quantize_model(imported, hw, calibration, warn=lambda _: None, compression=FASTEST)
        grouped = next(n for n in qgraph.nodes.values() if n.op == "conv2d" and n.params["groups"] > 1)
        pad = kernel // 2
        conv = ConvShape(
            groups, 1, channels // groups, out_channels // groups, height, width, kernel, kernel, stride, stride,
            pad, pad, pad, pad,
        )  # fmt: skip
        core, host = modelled_seconds(grouped, conv, hw, chained=True)
        assert grouped.placement == ("accel" if core < host else "host"), (name, hw.name, core, host)
        if core < host <= modelled_seconds(grouped, conv, hw)[0]:
            moved.append(name)
            latencies = {}
            for listed in ((), (grouped.name,)):
                compression = CompressionConfig(host_convs=listed)
                _, pinned, _ = quantize_model(imported, hw, calibration, warn=lambda _: None, compression=compression)
                plans = plan_layers(pinned, imported, hw)
                latencies[listed] = simulate_plans(plans, hw, "analytic").totals()["latency_seconds"]
            assert latencies[()] < latencies[(grouped.name,)], (name, latencies)
    if hw.name == "wide_1x32x32":
        assert moved


def test_mac_share_counts_real_macs(tmp_path):
    """A dense conv then a depthwise one, both on the core: the summary counts each layer's real
    MACs (counted here from the ONNX attributes), the simulator's counters the super-groups'."""
    rng = np.random.default_rng(4)
    c, size = 20, 10
    dense_w = rng.standard_normal((c, 3, 3, 3)).astype(np.float32)
    depthwise_w = rng.standard_normal((c, 1, 5, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "wd"], ["a"], pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "wdw"], ["y"], pads=[2] * 4, group=c),
    ]
    weights = {"wd": dense_w, "wdw": depthwise_w}
    path = saved_model(tmp_path / "model.onnx", nodes, "dense_then_depthwise", (1, 3, size, size), weights)
    imported = import_model(path, {"x": (1, 3, size, size)})
    _, qgraph, _ = quantize_model(imported, SLOW_HOST, calibration_file(tmp_path, (1, 3, size, size)))
    plans = plan_layers(qgraph, imported, SLOW_HOST)
    gemms = [p for p in plans if p.op == "conv2d"]
    assert [p.placement for p in gemms] == ["accel", "accel"]
    dense_macs = c * size * size * 3 * 3 * 3  # output elements x (input channels x taps)
    depthwise_macs = c * size * size * 1 * 5 * 5
    summary = placement_summary(plans)
    assert summary["macs"] == summary["accel_macs"] == dense_macs + depthwise_macs
    assert [p.macs for p in gemms] == [dense_macs, depthwise_macs]
    report = simulate_plans(plans, SLOW_HOST, "event")
    depthwise = next(layer for layer in report.layers if layer.name == gemms[1].name)
    assert depthwise.macs == depthwise_macs
    # The core executes each super-group's whole block-diagonal weight: block_in x block_out MACs
    # per micro-op, the zeros included.
    packed = super_grouped(gemms[1].layer_shape, SLOW_HOST.block_in)
    assert depthwise.counters["gemm_counter"] * SLOW_HOST.macs_per_cycle >= packed.macs >= 16 * depthwise_macs
    assert report.totals()["macs"] == dense_macs + depthwise_macs


def test_listed_host_convs_override_the_cost_model(tmp_path):
    """A tuned design lists the grouped convs its profile put on the host: PP-OCR's 5x5
    depthwise conv goes to the host on vta_default and to the core on wide_1x32x32 by modelled
    cost (placement "fastest": test_placement_follows_the_modelled_costs); listed, it stays on the host of either, and
    an empty list puts it on the core of either. Quantization reports what it placed."""
    layer = PLACED["ppocr_depthwise5x5"]
    shape = (1, layer[0], *layer[5])
    imported = import_model(conv_layer_model(tmp_path / "dw.onnx", *layer), {"x": shape})
    calibration = calibration_file(tmp_path, shape)
    wide = load_hardware("wide_1x32x32")
    cases = [(VTA, None, "host"), (wide, None, "accel"), (wide, ("conv2d_0",), "host"), (VTA, (), "accel")]
    for hw, listed, placement in cases:
        compression = CompressionConfig(host_convs=listed, placement="fastest")
        _, qgraph, _ = quantize_model(imported, hw, calibration, warn=lambda _: None, compression=compression)
        assert qgraph.nodes["conv2d_0"].placement == placement, (hw.name, listed)
        assert qgraph.placements["host_convs"] == (("conv2d_0",) if placement == "host" else ())


def test_a_bad_placement_list_is_named(tmp_path):
    graph = extract_graph(import_model(conv_layer_model(tmp_path / "dw.onnx", *LAYERS["depthwise3x3"])))
    with pytest.raises(UsageError, match=r"host_convs = \"conv2d_0\" \(expected a list of layer names\)"):
        compression_from_dict({"host_convs": "conv2d_0"})
    with pytest.raises(UsageError, match="alu_activations: unknown layer 'conv9'"):
        validate_compression(CompressionConfig(alu_activations=("conv9",)), graph)
    dense = extract_graph(import_model(conv_layer_model(tmp_path / "dense.onnx", 16, 1, 16, 3, 1, (8, 8))))
    with pytest.raises(UsageError, match="host_convs: 'conv2d_0' is not a grouped conv"):
        validate_compression(CompressionConfig(host_convs=("conv2d_0",)), dense)
