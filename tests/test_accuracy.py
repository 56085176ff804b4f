"""Accuracy on real data: the demo's int8 mnist-8 modules on all 10,000 MNIST test images."""

from __future__ import annotations

import onnxruntime as ort
from rich.console import Console

from codesign.demo import MNIST_MODEL, run_demo


def test_demo_int8_accuracy_is_within_half_a_point_of_float(tmp_path, mnist_test_set):
    with open(tmp_path / "demo.log", "w") as log:
        figures = run_demo(tmp_path, Console(file=log))
    images, labels = mnist_test_set
    session = ort.InferenceSession(str(MNIST_MODEL))
    ort_predictions = [session.run(None, {"Input3": x})[0].argmax() for x in images]
    ort_accuracy = float((ort_predictions == labels).mean())
    assert abs(figures["float"] - ort_accuracy) < 1e-9
    assert abs(figures["int8"] - figures["float"]) <= 0.005
    assert abs(figures["int8_shift_only"] - figures["float"]) <= 0.005
    assert (tmp_path / "mnist_vta_default" / "manifest.json").exists()
    assert (tmp_path / "mnist_vta_shift_only" / "manifest.json").exists()
