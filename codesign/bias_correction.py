"""Stage 3b, bias correction: the integer program's GEMM biases corrected for the mean error
quantization leaves in each output channel, measured on the calibration data.

int8 rounding is unbiased for one value but not for a channel's sum: a depthwise conv's 9 rounded
weights against an input of non-zero mean (after HardSwish or ReLU), or a pointwise conv
summing errors that cancel less than its values do, shift a channel's output by a constant.
Layer after layer the shifts grow (PP-OCRv5's recogniser: 20-30 % relative error per tensor
in its conv backbone, most of it per-channel mean). Empirical bias correction (Nagel et al.,
ICCV 2019, section 4.2) subtracts that mean from the layer's bias. It is done in topological
order with the integer program itself: each layer is measured on inputs that the corrected
layers before it produced, so the correction also takes out what they left (correcting every
layer from one uncorrected run over-corrects: the errors compound).

A layer's error is measured before its folded activation, against the float graph's own
layer on the float graph's own input: mean over the samples and positions of
(acc + bias) - float_output / acc_scale, in accumulator units. Float host ops between layers
run in numpy (`codesign.float_numpy`); a layer behind an op numpy does not run keeps its bias.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from codesign import cache, float_numpy, progress
from codesign.calibration import array_digest, float_runs, samples_digest
from codesign.graph import Graph
from codesign.importer import ImportedModel
from codesign.quantize import QNode, QuantizedGraph
from codesign.reference import DATA_MOVEMENT_OPS, accumulate, evaluate, gemm_channel_axis, layer_output

# Calibration samples the correction measures on: the means settle with few, and each costs a
# run of the integer program in numpy.
BIAS_CORRECTION_SAMPLES = 8
# The float GEMM inputs it holds for them, at most (about): a large model measures on fewer
# samples rather than run out of memory (PicoDet at 608x800 takes 171 MiB a sample).
CORRECTION_INPUT_BYTES = 2 << 30


def cached_correct_biases(
    qgraph: QuantizedGraph, graph: Graph, imported: ImportedModel, samples: list[dict]
) -> list[str]:
    """correct_biases on the samples it measures on (correction_samples), its biases read from
    the cache when the same model, integer program and samples were corrected before."""
    samples = correction_samples(graph, samples)
    key = cache.entry_key(
        "biases",
        {
            "model": imported.sha256,
            "frozen": {name: array_digest(value) for name, value in imported.frozen_inputs.items()},
            "program": _program_digest(qgraph, graph),
            "samples": samples_digest(samples),
        },
    )
    payload = cache.load(key)
    if payload is not None:
        biases = json.loads(payload)
        for name, bias in biases.items():
            qgraph.nodes[name].params["bias"] = np.asarray(bias, dtype=np.int32)
        return list(biases)
    corrected = correct_biases(qgraph, graph, imported, samples)
    cache.store(key, json.dumps({name: qgraph.nodes[name].params["bias"].tolist() for name in corrected}).encode())
    return corrected


def _program_digest(qgraph: QuantizedGraph, graph: Graph) -> str:
    """A digest of the integer program (every node, scale and parameter) and of the float
    layers it approximates (pruning changes those)."""
    digest = hashlib.sha256()
    for node in qgraph.nodes.values():
        digest.update(repr((node.name, node.op, node.inputs, node.shape, node.dtype, node.placement)).encode())
        for name, value in [("scale", node.scale), ("zero_point", node.zero_point), *node.params.items()]:
            digest.update(name.encode() + _value_bytes(value))
    for node in graph.gemm_nodes():
        for array in (node.layer.weight, node.layer.bias):
            digest.update(b"-" if array is None else _value_bytes(array))
    return digest.hexdigest()


def _value_bytes(value) -> bytes:
    return array_digest(value).encode() if isinstance(value, np.ndarray) else repr(value).encode()


def correction_samples(graph: Graph, samples: list[dict]) -> list[dict]:
    """The first BIAS_CORRECTION_SAMPLES samples, fewer where their GEMM inputs would pass
    CORRECTION_INPUT_BYTES."""
    gemm_inputs = {node.inputs[0] for node in graph.gemm_nodes() if node.layer.weight is not None}
    shapes = [graph.nodes[name].shape for name in gemm_inputs]
    sample_bytes = sum(4 * math.prod(shape) for shape in shapes if shape is not None)
    return samples[: max(1, min(BIAS_CORRECTION_SAMPLES, CORRECTION_INPUT_BYTES // max(sample_bytes, 1)))]


def correct_biases(qgraph: QuantizedGraph, graph: Graph, imported: ImportedModel, samples: list[dict]) -> list[str]:
    """Correct the bias of every weighted GEMM layer of `qgraph` in place, measured on
    `samples`; the layers corrected."""
    layers = {node.name for node in qgraph.gemm_nodes() if _correctable(node, graph)}
    taps = sorted({graph.nodes[name].inputs[0] for name in layers})
    float_inputs = _stacked(list(float_runs(graph, imported, samples, taps)), len(graph.outputs), taps)
    values = {name: [sample[name] for sample in samples] for name in qgraph.inputs}
    remaining_uses = _uses(qgraph)
    corrected = []
    progress.stage("correct biases", len(layers))
    for node in qgraph.nodes.values():
        if node.op == "input" or not all(i in values for i in node.inputs):
            continue
        args = [values[i] for i in node.inputs]
        if node.name in layers:
            accs = _accumulators(node, args[0])
            _correct(node, np.stack(accs), float_inputs[graph.nodes[node.name].inputs[0]], qgraph, graph)
            corrected.append(node.name)
            progress.advance()
            value = [layer_output(node, acc) for acc in accs]
        else:
            value = _evaluate(node, args)
        if value is not None:
            values[node.name] = value
        for name in node.inputs:
            remaining_uses[name] -= 1
            if remaining_uses[name] == 0:
                values.pop(name, None)
    return corrected


def _accumulators(node: QNode, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """A GEMM layer's accumulators per sample: the samples along the batch axis in one product
    (a 1-D input, a matmul of a vector, has no batch axis: one product each)."""
    if inputs[0].ndim < 2:
        return [accumulate(node, [x]) for x in inputs]
    return np.split(accumulate(node, [np.concatenate(inputs)]), len(inputs))


def _correctable(node: QNode, graph: Graph) -> bool:
    source = graph.nodes.get(node.name)
    return node.params.get("weight") is not None and source is not None and source.op == "gemm"


def _stacked(runs: list[list[np.ndarray]], skip: int, taps: list[str]) -> dict[str, np.ndarray]:
    """Per tapped tensor, its values over the samples on a leading axis."""
    return {name: np.stack([run[skip + index] for run in runs]) for index, name in enumerate(taps)}


def _uses(qgraph: QuantizedGraph) -> dict[str, int]:
    uses = dict.fromkeys(qgraph.nodes, 0)
    for node in qgraph.nodes.values():
        for name in node.inputs:
            uses[name] += 1
    for name in qgraph.outputs:
        uses[name] += 1  # never freed
    return uses


def _correct(node: QNode, acc: np.ndarray, float_input: np.ndarray, qgraph: QuantizedGraph, graph: Graph):
    """Subtract the layer's mean error per channel from its bias; `acc`: its accumulators [samples, *shape]."""
    layer = graph.nodes[node.name].layer
    expected = float_numpy.gemm_before_clamp(layer, [float_input]).astype(np.float64)
    channel_axis = gemm_channel_axis(node) + 1
    others = tuple(axis for axis in range(acc.ndim) if axis != channel_axis)
    acc_scale = qgraph.acc_scales[node.name]
    shaped = [1] * acc.ndim
    shaped[channel_axis] = -1
    bias = node.params["bias"].astype(np.float64)
    error = (acc + bias.reshape(shaped) - expected / acc_scale.reshape(shaped)).mean(axis=others)
    error = np.where(np.isfinite(error), error, 0.0)  # an overflowing float tensor measures nothing
    node.params["bias"] = np.clip(np.round(bias - error), -(2**31), 2**31 - 1).astype(np.int32)


def _evaluate(node: QNode, args: list[list]) -> list | None:
    """The node's value per sample, or None where numpy cannot run it (a float op it lacks)."""
    if node.op == "float" and node.source.op == "TupleGetItem":
        return [value[node.source.call.index] for value in args[0]]
    if node.op != "float" or node.source.op in DATA_MOVEMENT_OPS:
        try:
            return [evaluate(node, [arg[index] for arg in args]) for index in range(len(args[0]))]
        except NotImplementedError:
            return None
    if not float_numpy.supports_node(node.source) or any(isinstance(arg[0], tuple) for arg in args):
        return None
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        stacked = float_numpy.run_node(node.source, [np.stack(arg) for arg in args])
    if isinstance(stacked, tuple):  # a split: its parts per sample
        return [tuple(part[index] for part in stacked) for index in range(len(stacked[0]))]
    return list(stacked)
