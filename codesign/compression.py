"""Model compression choices beyond int8: per-layer weight bits and structured channel pruning.

A CompressionConfig names layers (graph names: conv2d_0, matmul_3, ...) with their weight
bits (8 or 4) and the fraction of output channels to prune. It is a small JSON file:

    {"weight_bits": {"conv2d_1": 4}, "prune": {"conv2d_*": 0.25, "conv2d_0": 0}, "schedule": "auto",
     "float_layers": ["conv2d_3"], "prune_method": "magnitude", "placement": "fastest"}

The keys of weight_bits and prune are layer names or glob patterns over them: a layer takes the
value of the last key that matches it (resolve_compression, once the model's layers are known).

`float_layers` keeps the matching layers (glob patterns over layer names) in float on the host.
`wide_layers` gives the matching GEMM layers int16 activations, in and out, on the core's int8
weights (`quantize.lower_wide_gemm`: two passes of the core over the input's bytes).

`placement` says where a grouped conv narrower than the core's block_in lanes runs unless
`host_convs` pins it: "accelerator" (the default) on the core, as every other conv, dense and
matmul the description can hold, each on its fastest core mapping (super-groups or row bands),
so the accelerator's cost of every layer is what the simulator reports; "fastest" on the host
where the modelled host conv is faster than every core mapping (on vta_default, PP-OCR-style
3x3 and short-row depthwise convs: `quantize.conv_mapping`).

Five lists pin placements that are otherwise decided by modelled cost on the hardware compiled
for (each None: decided so):
- `unfold`: the narrow-input convs compiled as im2col + a 1x1 conv (schedules.narrow_inputs);
- `host_convs`: the grouped convs run on the host CPU in int8 (the other narrow-group convs run
  on the core, as super-groups or row bands, whichever is modelled faster: `quantize.conv_mapping`);
- `row_bands`: the depthwise convs on the core run as row bands (schedules.row_bands), the
  others there as super-groups;
- `alu_activations`: the GEMM layers whose activation (HardSwish, LeakyReLU) runs in their ALU
  program rather than as a host table (`quantize.fuse_activation`);
- `zero_point_pads`: the padded grouped convs whose one-sided input gets a zero point, which
  they pad with (by default those on the host and the core's row bands, where it costs nothing:
  `quantize.quantize_graph`).
A tuned design lists the ones its compression profile chose on the space's base hardware, so it
compiles, whatever its own hardware, to the integer program that was evaluated.

Pruning removes that fraction of a layer's output channels from the graph, and the matching
inputs of the layers reading them (codesign.pruning); `prune_method` chooses how: "reconstruct"
(default: channels chosen by their measured contribution, consumers refit by least squares) or
"magnitude" (smallest L1 weight norm, consumers only sliced).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING

from codesign.errors import UsageError
from codesign.files import parse_json, reading

if TYPE_CHECKING:
    from codesign.graph import Graph


# Where unpinned narrow-group convs run (the module's docstring); the first is the default.
PLACEMENT_POLICIES = ("accelerator", "fastest")


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    weight_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    prune: dict[str, float] = dataclasses.field(default_factory=dict)
    # How offloaded layers are tiled: "rule" (the tile rule) or "auto" (of the cost model's best
    # three tilings the fastest by the event simulation, as the tuner evaluated it). Kept with
    # the compression choices so a tuned design compiles exactly as it was evaluated.
    schedule: str = "rule"
    # Layers kept in float on the host (glob patterns over layer names: 'conv2d_3', 'conv2d_1*').
    float_layers: tuple[str, ...] = ()
    prune_method: str = "reconstruct"  # one of PRUNE_METHODS (see codesign.pruning)
    # Pinned placements (see the module's docstring); None: by modelled cost on the hardware compiled for
    unfold: tuple[str, ...] | None = None
    host_convs: tuple[str, ...] | None = None
    row_bands: tuple[str, ...] | None = None
    alu_activations: tuple[str, ...] | None = None
    zero_point_pads: tuple[str, ...] | None = None
    placement: str = PLACEMENT_POLICIES[0]  # where unpinned narrow-group convs run (module docstring)
    # How activation ranges are calibrated (codesign.calibration.CALIBRATION_CHOICES); None: the
    # default. Kept here so a tuned design compiles with the method it was evaluated with.
    calibration_method: str | None = None
    # GEMM layers with int16 activations (glob patterns over layer names: quantize.lower_wide_gemm)
    wide_layers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        doc = {
            "weight_bits": dict(sorted(self.weight_bits.items())),
            "prune": dict(sorted(self.prune.items())),
            "schedule": self.schedule,
            "placement": self.placement,
        }
        if self.float_layers:
            doc["float_layers"] = list(self.float_layers)
        if self.wide_layers:
            doc["wide_layers"] = list(self.wide_layers)
        if self.prune_method != PRUNE_METHODS[0]:
            doc["prune_method"] = self.prune_method
        for field in PLACEMENT_FIELDS:
            if getattr(self, field) is not None:
                doc[field] = sorted(getattr(self, field))
        if self.calibration_method is not None:
            doc["calibration_method"] = self.calibration_method
        return doc

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_float_layers(self, patterns) -> CompressionConfig:
        """These choices with more layer patterns kept in float."""
        return dataclasses.replace(self, float_layers=(*self.float_layers, *(patterns or ())))

    def with_wide_layers(self, patterns) -> CompressionConfig:
        """These choices with more layer patterns given int16 activations."""
        return dataclasses.replace(self, wide_layers=(*self.wide_layers, *(patterns or ())))

    def placements(self) -> dict[str, tuple[str, ...] | None]:
        """The pinned placements, by field; under the "accelerator" policy no grouped conv is
        left to run on the host unless `host_convs` names it."""
        pinned = {field: getattr(self, field) for field in PLACEMENT_FIELDS}
        if self.placement == "accelerator" and pinned["host_convs"] is None:
            pinned["host_convs"] = ()
        return pinned

    def with_placements(self, placements: dict) -> CompressionConfig:
        """These choices with placements pinned ({field: layer names}, as `placements` gives)."""
        return dataclasses.replace(self, **{f: None if v is None else tuple(sorted(v)) for f, v in placements.items()})

    def kept_channels(self, layer: str, channels: int) -> int:
        return channels - math.floor(self.prune.get(layer, 0.0) * channels)


def _shown(value, limit: int = 60) -> str:
    """A value as the JSON file spells it, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bits_problem(layer: str, value) -> str | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value in (4, 8):
        return None
    return f"weight_bits['{layer}'] = {_shown(value)} (expected 4 or 8)"


def _prune_problem(layer: str, value) -> str | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1:
        return None
    return f"prune['{layer}'] = {_shown(value)} (expected a number: 0 <= ratio < 1)"


def resolve_compression(config: CompressionConfig, graph: Graph, source: str = "compression") -> CompressionConfig:
    """The choices checked against the graph (every problem named in one UsageError line), with
    the keys of weight_bits and prune, glob patterns over the GEMM layers' names, expanded: a layer
    takes the value of the last key matching it."""
    validate_compression(config, graph, source)
    layers = [n.name for n in graph.gemm_nodes()]
    weight_bits, prune = _expanded(config.weight_bits, layers), _expanded(config.prune, layers)
    return dataclasses.replace(config, weight_bits=weight_bits, prune=prune)


def _expanded(table: dict, layers: list[str]) -> dict:
    return {layer: value for key, value in table.items() for layer in layers if fnmatch.fnmatchcase(layer, key)}


def validate_compression(config: CompressionConfig, graph: Graph, source: str = "compression") -> None:
    layers = {n.name for n in graph.gemm_nodes()}
    problems = [
        f"layer pattern '{key}' matches no layer" if _is_pattern(key) else f"unknown layer '{key}'"
        for key in dict.fromkeys([*config.weight_bits, *config.prune])
        if not any(fnmatch.fnmatchcase(layer, key) for layer in layers)
    ]
    problems += [p for k, v in config.weight_bits.items() if (p := _bits_problem(k, v))]
    problems += [p for k, v in config.prune.items() if (p := _prune_problem(k, v))]
    for field, (fits, expected) in PLACEMENT_CHECKS.items():
        named = set(getattr(config, field) or ())
        problems += [f"{field}: '{name}' is not {expected}" for name in
                     sorted(named & layers) if not fits(graph.nodes[name].layer)]  # fmt: skip
        problems += [f"{field}: unknown layer '{name}'" for name in sorted(named - layers)]
    names = [n for n, node in graph.nodes.items() if node.op != "input"]
    problems += [
        f"float layer pattern '{p}' matches no layer"
        for p in config.float_layers
        if not any(fnmatch.fnmatchcase(name, p) for name in names)
    ]
    problems += [
        f"wide layer pattern '{p}' matches no layer" for p in config.wide_layers if not fnmatch.filter(layers, p)
    ]
    if problems:
        known = ", ".join(sorted(layers))
        raise UsageError(f"{source}: " + "; ".join(problems) + f" (layers: {known})")


def _is_pattern(key: str) -> bool:
    return any(char in key for char in "*?[")


def _unfoldable(layer) -> bool:
    return layer.kind == "conv2d" and layer.groups == 1 and math.prod(layer.weight.shape[2:]) > 1


def _grouped_conv(layer) -> bool:
    return layer.kind == "conv2d" and layer.groups > 1


def _depthwise_conv(layer) -> bool:
    out_channels, group_inputs = layer.weight.shape[:2] if layer.weight is not None else (0, 0)
    return _grouped_conv(layer) and group_inputs == 1 and out_channels == layer.groups


def _weighted_gemm(layer) -> bool:
    return layer.weight is not None


SCHEDULES = ("rule", "auto")
PRUNE_METHODS = ("reconstruct", "magnitude")
PLACEMENT_FIELDS = ("unfold", "host_convs", "row_bands", "alu_activations", "zero_point_pads")
# Pinned placement field -> (which layers it may name, what the message says they must be)
PLACEMENT_CHECKS = {
    "unfold": (_unfoldable, "a conv with one group and a kernel wider than 1x1"),
    "host_convs": (_grouped_conv, "a grouped conv"),
    "row_bands": (_depthwise_conv, "a depthwise conv (one input and one output channel per group)"),
    "alu_activations": (_weighted_gemm, "a conv or dense layer with weights"),
    "zero_point_pads": (_grouped_conv, "a grouped conv"),
}
FIELDS = (
    "weight_bits",
    "prune",
    "schedule",
    "float_layers",
    "prune_method",
    *PLACEMENT_FIELDS,
    "placement",
    "calibration_method",
    "wide_layers",
)


def compression_problems(
    weight_bits,
    prune,
    schedule,
    float_layers,
    prune_method="reconstruct",
    placements=None,
    calibration_method=None,
    placement=PLACEMENT_POLICIES[0],
    wide_layers=(),
) -> list[str]:
    """What is wrong with these choices, each naming its field and value ([] if nothing)."""
    from codesign.calibration import CALIBRATION_CHOICES

    problems = []
    if calibration_method is not None and calibration_method not in CALIBRATION_CHOICES:
        allowed = ", ".join(CALIBRATION_CHOICES)
        problems.append(f"calibration_method = {_shown(calibration_method)} (expected one of {allowed})")
    for field, table, check in (("weight_bits", weight_bits, _bits_problem), ("prune", prune, _prune_problem)):
        if not isinstance(table, dict):
            problems.append(f"{field} = {_shown(table)} (expected an object of layer name -> value)")
        else:
            problems += [p for layer, value in table.items() if (p := check(layer, value))]
    if schedule not in SCHEDULES:
        problems.append(f'schedule = {_shown(schedule)} (expected "rule" or "auto")')
    for field, patterns in (("float_layers", float_layers), ("wide_layers", wide_layers)):
        if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
            problems.append(f"{field} = {_shown(patterns)} (expected a list of layer name patterns)")
    if prune_method not in PRUNE_METHODS:
        problems.append(f'prune_method = {_shown(prune_method)} (expected "reconstruct" or "magnitude")')
    if placement not in PLACEMENT_POLICIES:
        problems.append(f'placement = {_shown(placement)} (expected "accelerator" or "fastest")')
    for field, names in (placements or {}).items():
        if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            problems.append(f"{field} = {_shown(names)} (expected a list of layer names)")
    return problems


def check_compression(config: CompressionConfig, source: str = "compression") -> None:
    """Type-check choices built in code (a file's are checked as it is read)."""
    problems = compression_problems(
        config.weight_bits,
        config.prune,
        config.schedule,
        list(config.float_layers),
        config.prune_method,
        config.placements(),
        placement=config.placement,
        wide_layers=list(config.wide_layers),
    )
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))


def compression_from_dict(doc, source: str = "compression") -> CompressionConfig:
    """A parsed compression document, type-checked; every problem is named in one UsageError line."""
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a JSON object with {', '.join(sorted(FIELDS))}, got {_json_type(doc)}")
    unknown = set(doc) - set(FIELDS)
    if unknown:
        raise UsageError(f"{source}: expected {', '.join(sorted(FIELDS))} (unknown: {sorted(unknown)})")
    weight_bits, prune = doc.get("weight_bits", {}), doc.get("prune", {})
    schedule, float_layers = doc.get("schedule", "rule"), doc.get("float_layers", [])
    prune_method = doc.get("prune_method", PRUNE_METHODS[0])
    placements = {field: doc.get(field) for field in PLACEMENT_FIELDS}
    calibration_method = doc.get("calibration_method")
    placement = doc.get("placement", PLACEMENT_POLICIES[0])
    wide_layers = doc.get("wide_layers", [])
    problems = compression_problems(
        weight_bits, prune, schedule, float_layers, prune_method, placements, calibration_method, placement, wide_layers
    )
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    prune = {k: float(v) for k, v in prune.items()}
    config = CompressionConfig(
        dict(weight_bits),
        prune,
        schedule,
        tuple(float_layers),
        prune_method,
        placement=placement,
        calibration_method=calibration_method,
        wide_layers=tuple(wide_layers),
    )
    return config.with_placements(placements)


def load_compression(path: str | Path) -> CompressionConfig:
    """Read and type-check a compression file; every problem is named (file, field, layer) in one line.
    Whether the layers exist is checked against the model later (validate_compression)."""
    path = Path(path)
    with reading(path, "compression"):
        text = path.read_bytes().decode("utf-8")
    return compression_from_dict(parse_json(text, path, UsageError, "compression"), str(path))


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
