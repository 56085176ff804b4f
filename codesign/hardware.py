"""Accelerator descriptions: human-editable TOML files (or VTA's vta_config.json) -> HardwareSpec.

A description is data, not code: the GEMM core shape, bit widths, scratchpad capacities, clock,
DRAM bandwidth and ALU capabilities. `load_hardware` validates every field and reports all
invalid ones at once, each by its dotted name with the allowed range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from importlib import resources
from pathlib import Path

import numpy as np
import tomli_w

from codesign import toml as tomllib
from codesign.errors import HardwareError
from codesign.files import parse_json
from codesign.schedules.tiling import UOP_BYTES

# The presets: package data, hw_targets/ in the repository installed as codesign/hw_targets/.
PRESET_PACKAGE = "codesign.hw_targets"

MAX_SCRATCHPAD_BYTES = 1 << 28
# The multipliers' input width: descriptions have 8-bit inputs (bits.input); wider activations
# take several passes (`CoreGeometry.for_layer`).
MULTIPLIER_INPUT_BITS = 8
MAX_BLOCK = 256  # the widest GEMM core dimension a description may have


class CoreGeometry:
    """Sizes that follow from a GEMM core's shape and bit widths (mixed into HardwareSpec and
    any object with batch, block_in, block_out, precision_scalable and *_bits attributes)."""

    def for_layer_weights(self, weight_bits: int | None):
        """The core as a layer with narrower weights uses it; itself for None or the core's own width.

        A plain core packs int4 weights two per byte (the weight buffer holds more, DRAM moves
        fewer bytes) and runs them on its int8 MACs at the int8 rate. A precision-scalable core
        (Bit Fusion's fused mode) also splits each 8x8 multiplier into two 8x4 ones feeding the same
        adder tree, so the layer sees block_in x 8 / weight_bits input lanes: the weight element's
        bytes are unchanged, the input element's double, the accumulators stay. Energy and area
        figures stay the core's: the layer runs on its multipliers (`mac_energy_pj`). The one home
        of this rule: lowering, the simulators and the manifest check all ask it."""
        if weight_bits is None or weight_bits >= self.weight_bits:
            return self
        if self.precision_scalable:
            fused_lanes = self.block_in * self.weight_bits // weight_bits
            view = self._with_weight_bits(weight_bits, block_in=fused_lanes, precision_scalable=False)
            return dataclasses.replace(view, precision_scalable=True)  # the fused mode: `input_gather`
        return self._with_weight_bits(weight_bits)

    def for_layer(self, weight_bits: int | None, input_bits: int | None = None):
        """The core as a layer uses it: its weights (`for_layer_weights`) and, for a layer whose
        activations are wider than the core's inputs (a --wide-layers layer), its activations:
        each micro-op then runs as `gemm_passes` passes over the input's bytes on the same
        multipliers, shifting the accumulator between them (bit-serial over bytes, as Stripes
        and Bit Fusion compose wide operands), so GEMM time and MAC energy scale by the passes,
        and the input and output buffers and transfers hold the wide elements."""
        if not input_bits or input_bits <= self.input_bits:
            return self.for_layer_weights(weight_bits)
        if weight_bits is not None and weight_bits != self.weight_bits:
            raise ValueError(
                f"a layer with {input_bits}-bit activations keeps the core's {self.weight_bits}-bit weights"
            )
        return dataclasses.replace(self, input_bits=input_bits, output_bits=input_bits, precision_scalable=False)

    @property
    def gemm_passes(self) -> int:
        """Passes of the multipliers per GEMM micro-op: 2 for a wide layer's 16-bit activations."""
        return self.input_bits // MULTIPLIER_INPUT_BITS

    @property
    def input_gather(self):
        """How many blocks of the activation layout one input element of this core gathers: 2 for
        an int4 layer on a precision-scalable core (the fused core's view: precision_scalable with
        weights narrower than its inputs), whose 2 x block_in lanes read two of the block_in-wide
        blocks every layer's activations are stored in, so its input needs no repacking between
        layers; else 1. Its input DMA makes that many transfers per element row (the simulators
        count them)."""
        fused = self.precision_scalable and self.weight_bits < self.input_bits
        return self.input_bits // self.weight_bits if fused else 1

    @property
    def input_block(self):
        """Channels per block of the layout the core reads its input activations in."""
        return self.block_in // self.input_gather

    def _with_weight_bits(self, weight_bits: int, **changes):
        # a plain core (no prices to keep)
        return dataclasses.replace(self, weight_bits=weight_bits, **changes)

    def weight_bytes(self, weights: int) -> int:
        """Bytes `weights` weights take at the core's weight width, packed (int4 two per byte, a
        last odd one in a byte of its own): the one home of the rule. The module's weight image,
        the weight buffer and the simulators' weight loads all count with it."""
        return -(-weights * self.weight_bits // 8)

    # Bytes of one scratchpad element: the unit a GEMM micro-op reads or writes.
    @property
    def inp_elem_bytes(self) -> int:
        return self.batch * self.block_in * self.input_bits // 8

    @property
    def wgt_elem_bytes(self) -> int:
        return self.weight_bytes(self.block_out * self.block_in)

    @property
    def acc_elem_bytes(self) -> int:
        return self.batch * self.block_out * self.acc_bits // 8

    @property
    def out_elem_bytes(self) -> int:
        return self.batch * self.block_out * self.output_bits // 8

    @property
    def macs_per_cycle(self) -> int:
        return self.batch * self.block_in * self.block_out

    @property
    def gemm_shape(self) -> str:
        return f"{self.batch}x{self.block_in}x{self.block_out}"


@dataclasses.dataclass(frozen=True)
class HardwareSpec(CoreGeometry):
    """A VTA-style accelerator: a batch x block_in x block_out GEMM core with scratchpads,
    plus the tables that price it (energy, area) and the host CPU model."""

    name: str
    batch: int
    block_in: int
    block_out: int
    precision_scalable: bool  # int4-weight layers run two per multiplier (`for_layer_weights`)
    input_bits: int
    weight_bits: int
    acc_bits: int
    output_bits: int
    uop_buffer_bytes: int
    inp_buffer_bytes: int
    wgt_buffer_bytes: int
    acc_buffer_bytes: int
    clock_mhz: float
    dram_bytes_per_cycle: float
    dram_latency_cycles: int
    alu_has_multiplier: bool
    alu_multiplier_bits: int
    alu_vectors_per_cycle: float
    energy_mac_pj: float
    energy_scalable_mac_overhead: float
    energy_alu_op_pj: float
    energy_uop_pj_per_byte: float
    energy_inp_pj_per_byte: float
    energy_wgt_pj_per_byte: float
    energy_acc_pj_per_byte: float
    energy_dram_pj_per_byte: float
    energy_leakage_pj_per_cycle: float
    area_mac_mm2: float
    area_scalable_mac_overhead: float
    area_uop_mm2_per_kib: float
    area_inp_mm2_per_kib: float
    area_wgt_mm2_per_kib: float
    area_acc_mm2_per_kib: float
    area_fixed_mm2: float
    host_clock_mhz: float
    host_ops_per_cycle: float
    host_bytes_per_cycle: float
    host_op_overhead_us: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_document(self) -> dict:
        """The description as `hardware_from_dict` reads it: name and [sections], every field."""
        return _document(self.to_dict())

    def to_toml(self) -> str:
        """The description as a TOML file that `load_hardware` reads back to an equal spec, every
        float exactly (written by tomli-w, so any name, quotes and newlines included, stays one
        quoted string)."""
        return tomli_w.dumps(self.to_document())

    def with_changes(self, **changes) -> HardwareSpec:
        """The ONE way to derive a spec: these fields changed, then validated like a loaded file
        (an invalid change raises the HardwareError loading such a TOML raises). Derived fields
        follow the change: a price that was the default for the old sizes (energy, area,
        leakage) is re-derived for the new ones, and turning the ALU multiplier on or off sets
        its width (`alu_multiplier_bits_for`) unless given. Prices set by hand stay."""
        old = self.to_dict()
        unknown = sorted(set(changes) - set(old))
        if unknown:
            raise TypeError(f"HardwareSpec has no field {', '.join(unknown)}")
        values = {**old, **changes}
        if "alu_has_multiplier" in changes and "alu_multiplier_bits" not in changes:
            has_multiplier = values["alu_has_multiplier"]
            values["alu_multiplier_bits"] = alu_multiplier_bits_for(has_multiplier, self.alu_multiplier_bits)
        for attr in _derived_defaults(old):
            if attr not in changes:
                del values[attr]  # derived again from the new values
        changed = ", ".join(k for k, v in changes.items() if old[k] != v and k != "name") or "no change"
        return hardware_from_dict(_document(values), f"{self.name} ({changed})")

    def prices(self) -> dict:
        """The energy and area figures, by field."""
        return {f.attr: getattr(self, f.attr) for f in FIELDS if f.section in ("energy", "area")}

    def _with_weight_bits(self, weight_bits: int, **changes) -> HardwareSpec:
        return self.with_changes(weight_bits=weight_bits, **changes, **self.prices())

    def fingerprint(self) -> str:
        """sha256 of every field but the name: the identity a compiled module is checked against."""
        fields = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _document(values: dict) -> dict:
    """Field values by attribute (any may be missing) -> name and [sections], as files spell them."""
    doc: dict = {"name": values["name"]}
    for field in FIELDS:
        if field.attr in values:
            doc.setdefault(field.section, {})[field.key] = values[field.attr]
    return doc


def _derived_defaults(values: dict) -> list[str]:
    """The fields holding the default derived from the other values (prices not set by hand)."""
    return [f.attr for f in FIELDS if f.default is not None and values[f.attr] == f.default(values)]


DEFAULT_MULTIPLIER_BITS = 8  # VTA's ALU MUL takes an 8-bit operand


def alu_multiplier_bits_for(has_multiplier: bool, current_bits: int) -> int:
    """The multiplier width of an ALU turned on or off: a shift-only ALU has none; one with a
    multiplier keeps the current width, or VTA's 8 bits if it had none."""
    return (current_bits or DEFAULT_MULTIPLIER_BITS) if has_multiplier else 0


def _power_of_two(low: int, high: int):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high and v & (v - 1) == 0

    return check, f"a power of two from {low} to {high}"


def _one_of(*choices: int):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v in choices

    return check, "one of " + ", ".join(str(c) for c in choices)


def _int_range(low: int, high: int):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    return check, f"an integer from {low} to {high}"


def _number_range(low: float, high: float, include_low: bool = False):
    def check(v):
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return number and (low <= v if include_low else low < v) and v <= high

    return (
        check,
        f"a number {'from' if include_low else 'above'} {low:g} {'to' if include_low else 'and at most'} {high:g}",
    )


def _boolean():
    return (lambda v: isinstance(v, bool)), "true or false"


@dataclasses.dataclass(frozen=True)
class Field:
    section: str
    key: str
    attr: str  # HardwareSpec attribute
    check: object
    allowed: str
    default: object = None  # None: required; else a function of the architecture values


def _field(section, key, attr, rule, default=None) -> Field:
    check, allowed = rule
    return Field(section, key, attr, check, allowed, default)


# Price tables default to published 45 nm figures: M. Horowitz, "Computing's energy problem
# (and what we can do about it)", ISSCC 2014: 8-bit multiply 0.2 pJ and 282 um2, 32-bit add
# 0.1 pJ and 137 um2; 64-bit SRAM reads of 20 pJ (32 KB) to 100 pJ (1 MB), i.e. 2.5 pJ/B at
# 32 KiB growing as size**0.464; DRAM 1.3 nJ per 64 bits. SRAM area from Intel's 45 nm 6T
# cell (0.346 um2, Mistry et al., IEDM 2007) at 70 % array efficiency: 0.00405 mm2/KiB.
def sram_pj_per_byte(capacity_bytes: int) -> float:
    return round(2.5 * (capacity_bytes / 32768) ** 0.464, 4)


SRAM_MM2_PER_KIB = 0.00405
LEAKAGE_MW_PER_MM2 = 10.0  # an assumed 45 nm low-power figure (no published number for this design)

# A precision-scalable MAC against a plain 8-bit one: Bit Fusion's Fusion Unit (H. Sharma et al.,
# "Bit Fusion: Bit-level dynamically composable architecture for accelerating deep neural
# networks", ISCA 2018) and a fixed 8-bit MAC unit, both synthesized by its authors at 45 nm and
# 500 MHz (their simulator's data, github.com/hsharma35/bitfusion results/systolic_array_synth.csv,
# one unit, N = M = 1): area 1,733.13 vs 687.61 um2 (2.52x), dynamic power 279.96 vs 148.85 uW
# (1.88x). Their simulator prices the array per cycle whatever the precision, and so does this
# one: a multiplier firing costs 1.88x a plain MAC, and an int4-weight MAC in fused mode (two
# per multiplier) 1.88 / 2 = 0.94x. Bit Fusion's unit also splits down to 2-bit operands, so for
# an 8x8 -> 2 x 8x4 split these factors are upper bounds. Leakage follows the area (above).
SCALABLE_MAC_AREA_OVERHEAD = 2.52
SCALABLE_MAC_ENERGY_OVERHEAD = 1.88

ENERGY_AREA_DEFAULTS = {
    "mac_pj": lambda v: 0.3 if v["weight_bits"] == 8 else 0.2,
    "scalable_mac_energy_overhead": lambda v: SCALABLE_MAC_ENERGY_OVERHEAD,
    "alu_op_pj": lambda v: 0.1,
    "uop_pj_per_byte": lambda v: sram_pj_per_byte(v["uop_buffer_bytes"]),
    "inp_pj_per_byte": lambda v: sram_pj_per_byte(v["inp_buffer_bytes"]),
    "wgt_pj_per_byte": lambda v: sram_pj_per_byte(v["wgt_buffer_bytes"]),
    "acc_pj_per_byte": lambda v: sram_pj_per_byte(v["acc_buffer_bytes"]),
    "dram_pj_per_byte": lambda v: 162.5,
    "mac_mm2": lambda v: 0.000419 if v["weight_bits"] == 8 else 0.00028,
    "scalable_mac_area_overhead": lambda v: SCALABLE_MAC_AREA_OVERHEAD,
    "sram_mm2_per_kib": lambda v: SRAM_MM2_PER_KIB,
    "fixed_mm2": lambda v: 0.25,
}


def _scalable_factor(hw, overhead):
    """`overhead` where the core is precision-scalable, else 1 (arrays of designs too)."""
    if isinstance(hw.precision_scalable, np.ndarray):
        return np.where(hw.precision_scalable, overhead, 1.0)
    return overhead if hw.precision_scalable else 1.0


def mac_energy_pj(hw):
    """Energy of one multiplier firing once (one MAC at int8; two int4-weight MACs when fused)."""
    return hw.energy_mac_pj * _scalable_factor(hw, hw.energy_scalable_mac_overhead)


def mac_area_mm2(hw):
    return hw.area_mac_mm2 * _scalable_factor(hw, hw.area_scalable_mac_overhead)


def area_mm2(hw) -> dict[str, float]:
    """Area by part (and "total") of a core: a HardwareSpec, or anything with its fields as
    attributes (arrays of them for a batch of designs). "mac_scaling" is what making the MACs
    precision-scalable adds to the GEMM core's plain ones."""
    macs = hw.batch * hw.block_in * hw.block_out
    parts = {
        "gemm_core": macs * hw.area_mac_mm2,
        "mac_scaling": macs * (mac_area_mm2(hw) - hw.area_mac_mm2),
        "uop_buffer": hw.uop_buffer_bytes / 1024 * hw.area_uop_mm2_per_kib,
        "inp_buffer": hw.inp_buffer_bytes / 1024 * hw.area_inp_mm2_per_kib,
        "wgt_buffer": hw.wgt_buffer_bytes / 1024 * hw.area_wgt_mm2_per_kib,
        "acc_buffer": hw.acc_buffer_bytes / 1024 * hw.area_acc_mm2_per_kib,
        "fixed": hw.area_fixed_mm2,
    }
    return {**parts, "total": sum(parts.values())}


def _leakage_default(v) -> float:
    """Leakage in proportion to the core's area at the default area figures (the area fields
    are derived after this one)."""
    sram = ENERGY_AREA_DEFAULTS["sram_mm2_per_kib"](v)
    default_areas = {
        "area_mac_mm2": ENERGY_AREA_DEFAULTS["mac_mm2"](v),
        "area_scalable_mac_overhead": ENERGY_AREA_DEFAULTS["scalable_mac_area_overhead"](v),
        **{f"area_{buffer}_mm2_per_kib": sram for buffer in ("uop", "inp", "wgt", "acc")},
        "area_fixed_mm2": ENERGY_AREA_DEFAULTS["fixed_mm2"](v),
    }
    area = area_mm2(types.SimpleNamespace(**{**v, **default_areas}))["total"]
    return round(LEAKAGE_MW_PER_MM2 * area * 1e-3 / (v["clock_mhz"] * 1e6) * 1e12, 3)


def _default(key):
    return ENERGY_AREA_DEFAULTS[key]


FIELDS = [
    _field("gemm", "batch", "batch", _power_of_two(1, 64)),
    _field("gemm", "block_in", "block_in", _power_of_two(1, MAX_BLOCK)),
    _field("gemm", "block_out", "block_out", _power_of_two(1, MAX_BLOCK)),
    _field("gemm", "precision_scalable", "precision_scalable", _boolean(), lambda v: False),
    _field("bits", "input", "input_bits", _one_of(8)),
    _field("bits", "weight", "weight_bits", _one_of(4, 8)),
    _field("bits", "accumulator", "acc_bits", _one_of(32)),
    _field("bits", "output", "output_bits", _one_of(8)),
    _field("scratchpad_bytes", "uop", "uop_buffer_bytes", _int_range(UOP_BYTES, MAX_SCRATCHPAD_BYTES)),
    _field("scratchpad_bytes", "input", "inp_buffer_bytes", _int_range(1, MAX_SCRATCHPAD_BYTES)),
    _field("scratchpad_bytes", "weight", "wgt_buffer_bytes", _int_range(1, MAX_SCRATCHPAD_BYTES)),
    _field("scratchpad_bytes", "accumulator", "acc_buffer_bytes", _int_range(1, MAX_SCRATCHPAD_BYTES)),
    _field("memory", "clock_mhz", "clock_mhz", _number_range(0, 10000)),
    _field("memory", "dram_bytes_per_cycle", "dram_bytes_per_cycle", _number_range(0, 4096)),
    _field("memory", "dram_latency_cycles", "dram_latency_cycles", _int_range(0, 100000)),
    _field("alu", "has_multiplier", "alu_has_multiplier", _boolean()),
    _field("alu", "multiplier_bits", "alu_multiplier_bits", _int_range(0, 32)),
    _field("alu", "vectors_per_cycle", "alu_vectors_per_cycle", _number_range(0, 1024)),
    _field("energy", "mac_pj", "energy_mac_pj", _number_range(0, 1e4, True), _default("mac_pj")),
    _field(
        "energy",
        "scalable_mac_overhead",
        "energy_scalable_mac_overhead",
        _number_range(1, 100, True),
        _default("scalable_mac_energy_overhead"),
    ),
    _field("energy", "alu_op_pj", "energy_alu_op_pj", _number_range(0, 1e4, True), _default("alu_op_pj")),
    _field(
        "energy", "uop_pj_per_byte", "energy_uop_pj_per_byte", _number_range(0, 1e4, True), _default("uop_pj_per_byte")
    ),
    _field(
        "energy", "inp_pj_per_byte", "energy_inp_pj_per_byte", _number_range(0, 1e4, True), _default("inp_pj_per_byte")
    ),
    _field(
        "energy", "wgt_pj_per_byte", "energy_wgt_pj_per_byte", _number_range(0, 1e4, True), _default("wgt_pj_per_byte")
    ),
    _field(
        "energy", "acc_pj_per_byte", "energy_acc_pj_per_byte", _number_range(0, 1e4, True), _default("acc_pj_per_byte")
    ),
    _field(
        "energy",
        "dram_pj_per_byte",
        "energy_dram_pj_per_byte",
        _number_range(0, 1e5, True),
        _default("dram_pj_per_byte"),
    ),
    _field(
        "energy", "leakage_pj_per_cycle", "energy_leakage_pj_per_cycle", _number_range(0, 1e9, True), _leakage_default
    ),
    _field("area", "mac_mm2", "area_mac_mm2", _number_range(0, 100, True), _default("mac_mm2")),
    _field(
        "area",
        "scalable_mac_overhead",
        "area_scalable_mac_overhead",
        _number_range(1, 100, True),
        _default("scalable_mac_area_overhead"),
    ),
    _field(
        "area", "uop_mm2_per_kib", "area_uop_mm2_per_kib", _number_range(0, 100, True), _default("sram_mm2_per_kib")
    ),
    _field(
        "area", "inp_mm2_per_kib", "area_inp_mm2_per_kib", _number_range(0, 100, True), _default("sram_mm2_per_kib")
    ),
    _field(
        "area", "wgt_mm2_per_kib", "area_wgt_mm2_per_kib", _number_range(0, 100, True), _default("sram_mm2_per_kib")
    ),
    _field(
        "area", "acc_mm2_per_kib", "area_acc_mm2_per_kib", _number_range(0, 100, True), _default("sram_mm2_per_kib")
    ),
    _field("area", "fixed_mm2", "area_fixed_mm2", _number_range(0, 1e4, True), _default("fixed_mm2")),
    # The host defaults to PYNQ's ARM Cortex-A9 (650 MHz, NEON): VTA's reference board.
    _field("host", "clock_mhz", "host_clock_mhz", _number_range(0, 10000), lambda v: 650.0),
    _field("host", "ops_per_cycle", "host_ops_per_cycle", _number_range(0, 1e4), lambda v: 4.0),
    _field("host", "bytes_per_cycle", "host_bytes_per_cycle", _number_range(0, 1e4), lambda v: 2.0),
    _field("host", "op_overhead_us", "host_op_overhead_us", _number_range(0, 1e6, True), lambda v: 5.0),
]
SECTIONS = list(dict.fromkeys(f.section for f in FIELDS))


def hardware_from_dict(doc: dict, source: str = "<dict>") -> HardwareSpec:
    """Validate a parsed description; every problem is named in one HardwareError line.

    Architecture fields are required; price tables (energy, area, host) default to the
    published 45 nm figures above when left out.
    """
    problems: list[str] = []
    values: dict = {"name": doc.get("name", Path(source).stem)}
    known = {(f.section, f.key) for f in FIELDS}
    for key, value in doc.items():
        if key == "name":
            if not isinstance(value, str) or not value:
                problems.append("'name' must be a non-empty string")
        elif key not in SECTIONS:
            problems.append(f"unknown section or field '{key}'")
        elif not isinstance(value, dict):
            problems.append(f"'{key}' must be a table ([{key}])")
        else:
            problems += [f"unknown field '{key}.{sub}'" for sub in value if (key, sub) not in known]
    deferred = []
    for field in FIELDS:
        table = doc.get(field.section)
        if not isinstance(table, dict) or field.key not in table:
            if field.default is None:
                problems.append(f"'{field.section}.{field.key}' is missing (expected {field.allowed})")
            else:
                deferred.append(field)
            continue
        value = table[field.key]
        if not field.check(value):
            problems.append(f"'{field.section}.{field.key}' = {value!r} is invalid (expected {field.allowed})")
        values[field.attr] = value
    if not problems:
        problems += _contradictions(values)
    if problems:
        raise HardwareError(f"{source}: " + "; ".join(problems))
    for field in deferred:
        values[field.attr] = field.default(values)
    for field in FIELDS:
        if isinstance(values[field.attr], int) and field.allowed.startswith("a number"):
            values[field.attr] = float(values[field.attr])
    return HardwareSpec(**values)


def _contradictions(values: dict) -> list[str]:
    problems = []
    if values["alu_has_multiplier"] and values["alu_multiplier_bits"] < 2:
        problems.append("'alu.multiplier_bits' must be from 2 to 32 when 'alu.has_multiplier' is true")
    if not values["alu_has_multiplier"] and values["alu_multiplier_bits"] != 0:
        problems.append("'alu.multiplier_bits' must be 0 when 'alu.has_multiplier' is false (shift-only ALU)")
    problems += _scalable_contradictions(values)
    elements = {
        "input": ("inp_buffer_bytes", values["batch"] * values["block_in"] * values["input_bits"] // 8),
        "weight": ("wgt_buffer_bytes", values["block_out"] * values["block_in"] * values["weight_bits"] // 8),
        "accumulator": ("acc_buffer_bytes", values["batch"] * values["block_out"] * values["acc_bits"] // 8),
    }
    for name, (field, elem_bytes) in elements.items():
        if values[field] < elem_bytes:
            problems.append(
                f"'scratchpad_bytes.{name}' = {values[field]} cannot hold one "
                f"{values['batch']}x{values['block_in']}x{values['block_out']} GEMM element "
                f"({elem_bytes} bytes)"
            )
    return problems


def _scalable_contradictions(values: dict) -> list[str]:
    """A precision-scalable core splits 8-bit weight multipliers, so int4 layers see twice the
    input lanes: those must be a core shape, and one such input element must fit."""
    if not values.get("precision_scalable", False):  # left out: the default is derived later
        return []
    if values["weight_bits"] != 8:
        return ["'gemm.precision_scalable' = true needs 'bits.weight' = 8 (it runs int4 weights two per multiplier)"]
    fused_lanes = 2 * values["block_in"]
    if fused_lanes > MAX_BLOCK:
        limit = MAX_BLOCK // 2
        return [
            f"'gemm.precision_scalable' = true needs 'gemm.block_in' at most {limit} "
            "(int4 layers use twice its input lanes)"
        ]
    element = values["batch"] * fused_lanes * values["input_bits"] // 8
    if values["inp_buffer_bytes"] < element:
        return [
            f"'scratchpad_bytes.input' = {values['inp_buffer_bytes']} cannot hold one input element of an int4 "
            f"layer on the precision-scalable core ({element} bytes)"
        ]
    return []


# vta_config.json's keys: each a log2 value, and the description fields it sets.
VTA_CONFIG_KEYS = {
    "LOG_INP_WIDTH": [("bits", "input"), ("bits", "output")],
    "LOG_WGT_WIDTH": [("bits", "weight")],
    "LOG_ACC_WIDTH": [("bits", "accumulator")],
    "LOG_BATCH": [("gemm", "batch")],
    "LOG_BLOCK": [("gemm", "block_in"), ("gemm", "block_out")],
    "LOG_BLOCK_IN": [("gemm", "block_in")],  # older configs: overrides LOG_BLOCK
    "LOG_BLOCK_OUT": [("gemm", "block_out")],
    "LOG_UOP_BUFF_SIZE": [("scratchpad_bytes", "uop")],
    "LOG_INP_BUFF_SIZE": [("scratchpad_bytes", "input")],
    "LOG_WGT_BUFF_SIZE": [("scratchpad_bytes", "weight")],
    "LOG_ACC_BUFF_SIZE": [("scratchpad_bytes", "accumulator")],
}
MAX_LOG2 = 28  # the largest log2 value any of them may hold (MAX_SCRATCHPAD_BYTES)


def _vta_allowed_logs(key: str) -> list[int]:
    """The log2 values of `key` that every field it sets accepts."""
    checks = [f.check for f in FIELDS if (f.section, f.key) in VTA_CONFIG_KEYS[key]]
    return [n for n in range(MAX_LOG2 + 1) if all(check(1 << n) for check in checks)]


def _vta_allowed_text(logs: list[int]) -> str:
    if len(logs) > 2 and logs == list(range(logs[0], logs[-1] + 1)):
        return f"an integer log2 value from {logs[0]} to {logs[-1]}"
    return "an integer log2 value: " + " or ".join(str(n) for n in logs)


def hardware_from_vta_config(doc, source: str = "vta_config.json") -> HardwareSpec:
    """VTA's own config (log2 keys). DRAM and clock are board facts, so PYNQ's are assumed.

    Every key is checked in the file's own terms (an integer, not a boolean, in the range its
    fields allow) and reported by the file's key name; other keys (TARGET, HW_VER, ...) are ignored.
    """
    if not isinstance(doc, dict):
        raise HardwareError(f"{source}: expected a JSON object of VTA's LOG_* keys, got {type(doc).__name__}")
    required = [key for key in VTA_CONFIG_KEYS if key not in ("LOG_BLOCK_IN", "LOG_BLOCK_OUT")]
    if "LOG_BLOCK_IN" in doc and "LOG_BLOCK_OUT" in doc:
        required.remove("LOG_BLOCK")
    problems = [
        f"'{key}' is missing (expected {_vta_allowed_text(_vta_allowed_logs(key))})"
        for key in required
        if key not in doc
    ]
    for key in VTA_CONFIG_KEYS:
        if key not in doc:
            continue
        value, allowed = doc[key], _vta_allowed_logs(key)
        if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
            shown = json.dumps(value) if isinstance(value, bool) or value is None else repr(value)
            problems.append(f"'{key}' = {shown} is invalid (expected {_vta_allowed_text(allowed)})")
    if problems:
        raise HardwareError(f"{source}: " + "; ".join(problems))
    size = {key: 1 << doc[key] for key in VTA_CONFIG_KEYS if key in doc}
    batch = size["LOG_BATCH"]
    block_in = size.get("LOG_BLOCK_IN", size.get("LOG_BLOCK"))
    block_out = size.get("LOG_BLOCK_OUT", size.get("LOG_BLOCK"))
    elements = {
        "LOG_INP_BUFF_SIZE": batch * block_in * size["LOG_INP_WIDTH"] // 8,
        "LOG_WGT_BUFF_SIZE": block_out * block_in * size["LOG_WGT_WIDTH"] // 8,
        "LOG_ACC_BUFF_SIZE": batch * block_out * size["LOG_ACC_WIDTH"] // 8,
    }
    problems = [
        f"'{key}' = {doc[key]} ({size[key]} bytes) cannot hold one {batch}x{block_in}x{block_out} "
        f"GEMM element ({elem_bytes} bytes)"
        for key, elem_bytes in elements.items()
        if size[key] < elem_bytes
    ]
    if problems:
        raise HardwareError(f"{source}: " + "; ".join(problems))
    return hardware_from_dict(
        {
            "name": f"vta_{batch}x{block_in}x{block_out}",
            "gemm": {"batch": batch, "block_in": block_in, "block_out": block_out},
            "bits": {
                "input": size["LOG_INP_WIDTH"],
                "weight": size["LOG_WGT_WIDTH"],
                "accumulator": size["LOG_ACC_WIDTH"],
                "output": size["LOG_INP_WIDTH"],
            },
            "scratchpad_bytes": {
                "uop": size["LOG_UOP_BUFF_SIZE"],
                "input": size["LOG_INP_BUFF_SIZE"],
                "weight": size["LOG_WGT_BUFF_SIZE"],
                "accumulator": size["LOG_ACC_BUFF_SIZE"],
            },
            "memory": {"clock_mhz": 100, "dram_bytes_per_cycle": 8, "dram_latency_cycles": 32},
            # VTA's ALU MUL takes an 8-bit operand; it retires one accumulator vector per cycle.
            "alu": {"has_multiplier": True, "multiplier_bits": 8, "vectors_per_cycle": 1},
        },
        source,
    )


def _presets() -> dict[str, Path]:
    """Preset name -> its file (pip installs package data as files, so each is a Path)."""
    files = resources.files(PRESET_PACKAGE).iterdir()
    return {f.name.removesuffix(".toml"): Path(f) for f in files if f.name.endswith(".toml") and f.is_file()}


def preset_names() -> list[str]:
    return sorted(_presets())


def resolve_hardware_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a preset in hw_targets/ ('vta_default')."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".toml", ".json"):
        return path
    preset = _presets().get(str(name_or_path))
    if preset is not None:
        return preset
    raise HardwareError(f"{name_or_path}: no such hardware file or preset (presets: {', '.join(preset_names())})")


def load_hardware(name_or_path: str | Path) -> HardwareSpec:
    path = resolve_hardware_path(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise HardwareError(f"{path}: cannot read hardware file ({err.strerror})") from err
    except UnicodeDecodeError as err:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise HardwareError(
            f"{path}: not a {kind} text file (byte {err.start} is not UTF-8; is it a binary file?)"
        ) from err
    if path.suffix == ".json":
        return hardware_from_vta_config(parse_json(text, path, HardwareError), str(path))
    return hardware_from_dict(tomllib.parse_toml(text, path, HardwareError), str(path))
