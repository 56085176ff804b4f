"""Model compression choices beyond int8: per-layer weight bits and structured channel pruning.

A CompressionConfig names layers (graph names: conv2d_0, matmul_3, ...) with their weight
bits (8 or 4) and the fraction of output channels to prune. It is a small JSON file:

    {"weight_bits": {"conv2d_1": 4}, "prune": {"conv2d_1": 0.25}, "schedule": "auto"}

Pruning removes the output channels with the smallest L1 weight norm: their weights and bias
become zero, which computes exactly what removing them would (the accelerator skips them: the
simulator shrinks the layer and its consumers).
"""

from __future__ import annotations

import copy
import dataclasses
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

    def to_dict(self) -> dict:
        return {
            "weight_bits": dict(sorted(self.weight_bits.items())),
            "prune": dict(sorted(self.prune.items())),
            "schedule": self.schedule,
        }

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
    unknown = set(doc) - {"weight_bits", "prune", "schedule"} if isinstance(doc, dict) else {"<not an object>"}
    if unknown:
        raise UsageError(f"{path}: expected 'weight_bits', 'prune' and 'schedule' (unknown: {sorted(unknown)})")
    schedule = doc.get("schedule", "rule")
    if schedule not in ("rule", "auto"):
        raise UsageError(f"{path}: schedule = {schedule!r} (expected rule or auto)")
    prune = {k: float(v) for k, v in doc.get("prune", {}).items()}
    return CompressionConfig(dict(doc.get("weight_bits", {})), prune, schedule)


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
