"""compile --explain: per-tensor quantization error against the float graph."""

from __future__ import annotations

import numpy as np
from conftest import TEST_MODELS, sample_inputs

from codesign.calibration import float_outputs
from codesign.cli import main
from codesign.explain import quantization_errors
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model
from codesign.reference import run_reference


def test_output_error_equals_a_direct_comparison():
    path, name, shape = TEST_MODELS["resnet"]
    result = compile_model(path, load_hardware("vta_default"), {name: shape}, warn=lambda m: None)
    samples = [{name: x} for x in sample_inputs("resnet", 3, seed=5)]
    rows = {row.name: row for row in quantization_errors(result, samples)}
    assert list(rows.values()) == sorted(rows.values(), key=lambda row: row.cosine)  # worst first
    last_gemm = result.qgraph.outputs[0].removesuffix(".dequantize")
    quantized = np.concatenate([run_reference(result.qgraph, s)[0].ravel() for s in samples])
    reference = np.concatenate([out[0].ravel() for out in float_outputs(result.graph, result.imported, samples)])
    assert abs(rows[last_gemm].cosine - cosine(quantized, reference)) < 1e-6
    assert all(-1 <= row.cosine <= 1 + 1e-9 and row.relative_error >= 0 for row in rows.values())


def test_explain_prints_the_worst_tensors(tmp_path, capsys):
    path, name, shape = TEST_MODELS["resnet"]
    args = ["compile", str(path), "--hw", "vta_default", "-o", str(tmp_path / "o"), "--explain"]
    args += ["--input-shape", f"{name}={','.join(map(str, shape))}", "--calibration-method", "percentile"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Quantization error against the float graph" in out and "conv2d_0" in out
