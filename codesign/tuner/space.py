"""Search spaces: a validated TOML file of hardware, compression and schedule knobs, objectives
and constraints. A configuration is a dict knob -> chosen value.

    [hardware]
    base = "vta_default"          # every field not searched comes from this description
    block_in = [8, 16, 32]        # a list of choices ...
    wgt_buffer_kib = {min = 64, max = 512, scale = "log2"}   # ... or a range (log2: powers of two)
    alu_multiplier = [true, false]
    precision_scalable = [false, true]   # int4-weight layers at twice the MACs per cycle

    [compression]
    weight_bits = [8, 4]          # per layer group
    prune = [0.0, 0.25, 0.5]      # fraction of output channels, per layer group
    activation_bits = [8]
    calibration_method = "mean_max"   # optional, not searched: how every profile calibrates (default max)
    [compression.groups]          # optional; default: one group "all" = ["*"]
    early = ["conv2d_0"]
    rest = ["*"]                  # patterns (fnmatch) over layer names; first match wins
    # or, instead of groups: per_layer = true, every GEMM layer its own knobs
    # (comp.conv2d_0.weight_bits, ...), known once the model is (`SearchSpace.for_layers`)

    [schedule]
    mode = "auto"                 # auto: each layer's fastest tiling (schedules.mapper); rule: the tile rule
    grouped_convs = ["cost", "core"]  # where narrow-group (depthwise) convs run: where the base
                                      # hardware's modelled cost puts them, or every one on the core.
                                      # A mapping knob (sched.grouped_convs): both compute the same
                                      # integers, so it is swept with the hardware, not measured

    objectives = ["latency", "energy", "area", "accuracy"]
    [constraints]
    area_mm2_max = 3.0
    accuracy_drop_max = 1.0       # points below the float model
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math
from pathlib import Path

import numpy as np

from codesign import toml as tomllib
from codesign.calibration import CALIBRATION_CHOICES
from codesign.compression import CompressionConfig
from codesign.design import Design
from codesign.errors import UsageError
from codesign.files import reading
from codesign.hardware import FIELDS as HARDWARE_FIELDS
from codesign.hardware import HardwareSpec, load_hardware
from codesign.schedules.mapper import core_key

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
    "precision_scalable": ("precision_scalable", 1),
}
GROUPED_CONVS_KNOB = "sched.grouped_convs"
GROUPED_CONV_PLACEMENTS = ("cost", "core")
DESIGN_KNOB_PREFIXES = ("hw.", "sched.")  # the hardware and its mapping: what a profile is costed on
CORE_KNOBS = ("batch", "block_in", "block_out", "precision_scalable")  # the core geometry's (core_key)
OBJECTIVES = {"latency": "min", "energy": "min", "edp": "min", "area": "min", "accuracy": "max"}
# Constraint -> the metric it limits
CONSTRAINT_METRICS = {
    "area_mm2_max": "area",
    "latency_ms_max": "latency",
    "energy_mj_max": "energy",
    "accuracy_drop_max": "accuracy",
}
CONSTRAINTS = set(CONSTRAINT_METRICS)


def is_design_knob(name: str) -> bool:
    """A knob of the hardware or its mapping (not of the compression profile)."""
    return name.startswith(DESIGN_KNOB_PREFIXES)


@dataclasses.dataclass
class SearchSpace:
    base: HardwareSpec
    knobs: dict[str, list]  # knob name ("hw.block_in", "comp.all.prune", "sched.grouped_convs", ...) -> choices
    groups: dict[str, list[str]]  # compression group -> layer name patterns
    schedule_mode: str
    objectives: list[str]
    constraints: dict[str, float]
    source: str = "<space>"
    # per_layer = true: the compression knobs' choices, to be given to each layer (for_layers)
    per_layer_choices: dict[str, list] | None = None
    # The layers whose pruning acts (codesign.pruning.prunable_layers); None: every layer. A
    # prune ratio given to another layer is dropped, so a knob that prunes nothing is inert.
    prunable: tuple[str, ...] | None = None
    calibration_method: str | None = None  # every profile's (codesign.calibration); None: the default

    # ---- configurations ------------------------------------------------------------------

    def size(self) -> int:
        return math.prod(len(c) for c in self.knobs.values())  # exact: per-layer spaces exceed int64

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

    def needed_metrics(self) -> tuple[str, ...]:
        """The metrics a measured record must hold for this space's objectives and constraints."""
        needed = [*self.objectives, *(CONSTRAINT_METRICS[c] for c in self.constraints)]
        if "accuracy_drop_max" in self.constraints:
            needed.append("float_accuracy")
        return tuple(dict.fromkeys(needed))

    @staticmethod
    def key(config: dict) -> str:
        return repr(sorted(config.items()))

    def for_layers(
        self, layers: list[str], prunable: list[str] | None = None, grouped_convs: list[str] | None = None
    ) -> SearchSpace:
        """The space for a model with these GEMM layers: a per-layer space gets one group and one
        set of compression knobs per layer (a prune knob only on the `prunable` layers, when
        given: codesign.pruning.prunable_layers); any other space keeps its knobs. Either way
        prune ratios then reach only the prunable layers. When `grouped_convs` (the model's grouped
        convs) is empty, the grouped_convs knob, which would change nothing, is dropped."""
        if prunable is not None:
            self = dataclasses.replace(self, prunable=tuple(prunable))
        if grouped_convs is not None and not grouped_convs and GROUPED_CONVS_KNOB in self.knobs:
            knobs = {name: choices for name, choices in self.knobs.items() if name != GROUPED_CONVS_KNOB}
            self = dataclasses.replace(self, knobs=knobs)
        if self.per_layer_choices is None:
            return self
        knobs = dict(self.knobs)
        for layer in layers:
            for name, choices in self.per_layer_choices.items():
                if name != "prune" or prunable is None or layer in prunable:
                    knobs[f"comp.{layer}.{name}"] = choices
        groups = {layer: [layer] for layer in layers}
        return dataclasses.replace(self, knobs=knobs, groups=groups, per_layer_choices=None)

    # ---- what a configuration means ----------------------------------------------------

    def hardware(self, config: dict, name: str = "tuned") -> HardwareSpec:
        """The base hardware with the configuration's knobs (validated; prices re-derived for
        the new sizes, the multiplier's width following `alu_multiplier`: `with_changes`)."""
        values = {}
        for knob, (field, unit) in HARDWARE_KNOBS.items():
            if f"hw.{knob}" in config:
                values[field] = _hardware_value(self.base, field, config[f"hw.{knob}"], unit)
        return self.base.with_changes(name=name, **values)

    def core_variants(self) -> list[HardwareSpec]:
        """One hardware per core geometry the space reaches (`schedules.mapper.core_key`: batch,
        blocks, precision-scalable lanes), the base's other fields; unvalidated, as other
        knobs may be what makes a geometry valid."""
        knobs = {knob: self.knobs.get(f"hw.{knob}", [None]) for knob in CORE_KNOBS}
        variants = {}
        for values in itertools.product(*knobs.values()):
            changes = {
                HARDWARE_KNOBS[knob][0]: _hardware_value(self.base, HARDWARE_KNOBS[knob][0], value, 1)
                for knob, value in zip(knobs, values)
                if value is not None
            }
            hw = dataclasses.replace(self.base, **changes)
            variants.setdefault(core_key(hw), hw)
        return list(variants.values())

    def design(self, config: dict, layers: list[str], name: str = "tuned") -> Design:
        """What a configuration means for a model with these GEMM layers: hardware, compression
        and schedule, as one validated Design."""
        compression = self.compression(config, layers)
        if self.grouped_convs(config) == "core":
            compression = dataclasses.replace(compression, host_convs=())
        return Design(self.hardware(config, name), compression)

    def compression(self, config: dict, layers: list[str]) -> CompressionConfig:
        weight_bits, prune = {}, {}
        for layer in layers:
            group = self.group_of(layer)
            bits = config.get(f"comp.{group}.weight_bits", 8)
            ratio = config.get(f"comp.{group}.prune", 0.0)
            if bits != 8:
                weight_bits[layer] = bits
            if ratio and (self.prunable is None or layer in self.prunable):
                prune[layer] = ratio
        # "cost" profiles place each grouped conv by modelled cost; "core" ones pin every one there
        # (ProfileBuilder.plan_all_on_core).
        return CompressionConfig(
            weight_bits, prune, self.schedule_mode, placement="fastest", calibration_method=self.calibration_method
        )

    def grouped_conv_choices(self) -> list[str]:
        """The grouped-conv placements the space's designs take ("cost" alone without the knob)."""
        return self.knobs.get(GROUPED_CONVS_KNOB, [GROUPED_CONV_PLACEMENTS[0]])

    @staticmethod
    def grouped_convs(config: dict) -> str:
        """Where the configuration runs its grouped convs: "cost" (where the base hardware's
        modelled cost puts each) or "core" (every one on the core)."""
        return config.get(GROUPED_CONVS_KNOB, GROUPED_CONV_PLACEMENTS[0])

    def group_of(self, layer: str) -> str:
        for group, patterns in self.groups.items():
            if any(fnmatch.fnmatchcase(layer, p) for p in patterns):
                return group
        return "unmatched"


# ---- loading --------------------------------------------------------------------------------

MAX_CHOICES = 100_000  # per knob: a range wider than this is a typo, not a search space
RANGE_KEYS = {"min", "max", "step", "scale"}
SCALES = ("linear", "log2")


def _is_number(value) -> bool:
    """A finite int or float (a TOML integer too large for a float is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _choices(name: str, value, problems: list[str]) -> list:
    if isinstance(value, list) and value:
        return value
    if isinstance(value, dict) and {"min", "max"} <= set(value):
        return _range_choices(name, value, problems)
    problems.append(f"'{name}' must be a non-empty list of choices or {{min, max[, step | scale = \"log2\"]}}")
    return []


def _range_choices(name: str, value: dict, problems: list[str]) -> list:
    """The choices of a {min, max[, step | scale]} range, or [] with the problems named."""
    count = len(problems)
    problems += [
        f"'{name}.{key}' is not a range key (keys: min, max, step, scale)" for key in value if key not in RANGE_KEYS
    ]
    low, high, scale = value["min"], value["max"], value.get("scale", "linear")
    for key, number in (("min", low), ("max", high)):
        if not _is_number(number):
            problems.append(f"'{name}.{key}' = {number!r} must be a number")
    if scale not in SCALES:
        problems.append(f"'{name}.scale' = {scale!r} (expected {' or '.join(SCALES)})")
    step = value.get("step", 1)
    if "step" in value and scale == "log2":
        problems.append(f"'{name}.step' does not apply to scale = \"log2\" (its choices are the powers of two)")
    elif not _is_number(step) or step <= 0:
        problems.append(f"'{name}.step' = {step!r} must be a number above 0")
    if len(problems) > count:
        return []
    if low > high:
        problems.append(f"'{name}' has min = {low!r} above max = {high!r}")
        return []
    if scale == "log2":
        if low <= 0:
            problems.append(f"'{name}.min' = {low!r} must be above 0 with scale = \"log2\"")
            return []
        first, last = int(np.ceil(np.log2(low))), int(np.floor(np.log2(high)))
        choices = [2**e for e in range(first, last + 1)]
        if not choices:
            problems.append(f"'{name}' = {{min = {low!r}, max = {high!r}}} holds no power of two")
        return choices
    if (high - low) / step + 1 > MAX_CHOICES:
        problems.append(f"'{name}' = {value!r} has more than {MAX_CHOICES:,} choices")
        return []
    return list(np.arange(low, high + step / 2, step).tolist())


def _hardware_value(base: HardwareSpec, field: str, value, unit: int):
    """A knob's value in its HardwareSpec field's unit and type (an integral float of KiB is bytes)."""
    value = value * unit if unit != 1 and _is_number(value) else value
    if isinstance(getattr(base, field), int) and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _check_hardware_choices(base: HardwareSpec, knob: str, choices: list, problems: list[str]) -> None:
    """Every choice must be a value the hardware description accepts for its field."""
    field, unit = HARDWARE_KNOBS[knob]
    rule = next(f for f in HARDWARE_FIELDS if f.attr == field)
    bad = [c for c in choices if not rule.check(_hardware_value(base, field, c, unit))]
    if bad:
        allowed = rule.allowed if unit == 1 else f"the field takes {rule.allowed} bytes; the knob is in KiB"
        problems.append(f"'hardware.{knob}' = {choices!r}: {', '.join(map(repr, bad))} cannot be taken ({allowed})")


def _check_number_choices(name: str, choices: list, problems: list[str]) -> bool:
    if all(_is_number(c) for c in choices):
        return True
    problems.append(f"'{name}' = {choices!r}: choices must be numbers")
    return False


def _table(doc: dict, name: str, problems: list[str]) -> dict:
    value = doc.get(name, {})
    if isinstance(value, dict):
        return dict(value)
    problems.append(f"'{name}' = {value!r} must be a table ([{name}])")
    return {}


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    with reading(path, "search-space"):
        text = path.read_text(encoding="utf-8")
    return space_from_dict(tomllib.parse_toml(text, path, UsageError), str(path))


def space_from_dict(doc: dict, source: str = "<space>") -> SearchSpace:
    """A validated space; every problem is named (field and value) in one UsageError line."""
    problems: list[str] = []
    unknown = set(doc) - {"hardware", "compression", "schedule", "objectives", "constraints"}
    problems += [f"unknown section '{k}'" for k in sorted(unknown)]
    hardware = _table(doc, "hardware", problems)
    base_name = hardware.pop("base", "vta_default")
    if not isinstance(base_name, str) or not base_name:
        problems.append(f"'hardware.base' = {base_name!r} must be a preset name or a hardware file")
        base_name = "vta_default"
    base = load_hardware(base_name)
    knobs: dict[str, list] = {}
    for name, value in hardware.items():
        if name not in HARDWARE_KNOBS:
            problems.append(f"unknown hardware knob 'hardware.{name}' (knobs: {', '.join(HARDWARE_KNOBS)})")
            continue
        knobs[f"hw.{name}"] = _choices(f"hardware.{name}", value, problems)
        _check_hardware_choices(base, name, knobs[f"hw.{name}"], problems)
    compression = _table(doc, "compression", problems)
    per_layer = compression.pop("per_layer", False)
    if not isinstance(per_layer, bool):
        problems.append(f"'compression.per_layer' = {per_layer!r} must be true or false")
        per_layer = False
    if per_layer and "groups" in compression:
        problems.append("'compression.per_layer' = true and 'compression.groups' exclude each other")
    groups = _groups(compression.pop("groups", {"all": ["*"]}), problems)
    compression_choices: dict[str, list] = {}
    activation_bits = compression.pop("activation_bits", [8])
    if activation_bits != [8]:
        problems.append(f"'compression.activation_bits' = {activation_bits!r}: only 8-bit activations are supported")
    calibration_method = compression.pop("calibration_method", None)
    if calibration_method is not None and calibration_method not in CALIBRATION_CHOICES:
        allowed = ", ".join(CALIBRATION_CHOICES)
        problems.append(f"'compression.calibration_method' = {calibration_method!r} (expected one of {allowed})")
    for name, value in compression.items():
        if name not in ("weight_bits", "prune"):
            problems.append(
                f"unknown compression knob 'compression.{name}' (knobs: weight_bits, prune, "
                "activation_bits, calibration_method, per_layer, groups; grouped_convs is a [schedule] knob)"
            )
            continue
        choices = _choices(f"compression.{name}", value, problems)
        if not _check_number_choices(f"compression.{name}", choices, problems):
            continue
        if name == "weight_bits" and not set(choices) <= {4, 8}:
            problems.append(f"'compression.weight_bits' = {choices!r}: choices must be 4 or 8")
        if name == "prune" and not all(0 <= c < 1 for c in choices):
            problems.append(f"'compression.prune' = {choices!r}: ratios must be in [0, 1)")
        compression_choices[name] = choices
    if per_layer:
        groups = {}
    else:
        knobs.update({f"comp.{g}.{name}": choices for name, choices in compression_choices.items() for g in groups})
    schedule = _table(doc, "schedule", problems)
    problems += [
        f"unknown schedule key 'schedule.{k}' (keys: mode, grouped_convs)"
        for k in schedule
        if k not in ("mode", "grouped_convs")
    ]
    mode = schedule.get("mode", "auto")
    if mode not in ("auto", "rule"):
        problems.append(f"'schedule.mode' = {mode!r} (expected auto or rule)")
    if "grouped_convs" in schedule:
        choices = _choices("schedule.grouped_convs", schedule["grouped_convs"], problems)
        if not set(choices) <= set(GROUPED_CONV_PLACEMENTS):
            problems.append(f'\'schedule.grouped_convs\' = {choices!r}: choices must be "cost" or "core"')
        knobs[GROUPED_CONVS_KNOB] = choices
    objectives = _objectives(doc.get("objectives", ["latency", "energy", "area", "accuracy"]), problems)
    constraints = _constraints(_table(doc, "constraints", problems), problems)
    if not knobs and not (per_layer and compression_choices) and not problems:
        problems.append("the space has no knobs to search")
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    per_layer_choices = compression_choices if per_layer else None
    return SearchSpace(
        base,
        knobs,
        groups,
        mode,
        objectives,
        constraints,
        source,
        per_layer_choices,
        calibration_method=calibration_method,
    )


def _groups(groups, problems: list[str]) -> dict[str, list[str]]:
    example = 'e.g. early = ["conv2d_0"]'
    if not isinstance(groups, dict) or not groups:
        problems.append(f"'compression.groups' = {groups!r} must be a table of group = [patterns] ({example})")
        return {}
    valid = {}
    for name, patterns in groups.items():
        if not (isinstance(patterns, list) and patterns and all(isinstance(p, str) and p for p in patterns)):
            problems.append(
                f"'compression.groups.{name}' = {patterns!r} must be a non-empty list of layer-name patterns "
                f"({example})"
            )
            continue
        valid[name] = patterns
    return valid


def _objectives(objectives, problems: list[str]) -> list[str]:
    if not (isinstance(objectives, list) and objectives and all(isinstance(o, str) for o in objectives)):
        problems.append(
            f"'objectives' = {objectives!r} must be a non-empty list of objective names "
            f'(e.g. ["latency", "accuracy"]; objectives: {", ".join(OBJECTIVES)})'
        )
        return []
    problems += [
        f"unknown objective '{o}' (objectives: {', '.join(OBJECTIVES)})" for o in objectives if o not in OBJECTIVES
    ]
    repeated = sorted({o for o in objectives if objectives.count(o) > 1})
    problems += [f"objective '{o}' is listed more than once" for o in repeated]
    return list(objectives)


def _constraints(constraints: dict, problems: list[str]) -> dict[str, float]:
    valid = {}
    for name, limit in constraints.items():
        if name not in CONSTRAINTS:
            problems.append(f"unknown constraint '{name}' (constraints: {', '.join(sorted(CONSTRAINTS))})")
        elif not _is_number(limit) or limit < 0 or (limit == 0 and name != "accuracy_drop_max"):
            bound = "0 or more" if name == "accuracy_drop_max" else "above 0"
            problems.append(f"'constraints.{name}' = {limit!r} must be a number {bound}")
        else:
            valid[name] = limit
    return valid
