"""Accuracy of pruned int8 mnist-8: magnitude pruning against least-squares reconstruction.

Calibrated on MNIST test images 0-199, top-1 measured on images 1200-3199 with the numpy
integer reference (which the compiled module equals bit for bit, tests/test_pruning.py), for
conv2d_0, conv2d_1 and both pruned at several ratios. Run from the repository root:

    python scripts/bench_pruning.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from codesign.compression import PRUNE_METHODS, CompressionConfig
from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.hardware import load_hardware
from codesign.pipeline import import_model, quantize_model
from codesign.reference import run_reference

CALIBRATION = slice(0, 200)
EVALUATION = slice(1200, 3200)
CHOICES = [{"conv2d_0": r} for r in (0.25, 0.5, 0.75)] + [{"conv2d_1": r} for r in (0.25, 0.5, 0.75)]
CHOICES.append({"conv2d_0": 0.5, "conv2d_1": 0.5})


def top1(qgraph, images: np.ndarray, labels: np.ndarray) -> float:
    predictions = [run_reference(qgraph, {"Input3": image})[0].argmax() for image in images]
    return 100 * float(np.mean(np.array(predictions) == labels))


def main() -> None:
    images, labels = load_mnist_test()
    hw = load_hardware("vta_default")
    imported = import_model(MNIST_MODEL, {"Input3": (1, 1, 28, 28)})
    with tempfile.TemporaryDirectory() as folder:
        calibration = Path(folder) / "calibration.npy"
        np.save(calibration, images[CALIBRATION, 0])

        def accuracy(compression: CompressionConfig) -> float:
            _, qgraph, _ = quantize_model(imported, hw, calibration, warn=lambda m: None, compression=compression)
            return top1(qgraph, images[EVALUATION], labels[EVALUATION])

        print(f"unpruned: {accuracy(CompressionConfig()):.2f} %")
        for prune in CHOICES:
            figures = [f"{m} {accuracy(CompressionConfig(prune=prune, prune_method=m)):.2f} %" for m in PRUNE_METHODS]
            print(prune, ", ".join(figures))


if __name__ == "__main__":
    main()
