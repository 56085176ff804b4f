"""`codesign demo`: the bundled mnist-8 compiled for VTA's default, run on the real MNIST test set.

Calibration uses the first 500 test images; accuracy is measured on all 10,000 (MNIST's
training images are not bundled).
"""

from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from codesign.calibration import float_outputs
from codesign.console_tables import print_placement
from codesign.deploy import check_output, load, write_module
from codesign.errors import DeployError
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model

DATA_DIR = Path(__file__).resolve().parent / "data"
MNIST_MODEL = DATA_DIR / "mnist-8.onnx"
CALIBRATION_IMAGES = 500
MODULE_NAMES = ("mnist_vta_default", "mnist_vta_shift_only")  # written inside `codesign demo -o DIR`


def load_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """(10000, 1, 1, 28, 28) float32 raw pixels 0-255 (mnist-8's input), (10000,) labels."""
    images = np.frombuffer(gzip.open(DATA_DIR / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(DATA_DIR / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 1, 1, 28, 28).astype(np.float32), labels.astype(np.int64)


def module_accuracy(module, images: np.ndarray, labels: np.ndarray) -> float:
    predictions = np.array([module.run(image)[0].argmax() for image in images])
    return float((predictions == labels).mean())


def run_demo(out_dir: Path | None = None, console: Console | None = None) -> dict:
    console = console or Console()
    started = time.perf_counter()
    images, labels = load_mnist_test()
    if out_dir is not None:  # refused up front: nothing is written to a place that is refused
        if out_dir.exists() and not out_dir.is_dir():
            raise DeployError(f"{out_dir}: exists and is not a directory; name a directory for the demo's modules")
        for name in MODULE_NAMES:
            check_output(out_dir / name)
    work = Path(tempfile.mkdtemp(prefix="codesign-demo-")) if out_dir is None else out_dir
    with tempfile.TemporaryDirectory(prefix="codesign-demo-calibration-") as scratch:
        calibration = Path(scratch) / "mnist_calibration.npy"
        np.save(calibration, images[:CALIBRATION_IMAGES, 0])
        return _compile_and_measure(work, calibration, images, labels, console, started)


def _compile_and_measure(work: Path, calibration: Path, images, labels, console: Console, started: float) -> dict:
    hw = load_hardware("vta_default")
    alu = f"ALU multiplier {hw.alu_multiplier_bits} bit"
    console.print(f"[bold]Compiling[/] {MNIST_MODEL.name} for {hw.name} ({hw.gemm_shape}, {alu})")
    result = compile_model(MNIST_MODEL, hw, calibration=calibration, run_here=False)
    write_module(result, work / MODULE_NAMES[0])
    print_placement(result.lowered.plans, hw, console)

    shift_only_hw = hw.with_changes(name="vta_default_shift_only", alu_has_multiplier=False)
    shift_only = compile_model(MNIST_MODEL, shift_only_hw, calibration=calibration, run_here=False)
    write_module(shift_only, work / MODULE_NAMES[1])

    console.print(f"Running {len(images):,} MNIST test images through the deployable modules ...")
    float_predictions = np.array(
        [o[0].argmax() for o in float_outputs(result.graph, result.imported, [{"Input3": x} for x in images])]
    )
    figures = {
        "float": float((float_predictions == labels).mean()),
        "int8": module_accuracy(load(work / MODULE_NAMES[0]), images, labels),
        "int8_shift_only": module_accuracy(load(work / MODULE_NAMES[1]), images, labels),
    }
    console.print(f"  float32 (TVM, imported graph)       top-1 {100 * figures['float']:.2f} %")
    console.print(f"  int8, ALU multiplier (vta_default)  top-1 {100 * figures['int8']:.2f} %")
    console.print(f"  int8, shift-only ALU                top-1 {100 * figures['int8_shift_only']:.2f} %")
    console.print(f"Module written to {work / MODULE_NAMES[0]}  ({time.perf_counter() - started:.1f} s in all)")
    return figures
