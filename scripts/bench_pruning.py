"""Accuracy of pruned int8 models: magnitude pruning against least-squares reconstruction.

- mnist-8: calibrated on MNIST test images 0-199, top-1 measured on images 1200-3199 with the
  numpy integer reference (which the compiled module equals bit for bit, tests/test_pruning.py),
  for conv2d_0, conv2d_1 and both pruned at several ratios.
- PP-OCR's text-direction classifier (a MobileNetV3: its depthwise convs and gates follow their
  expansion convs): every conv pruned by one ratio, calibrated on 32 rendered text lines, top-1
  of the compiled module on 400 others, and the modelled latency on vta_default.

Run from the repository root:

    python scripts/bench_pruning.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from codesign.compression import PRUNE_METHODS, CompressionConfig
from codesign.console_tables import placement_summary
from codesign.corpus import text_directions
from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model, import_model, quantize_model
from codesign.reference import run_reference
from codesign.simulator.simulate import simulate_plans

CALIBRATION = slice(0, 200)
EVALUATION = slice(1200, 3200)
CHOICES = [{"conv2d_0": r} for r in (0.25, 0.5, 0.75)] + [{"conv2d_1": r} for r in (0.25, 0.5, 0.75)]
CHOICES.append({"conv2d_0": 0.5, "conv2d_1": 0.5})
OCR_MODEL = Path(__file__).resolve().parents[1] / "tests" / "models" / "real" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
OCR_SHAPE = (1, 3, 48, 192)
OCR_RATIOS = (0.125, 0.25, 0.5)


def top1(qgraph, images: np.ndarray, labels: np.ndarray) -> float:
    predictions = [run_reference(qgraph, {"Input3": image})[0].argmax() for image in images]
    return 100 * float(np.mean(np.array(predictions) == labels))


def main() -> None:
    mnist()
    ocr_classifier()


def mnist() -> None:
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


def ocr_classifier() -> None:
    images, labels = text_directions(OCR_SHAPE, 400, seed=1)
    hw = load_hardware("vta_default")
    imported = import_model(OCR_MODEL, {"x": OCR_SHAPE})
    with tempfile.TemporaryDirectory() as folder:
        calibration = Path(folder) / "calibration.npy"
        np.save(calibration, text_directions(OCR_SHAPE, 32, seed=2)[0])

        def measured(compression: CompressionConfig) -> str:
            result = compile_model(
                OCR_MODEL, hw, None, calibration, warn=lambda m: None, compression=compression, imported=imported
            )
            vm = relax.VirtualMachine(result.executable, tvm.cpu())
            predictions = [vm["main"](tvm.runtime.tensor(image[None])).numpy().argmax() for image in images]
            summary = placement_summary(result.lowered.plans, simulate_plans(result.lowered.plans, hw, "analytic"))
            return f"{100 * np.mean(np.array(predictions) == labels):.2f} % ({1e3 * summary['latency_seconds']:.2f} ms)"

        convs = [name for name, node in extract_graph(imported).nodes.items() if _is_conv(node)]
        print(f"PP-OCR classifier, unpruned: {measured(CompressionConfig())}")
        for ratio in OCR_RATIOS:
            prune = dict.fromkeys(convs, ratio)
            figures = [f"{m} {measured(CompressionConfig(prune=prune, prune_method=m))}" for m in PRUNE_METHODS]
            print(f"every conv at {ratio}: " + ", ".join(figures))


def _is_conv(node) -> bool:
    return node.op == "gemm" and node.layer.kind == "conv2d"


if __name__ == "__main__":
    main()
