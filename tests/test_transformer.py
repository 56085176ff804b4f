"""The transformer encoder: every matmul on the accelerator, float host ops between, close to float."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import tvm
from conftest import TEST_MODELS, sample_inputs
from tvm import relax

from codesign.hardware import load_hardware
from codesign.pipeline import compile_model


def test_transformer_runs_its_matmuls_on_the_accelerator_and_tracks_float(model_calibration):
    path, name, shape = TEST_MODELS["transformer"]
    result = compile_model(path, load_hardware("vta_default"), {name: shape}, model_calibration["transformer"])
    matmuls = [p for p in result.lowered.plans if p.op == "matmul"]
    assert len(matmuls) == 17 and all(p.placement == "accel" for p in matmuls)
    assert sum(p.shape.groups > 1 for p in matmuls) == 4  # attention's batched matmuls, one group per head
    host_ops = {p.op for p in result.lowered.plans if p.placement == "host"}
    assert {"layer_norm", "softmax"} <= host_ops

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    session = ort.InferenceSession(str(path))
    inputs = sample_inputs("transformer", 32, seed=5)
    ours = np.stack([vm["main"](tvm.runtime.tensor(x)).numpy()[0] for x in inputs])
    reference = np.stack([session.run(None, {name: x})[0][0] for x in inputs])
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.98
    assert (ours.argmax(1) == reference.argmax(1)).mean() >= 0.9
