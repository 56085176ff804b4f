"""A design: everything a compile needs besides the model and its data, as one validated object.

    Design(hardware, compression)

- `hardware`: the accelerator (`HardwareSpec`, derived with `HardwareSpec.with_changes`);
- `compression`: per-layer weight bits, prune ratios and float layers, and the schedule choice
  ("rule": the tile rule; "auto": the fastest modelled tiling). The schedule has one home,
  `CompressionConfig.schedule`, the field the compiler reads; `Design.schedule` reads it.

A design is a JSON file (`design.json`; the tuner writes one per evaluation as
`RUN/designs/eval_N.json`), read by `codesign compile --design` and `codesign simulate --design`:

    {"format": "codesign-design", "version": 1,
     "hardware": {"name": ..., "gemm": {...}, "bits": {...}, ...},   # a hardware TOML's tables
     "compression": {"weight_bits": {...}, "prune": {...}, "schedule": "auto"}}   # a --compression file

Its parts are the formats of a hardware description and of a compression file, validated by the
same code, so a problem is one line naming the file, the part and the field. Every hardware field
is written, floats exactly, so the hardware reads back to an equal spec (equal fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from codesign.compression import FIELDS as COMPRESSION_FIELDS
from codesign.compression import CompressionConfig, check_compression, compression_from_dict
from codesign.errors import UsageError
from codesign.files import parse_json, reading, write_text_atomic
from codesign.hardware import HardwareSpec, hardware_from_dict

FORMAT = "codesign-design"
VERSION = 1
DESIGN_FILE = "design.json"
PARTS = ("format", "version", "hardware", "compression")


@dataclasses.dataclass(frozen=True)
class Design:
    hardware: HardwareSpec
    compression: CompressionConfig = dataclasses.field(default_factory=CompressionConfig)

    def __post_init__(self):
        check_compression(self.compression, "design: compression")
        hardware_from_dict(self.hardware.to_document(), "design: hardware")  # raises what is invalid

    @property
    def schedule(self) -> str:
        """How offloaded layers are tiled: "rule" or "auto"."""
        return self.compression.schedule

    # ---- the file format -------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "hardware": self.hardware.to_document(),
            "compression": self.compression.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc, source: str = "design") -> Design:
        """A parsed design document, validated; a problem raises one line naming `source` and the field."""
        _check_envelope(doc, source)
        hardware = hardware_from_dict(doc["hardware"], f"{source}: hardware")
        compression = compression_from_dict(doc["compression"], f"{source}: compression")
        return cls(hardware, compression)

    @classmethod
    def from_json(cls, text: str, source: str = "design") -> Design:
        return cls.from_dict(parse_json(text, source, UsageError, "design"), source)

    def save(self, path: str | Path) -> Path:
        """Write the design atomically to `path` (a directory: `path/design.json`); returns the file."""
        path = design_file(path)
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Design:
        path = design_file(path)
        with reading(path, "design"):
            text = path.read_bytes().decode("utf-8")
        return cls.from_json(text, str(path))


def design_file(path: str | Path) -> Path:
    """A design's file: the path itself, or design.json inside a directory."""
    path = Path(path)
    return path / DESIGN_FILE if path.is_dir() else path


def _check_envelope(doc, source: str) -> None:
    """The document's own fields: an object of format, version, hardware and compression."""
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: expected a JSON object with {', '.join(PARTS)} (a design file)")
    if doc and "format" not in doc and set(doc) <= set(COMPRESSION_FIELDS):
        raise UsageError(
            f"{source}: a compression file, not a design (it holds no hardware); use --hw HW --compression {source}"
        )
    problems = [f"'{part}' is missing" for part in PARTS if part not in doc]
    problems += [f"unknown field '{key}' (fields: {', '.join(PARTS)})" for key in doc if key not in PARTS]
    if doc.get("format", FORMAT) != FORMAT:
        problems.append(f"'format' = {json.dumps(doc['format'])[:40]} (expected \"{FORMAT}\")")
    if doc.get("version", VERSION) != VERSION or isinstance(doc.get("version"), bool):
        problems.append(f"'version' = {json.dumps(doc['version'])[:40]} (this codesign reads version {VERSION})")
    for part in ("hardware", "compression"):
        if part in doc and not isinstance(doc[part], dict):
            problems.append(f"'{part}' = {json.dumps(doc[part])[:40]} (expected an object)")
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
