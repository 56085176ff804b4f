"""--float-layers: named layers stay in float on the host, recorded in the manifest, priced by the
host model, and the module still matches onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
from conftest import TEST_MODELS

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
