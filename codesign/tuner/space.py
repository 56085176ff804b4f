"""Search spaces: a validated TOML file of hardware, compression and schedule knobs, objectives
and constraints. A configuration is a dict knob -> chosen value.

    [hardware]
    base = "vta_default"          # every field not searched comes from this description
    block_in = [8, 16, 32]        # a list of choices ...
    wgt_buffer_kib = {min = 64, max = 512, scale = "log2"}   # ... or a range (log2: powers of two)
    alu_multiplier = [true, false]

    [compression]
    weight_bits = [8, 4]          # per layer group
    prune = [0.0, 0.25, 0.5]      # fraction of output channels, per layer group
    activation_bits = [8]
    [compression.groups]          # optional; default: one group "all" = ["*"]
    early = ["conv2d_0"]
    rest = ["*"]                  # patterns (fnmatch) over layer names; first match wins

    [schedule]
    mode = "auto"                 # auto: each layer's tiling minimises modelled cycles; rule: the tile rule

    objectives = ["latency", "energy", "area", "accuracy"]
    [constraints]
    area_mm2_max = 3.0
    accuracy_drop_max = 1.0       # points below the float model
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
from pathlib import Path

import numpy as np
import tomllib

from codesign.compression import CompressionConfig
from codesign.errors import UsageError
from codesign.hardware import HardwareSpec, hardware_from_dict, load_hardware

# Search knob -> (HardwareSpec field, multiplier from the knob's unit)
HARDWARE_KNOBS = {
    "batch": ("batch", 1),
    "block_in": ("block_in", 1),
    "block_out": ("block_out", 1),
    "uop_buffer_kib": ("uop_buffer_bytes", 1024),
    "inp_buffer_kib": ("inp_buffer_bytes", 1024),
    "wgt_buffer_kib": ("wgt_buffer_bytes", 1024),
    "acc_buffer_kib": ("acc_buffer_bytes", 1024),
    "dram_bytes_per_cycle": ("dram_bytes_per_cycle", 1),
    "clock_mhz": ("clock_mhz", 1),
    "alu_multiplier": ("alu_has_multiplier", 1),
}
OBJECTIVES = {"latency": "min", "energy": "min", "edp": "min", "area": "min", "accuracy": "max"}
CONSTRAINTS = {"area_mm2_max", "latency_ms_max", "energy_mj_max", "accuracy_drop_max"}


@dataclasses.dataclass
class SearchSpace:
    base: HardwareSpec
    knobs: dict[str, list]  # knob name ("hw.block_in", "comp.all.prune", ...) -> choices
    groups: dict[str, list[str]]  # compression group -> layer name patterns
    schedule_mode: str
    objectives: list[str]
    constraints: dict[str, float]
    source: str = "<space>"

    # ---- configurations ------------------------------------------------------------------

    def size(self) -> int:
        return int(np.prod([len(c) for c in self.knobs.values()]))

    def sample(self, rng: np.random.Generator) -> dict:
        return {name: choices[int(rng.integers(len(choices)))] for name, choices in self.knobs.items()}

    def enumerate(self):
        names = list(self.knobs)
        for values in itertools.product(*self.knobs.values()):
            yield dict(zip(names, values))

    def encode(self, configs: list[dict]) -> np.ndarray:
        """Ordinal features in [0, 1] per knob, for surrogate models."""
        columns = []
        for name, choices in self.knobs.items():
            index = {repr(c): i for i, c in enumerate(choices)}
            scale = max(len(choices) - 1, 1)
            columns.append([index[repr(config[name])] / scale for config in configs])
        return np.array(columns, dtype=np.float64).T.reshape(len(configs), len(self.knobs))

    @staticmethod
    def key(config: dict) -> str:
        return repr(sorted(config.items()))

    # ---- what a configuration means ----------------------------------------------------

    def hardware(self, config: dict, name: str = "tuned") -> HardwareSpec:
        values = {}
        for knob, (field, unit) in HARDWARE_KNOBS.items():
            if f"hw.{knob}" in config:
                values[field] = config[f"hw.{knob}"] * unit if unit != 1 else config[f"hw.{knob}"]
        if "alu_has_multiplier" in values:
            has = values["alu_has_multiplier"]
            values["alu_multiplier_bits"] = (self.base.alu_multiplier_bits or 8) if has else 0
        values = {k: (float(v) if isinstance(getattr(self.base, k), float) else v) for k, v in values.items()}
        return _reprice(dataclasses.replace(self.base, name=name, **values))

    def compression(self, config: dict, layers: list[str]) -> CompressionConfig:
        weight_bits, prune = {}, {}
        for layer in layers:
            group = self.group_of(layer)
            bits = config.get(f"comp.{group}.weight_bits", 8)
            ratio = config.get(f"comp.{group}.prune", 0.0)
            if bits != 8:
                weight_bits[layer] = bits
            if ratio:
                prune[layer] = ratio
        return CompressionConfig(weight_bits, prune, self.schedule_mode)

    def group_of(self, layer: str) -> str:
        for group, patterns in self.groups.items():
            if any(fnmatch.fnmatchcase(layer, p) for p in patterns):
                return group
        return "unmatched"


def _reprice(hw: HardwareSpec) -> HardwareSpec:
    """The candidate with its energy and area tables re-derived (45 nm model) for its sizes: an
    SRAM's energy per byte and a design's leakage follow its capacity."""
    doc = tomllib.loads(hw.to_toml())
    doc.pop("energy")
    doc.pop("area")
    return hardware_from_dict(doc, "search space")


# ---- loading --------------------------------------------------------------------------------


def _choices(name: str, value, problems: list[str]) -> list:
    if isinstance(value, list) and value:
        return value
    if isinstance(value, dict) and {"min", "max"} <= set(value):
        low, high, scale = value["min"], value["max"], value.get("scale", "linear")
        if scale == "log2":
            return [2**e for e in range(int(np.log2(low)), int(np.log2(high)) + 1)]
        step = value.get("step", 1)
        return list(np.arange(low, high + step / 2, step).tolist())
    problems.append(f"'{name}' must be a non-empty list of choices or {{min, max[, step | scale = \"log2\"]}}")
    return []


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such search-space file") from err
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: not valid TOML ({err})") from err
    return space_from_dict(doc, str(path))


def space_from_dict(doc: dict, source: str = "<space>") -> SearchSpace:
    problems: list[str] = []
    unknown = set(doc) - {"hardware", "compression", "schedule", "objectives", "constraints"}
    problems += [f"unknown section '{k}'" for k in sorted(unknown)]
    hardware = dict(doc.get("hardware", {}))
    base = load_hardware(hardware.pop("base", "vta_default"))
    knobs: dict[str, list] = {}
    for name, value in hardware.items():
        if name not in HARDWARE_KNOBS:
            problems.append(f"unknown hardware knob 'hardware.{name}' (knobs: {', '.join(HARDWARE_KNOBS)})")
            continue
        knobs[f"hw.{name}"] = _choices(f"hardware.{name}", value, problems)
    compression = dict(doc.get("compression", {}))
    groups = compression.pop("groups", {"all": ["*"]})
    activation_bits = compression.pop("activation_bits", [8])
    if activation_bits != [8]:
        problems.append(f"'compression.activation_bits' = {activation_bits!r}: only 8-bit activations are supported")
    for name, value in compression.items():
        if name not in ("weight_bits", "prune"):
            problems.append(
                f"unknown compression knob 'compression.{name}' (knobs: weight_bits, prune, activation_bits)"
            )
            continue
        choices = _choices(f"compression.{name}", value, problems)
        if name == "weight_bits" and not set(choices) <= {4, 8}:
            problems.append(f"'compression.weight_bits' = {choices!r}: choices must be 4 or 8")
        if name == "prune" and not all(0 <= c < 1 for c in choices):
            problems.append(f"'compression.prune' = {choices!r}: ratios must be in [0, 1)")
        for group in groups:
            knobs[f"comp.{group}.{name}"] = choices
    mode = doc.get("schedule", {}).get("mode", "auto")
    if mode not in ("auto", "rule"):
        problems.append(f"'schedule.mode' = {mode!r} (expected auto or rule)")
    objectives = doc.get("objectives", ["latency", "energy", "area", "accuracy"])
    problems += [
        f"unknown objective '{o}' (objectives: {', '.join(OBJECTIVES)})" for o in objectives if o not in OBJECTIVES
    ]
    constraints = doc.get("constraints", {})
    problems += [
        f"unknown constraint '{c}' (constraints: {', '.join(sorted(CONSTRAINTS))})"
        for c in constraints
        if c not in CONSTRAINTS
    ]
    if not knobs:
        problems.append("the space has no knobs to search")
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    return SearchSpace(base, knobs, groups, mode, list(objectives), dict(constraints), source)
