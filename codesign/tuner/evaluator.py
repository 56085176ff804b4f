"""The evaluator: configurations -> their objectives (latency, energy, EDP, area, accuracy).

A thin composition of parts with one job each:

- `eval_data`: the labelled evaluation data, read and checked;
- `profile_builder`: compiles one compression profile (the model is imported once, here), and
  plans its variant with every grouped conv on the core when the space searches that;
- `accuracy`: runs a built profile on the evaluation data;
- `cost_model`: latency, energy and area of many designs at once (the vectorised design sweep);
- `constraints`: the space's constraint checks;
- `batch_evaluator`: a batch grouped by compression profile, the missing profiles measured, every
  design costed in one call.

Accuracy depends only on the compression choice (and on whether the ALU has a multiplier, which
changes the requantization), so it is measured once per (compression, multiplier). Latency,
energy and area come from the simulator with the schedule of every layer tuned for the design
(`schedule.mode = "auto"`: cycles of the event simulation, `tuner.front.cycle_model`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from codesign.compression import CompressionConfig
from codesign.graph import extract_graph
from codesign.importer import ImportedModel, import_onnx
from codesign.pruning import prunable_layers
from codesign.tuner.accuracy import AccuracyMeasurer
from codesign.tuner.batch_evaluator import BatchEvaluator
from codesign.tuner.eval_data import load_eval_data
from codesign.tuner.profile_builder import CompressionProfile, ProfileBuilder, ProfileKey
from codesign.tuner.space import SearchSpace


class Evaluator:
    def __init__(
        self,
        model: str | Path,
        space: SearchSpace,
        data: str | Path,
        input_shapes: dict | None = None,
        calibration_samples: int = 64,
        eval_samples: int | None = None,
        input_values: dict | None = None,
        workdir: str | Path | None = None,
        calibration_data: str | Path | None = None,
    ):
        """`workdir`: where the evaluator keeps its temporary files (a copy of calibration data);
        default, or when it is not a directory here, the system's temporary directory.
        `calibration_data`: a .npz like `data` whose first `calibration_samples` samples calibrate
        (default: those of `data`; pass other data to calibrate and evaluate on disjoint sets)."""
        self.model, self.input_shapes = str(model), input_shapes
        self.input_values = input_values
        self.imported = import_onnx(model, input_shapes, input_values)
        self.layers = gemm_layer_names(self.imported)
        self.prunable = prunable_layer_names(self.imported)
        self.grouped_convs = grouped_conv_names(self.imported)
        self.space = space = space.for_layers(self.layers, self.prunable, self.grouped_convs)
        self.data = load_eval_data(data, self.imported.inputs, eval_samples)
        workdir = workdir if workdir is not None and Path(workdir).is_dir() else None
        self._workdir = tempfile.TemporaryDirectory(prefix="codesign-eval-", dir=workdir)
        self.calibration = Path(self._workdir.name) / "calibration.npz"
        calibration = load_eval_data(calibration_data or data, self.imported.inputs, calibration_samples)
        np.savez(self.calibration, **calibration.inputs)
        self.builder = ProfileBuilder(
            self.model, self.imported, space.base, self.calibration, input_shapes, input_values
        )
        self.accuracy = AccuracyMeasurer(self.imported, self.data, data)
        self.batches = BatchEvaluator(space, self.layers, self.accuracy.float_accuracy(), self.measure_profiles)

    def close(self) -> None:
        """Remove the temporary files now (not when the evaluator is collected)."""
        self._workdir.cleanup()

    @property
    def profiles(self) -> dict[ProfileKey, CompressionProfile]:
        """The profiles measured so far, by (compression key, ALU multiplier)."""
        return self.batches.profiles

    def float_accuracy(self) -> float:
        return self.accuracy.float_accuracy()

    def measure_profile(self, compression: CompressionConfig, multiplier: bool) -> CompressionProfile:
        """Build the profile and measure its accuracy (not cached: `profile` is)."""
        start = time.perf_counter()
        if "core" in self.space.grouped_conv_choices() and compression.zero_point_pads is None:
            # Both placements must compute the measured integers, and on the core a zero point's
            # pad costs a host pass (quantize.prepadded): such a space's padded grouped convs
            # read symmetric inputs.
            compression = dataclasses.replace(compression, zero_point_pads=())
        result = self.builder.build(compression, multiplier)
        accuracy = self.accuracy.measure(result.executable)
        all_on_core = self.builder.plan_all_on_core(result) if "core" in self.space.grouped_conv_choices() else None
        profile = CompressionProfile.from_compiled(result, accuracy, self.space.core_variants(), all_on_core)
        return dataclasses.replace(profile, seconds=time.perf_counter() - start)

    def measure_profiles(self, requests: dict) -> dict[ProfileKey, CompressionProfile]:
        """{key: (compression, multiplier)} -> {key: profile}, one after the other."""
        return {key: self.measure_profile(*request) for key, request in requests.items()}

    def profile(self, config: dict, multiplier: bool) -> CompressionProfile:
        return self.batches.profile(config, multiplier)

    def evaluate(self, config: dict) -> dict:
        return self.evaluate_many([config])[0]

    def evaluate_many(self, configs: list[dict]) -> list[dict]:
        """Results in order; designs sharing a compression profile are simulated in one call."""
        return self.batches.evaluate_many(configs)


def gemm_layer_names(model, input_shapes: dict | None = None, input_values: dict | None = None) -> list[str]:
    """Names of a model's GEMM layers (what compression configs refer to)."""
    imported = model if isinstance(model, ImportedModel) else import_onnx(model, input_shapes, input_values)
    return [n.name for n in extract_graph(imported).gemm_nodes()]


def grouped_conv_names(imported: ImportedModel) -> list[str]:
    """The convs with more than one group (what a space's grouped_convs knob places)."""
    return [n.name for n in extract_graph(imported).gemm_nodes() if n.layer.kind == "conv2d" and n.layer.groups > 1]


def prunable_layer_names(imported: ImportedModel) -> list[str]:
    """The GEMM layers whose own prune ratio can act (codesign.pruning.prunable_layers)."""
    return prunable_layers(extract_graph(imported))
