"""Stage 3a under `--calibration-method auto`: the calibration method chosen per model by the
error it leaves on calibration samples it did not see.

No method is best on every model (README, "--calibration-method"): max leaves a voice-activity
model's LSTM states at cosine 0.89 where percentile reaches 0.96, and loses to mean_max or mse
on others. So each candidate calibrates (and corrects biases) on three quarters of the
samples, its integer program is built and run on the other quarter (every fourth sample), and
its least output cosine against the float graph there is its score. The default (max) is kept
unless a candidate beats it by more than AUTO_MARGIN: a few held-out samples cannot tell
smaller differences from noise. The caller then calibrates with the chosen method on every
sample.

entropy is not a candidate: on the held-out samples of the fifteen real models of the corpus
(the last quarter, in a first version) it scored lowest on twelve (down to 0.10) and highest on
none, and each candidate costs a build.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from codesign import progress
from codesign.bias_correction import cached_correct_biases
from codesign.calibration import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    cached_ranges_by_method,
    float_outputs,
    module_outputs,
)
from codesign.compression import CompressionConfig
from codesign.graph import Graph
from codesign.importer import ImportedModel
from codesign.lowering import lower_to_relax
from codesign.metrics import output_cosines
from codesign.quantize import QuantConfig, quantize_graph
from codesign.target import target
from codesign.tvm_build import build_executable
from codesign.tvm_output import quiet_tvm

AUTO_CANDIDATES = ("max", "mean_max", "percentile", "mse")  # the default first
AUTO_MARGIN = 1e-3  # in held-out cosine, what a candidate must gain over the default
FEWEST_AUTO_SAMPLES = 4  # one held out for every three calibrating, at least one of each


@dataclasses.dataclass
class MethodChoice:
    method: str
    held_out_cosine: dict[str, float]  # each candidate's least output cosine on the held-out samples
    held_out_samples: int

    def summary(self) -> str:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in self.held_out_cosine.items())
        return (
            f"calibration method auto: {self.method} (least output cosine against the float graph on "
            f"{self.held_out_samples} held-out calibration samples: {scores})"
        )


def choose_calibration_method(
    graph: Graph,
    imported: ImportedModel,
    hw,
    samples: list[dict[str, np.ndarray]],
    config: QuantConfig,
    graph_changes: dict,
    compression: CompressionConfig,
) -> MethodChoice:
    fit, held_out = held_out_split(samples)
    held_out_count = len(held_out)
    reference = list(float_outputs(graph, imported, held_out))
    ranges = cached_ranges_by_method(graph, imported, fit, AUTO_CANDIDATES, graph_changes)
    scores = {}
    progress.stage("choose calibration method", len(AUTO_CANDIDATES))
    for method in AUTO_CANDIDATES:
        qgraph = quantize_graph(graph, ranges[method], config)
        if config.bias_correction:
            cached_correct_biases(qgraph, graph, imported, fit)
        scores[method] = _least_output_cosine(qgraph, imported, hw, compression, held_out, reference)
        progress.advance()
    return MethodChoice(preferred_method(scores), scores, held_out_count)


def held_out_split(samples: list) -> tuple[list, list]:
    """(calibrating, held out): every fourth sample held out, so that a file sorted by class or
    by time is scored across all of it."""
    return [s for i, s in enumerate(samples) if i % 4 != 3], samples[3::4]


def preferred_method(scores: dict[str, float]) -> str:
    """The best-scoring method, or the default unless the best beats it by more than AUTO_MARGIN."""
    best = max(scores, key=scores.get)
    return best if scores[best] > scores[DEFAULT_CALIBRATION_METHOD] + AUTO_MARGIN else DEFAULT_CALIBRATION_METHOD


def _least_output_cosine(qgraph, imported, hw, compression, samples, reference) -> float:
    lowered = lower_to_relax(qgraph, imported, hw, compression)
    with quiet_tvm():
        vm = relax.VirtualMachine(build_executable(lowered.mod, target()), tvm.cpu())
    names = [spec.name for spec in imported.inputs]
    ours = [module_outputs(vm, names, sample) for sample in samples]
    least = min(output_cosines(ours, reference))
    return least if np.isfinite(least) else -1.0  # an output that overflowed ranks last


assert AUTO_CANDIDATES[0] == DEFAULT_CALIBRATION_METHOD and set(AUTO_CANDIDATES) <= set(CALIBRATION_METHODS)
