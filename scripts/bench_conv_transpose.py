"""How a ConvTranspose reaches the GEMM core, three ways, priced by the simulator (analytic model).

- phase: what codesign does (codesign/onnx_passes/conv.py): one conv whose output channels hold
  every stride phase (the kernel padded with zero taps to a multiple of the stride), then a
  depth-to-space interleave on the host.
- zero-inserted: a stride-1 conv over the input with s - 1 zeros between its values (the
  zero insertion itself is not priced, which favours this way).
- col2im: one GEMM (a 1x1 conv to O * k * k channels) whose products the host scatters and adds
  into the output (priced as one int32 add per product by the description's [host] model).

Shapes: PP-OCR detectors' upsampling heads (k = s = 2) and the common k = 3 / 4, s = 2 decoders.
Prints the modelled latency of each way (accelerator + host) and the ratio to the phase conv.

    python scripts/bench_conv_transpose.py [--hw vta_default]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from codesign.compression import CompressionConfig
from codesign.hardware import load_hardware
from codesign.host_work import host_seconds
from codesign.lowering import lower_to_relax
from codesign.pipeline import import_model, quantize_model
from codesign.simulator.simulate import simulate_plans


class Shape(NamedTuple):
    label: str
    channels: int
    outs: int
    kernel: int
    stride: int
    pad: int  # per side
    output_padding: int
    size: int  # input height and width

    def describe(self) -> str:
        return f"{self.label}: {self.channels}->{self.outs}, k{self.kernel} s{self.stride}, {self.size}x{self.size}"


SHAPES = [
    Shape("PP-OCRv4 det head", 24, 24, 2, 2, 0, 0, 32),
    Shape("PP-OCRv4 det head (1 ch)", 24, 1, 2, 2, 0, 0, 64),
    Shape("decoder k3 s2", 64, 64, 3, 2, 1, 1, 16),
    Shape("decoder k4 s2", 64, 32, 4, 2, 1, 0, 16),
]


def single_node_model(path: Path, node, input_shape, output_shape, weight: np.ndarray) -> Path:
    graph = helper.make_graph(
        [node],
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def modelled_seconds(path: Path, hw) -> float:
    imported = import_model(path, warn=lambda message: None)
    _, qgraph, _ = quantize_model(imported, hw, None, 4, warn=lambda message: None, measure_biases=False)
    plans = lower_to_relax(qgraph, imported, hw, CompressionConfig()).plans
    report = simulate_plans(plans, hw, "analytic")
    return report.accel_seconds + report.host_seconds


def three_ways(folder: Path, shape: Shape, hw) -> dict[str, float]:
    _, channels, outs, kernel, stride, pad, output_padding, size = shape
    rng = np.random.default_rng(0)
    out_size = (size - 1) * stride - 2 * pad + kernel + output_padding
    transpose_weight = rng.normal(0, 0.1, (channels, outs, kernel, kernel)).astype(np.float32)
    transpose = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], kernel_shape=[kernel, kernel], strides=[stride, stride],
        pads=[pad] * 4, output_padding=[output_padding] * 2,
    )  # fmt: skip
    phase = single_node_model(
        folder / "phase.onnx", transpose, (1, channels, size, size), (1, outs, out_size, out_size), transpose_weight
    )
    inserted = (size - 1) * stride + 1 + 2 * (kernel - 1 - pad) + output_padding
    conv_weight = rng.normal(0, 0.1, (outs, channels, kernel, kernel)).astype(np.float32)
    zero_inserted = single_node_model(
        folder / "zero_inserted.onnx", helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kernel, kernel]),
        (1, channels, inserted, inserted), (1, outs, out_size, out_size), conv_weight,
    )  # fmt: skip
    gemm_weight = rng.normal(0, 0.1, (outs * kernel * kernel, channels, 1, 1)).astype(np.float32)
    gemm = single_node_model(
        folder / "col2im_gemm.onnx", helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1]),
        (1, channels, size, size), (1, outs * kernel * kernel, size, size), gemm_weight,
    )  # fmt: skip
    products = outs * kernel * kernel * size * size
    overlap_add = host_seconds(products, 4 * products + 2 * 4 * outs * out_size * out_size, hw)
    return {
        "phase": modelled_seconds(phase, hw),
        "zero-inserted": modelled_seconds(zero_inserted, hw),
        "col2im": modelled_seconds(gemm, hw) + overlap_add,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="vta_default")
    args = parser.parse_args()
    hw = load_hardware(args.hw)
    table = Table(title=f"ConvTranspose on {hw.name}: modelled latency (us), and against the phase conv")
    for column in ("shape", "phase", "zero-inserted", "col2im"):
        table.add_column(column, justify="left" if column == "shape" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            seconds = three_ways(Path(tmp), shape, hw)
            ratios = {way: seconds[way] / seconds["phase"] for way in ("zero-inserted", "col2im")}
            cells = [f"{1e6 * seconds[way]:.1f} ({ratio:.2f}x)" for way, ratio in ratios.items()]
            table.add_row(shape.describe(), f"{1e6 * seconds['phase']:.1f}", *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
