"""The compile flow as a short pipeline of stages, each reading and writing one object:

import_onnx     ONNX file                  -> ImportedModel   (codesign.importer; ONNX passes in
                                                               codesign.onnx_passes)
extract_graph   ImportedModel              -> Graph           (codesign.graph)
tensor_ranges   Graph + calibration inputs -> ranges          (codesign.calibration; the method chosen by
                                                               codesign.calibration_choice under "auto")
quantize_graph  Graph + ranges + hardware  -> QuantizedGraph  (codesign.quantize)
correct_biases  QuantizedGraph + inputs    -> QuantizedGraph  (codesign.bias_correction)
lower_to_relax  QuantizedGraph + hardware  -> LoweredModel    (codesign.lowering)
build           LoweredModel               -> TVM executable  (codesign.tvm_build)
write_module    everything above           -> OUT/            (codesign.deploy)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import tvm

from codesign import progress
from codesign.bias_correction import cached_correct_biases
from codesign.calibration import (
    AUTO_METHOD,
    DEFAULT_CALIBRATION_METHOD,
    cached_tensor_ranges,
    check_method_choice,
    load_samples,
    random_samples,
)
from codesign.calibration_choice import FEWEST_AUTO_SAMPLES, choose_calibration_method
from codesign.compression import CompressionConfig, resolve_compression
from codesign.errors import ModelError, UsageError
from codesign.graph import Graph, extract_graph
from codesign.hardware import HardwareSpec
from codesign.importer import ImportedModel, import_onnx
from codesign.lowering import LoweredModel, lower_to_relax
from codesign.pruning import prune_graph
from codesign.quantize import QuantConfig, QuantizedGraph, layers_before_logarithm, quantize_graph
from codesign.target import target
from codesign.tvm_build import build_executable
from codesign.tvm_output import quiet_tvm

DEFAULT_CALIBRATION_SAMPLES = 200
RANDOM_CALIBRATION_SAMPLES = 16  # at most, without --calibration data
MAX_MEMORY_ENV = "CODESIGN_MAX_MEMORY_GIB"
DEFAULT_MAX_MEMORY_GIB = 8.0  # or 3/4 of the physical memory, if less
GIB = 1 << 30


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
    bias_correction: bool = True,
    measure_biases: bool = True,  # False: plans only (their cost does not depend on the biases' values)
) -> tuple[Graph, QuantizedGraph, dict]:
    compression = compression or CompressionConfig()
    calibration_method = compression.calibration_method or DEFAULT_CALIBRATION_METHOD
    check_method_choice(calibration_method)
    graph = extract_graph(imported)
    sample_count = (
        calibration_samples if calibration is not None else min(calibration_samples, RANDOM_CALIBRATION_SAMPLES)
    )
    check_memory(graph, imported, sample_count)
    compression = resolve_compression(compression, graph)
    if calibration is None:
        warn(
            "warning: no --calibration data; calibrating on random normal inputs, "
            "so activation ranges (and accuracy) may be poor, and no bias is corrected"
        )
        samples = random_samples(imported.inputs, min(calibration_samples, RANDOM_CALIBRATION_SAMPLES))
        calibration_info = {"source": "random", "samples": len(samples)}
    else:
        samples = load_samples(calibration, imported.inputs, calibration_samples)
        calibration_info = {"source": str(calibration), "samples": len(samples)}
    if not samples:
        raise ModelError(f"{calibration}: no calibration samples")
    graph = prune_graph(graph, compression, imported, samples, warn)
    pruning = {"prune": compression.prune, "prune_method": compression.prune_method}
    # Random inputs say nothing of the model's own data: no bias is corrected on them.
    bias_correction = bias_correction and calibration is not None
    float_layers = (*compression.float_layers, *_kept_float_before_logarithm(graph, compression, warn))
    config = QuantConfig.for_hardware(
        hw,
        weight_bits,
        compression.weight_bits,
        float_layers,
        compression.placements(),
        bias_correction,
        compression.wide_layers,
    )
    if calibration_method == AUTO_METHOD and not measure_biases:
        calibration_method = DEFAULT_CALIBRATION_METHOD  # plans only: auto is measured when a module is built
    elif calibration_method == AUTO_METHOD:
        calibration_method = _chosen_method(
            graph, imported, hw, samples, config, pruning, compression, calibration_info, warn
        )
    calibration_info["method"] = calibration_method
    ranges = cached_tensor_ranges(graph, imported, samples, calibration_method, pruning)
    qgraph = quantize_graph(graph, ranges, config)
    corrected = cached_correct_biases(qgraph, graph, imported, samples) if bias_correction and measure_biases else []
    calibration_info["bias_corrected_layers"] = len(corrected)
    return graph, qgraph, calibration_info


def _kept_float_before_logarithm(graph: Graph, compression: CompressionConfig, warn) -> list[str]:
    """The layers quantize.layers_before_logarithm keeps in float, with a note naming them (not
    those --float-layers or --wide-layers name: a wide layer carries the range in int16)."""
    named = (*compression.float_layers, *compression.wide_layers)
    layers = [name for name in layers_before_logarithm(graph) if not any(fnmatchcase(name, p) for p in named)]
    if layers:
        warn(
            f"note: {', '.join(layers)} stay in float on the host: a logarithm reads their output, and int8 "
            "cannot carry the range it expands (list them in --wide-layers to run them on the accelerator "
            "with int16 activations, or in --float-layers to silence this note)"
        )
    return layers


def _chosen_method(graph, imported, hw, samples, config, pruning, compression, calibration_info, warn) -> str:
    """`--calibration-method auto`: the method measured best on held-out calibration samples
    (codesign.calibration_choice), or the default where there is nothing to hold out."""
    if calibration_info["source"] == "random" or len(samples) < FEWEST_AUTO_SAMPLES:
        warn(
            f"note: calibration method auto needs at least {FEWEST_AUTO_SAMPLES} calibration samples of the "
            f"model's own data; using {DEFAULT_CALIBRATION_METHOD}"
        )
        return DEFAULT_CALIBRATION_METHOD
    choice = choose_calibration_method(graph, imported, hw, samples, config, pruning, compression)
    warn(f"note: {choice.summary()}")
    calibration_info["auto"] = {"held_out_samples": choice.held_out_samples, "held_out_cosine": choice.held_out_cosine}
    return choice.method


def memory_limit() -> int:
    """Bytes a compile may need: $CODESIGN_MAX_MEMORY_GIB, else 8 GiB or 3/4 of the physical memory if less."""
    value = os.environ.get(MAX_MEMORY_ENV)
    if value is not None and value.strip():
        try:
            gib = float(value)
        except ValueError:
            gib = math.nan
        if not (math.isfinite(gib) and gib > 0):
            raise UsageError(f"{MAX_MEMORY_ENV}={value!r}: expected a positive number of GiB")
        return int(gib * GIB)
    limit = int(DEFAULT_MAX_MEMORY_GIB * GIB)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return limit
    return min(limit, physical * 3 // 4) if physical > 0 else limit


def format_bytes(count: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _tensor_bytes(shape: tuple[int, ...], dtype: str) -> int:
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 4
    return math.prod(shape) * itemsize


def memory_estimate(graph: Graph, imported: ImportedModel, samples: int) -> tuple[int, str, int]:
    """(bytes, largest tensor's name, its bytes) a compile needs, from the bound static shapes.

    Calibration runs the float graph returning every tensor of a sample at once, and copies each
    to numpy (twice the activations), and holds the calibration samples of every input. A run of
    the compiled module needs less (at most the activations of one sample).
    """
    sizes = {name: _tensor_bytes(node.shape, node.dtype) for name, node in graph.nodes.items() if node.shape}
    inputs = sum(_tensor_bytes(spec.shape, spec.dtype) for spec in imported.inputs)
    largest = max(sizes, key=sizes.get, default="")
    return 2 * sum(sizes.values()) + samples * inputs, largest, sizes.get(largest, 0)


def check_memory(graph: Graph, imported: ImportedModel, samples: int) -> None:
    """Refuse, before anything large is allocated, a compile whose bound shapes need more memory
    than the limit (`memory_limit`), naming the largest tensor and the estimate."""
    needed, largest, largest_bytes = memory_estimate(graph, imported, samples)
    limit = memory_limit()
    if needed <= limit:
        return
    node = graph.nodes[largest]
    raise ModelError(
        f"{imported.source}: compiling needs about {format_bytes(needed)} of memory, over the limit of "
        f"{format_bytes(limit)}: the largest tensor, '{largest}' {list(node.shape)} {node.dtype}, is "
        f"{format_bytes(largest_bytes)} (bind smaller shapes with --input-shape, or raise the limit with "
        f"{MAX_MEMORY_ENV})"
    )


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
    calibration_method: str | None = None,  # overrides the compression's; None: its, else the default
    bias_correction: bool = True,
    imported: ImportedModel | None = None,  # `model` already imported (with these shapes and values): reused
    kernel_per_module: bool = False,  # see tvm_build.build_executable: for a process building many variants
    run_here: bool = True,  # False: the executable is only exported (no machine code made in memory)
) -> CompileResult:
    seconds = {}
    build_target = target(cpu)
    start = time.perf_counter()
    progress.stage("import")
    imported = import_model(model, input_shapes, input_values, warn) if imported is None else imported
    seconds["import"] = time.perf_counter() - start

    start = time.perf_counter()
    if calibration_method is not None:  # recorded with the other choices the module was compiled with
        compression = dataclasses.replace(compression or CompressionConfig(), calibration_method=calibration_method)
    graph, qgraph, calibration_info = quantize_model(
        imported, hw, calibration, calibration_samples, weight_bits, warn, compression, bias_correction=bias_correction
    )
    seconds["quantize"] = time.perf_counter() - start
    compression = resolve_compression(compression or CompressionConfig(), graph)

    start = time.perf_counter()
    lowered = lower_to_relax(qgraph, imported, hw, compression)
    seconds["schedule"] = time.perf_counter() - start

    start = time.perf_counter()
    progress.stage("build")
    with quiet_tvm():
        executable = build_executable(lowered.mod, build_target, kernel_per_module, jit=run_here and cpu is None)
    seconds["build"] = time.perf_counter() - start
    return CompileResult(
        imported, graph, qgraph, lowered, executable, hw, calibration_info, seconds, build_target, compression
    )
