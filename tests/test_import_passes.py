"""The import pre-pass on tiny models that reproduce what real exporters write: shape arithmetic,
anchor grids, Paddle's -1 dims, `If` on a scalar input, several outputs; checked against
onnxruntime, plus the placement summary's MAC count against one written here from the ONNX."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.calibration import float_outputs
from codesign.cli import main
from codesign.compression import CompressionConfig
from codesign.console_tables import placement_summary
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.importer import import_onnx
from codesign.lowering import lower_to_relax
from codesign.metrics import cosine
from codesign.pipeline import compile_model, quantize_model
from codesign.reference import run_reference

RNG = np.random.default_rng(0)


def weight(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def save(path, nodes, inputs, outputs, initializers=(), opset=13):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tensor(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def float_import_matches_onnxruntime(path, shapes, values=None, feed_extra=None):
    imported = import_onnx(path, shapes, values)
    graph = extract_graph(imported)
    sample = {t.name: RNG.standard_normal(t.shape).astype(t.dtype) for t in imported.inputs}
    ours = next(float_outputs(graph, imported, [sample]))
    theirs = ort.InferenceSession(str(path)).run(None, {**sample, **(feed_extra or {})})
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    return imported


def test_paddle_shape_arithmetic_and_minus_one_dims(tmp_path):
    # Paddle2ONNX: Shape -> Cast -> Slice -> Cast -> Concat -> Reshape, and dim_value -1 for "dynamic".
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["sf", "zero", "two"], ["nc"]),
        helper.make_node("Cast", ["nc"], ["nci"], to=TensorProto.INT64),
        helper.make_node("Concat", ["nci", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    inits = [weight("w", 4, 3, 3, 3), const("zero", [0]), const("two", [2]), const("minus_one", [-1])]
    x = tensor("x", [-1, 3, -1, -1])
    path = save(tmp_path / "paddle.onnx", nodes, [x], [tensor("y", [-1, 4, -1])], inits)
    imported = float_import_matches_onnxruntime(path, {"x": (1, 3, 8, 12)})
    assert imported.outputs[0].shape == (1, 4, 96)


def test_anchor_grid_from_shapes(tmp_path):
    # YOLOv8-style: Shape -> Gather -> Cast(float) -> Range, an anchor grid added to the features.
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "three"], ["width"], axis=0),
        helper.make_node("Cast", ["width"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["fzero", "wf", "fone"], ["grid"]),
        helper.make_node("Add", ["c", "grid"], ["y"]),
    ]
    inits = [
        weight("w", 2, 3, 1, 1),
        const("three", 3),
        const("fzero", 0.0, np.float32),
        const("fone", 1.0, np.float32),
    ]
    x, y = tensor("x", ["N", 3, "H", "W"]), tensor("y", ["N", 2, "H", "W"])
    path = save(tmp_path / "grid.onnx", nodes, [x], [y], inits)
    float_import_matches_onnxruntime(path, {"x": (1, 3, 4, 6)})


def _vad_like(tmp_path):
    """An `If` on a scalar sample-rate input choosing the branch's weights, two inputs, two outputs."""

    def branch(name, scale):
        w = numpy_helper.from_array(np.full((4, 4), scale, np.float32), f"{name}_w")
        node = helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_out"])
        return helper.make_graph([node], name, [], [tensor(f"{name}_out", [1, 4])], [w])

    nodes = [
        helper.make_node("Equal", ["sr", "rate16k"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["h"], then_branch=branch("then", 0.5), else_branch=branch("else", -1.0)),
        helper.make_node("Add", ["h", "state"], ["new_state"]),
        helper.make_node("Sigmoid", ["new_state"], ["prob"]),
    ]
    inputs = [tensor("x", [1, 4]), tensor("state", [1, 4]), tensor("sr", [], TensorProto.INT64)]
    outputs = [tensor("prob", [1, 4]), tensor("new_state", [1, 4])]
    return save(tmp_path / "vad.onnx", nodes, inputs, outputs, [const("rate16k", 16000)])


def test_if_on_a_frozen_scalar_input_and_two_outputs(tmp_path):
    path = _vad_like(tmp_path)
    sr = {"sr": np.array(16000, np.int64)}
    imported = float_import_matches_onnxruntime(path, {}, {"sr": ["16000"]}, feed_extra=sr)
    assert [t.name for t in imported.inputs] == ["x", "state"]
    assert [t.name for t in imported.outputs] == ["prob", "new_state"]
    assert imported.frozen_inputs["sr"].dtype == np.int64


def _cascade(tmp_path, verified_shape=(1, 1)):
    """openWakeWord's "hey jarvis": a score, and a verifier network that runs (If) when it passes 0.5;
    the input is named 'x.1', which Relax spells 'x_1'."""
    verifier = [
        helper.make_node("MatMul", ["x.1", "w2"], ["logit2"]),
        helper.make_node("Sigmoid", ["logit2"], ["p2"]),
    ]
    if verified_shape != (1, 1):
        verifier.append(helper.make_node("Reshape", ["p2", "flat"], ["p2_flat"]))
    then_out = "p2" if verified_shape == (1, 1) else "p2_flat"
    then_branch = helper.make_graph(
        verifier, "verify", [], [tensor(then_out, list(verified_shape))], [weight("w2", 4, 1), const("flat", [1])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["p1"], ["kept"])], "keep", [], [tensor("kept", [1, 1])]
    )
    nodes = [
        helper.make_node("MatMul", ["x.1", "w1"], ["logit1"]),
        helper.make_node("Sigmoid", ["logit1"], ["p1"]),
        helper.make_node("GreaterOrEqual", ["p1", "half"], ["passed"]),
        helper.make_node("If", ["passed"], ["score"], then_branch=then_branch, else_branch=else_branch, name="cascade"),
    ]
    inits = [numpy_helper.from_array(np.ones((4, 1), np.float32), "w1"), const("half", 0.5, np.float32)]
    return save(tmp_path / "cascade.onnx", nodes, [tensor("x.1", [1, 4])], [tensor("score", [1, 1])], inits, opset=16)


def test_if_deciding_on_the_data_computes_both_branches(tmp_path, capsys):
    path = _cascade(tmp_path)
    imported = import_onnx(path)
    assert any("If 'cascade' decides on the data" in note for note in imported.notes)
    graph = extract_graph(imported)
    session = ort.InferenceSession(str(path))
    for sign in (1.0, -1.0):  # the score passes 0.5 (the verifier's score) or not (the first one's)
        sample = {"x.1": (sign * np.abs(RNG.standard_normal((1, 4)))).astype(np.float32)}
        ours = next(float_outputs(graph, imported, [sample]))[0]
        np.testing.assert_allclose(ours, session.run(None, sample)[0], rtol=1e-5)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **{"x.1": RNG.standard_normal((8, 1, 4)).astype(np.float32)})
    argv = ["compile", str(path), "--hw", "vta_default", "--calibration", str(calibration), "-o", str(tmp_path / "o")]
    assert main(argv) == 0, capsys.readouterr().err
    assert "If 'cascade' decides on the data" in capsys.readouterr().err


def test_if_whose_branches_differ_in_shape_is_one_line(tmp_path, capsys):
    path = _cascade(tmp_path, verified_shape=(1,))
    code = main(["compile", str(path), "--hw", "vta_default", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "If (condition not constant) x1 (first: 'cascade')" in err[0] and "--input-value" in err[0]
    assert not (tmp_path / "out").exists()


def test_if_on_an_unfrozen_scalar_input_selects_by_its_value(tmp_path):
    path = _vad_like(tmp_path)
    imported = import_onnx(path)
    graph = extract_graph(imported)
    session = ort.InferenceSession(str(path))
    for rate in (16000, 8000):
        sample = {"x": RNG.standard_normal((1, 4)).astype(np.float32), "state": np.zeros((1, 4), np.float32)}
        sample["sr"] = np.array(rate, np.int64)
        for ours, theirs in zip(next(float_outputs(graph, imported, [sample])), session.run(None, sample)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def _clipped_leaky(tmp_path, widening: bool):
    """tf2onnx's clipped LeakyReLU (openWakeWord's speech embedding): Max against a (1, 1, 1, 1)
    constant; optionally a Min whose constant has more axes than its tensor (broadcasting widens it)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.2),
        helper.make_node("Max", ["l1", "floor"], ["m1"]),
        helper.make_node("Conv", ["m1", "w2"], ["c2"]),
        helper.make_node("Min", ["ceiling", "c2"], ["y"]),
    ]
    inits = [
        weight("w1", 16, 3, 3, 3),
        weight("w2", 16, 16, 1, 1),
        const("floor", np.full((1, 1, 1, 1), -0.4), np.float32),
        const("ceiling", 0.5, np.float32),
    ]
    outputs = [tensor("y", [1, 16, 8, 8])]
    if widening:
        nodes += [
            helper.make_node("ReduceMean", ["y"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("Min", ["pooled", "wide"], ["v"]),
        ]
        inits.append(const("wide", np.full((1, 1, 1), 0.1), np.float32))
        outputs.append(tensor("v", [1, 1, 16]))
    return save(tmp_path / f"clipped_{widening}.onnx", nodes, [tensor("x", [1, 3, 8, 8])], outputs, inits)


def test_max_and_min_with_a_constant_become_clip(tmp_path):
    imported = float_import_matches_onnxruntime(_clipped_leaky(tmp_path, widening=True), {})
    assert any("2 Max / Min with a constant -> Clip" in note for note in imported.notes)
    ops = [node.op for node in extract_graph(imported).nodes.values()]
    assert ops.count("relax.stack") == 1 and ops.index("relax.stack") > ops.index("relax.mean")
    path = _clipped_leaky(tmp_path, widening=False)
    result = compile_model(path, load_hardware("vta_default"), warn=lambda m: None)
    integer_ops = {"input", "quantize", "conv2d", "lut", "clamp", "dequantize"}
    assert {node.op for node in result.qgraph.nodes.values()} <= integer_ops  # nothing in float
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    assert cosine(ours, ort.InferenceSession(str(path)).run(None, {"x": x})[0]) > 0.99


@pytest.mark.parametrize(
    ("value", "needle"),
    [("sr=16k", "int64"), ("sr=1.5", "int64"), ("sr=1,2", "2 value(s)"), ("rate=1", "has inputs: x, state, sr")],
)
def test_frozen_value_that_does_not_fit_is_a_usage_error(tmp_path, capsys, value, needle):
    path = _vad_like(tmp_path)
    code = main(["compile", str(path), "--hw", "vta_default", "-o", str(tmp_path / "o"), "--input-value", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_module_with_two_inputs_and_two_outputs_compiles(tmp_path):
    path = _vad_like(tmp_path)
    hw = load_hardware("vta_default")
    result = compile_model(path, hw, warn=lambda m: None, input_values={"sr": ["16000"]})
    assert [t.name for t in result.imported.outputs] == ["prob", "new_state"]


def _mixed_convs(tmp_path):
    """conv1d, grouped, depthwise, dilated and transposed convs and a matmul."""
    nodes = [
        helper.make_node("Conv", ["a", "w1d"], ["a1"], pads=[1, 1]),
        helper.make_node("Conv", ["x", "wg"], ["g"], group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["g", "wdw"], ["dw"], group=32, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["dw", "wdil"], ["dil"], dilations=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("ConvTranspose", ["dil", "wt"], ["up"], strides=[2, 2]),
        helper.make_node("MatMul", ["a1", "wm"], ["m"]),
    ]
    inits = [
        weight("w1d", 16, 8, 3),
        weight("wg", 32, 16, 3, 3),
        weight("wdw", 32, 1, 3, 3),
        weight("wdil", 16, 32, 3, 3),
        weight("wt", 16, 8, 2, 2),
        weight("wm", 10, 12),
    ]
    inputs = [tensor("x", [1, 32, 10, 10]), tensor("a", [1, 8, 10])]
    outputs = [tensor("up", [1, 8, 20, 20]), tensor("m", [1, 16, 12])]
    return save(tmp_path / "convs.onnx", nodes, inputs, outputs, inits)


def test_macs_counted_per_op(tmp_path):
    path = _mixed_convs(tmp_path)
    expected = {
        "conv1d": 16 * 10 * 8 * 3,
        "grouped": 32 * 10 * 10 * 16 * 9,
        "depthwise": 32 * 10 * 10 * 9,
        "dilated": 16 * 10 * 10 * 32 * 9,
        "transposed": 16 * 8 * 10 * 10 * 4,  # every input pixel meets every tap once
        "matmul": 16 * 10 * 12,
    }
    hw = load_hardware("vta_default")
    imported = import_onnx(path)
    for placement, host_convs in [("accelerator", []), ("fastest", [32])]:
        compression = CompressionConfig(placement=placement)
        _, qgraph, _ = quantize_model(imported, hw, warn=lambda m: None, compression=compression)
        plans = lower_to_relax(qgraph, imported, hw).plans
        summary = placement_summary(plans)
        assert summary["macs"] == sum(expected.values())
        host = [p.shape.groups for p in plans if p.shape is not None and p.placement == "host"]
        # By default every conv runs on the accelerator. Placed by modelled cost, the depthwise
        # conv (1 channel per group) runs on vta_default's host; the grouped conv (16 channels
        # per group, block_in 16) and the dilated one stay on the accelerator.
        assert host == host_convs, placement
        host_macs = expected["depthwise"] if host_convs else 0
        assert summary["accel_macs"] == sum(expected.values()) - host_macs


def test_rewritten_and_grouped_convs_equal_the_integer_reference(tmp_path):
    path = _mixed_convs(tmp_path)
    result = compile_model(path, load_hardware("vta_default"), warn=lambda m: None)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for seed in range(2):
        rng = np.random.default_rng(seed)
        feed = {"x": rng.standard_normal((1, 32, 10, 10)).astype(np.float32)}
        feed["a"] = rng.standard_normal((1, 8, 10)).astype(np.float32)
        ours = [o.numpy() for o in vm["main"](tvm.runtime.tensor(feed["x"]), tvm.runtime.tensor(feed["a"]))]
        for mine, reference, theirs in zip(ours, run_reference(result.qgraph, feed), session.run(None, feed)):
            assert np.array_equal(mine, reference)
            assert cosine(mine, theirs) > 0.99


def test_frontend_failure_is_one_line_without_tvm_logs(tmp_path):
    # A reshape target fed by an input: the frontend fails, and prints and logs on its way out.
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_by_input")]
    inputs = [tensor("x", [2, 3]), tensor("s", [2], TensorProto.INT64)]
    path = save(tmp_path / "reshape.onnx", nodes, inputs, [tensor("y", ["a", "b"])])
    command = [sys.executable, "-m", "codesign.cli", "compile", str(path), "--hw", "vta_default", "-o"]
    failed = subprocess.run([*command, str(tmp_path / "o")], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "node 'reshape_by_input' (Reshape)" in failed.stderr
    frozen = subprocess.run([*command, str(tmp_path / "o"), "--input-value", "s=3,2"], capture_output=True, text=True)
    assert frozen.returncode == 0, frozen.stderr


def test_dilated_conv_too_wide_for_the_input_buffer_stays_on_the_host(tmp_path):
    # 3x3 with dilation 16 needs a 33x33 window per output: 8,712 bytes against edge_1x8x8's 8 KiB.
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], dilations=[16, 16], pads=[16, 16, 16, 16])]
    path = save(tmp_path / "wide.onnx", nodes, [tensor("x", [1, 8, 40, 40])], [tensor("y", [1, 8, 40, 40])])
    onnx_model = onnx.load(path)
    onnx_model.graph.initializer.append(weight("w", 8, 8, 3, 3))
    onnx.save(onnx_model, path)
    for preset, placement in (("edge_1x8x8", "host"), ("vta_default", "accel")):
        result = compile_model(path, load_hardware(preset), warn=lambda m: None)
        (plan,) = [p for p in result.lowered.plans if p.shape is not None]
        assert plan.placement == placement, preset
        x = np.random.default_rng(1).standard_normal((1, 8, 40, 40)).astype(np.float32)
        vm = relax.VirtualMachine(result.executable, tvm.cpu())
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), run_reference(result.qgraph, {"x": x})[0])


def test_tune_with_a_frozen_input_reports_and_reproduces_it(tmp_path, capsys):
    path = _vad_like(tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.standard_normal((12, 1, 4)).astype(np.float32), state=np.zeros((12, 1, 4), np.float32))
    space = Path(__file__).parent / "spaces" / "tiny.toml"
    run = tmp_path / "run"
    argv = ["tune", str(path), "--space", str(space), "--data", str(data), "-o", str(run), "--budget", "2"]
    assert main([*argv, "--input-value", "sr=16000"]) == 0, capsys.readouterr().err
    settings = json.loads((run / "settings.json").read_text())
    assert settings["input_values"] == {"sr": ["16000"]}
    assert "--input-value sr=16000" in (run / "report.md").read_text()
