"""Zero points on one-sided lookup tables. HardSwish's values reach 0.375 below zero and several
units above it, so a symmetric int8 scale leaves it half of its codes. Where every reader is a
GEMM that takes a zero point into its bias (an unpadded conv or a matmul with constant weights),
the table gets a zero point and a scale spanning both sides with all 256 codes; a padded reader
(its pad would insert real zeros; a narrow-group conv's, PP-OCR's depthwise convs, pads with the
zero point instead) or a two-sided function keeps the symmetric scale. The module
stays equal to the numpy integer program, and gets closer to onnxruntime than without.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign import float_numpy
from codesign.calibration import tensor_ranges
from codesign.compression import CompressionConfig
from codesign.deploy import quantization_summary
from codesign.explain import quantization_errors
from codesign.graph import channel_shaped
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.quantize import quantize_graph
from codesign.reference import evaluate, run_reference

CHANNELS = 16
# The depthwise convs where vta_default's model runs them fastest: on the host (by default, the core).
FASTEST = CompressionConfig(placement="fastest")


def branches_model(path):
    """Branches from x (1, 16, 8, 8), each conv -> activation -> conv: HardSwish -> 1x1 conv
    (y0); HardSwish -> padded 3x3 conv (y1); Tanh -> 1x1 conv (y2); a depthwise 3x3 conv (host on
    vta_default) -> HardSwish -> 1x1 conv (y3); SiLU -> 1x1 conv (y4). On vta_default the core's
    ALU computes HardSwish after a dense conv, tables the rest."""
    rng = np.random.default_rng(11)

    def weight(name, shape, gain=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    dense, wide = (CHANNELS, CHANNELS, 1, 1), (CHANNELS, CHANNELS, 3, 3)
    inits = [weight(f"s{i}", dense) for i in (0, 1, 2, 4)] + [weight("dw", (CHANNELS, 1, 3, 3), 0.5)]
    inits += [weight("p1", wide, 0.1)] + [weight(f"p{i}", dense) for i in (0, 2, 3, 4)]
    nodes = [
        helper.make_node("Conv", ["x", "s0"], ["c0"]),
        helper.make_node("HardSwish", ["c0"], ["a0"]),
        helper.make_node("Conv", ["a0", "p0"], ["y0"]),
        helper.make_node("Conv", ["x", "s1"], ["c1"]),
        helper.make_node("HardSwish", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "p1"], ["y1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "s2"], ["c2"]),
        helper.make_node("Tanh", ["c2"], ["a2"]),
        helper.make_node("Conv", ["a2", "p2"], ["y2"]),
        helper.make_node("Conv", ["x", "dw"], ["c3"], group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c3"], ["a3"]),
        helper.make_node("Conv", ["a3", "p3"], ["y3"]),
        helper.make_node("Conv", ["x", "s4"], ["c4"]),
        helper.make_node("Sigmoid", ["c4"], ["g4"]),
        helper.make_node("Mul", ["c4", "g4"], ["a4"]),
        helper.make_node("Conv", ["a4", "p4"], ["y4"]),
    ]
    return saved(path, "branches", nodes, inits, size=8, outputs=[f"y{i}" for i in range(5)])


def saved(path, name: str, nodes, inits, size: int, outputs) -> str:
    """The graph of x (1, 16, size, size) -> `outputs` of the same shape, saved at `path`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, size, size])
    ys = [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, CHANNELS, size, size]) for y in outputs]
    graph = helper.make_graph(nodes, name, [x], ys, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


def calibration_file(folder, seed: int, size: int) -> tuple:
    """16 calibration inputs saved in `folder`: (the file, the inputs as feeds)."""
    samples = (np.random.default_rng(seed).standard_normal((16, 1, CHANNELS, size, size)) * 2).astype(np.float32)
    np.save(folder / "calibration.npy", samples)
    return folder / "calibration.npy", [{"x": sample} for sample in samples]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero_points")
    path = branches_model(folder / "branches.onnx")
    calibration, samples = calibration_file(folder, 5, 8)
    hw = load_hardware("vta_default")
    result = compile_model(path, hw, calibration=calibration, warn=print, bias_correction=False, compression=FASTEST)
    return path, result, samples


def activation_inputs(result) -> list:
    """The int8 tensor each output's last conv reads, in output order (y0 .. y4)."""
    qgraph = result.qgraph
    readers = []
    for name in qgraph.outputs:
        node = qgraph.nodes[name]
        gemm = qgraph.nodes[node.inputs[0]] if node.op == "dequantize" else node
        readers.append(qgraph.nodes[gemm.inputs[0]])
    return readers


def test_only_one_sided_tables_read_by_unpadded_gemms_get_a_zero_point(compiled):
    _, result, _ = compiled
    alu, padded_read, tanh, host_conv, silu = activation_inputs(result)
    assert alu.op == "conv2d" and alu.params["activation"].kind == "hardswish" and np.any(alu.zero_point)
    assert host_conv.op == "conv2d" and host_conv.placement == "host" and "table" in host_conv.params
    assert np.any(host_conv.zero_point)  # the depthwise conv's merged HardSwish table keeps it
    assert silu.op == "lut" and np.any(silu.zero_point)
    assert not np.any(padded_read.zero_point) and not np.any(tanh.zero_point)
    # All 256 codes in use: SiLU's table reaches -128, where a symmetric one stops near 0.
    assert np.min(silu.params["table"]) == -128
    assert np.min(tanh.params["table"]) < -100  # two-sided: the symmetric scale uses both sides
    zero_points = quantization_summary(result)["tensor_zero_points"]
    assert set(zero_points) == {alu.name, host_conv.name, silu.name}


def run_module(result, x):
    outputs = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return [o.numpy() for o in outputs] if len(result.qgraph.outputs) > 1 else [outputs.numpy()]


def test_the_module_equals_the_integer_program(compiled):
    _, result, _ = compiled
    for seed in range(3):
        x = (np.random.default_rng(100 + seed).standard_normal((1, CHANNELS, 8, 8)) * 2).astype(np.float32)
        for ours, reference in zip(run_module(result, x), run_reference(result.qgraph, {"x": x})):
            np.testing.assert_array_equal(ours, reference)


def real_values(qgraph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every int8 tensor of the numpy integer program, in real units: (int8 - zero point) * scale."""
    values, real = {"x": x}, {}
    for node in qgraph.nodes.values():
        if node.op != "input":
            values[node.name] = evaluate(node, [values[i] for i in node.inputs])
        if node.dtype == "int8":
            scale, zero_point = (channel_shaped(np.asarray(v), node.shape) for v in (node.scale, node.zero_point))
            real[node.float_name or node.name] = (values[node.name].astype(np.float64) - zero_point) * scale
    return real


def test_zero_points_bring_the_tables_closer_to_the_float_graph(compiled):
    """Each activation's int8 tensor against the float graph's, with zero points and without
    (the same graph quantized with symmetric scales), on inputs other than the calibration's:
    the one-sided ones' error (1 - cosine) falls (their own rounding is part of it: their
    inputs' rounding reaches them too), the others' does not move."""
    _, result, samples = compiled
    ranges = tensor_ranges(result.graph, result.imported, samples)
    symmetric = quantize_graph(result.graph, ranges, dataclasses.replace(result.qgraph.config, offset_tables=False))
    inputs = (np.random.default_rng(7).standard_normal((8, 1, CHANNELS, 8, 8)) * 2).astype(np.float32)
    floats = float_numpy.run_graph(result.graph, [{"x": x} for x in inputs])
    activations = [node.float_name or node.name for node in activation_inputs(result)]
    errors = {}
    for qgraph, key in ((result.qgraph, "zero points"), (symmetric, "symmetric")):
        runs = [real_values(qgraph, x) for x in inputs]
        errors[key] = [1 - cosine(np.concatenate([run[a] for run in runs]), floats[a]) for a in activations]
    ratios = np.array(errors["zero points"]) / np.array(errors["symmetric"])
    # HardSwish (ALU), depthwise conv + HardSwish, SiLU: measured 0.63, 0.74, 0.80
    assert all(ratios[[0, 3, 4]] < 0.85), ratios
    assert ratios[1] == ratios[2] == 1.0  # a padded reader, a two-sided function


def test_explain_reads_zero_points(compiled):
    """--explain dequantizes every tensor by its scale and zero point: the offset tables agree
    with the float graph as closely as the symmetric ones."""
    _, result, samples = compiled
    errors = {row.name: row for row in quantization_errors(result, samples[:4])}
    alu, padded_read, _, host_conv, silu = activation_inputs(result)
    for node in (alu, host_conv, silu, padded_read):
        assert errors[node.name].cosine > 0.999


def depthwise_reader_model(path):
    """x (1, 16, 10, 10) -> 1x1 conv -> HardSwish -> padded 3x3 depthwise conv -> 1x1 conv (y):
    PP-OCR's blocks, whose depthwise convs read HardSwish's one-sided values."""
    rng = np.random.default_rng(23)

    def weight(name, shape, gain):
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    inits = [weight("s", (CHANNELS, CHANNELS, 1, 1), 0.3), weight("dw", (CHANNELS, 1, 3, 3), 0.5)]
    inits += [weight("p", (CHANNELS, CHANNELS, 1, 1), 0.3)]
    nodes = [
        helper.make_node("Conv", ["x", "s"], ["c"]),
        helper.make_node("HardSwish", ["c"], ["a"]),
        helper.make_node("Conv", ["a", "dw"], ["d"], group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "p"], ["y"]),
    ]
    return saved(path, "depthwise_reader", nodes, inits, size=10, outputs=["y"])


@pytest.fixture(scope="module")
def depthwise_placements(tmp_path_factory):
    """The model compiled for vta_default with its depthwise conv on the host and on the core."""
    folder = tmp_path_factory.mktemp("padded_reader")
    path = depthwise_reader_model(folder / "depthwise_reader.onnx")
    calibration, samples = calibration_file(folder, 9, 10)
    hw = load_hardware("vta_default")

    def compiled_with(compression):
        return compile_model(path, hw, calibration=calibration, warn=print, compression=compression)

    results = {"host": compiled_with(FASTEST)}
    pinned = results["host"].qgraph.placements["zero_point_pads"]
    # As a tuned design with the host's program compiles for a core that runs its grouped convs
    results["core"] = compiled_with(CompressionConfig(host_convs=(), zero_point_pads=pinned))
    results["core, unpinned"] = compiled_with(CompressionConfig(host_convs=()))
    return results, samples


def depthwise_node(result):
    return next(n for n in result.qgraph.nodes.values() if n.op == "conv2d" and n.params["groups"] > 1)


def test_a_padded_depthwise_reader_pads_with_the_zero_point(depthwise_placements):
    """The HardSwish read by the padded depthwise conv gets a zero point; the conv pads with it,
    on the host in its own loop and, where a design pins it, for the core in a pass before the
    packing (the core's loads pad with zeros). Both placements compute the same integers, equal
    to the numpy program's."""
    results, _ = depthwise_placements
    host, core = depthwise_node(results["host"]), depthwise_node(results["core"])
    assert (host.placement, core.placement) == ("host", "accel")
    assert results["host"].qgraph.placements["zero_point_pads"] == (host.name,)
    activation = results["host"].qgraph.nodes[host.inputs[0]]
    assert np.any(activation.zero_point)
    np.testing.assert_array_equal(host.params["pad_value"], activation.zero_point)
    np.testing.assert_array_equal(core.params["pad_value"], activation.zero_point)
    for seed in range(3):
        x = (np.random.default_rng(300 + seed).standard_normal((1, CHANNELS, 10, 10)) * 2).astype(np.float32)
        on_host, on_core = run_module(results["host"], x), run_module(results["core"], x)
        np.testing.assert_array_equal(on_host[0], on_core[0])
        np.testing.assert_array_equal(on_host[0], run_reference(results["host"].qgraph, {"x": x})[0])
        host_values, core_values = real_values(results["host"].qgraph, x), real_values(results["core"].qgraph, x)
        for name, value in host_values.items():
            np.testing.assert_array_equal(value, core_values[name])


def test_a_zero_point_pad_holds_real_zeros(depthwise_placements):
    """Against the float graph, on inputs other than the calibration's: the HardSwish tensor is
    closer with its zero point than with a symmetric scale, and the depthwise conv's border
    pixels (where the padding enters; a pad of int8 zeros would add -zero_point x scale there)
    are as close as its interior."""
    results, samples = depthwise_placements
    result = results["host"]
    ranges = tensor_ranges(result.graph, result.imported, samples)
    symmetric = quantize_graph(result.graph, ranges, dataclasses.replace(result.qgraph.config, offset_tables=False))
    conv = depthwise_node(result)
    producer = result.qgraph.nodes[conv.inputs[0]]
    activation, name = producer.float_name or producer.name, conv.float_name or conv.name
    inputs = (np.random.default_rng(17).standard_normal((8, 1, CHANNELS, 10, 10)) * 2).astype(np.float32)
    floats = float_numpy.run_graph(result.graph, [{"x": x} for x in inputs])
    errors = {}
    for qgraph, key in ((result.qgraph, "zero points"), (symmetric, "symmetric")):
        runs = [real_values(qgraph, x) for x in inputs]
        errors[key] = 1 - cosine(np.concatenate([run[activation] for run in runs]), floats[activation])
    assert errors["zero points"] < 0.85 * errors["symmetric"], errors
    ours = np.concatenate([real_values(result.qgraph, x)[name] for x in inputs])
    border = np.ones(ours.shape[2:], dtype=bool)
    border[1:-1, 1:-1] = False
    border_error, interior_error = (1 - cosine(ours[..., part], floats[name][..., part]) for part in (border, ~border))
    assert border_error < 2 * interior_error, (border_error, interior_error)


def test_unpinned_a_core_conv_keeps_a_symmetric_input(depthwise_placements):
    """Left to the compiler, a depthwise conv on the core reads a symmetric input: the pad pass
    would cost host time. Pinned (a design's program), the pass is in the plan: the core runs
    the conv unpadded on the padded input, still chained on the blocked layout, and the host's
    work for the layer is the pass alone: it reads the 16 channels' 10x10 blocks and writes
    them padded to 12x12 (one block of 16 channels)."""
    results, _ = depthwise_placements
    unpinned, pinned = depthwise_node(results["core, unpinned"]), depthwise_node(results["core"])
    assert unpinned.placement == "accel" and "pad_value" not in unpinned.params
    assert not np.any(results["core, unpinned"].qgraph.nodes[unpinned.inputs[0]].zero_point)
    plans = {name: {p.name: p for p in results[name].lowered.plans} for name in ("core", "core, unpinned")}
    padded_plan, plain_plan = plans["core"][pinned.name], plans["core, unpinned"][unpinned.name]
    assert (plain_plan.shape.in_h, plain_plan.shape.pad_top) == (10, 1)
    assert (padded_plan.shape.in_h, padded_plan.shape.in_w, padded_plan.shape.pad_top) == (12, 12, 0)
    assert padded_plan.shape.out_h == plain_plan.shape.out_h
    assert plain_plan.host_bytes == 0  # chained: no packing
    assert padded_plan.host_bytes == CHANNELS * 10 * 10 + CHANNELS * 12 * 12


@pytest.mark.parametrize("grouped_convs", [["cost"], ["cost", "core"]])
def test_a_space_that_moves_grouped_convs_to_the_core_measures_them_symmetric(tmp_path, grouped_convs):
    """The tuner measures one profile for both placements of the grouped convs, so they must
    compute the same integers: where the space sweeps them onto the core, its profiles pin no
    zero-point pads (on the core each would cost a host pass); else the base's host convs keep
    theirs, and every design pins them."""
    from codesign.tuner.evaluator import Evaluator
    from codesign.tuner.space import space_from_dict

    path = depthwise_reader_model(tmp_path / "depthwise_reader.onnx")
    _, samples = calibration_file(tmp_path, 9, 10)
    np.savez(tmp_path / "data.npz", x=np.concatenate([s["x"] for s in samples]))
    doc = {"objectives": ["latency", "accuracy"], "hardware": {"base": "vta_default"}}
    doc["schedule"] = {"grouped_convs": grouped_convs}
    evaluator = Evaluator(path, space_from_dict(doc), tmp_path / "data.npz", calibration_samples=16)
    try:
        profile = evaluator.measure_profile(evaluator.space.compression({}, evaluator.layers), True)
    finally:
        evaluator.close()
    expected = () if "core" in grouped_convs else ("conv2d_1",)
    assert {variant["zero_point_pads"] for variant in profile.placements.values()} == {expected}
