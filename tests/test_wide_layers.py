"""--wide-layers: GEMM layers with int16 activations on the core's int8 weights. The module equals
its integer program bit for bit, every accumulator stays within int32, the layers track the float
model closer than int8 ones, the simulator charges the core's two passes over the input's bytes,
and the choice is recorded in the manifest and checked like any other."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign.cli import main
from codesign.compression import CompressionConfig, compression_from_dict
from codesign.deploy import load, write_module
from codesign.errors import ModelError, UsageError
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.plan import AluOp, LayerPlan, layer_alu_ops
from codesign.reference import run_reference
from codesign.schedules.cost_model import estimate
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import select_tiling
from codesign.schedules.program import build_program
from codesign.schedules.tile_geometry import tile_geometry
from codesign.simulator.simulate import simulate_plans

VTA = load_hardware("vta_default")
X_SHAPE = (1, 3, 12, 12)
WIDE = CompressionConfig(wide_layers=("*",))
# vta_default with a 16-bit ALU multiplier: its exact requantization scales move int8 weights by
# under 2**-15 of themselves, so weights int8 keeps stay exactly as they are.
MUL16 = VTA.with_changes(name="vta_mul16", alu_multiplier_bits=16)


def _model(path, depthwise: bool = False) -> str:
    """x (1, 3, 12, 12) -> 3x3 conv to 24 channels, ReLU -> 3x3 conv to 16 at stride 2, ReLU
    (with `depthwise`, a depthwise 3x3 conv first) -> flatten -> dense to 10 (K = 576, so its
    int16 input range is bounded by its weights' sums)."""
    rng = np.random.default_rng(7)
    weights = {
        "w0": _int8_exact(rng, (24, 3, 3, 3), 0, 2.0**-9),
        "b0": rng.standard_normal(24).astype(np.float32) * 0.1,
        "w1": _int8_exact(rng, (16, 24, 3, 3), 0, 2.0**-10),
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": _int8_exact(rng, (576, 10), 1, 2.0**-11),  # flat: large sums of magnitudes
        "b2": rng.standard_normal(10).astype(np.float32) * 0.1,
        "wd": rng.standard_normal((24, 1, 3, 3)).astype(np.float32) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
    ]
    if depthwise:
        nodes.append(helper.make_node("Conv", ["r0", "wd"], ["d0"], pads=[1, 1, 1, 1], group=24))
    nodes += [
        helper.make_node("Conv", ["d0" if depthwise else "r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(path)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def _int8_exact(rng, shape, channel_axis: int, step: float) -> np.ndarray:
    """Weights that per-channel int8 quantization keeps (up to the requantization's exact-scale
    adjustment on MUL16): integers in [-127, 127] times `step`, each channel reaching 127."""
    values = np.moveaxis(rng.uniform(-127, 127, shape).round(), channel_axis, 0).copy()
    values.reshape(values.shape[0], -1)[:, 0] = 127
    return (np.moveaxis(values, 0, channel_axis) * step).astype(np.float32)


def _samples(count: int, first_seed: int = 0) -> list[np.ndarray]:
    return [np.random.default_rng(first_seed + i).standard_normal(X_SHAPE).astype(np.float32) for i in range(count)]


def _compiled(tmp_path, compression=WIDE, depthwise=False, hw=VTA):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = _model(tmp_path / "wide.onnx", depthwise)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.concatenate(_samples(8)))
    result = compile_model(path, hw, {"x": X_SHAPE}, calibration, 8, warn=lambda _: None, compression=compression)
    return path, result


def test_wide_module_equals_its_integer_program(tmp_path):
    _, result = _compiled(tmp_path)
    wide = result.qgraph.gemm_nodes()
    assert len(wide) == 3 and all(n.dtype == "int16" and n.placement == "accel" for n in wide)
    for node in wide:  # the ALU shifts the accumulator a byte left between the two passes
        plain = {key: value for key, value in node.params.items() if key != "input_bits"}
        assert layer_alu_ops(node.params) == [AluOp("SHR"), *layer_alu_ops(plain)]
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for x in _samples(3, first_seed=100):
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        (reference,) = run_reference(result.qgraph, {"x": x})
        np.testing.assert_array_equal(ours, reference)


def test_wide_accumulators_stay_within_int32(tmp_path):
    """Each wide layer's input range times its largest sum of weight magnitudes, plus its largest
    bias, fits int32; the dense layer's 576-long reduction narrows its input range for that."""
    _, result = _compiled(tmp_path)
    qmaxes = {}
    for node in result.qgraph.gemm_nodes():
        source = result.qgraph.nodes[node.inputs[0]]
        while source.op == "im2col":  # an unfolded conv reads its input's columns
            source = result.qgraph.nodes[source.inputs[0]]
        assert source.op == "quantize" and source.dtype == "int16" and source.params["lo"] == -source.params["hi"]
        weight = np.abs(node.params["weight"].astype(np.int64))
        sums = weight.reshape(weight.shape[0], -1).sum(axis=1) if node.op == "conv2d" else weight.sum(axis=0)
        largest = source.params["hi"] * int(sums.max()) + int(np.abs(node.params["bias"]).max())
        assert largest < 2**31
        qmaxes[node.op] = source.params["hi"]
    assert qmaxes["matmul"] < 2**15 - 1 == qmaxes["conv2d"]


def test_wide_activations_round_far_less_than_int8_ones(tmp_path):
    """On weights int8 keeps, and inputs inside the calibrated ranges (the calibration inputs),
    what is left is the activations' rounding: int16 activations leave a small fraction of int8's
    error against onnxruntime's float model."""
    path, wide = _compiled(tmp_path / "wide", hw=MUL16)
    _, narrow = _compiled(tmp_path / "int8", CompressionConfig(), hw=MUL16)
    session = ort.InferenceSession(path)
    errors = {}
    for label, result in (("wide", wide), ("int8", narrow)):
        vm = relax.VirtualMachine(result.executable, tvm.cpu())
        outs, refs = [], []
        for x in _samples(8):
            outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
            refs.append(session.run(None, {"x": x})[0])
        errors[label] = 1 - cosine(np.concatenate(outs), np.concatenate(refs))
    assert errors["wide"] < errors["int8"] / 1000, errors


def test_a_wide_layer_costs_two_passes_of_the_core():
    """The same tiling on vta_default's core and on its view for int16 activations: the GEMM
    micro-ops and the input and output bytes double, the weight bytes stay; the analytic model
    doubles the GEMM time, the event simulation takes longer."""
    shape = ConvShape.conv2d((1, 64, 14, 14), (64, 64, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1))
    wide_core = VTA.for_layer(None, 16)
    assert wide_core.gemm_passes == 2 and VTA.gemm_passes == 1
    tiling = select_tiling(shape, VTA, input_bits=16)  # one that fits both
    programs = {}
    for label, core in (("int8", VTA), ("wide", wide_core)):
        programs[label] = build_program(shape, tile_geometry(shape, tiling, core), core, [])
    int8, wide = (programs[k].counters() for k in ("int8", "wide"))
    assert wide["gemm_counter"] == 2 * int8["gemm_counter"]
    assert wide["inp_load_nbytes"] == 2 * int8["inp_load_nbytes"]
    assert wide["out_store_nbytes"] == 2 * int8["out_store_nbytes"]
    assert wide["wgt_load_nbytes"] == int8["wgt_load_nbytes"]
    times = {
        k: estimate(p.features, VTA.dram_latency_cycles, VTA.dram_bytes_per_cycle, VTA.alu_vectors_per_cycle)
        for k, p in programs.items()
    }
    np.testing.assert_allclose(times["wide"]["gemm_cycles"] - times["int8"]["gemm_cycles"], shape.macs / 256)
    assert times["wide"]["cycles"][0] > times["int8"]["cycles"][0]


def test_wide_layers_are_recorded_and_simulated_from_the_module(tmp_path, capsys):
    _, result = _compiled(tmp_path)
    out = tmp_path / "module"
    write_module(result, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compression"]["wide_layers"] == ["*"]
    accelerated = [layer for layer in manifest["layers"] if layer["placement"] == "accel"]
    assert accelerated and all(layer["input_bits"] == 16 for layer in accelerated)
    plans = [LayerPlan.from_dict(layer) for layer in manifest["layers"]]
    before = simulate_plans(result.lowered.plans, VTA, "event").totals()
    assert simulate_plans(plans, VTA, "event").totals() == before
    x = _samples(1, first_seed=100)[0]
    (ours,) = load(out).run(x)
    (reference,) = run_reference(result.qgraph, {"x": x})
    np.testing.assert_array_equal(ours, reference)
    capsys.readouterr()
    assert main(["simulate", str(out), "--model", "analytic", "--quiet"]) == 0
    assert "(int16 activations)" in capsys.readouterr().out


def test_wide_layers_from_the_command_line(tmp_path, capsys):
    path = _model(tmp_path / "wide.onnx")
    args = ["compile", path, "--hw", "vta_default", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "o"), "--wide-layers", "conv2d_1"]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    bits = {layer["name"]: layer["input_bits"] for layer in manifest["layers"] if layer["placement"] == "accel"}
    assert bits["conv2d_1"] == 16 and bits["matmul_0"] is None
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "p"), "--wide-layers", "head*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wide layer pattern 'head*' matches no layer" in err[0]
    assert not (tmp_path / "p").exists()


def test_a_grouped_conv_named_cannot_be_wide_and_a_glob_passes_it_by(tmp_path):
    with pytest.raises(ModelError, match="layer 'conv2d_1': --wide-layers takes convs of one group"):
        _compiled(tmp_path / "named", CompressionConfig(wide_layers=("conv2d_1",)), depthwise=True)
    _, result = _compiled(tmp_path / "glob", depthwise=True)
    dtypes = {node.name: node.dtype for node in result.qgraph.gemm_nodes()}
    assert dtypes == {"conv2d_0": "int16", "conv2d_1": "int8", "conv2d_2": "int16", "matmul_0": "int16"}
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    x = _samples(1, first_seed=100)[0]
    (reference,) = run_reference(result.qgraph, {"x": x})
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), reference)


def test_wide_layers_in_a_compression_document():
    config = compression_from_dict({"wide_layers": ["conv2d_*", "matmul_0"]})
    assert config.wide_layers == ("conv2d_*", "matmul_0")
    assert compression_from_dict(config.to_dict()) == config
    with pytest.raises(UsageError, match="wide_layers = "):
        compression_from_dict({"wide_layers": "conv2d_0"})


def test_layers_a_logarithm_reads_run_wide_on_the_accelerator_when_named(tmp_path):
    """basic-pitch's constant-Q front end: its conv, which a logarithm reads, stays in float by
    default; named as a wide layer it runs on the accelerator in int16, with no note, and the
    model still tracks onnxruntime. (A log-mel front end, whose log reads the filterbank's
    power directly, loses its quiet bins even in int16: openWakeWord's 0.82.)"""
    from test_float_layers import _constant_q, _speech_like

    rng = np.random.default_rng(2)
    path = _constant_q(tmp_path / "cqt.onnx", rng)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, audio=np.stack([_speech_like(rng) for _ in range(8)]))
    notes = []
    wide = CompressionConfig(wide_layers=("conv2d_0",))
    result = compile_model(path, VTA, calibration=calibration, warn=notes.append, compression=wide)
    assert {n.name: (n.dtype, n.placement) for n in result.qgraph.gemm_nodes()} == {
        "conv2d_0": ("int16", "accel"),
        "conv2d_1": ("int8", "accel"),
    }
    assert not any("stay in float" in note for note in notes)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    for _ in range(4):
        x = _speech_like(rng)
        assert cosine(vm["main"](tvm.runtime.tensor(x)).numpy(), session.run(None, {"audio": x})[0]) > 0.99
