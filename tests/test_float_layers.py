"""--float-layers: named layers stay in float on the host, recorded in the manifest, priced by the
host model, and the module still matches onnxruntime; so do the layers a logarithm reads."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from conftest import TEST_MODELS
from onnx import TensorProto, helper, numpy_helper

from codesign.cli import main
from codesign.compression import CompressionConfig
from codesign.deploy import load, write_module
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.simulator.simulate import simulate_plans


def test_float_layers_run_on_the_host_in_float(tmp_path):
    path, name, shape = TEST_MODELS["resnet"]
    hw = load_hardware("vta_default")
    keep = CompressionConfig(float_layers=("conv2d_0", "conv2d_1*"))
    result = compile_model(path, hw, {name: shape}, compression=keep, warn=lambda m: None)
    kept = {n.name: n for n in result.qgraph.nodes.values() if n.op == "float" and n.source.op == "gemm"}
    assert sorted(kept) == ["conv2d_0", "conv2d_1"]
    plans = {p.name: p for p in result.lowered.plans}
    for layer in kept:
        assert plans[layer].placement == "host" and plans[layer].tiling is None
        assert plans[layer].host_ops == 2 * plans[layer].shape.macs  # a multiply and an add per MAC
    layers = simulate_plans(result.lowered.plans, hw, "analytic").layers
    assert all(layer.accel_seconds == 0 for layer in layers if layer.name in kept)
    write_module(result, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["compression"]["float_layers"] == ["conv2d_0", "conv2d_1*"]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (ours,) = load(tmp_path / "out").run(x)
    (theirs,) = ort.InferenceSession(str(path)).run(None, {name: x})
    assert cosine(ours, theirs) > 0.99


def test_float_layer_pattern_matching_nothing_is_a_usage_error(tmp_path, capsys):
    path, name, shape = TEST_MODELS["resnet"]
    args = ["compile", str(path), "--hw", "vta_default", "-o", str(tmp_path / "o")]
    args += ["--input-shape", f"{name}={','.join(map(str, shape))}", "--float-layers", "head*"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'head*' matches no layer" in err[0]


def _log_mel(path, before_log: str):
    """A log-mel front end (openWakeWord's): a strided conv as the STFT, power, a mel filterbank
    matmul, clamped away from zero, log; `before_log` "softmax" puts a softmax between the layers
    and the log instead (log-probabilities: the layers keep int8)."""
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((16, 1, 1, 32)).astype(np.float32)
    bank = np.abs(rng.standard_normal((16, 8))).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["audio", "basis"], ["stft"], strides=[1, 16]),
        helper.make_node("Mul", ["stft", "stft"], ["power"]),
        helper.make_node("Transpose", ["power"], ["frames"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["frames", "bank"], ["mel"]),
    ]
    if before_log == "softmax":
        nodes.append(helper.make_node("Softmax", ["mel"], ["bounded"], axis=-1))
    else:
        nodes.append(helper.make_node("Clip", ["mel", "floor", ""], ["bounded"]))
    nodes.append(helper.make_node("Log", ["bounded"], ["log_mel"]))
    inits = [numpy_helper.from_array(a, n) for a, n in ((basis, "basis"), (bank, "bank"))]
    inits.append(numpy_helper.from_array(np.array(1e-10, np.float32), "floor"))
    return _save_audio_model(path, nodes, inits, ("log_mel", [1, 1, 31, 8]))


def _save_audio_model(path, nodes, inits, output: tuple[str, list[int]]):
    """An opset-13 model of one (1, 1, 1, 512) input `audio` and one output (name, shape)."""
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, 1, 512])
    result = helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])
    graph = helper.make_graph(nodes, "front_end", [audio], [result], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _speech_like(rng):
    """Loud and quiet stretches: a spectrum whose bands span several decades."""
    level = np.repeat(10.0 ** rng.uniform(-4, 0, 32), 16)
    return (rng.standard_normal((1, 1, 1, 512)) * level).astype(np.float32)


def test_layers_a_logarithm_reads_stay_in_float(tmp_path):
    path = _log_mel(tmp_path / "log_mel.onnx", "clip")
    rng = np.random.default_rng(1)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, audio=np.stack([_speech_like(rng) for _ in range(8)]))
    notes = []
    result = compile_model(path, load_hardware("vta_default"), calibration=calibration, warn=notes.append)
    kept = sorted(n.name for n in result.qgraph.nodes.values() if n.op == "float" and n.source.op == "gemm")
    assert kept == ["conv2d_0", "matmul_0"]
    assert any("conv2d_0, matmul_0 stay in float" in note for note in notes)
    write_module(result, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["quantization"]["config"]["float_layers"] == ["conv2d_0", "matmul_0"]
    session = ort.InferenceSession(str(path))
    for _ in range(4):
        x = _speech_like(rng)
        (ours,) = load(tmp_path / "out").run(x)
        assert cosine(ours, session.run(None, {"audio": x})[0]) > 0.9999
    softmax = compile_model(_log_mel(tmp_path / "log_softmax.onnx", "softmax"), load_hardware("vta_default"))
    assert {n.name for n in softmax.qgraph.gemm_nodes()} == {"conv2d_0", "matmul_0"}


def test_a_magnitude_summed_over_real_and_imaginary_parts_still_reaches_the_log(tmp_path):
    """basic-pitch's constant-Q front end: conv -> square -> ReduceSum over the real and
    imaginary parts -> sqrt -> log. The sum carries the spectrum's range to the log as an add
    would, so the conv stays in float (in int8 basic-pitch's note posteriors fell to 0.931)."""
    rng = np.random.default_rng(2)
    path = _constant_q(tmp_path / "cqt.onnx", rng)
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, audio=np.stack([_speech_like(rng) for _ in range(8)]))
    result = compile_model(path, load_hardware("vta_default"), calibration=calibration)
    kept = sorted(n.name for n in result.qgraph.nodes.values() if n.op == "float" and n.source.op == "gemm")
    assert kept == ["conv2d_0"]
    assert [n.placement for n in result.qgraph.gemm_nodes()] == ["accel"]  # the head after the log


def _constant_q(path, rng):
    """conv -> square -> ReduceSum over the real and imaginary parts -> sqrt -> clip -> log -> conv."""
    nodes = [
        helper.make_node("Conv", ["audio", "basis"], ["parts"], strides=[1, 16]),
        helper.make_node("Mul", ["parts", "parts"], ["squares"]),
        helper.make_node("Reshape", ["squares", "pairs"], ["paired"]),
        helper.make_node("ReduceSum", ["paired", "axis"], ["power"], keepdims=0),
        helper.make_node("Sqrt", ["power"], ["magnitude"]),
        helper.make_node("Clip", ["magnitude", "floor", ""], ["bounded"]),
        helper.make_node("Log", ["bounded"], ["log_cqt"]),
        helper.make_node("Conv", ["log_cqt", "head"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 1, 1, 32)).astype(np.float32), "basis"),
        numpy_helper.from_array(np.array([1, 2, 8, 1, 31], np.int64), "pairs"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "floor"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 3)).astype(np.float32), "head"),
    ]
    return _save_audio_model(path, nodes, inits, ("y", [1, 4, 1, 29]))
