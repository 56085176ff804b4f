"""Accelerator descriptions: human-editable TOML files (or VTA's vta_config.json) -> HardwareSpec.

A description is data, not code: the GEMM core shape, bit widths, scratchpad capacities, clock,
DRAM bandwidth and ALU capabilities. `load_hardware` validates every field and reports all
invalid ones at once, each by its dotted name with the allowed range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import tomllib

from codesign.errors import HardwareError

PRESET_DIR = Path(__file__).resolve().parent.parent / "hw_targets"

# VTA packs micro-ops in 32 bits.
UOP_BYTES = 4
MAX_SCRATCHPAD_BYTES = 1 << 28


@dataclasses.dataclass(frozen=True)
class HardwareSpec:
    """A VTA-style accelerator: a batch x block_in x block_out GEMM core with scratchpads."""

    name: str
    batch: int
    block_in: int
    block_out: int
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
    alu_has_multiplier: bool
    alu_multiplier_bits: int

    # Bytes of one scratchpad element: the unit a GEMM micro-op reads or writes.
    @property
    def inp_elem_bytes(self) -> int:
        return self.batch * self.block_in * self.input_bits // 8

    @property
    def wgt_elem_bytes(self) -> int:
        return self.block_out * self.block_in * self.weight_bits // 8

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The description as a TOML file that `load_hardware` reads back to an equal spec."""
        sections = {
            "gemm": {"batch": self.batch, "block_in": self.block_in, "block_out": self.block_out},
            "bits": {
                "input": self.input_bits,
                "weight": self.weight_bits,
                "accumulator": self.acc_bits,
                "output": self.output_bits,
            },
            "scratchpad_bytes": {
                "uop": self.uop_buffer_bytes,
                "input": self.inp_buffer_bytes,
                "weight": self.wgt_buffer_bytes,
                "accumulator": self.acc_buffer_bytes,
            },
            "memory": {"clock_mhz": self.clock_mhz, "dram_bytes_per_cycle": self.dram_bytes_per_cycle},
            "alu": {
                "has_multiplier": self.alu_has_multiplier,
                "multiplier_bits": self.alu_multiplier_bits,
            },
        }
        lines = [f'name = "{self.name}"']
        for section, fields in sections.items():
            lines += ["", f"[{section}]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in fields.items()]
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """sha256 of the fields that change the compiled code (the name does not)."""
        fields = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# (section, key) -> (HardwareSpec field, check, allowed-range text)
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


def _number_range(low: float, high: float):
    def check(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and low < v <= high

    return check, f"a number above {low:g} and at most {high:g}"


def _boolean():
    return (lambda v: isinstance(v, bool)), "true or false"


FIELDS = {
    ("gemm", "batch"): ("batch", *_power_of_two(1, 64)),
    ("gemm", "block_in"): ("block_in", *_power_of_two(1, 256)),
    ("gemm", "block_out"): ("block_out", *_power_of_two(1, 256)),
    ("bits", "input"): ("input_bits", *_one_of(8)),
    ("bits", "weight"): ("weight_bits", *_one_of(4, 8)),
    ("bits", "accumulator"): ("acc_bits", *_one_of(32)),
    ("bits", "output"): ("output_bits", *_one_of(8)),
    ("scratchpad_bytes", "uop"): ("uop_buffer_bytes", *_int_range(UOP_BYTES, MAX_SCRATCHPAD_BYTES)),
    ("scratchpad_bytes", "input"): ("inp_buffer_bytes", *_int_range(1, MAX_SCRATCHPAD_BYTES)),
    ("scratchpad_bytes", "weight"): ("wgt_buffer_bytes", *_int_range(1, MAX_SCRATCHPAD_BYTES)),
    ("scratchpad_bytes", "accumulator"): ("acc_buffer_bytes", *_int_range(1, MAX_SCRATCHPAD_BYTES)),
    ("memory", "clock_mhz"): ("clock_mhz", *_number_range(0, 10000)),
    ("memory", "dram_bytes_per_cycle"): ("dram_bytes_per_cycle", *_number_range(0, 4096)),
    ("alu", "has_multiplier"): ("alu_has_multiplier", *_boolean()),
    ("alu", "multiplier_bits"): ("alu_multiplier_bits", *_int_range(0, 32)),
}


def hardware_from_dict(doc: dict, source: str = "<dict>") -> HardwareSpec:
    """Validate a parsed description; every problem is named in one HardwareError line."""
    problems: list[str] = []
    values: dict = {"name": doc.get("name", Path(source).stem)}
    known_sections = {section for section, _ in FIELDS}
    for key, value in doc.items():
        if key == "name":
            if not isinstance(value, str) or not value:
                problems.append("'name' must be a non-empty string")
        elif key not in known_sections:
            problems.append(f"unknown section or field '{key}'")
        elif not isinstance(value, dict):
            problems.append(f"'{key}' must be a table ([{key}])")
        else:
            problems += [f"unknown field '{key}.{sub}'" for sub in value if (key, sub) not in FIELDS]
    for (section, key), (field, check, allowed) in FIELDS.items():
        table = doc.get(section)
        if not isinstance(table, dict) or key not in table:
            problems.append(f"'{section}.{key}' is missing (expected {allowed})")
            continue
        value = table[key]
        if not check(value):
            problems.append(f"'{section}.{key}' = {value!r} is invalid (expected {allowed})")
        values[field] = value
    if not problems:
        problems += _contradictions(values)
    if problems:
        raise HardwareError(f"{source}: " + "; ".join(problems))
    values["clock_mhz"] = float(values["clock_mhz"])
    values["dram_bytes_per_cycle"] = float(values["dram_bytes_per_cycle"])
    return HardwareSpec(**values)


def _contradictions(values: dict) -> list[str]:
    problems = []
    if values["alu_has_multiplier"] and values["alu_multiplier_bits"] < 2:
        problems.append("'alu.multiplier_bits' must be from 2 to 32 when 'alu.has_multiplier' is true")
    if not values["alu_has_multiplier"] and values["alu_multiplier_bits"] != 0:
        problems.append("'alu.multiplier_bits' must be 0 when 'alu.has_multiplier' is false (shift-only ALU)")
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


def hardware_from_vta_config(doc: dict, source: str = "vta_config.json") -> HardwareSpec:
    """VTA's own config (log2 keys). DRAM and clock are board facts, so PYNQ's are assumed."""
    required = [
        "LOG_INP_WIDTH", "LOG_WGT_WIDTH", "LOG_ACC_WIDTH", "LOG_BATCH", "LOG_BLOCK",
        "LOG_UOP_BUFF_SIZE", "LOG_INP_BUFF_SIZE", "LOG_WGT_BUFF_SIZE", "LOG_ACC_BUFF_SIZE",
    ]  # fmt: skip
    problems = [f"'{key}' is missing (expected an integer log2 value)" for key in required if key not in doc]
    problems += [
        f"'{key}' = {doc[key]!r} is invalid (expected an integer log2 value from 0 to 28)"
        for key in required
        if key in doc and not (isinstance(doc[key], int) and 0 <= doc[key] <= 28)
    ]
    if problems:
        raise HardwareError(f"{source}: " + "; ".join(problems))
    block = 1 << doc.get("LOG_BLOCK_IN", doc["LOG_BLOCK"])
    return hardware_from_dict(
        {
            "name": f"vta_{1 << doc['LOG_BATCH']}x{block}x{block}",
            "gemm": {
                "batch": 1 << doc["LOG_BATCH"],
                "block_in": 1 << doc.get("LOG_BLOCK_IN", doc["LOG_BLOCK"]),
                "block_out": 1 << doc.get("LOG_BLOCK_OUT", doc["LOG_BLOCK"]),
            },
            "bits": {
                "input": 1 << doc["LOG_INP_WIDTH"],
                "weight": 1 << doc["LOG_WGT_WIDTH"],
                "accumulator": 1 << doc["LOG_ACC_WIDTH"],
                "output": 1 << doc["LOG_INP_WIDTH"],
            },
            "scratchpad_bytes": {
                "uop": 1 << doc["LOG_UOP_BUFF_SIZE"],
                "input": 1 << doc["LOG_INP_BUFF_SIZE"],
                "weight": 1 << doc["LOG_WGT_BUFF_SIZE"],
                "accumulator": 1 << doc["LOG_ACC_BUFF_SIZE"],
            },
            "memory": {"clock_mhz": 100, "dram_bytes_per_cycle": 8},
            # VTA's ALU MUL takes an 8-bit operand.
            "alu": {"has_multiplier": True, "multiplier_bits": 8},
        },
        source,
    )


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def resolve_hardware_path(name_or_path: str | Path) -> Path:
    """A path as given, or the name of a preset in hw_targets/ ('vta_default')."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".toml", ".json"):
        return path
    preset = PRESET_DIR / f"{name_or_path}.toml"
    if preset.exists():
        return preset
    raise HardwareError(f"{name_or_path}: no such hardware file or preset (presets: {', '.join(preset_names())})")


def load_hardware(name_or_path: str | Path) -> HardwareSpec:
    path = resolve_hardware_path(name_or_path)
    try:
        text = path.read_text()
    except OSError as err:
        raise HardwareError(f"{path}: cannot read hardware file ({err.strerror})") from err
    if path.suffix == ".json":
        try:
            return hardware_from_vta_config(json.loads(text), str(path))
        except json.JSONDecodeError as err:
            raise HardwareError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise HardwareError(f"{path}: not valid TOML ({err})") from err
    return hardware_from_dict(doc, str(path))
