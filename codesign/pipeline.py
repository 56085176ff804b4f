"""The compile flow as a short pipeline of stages, each reading and writing one object:

import_onnx     ONNX file                  -> ImportedModel   (codesign.importer; ONNX passes in
                                                               codesign.onnx_passes)
extract_graph   ImportedModel              -> Graph           (codesign.graph)
tensor_ranges   Graph + calibration inputs -> ranges          (codesign.calibration)
quantize_graph  Graph + ranges + hardware  -> QuantizedGraph  (codesign.quantize)
lower_to_relax  QuantizedGraph + hardware  -> LoweredModel    (codesign.lowering)
build           LoweredModel               -> TVM executable  (tvm.compile)
write_module    everything above           -> OUT/            (codesign.deploy)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import tvm

from codesign.calibration import load_samples, random_samples, tensor_ranges
from codesign.compression import CompressionConfig, prune_graph, validate_compression
from codesign.emit import target
from codesign.errors import ModelError
from codesign.graph import Graph, extract_graph
from codesign.hardware import HardwareSpec
from codesign.importer import ImportedModel, import_onnx
from codesign.lowering import LoweredModel, lower_to_relax
from codesign.quantize import QuantConfig, QuantizedGraph, quantize_graph
from codesign.tvm_output import quiet_tvm

DEFAULT_CALIBRATION_SAMPLES = 200


@dataclasses.dataclass
class CompileResult:
    imported: ImportedModel
    graph: Graph
    qgraph: QuantizedGraph
    lowered: LoweredModel
    executable: tvm.runtime.Executable
    hw: HardwareSpec
    calibration: dict
    seconds: dict[str, float]
    target: tvm.target.Target
    compression: CompressionConfig


def import_model(model, input_shapes=None, input_values=None, warn=lambda message: print(message, file=sys.stderr)):
    """Stage 1, with the ONNX passes' notes (e.g. a dequantized onnxruntime model) passed to `warn`."""
    imported = import_onnx(model, input_shapes, input_values)
    for note in imported.notes:
        warn(f"note: {note}")
    return imported


def quantize_model(
    imported: ImportedModel,
    hw: HardwareSpec,
    calibration: str | Path | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    weight_bits: int | None = None,
    warn=lambda message: print(message, file=sys.stderr),
    compression: CompressionConfig | None = None,
    calibration_method: str = "max",
) -> tuple[Graph, QuantizedGraph, dict]:
    compression = compression or CompressionConfig()
    graph = extract_graph(imported)
    validate_compression(compression, graph)
    graph = prune_graph(graph, compression)
    if calibration is None:
        warn(
            "warning: no --calibration data; calibrating on random normal inputs, "
            "so activation ranges (and accuracy) may be poor"
        )
        samples = random_samples(imported.inputs, min(calibration_samples, 16))
        calibration_info = {"source": "random", "samples": len(samples)}
    else:
        samples = load_samples(calibration, imported.inputs, calibration_samples)
        calibration_info = {"source": str(calibration), "samples": len(samples)}
    calibration_info["method"] = calibration_method
    if not samples:
        raise ModelError(f"{calibration}: no calibration samples")
    ranges = tensor_ranges(graph, imported, samples, calibration_method)
    config = QuantConfig.for_hardware(hw, weight_bits, compression.weight_bits, compression.float_layers)
    return graph, quantize_graph(graph, ranges, config), calibration_info


def plan_model(
    model: str | Path,
    hw: HardwareSpec,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calibration: str | Path | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    warn=lambda message: print(message, file=sys.stderr),
    compression: CompressionConfig | None = None,
    input_values: dict[str, list[str]] | None = None,
) -> list:
    """The layer plans of a model (import, quantize, lower) without building it: what the
    simulator needs."""
    imported = import_model(model, input_shapes, input_values, warn)
    _, qgraph, _ = quantize_model(imported, hw, calibration, calibration_samples, None, warn, compression)
    return lower_to_relax(qgraph, imported, hw, compression).plans


def compile_model(
    model: str | Path,
    hw: HardwareSpec,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calibration: str | Path | None = None,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    weight_bits: int | None = None,
    warn=lambda message: print(message, file=sys.stderr),
    cpu: str | None = None,
    compression: CompressionConfig | None = None,
    input_values: dict[str, list[str]] | None = None,
    calibration_method: str = "max",
) -> CompileResult:
    seconds = {}
    build_target = target(cpu)
    start = time.perf_counter()
    imported = import_model(model, input_shapes, input_values, warn)
    seconds["import"] = time.perf_counter() - start

    start = time.perf_counter()
    graph, qgraph, calibration_info = quantize_model(
        imported, hw, calibration, calibration_samples, weight_bits, warn, compression, calibration_method
    )
    seconds["quantize"] = time.perf_counter() - start

    start = time.perf_counter()
    lowered = lower_to_relax(qgraph, imported, hw, compression)
    seconds["schedule"] = time.perf_counter() - start

    start = time.perf_counter()
    with quiet_tvm():
        executable = tvm.compile(lowered.mod, target=build_target)
    seconds["build"] = time.perf_counter() - start
    compression = compression or CompressionConfig()
    return CompileResult(
        imported, graph, qgraph, lowered, executable, hw, calibration_info, seconds, build_target, compression
    )
