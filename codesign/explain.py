"""Where quantization loses accuracy: every quantized tensor of the integer program against the
same tensor of the float graph, on the calibration data (cosine and relative error), worst first.

The integer program is compiled once more with every node of the float graph tapped (int8
values dequantized by their scale); the float graph is run with the same taps.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from codesign.calibration import float_runs
from codesign.lowering import lower_to_relax
from codesign.target import target
from codesign.tvm_build import build_executable
from codesign.tvm_output import quiet_tvm


@dataclasses.dataclass
class TensorError:
    name: str
    op: str
    placement: str
    cosine: float
    relative_error: float  # ||int8 - float|| / ||float||


def quantization_errors(result, samples: list[dict[str, np.ndarray]]) -> list[TensorError]:
    """Per-tensor error of a CompileResult's integer program on `samples`, worst cosine first."""
    qgraph, graph = result.qgraph, result.graph
    float_names = {name: node.float_name or name for name, node in qgraph.nodes.items()}
    taps = [
        name
        for name, node in qgraph.nodes.items()
        if node.op != "input" and float_names[name] in graph.nodes and graph.nodes[float_names[name]].shape is not None
    ]
    lowered = lower_to_relax(qgraph, result.imported, result.hw, result.compression, taps)
    with quiet_tvm():
        vm = relax.VirtualMachine(build_executable(lowered.mod, target()), tvm.cpu())
    names = [spec.name for spec in result.imported.inputs]
    skip = len(qgraph.outputs)
    float_skip = len(graph.outputs)
    dot = dict.fromkeys(taps, 0.0)
    int8_norm, float_norm, diff_norm = (dict.fromkeys(taps, 0.0) for _ in range(3))
    float_values_per_sample = float_runs(graph, result.imported, samples, [float_names[name] for name in taps])
    for sample, float_values in zip(samples, float_values_per_sample):
        values = vm["main"](*[tvm.runtime.tensor(sample[n]) for n in names])
        for name, quantized, reference in zip(taps, list(values)[skip:], float_values[float_skip:]):
            q, f = quantized.numpy().astype(np.float64).ravel(), reference.astype(np.float64).ravel()
            dot[name] += float(q @ f)
            int8_norm[name] += float(q @ q)
            float_norm[name] += float(f @ f)
            diff_norm[name] += float((q - f) @ (q - f))
    rows = []
    for name in taps:
        norms = np.sqrt(int8_norm[name] * float_norm[name])
        node = qgraph.nodes[name]
        rows.append(
            TensorError(
                name,
                node.source.op.rsplit(".", 1)[-1] if node.source is not None and node.op == "float" else node.op,
                node.placement,
                dot[name] / norms if norms else float(int8_norm[name] == float_norm[name]),
                np.sqrt(diff_norm[name] / float_norm[name]) if float_norm[name] else 0.0,
            )
        )
    return sorted(rows, key=lambda row: row.cosine)
