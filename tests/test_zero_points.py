"""Zero points on one-sided lookup tables. HardSwish's values reach 0.375 below zero and several
units above it, so a symmetric int8 scale leaves it half of its codes. Where every reader is a
GEMM that takes a zero point into its bias (an unpadded conv or a matmul with constant weights),
the table gets a zero point and a scale spanning both sides with all 256 codes; a padded reader
(its pad would insert real zeros) or a two-sided function keeps the symmetric scale. The module
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
from codesign.deploy import quantization_summary
from codesign.explain import quantization_errors
from codesign.graph import channel_shaped
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.quantize import quantize_graph
from codesign.reference import evaluate, run_reference

CHANNELS = 16


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
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, CHANNELS, 8, 8]) for i in range(5)]
    graph = helper.make_graph(nodes, "branches", [x], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    return path


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero_points")
    path = branches_model(folder / "branches.onnx")
    samples = (np.random.default_rng(5).standard_normal((16, 1, CHANNELS, 8, 8)) * 2).astype(np.float32)
    np.save(folder / "calibration.npy", samples)
    hw = load_hardware("vta_default")
    result = compile_model(path, hw, calibration=folder / "calibration.npy", warn=print, bias_correction=False)
    return path, result, [{"x": sample} for sample in samples]


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
    return [o.numpy() for o in outputs]


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
