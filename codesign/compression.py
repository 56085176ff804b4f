"""Model compression choices beyond int8: per-layer weight bits and structured channel pruning.

A CompressionConfig names layers (graph names: conv2d_0, matmul_3, ...) with their weight
bits (8 or 4) and the fraction of output channels to prune. It is a small JSON file:

    {"weight_bits": {"conv2d_1": 4}, "prune": {"conv2d_1": 0.25}, "schedule": "auto",
     "float_layers": ["conv2d_3"]}

`float_layers` keeps the matching layers (glob patterns over layer names) in float on the host.

Pruning removes the output channels with the smallest L1 weight norm: their weights and bias
become zero, which computes exactly what removing them would (the accelerator skips them: the
simulator shrinks the layer and its consumers).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import math
from pathlib import Path

import numpy as np

from codesign.errors import UsageError
from codesign.graph import Graph


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    weight_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    prune: dict[str, float] = dataclasses.field(default_factory=dict)
    # How offloaded layers are tiled: "rule" (the tile rule) or "auto" (fastest modelled tiling,
    # as the tuner evaluated it). Kept with the compression choices so a tuned design compiles
    # exactly as it was evaluated.
    schedule: str = "rule"
    # Layers kept in float on the host (glob patterns over layer names: 'conv2d_3', 'conv2d_1*').
    float_layers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        doc = {
            "weight_bits": dict(sorted(self.weight_bits.items())),
            "prune": dict(sorted(self.prune.items())),
            "schedule": self.schedule,
        }
        if self.float_layers:
            doc["float_layers"] = list(self.float_layers)
        return doc

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def kept_channels(self, layer: str, channels: int) -> int:
        return channels - math.floor(self.prune.get(layer, 0.0) * channels)


def validate_compression(config: CompressionConfig, graph: Graph, source: str = "compression") -> None:
    layers = {n.name for n in graph.gemm_nodes()}
    problems = [f"unknown layer '{name}'" for name in sorted({*config.weight_bits, *config.prune} - layers)]
    problems += [
        f"weight_bits['{k}'] = {v!r} (expected 4 or 8)" for k, v in config.weight_bits.items() if v not in (4, 8)
    ]
    problems += [f"prune['{k}'] = {v!r} (expected 0 <= ratio < 1)" for k, v in config.prune.items() if not 0 <= v < 1]
    names = [n for n, node in graph.nodes.items() if node.op != "input"]
    problems += [
        f"float layer pattern '{p}' matches no layer"
        for p in config.float_layers
        if not any(fnmatch.fnmatchcase(name, p) for name in names)
    ]
    if problems:
        known = ", ".join(sorted(layers))
        raise UsageError(f"{source}: " + "; ".join(problems) + f" (layers: {known})")


def load_compression(path: str | Path) -> CompressionConfig:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such compression file") from err
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: not a valid JSON compression file ({err})") from err
    fields = {"weight_bits", "prune", "schedule", "float_layers"}
    unknown = set(doc) - fields if isinstance(doc, dict) else {"<not an object>"}
    if unknown:
        raise UsageError(f"{path}: expected {', '.join(sorted(fields))} (unknown: {sorted(unknown)})")
    schedule = doc.get("schedule", "rule")
    if schedule not in ("rule", "auto"):
        raise UsageError(f"{path}: schedule = {schedule!r} (expected rule or auto)")
    prune = {k: float(v) for k, v in doc.get("prune", {}).items()}
    float_layers = doc.get("float_layers", [])
    if not isinstance(float_layers, list) or not all(isinstance(p, str) for p in float_layers):
        raise UsageError(f"{path}: float_layers = {float_layers!r} (expected a list of layer name patterns)")
    return CompressionConfig(dict(doc.get("weight_bits", {})), prune, schedule, tuple(float_layers))


def prune_graph(graph: Graph, config: CompressionConfig) -> Graph:
    """A copy of the graph whose pruned channels have zero weights and bias."""
    if not config.prune:
        return graph
    pruned = copy.copy(graph)
    pruned.nodes = dict(graph.nodes)
    for name, ratio in config.prune.items():
        node = copy.copy(graph.nodes[name])
        layer = copy.copy(node.layer)
        if layer.weight is None or ratio == 0:
            continue
        axis = 0 if layer.kind == "conv2d" else 1
        channels = layer.weight.shape[axis]
        norms = np.abs(layer.weight).sum(axis=tuple(a for a in range(layer.weight.ndim) if a != axis))
        removed = np.argsort(norms, kind="stable")[: channels - config.kept_channels(name, channels)]
        layer.weight = layer.weight.copy()
        np.moveaxis(layer.weight, axis, 0)[removed] = 0
        if layer.bias is not None:
            layer.bias = layer.bias.copy()
            layer.bias[removed] = 0
        node.layer = layer
        pruned.nodes[name] = node
    return pruned
