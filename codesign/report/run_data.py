"""A tuning run read back from its directory: records, space, settings, front and best designs."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

from codesign.errors import UsageError
from codesign.files import parse_json, reading
from codesign.tuner.database import Database, Record
from codesign.tuner.front import read_front_layers
from codesign.tuner.run_files import DATABASE_FILE, SETTINGS_FILE, SPACE_FILE
from codesign.tuner.space import SearchSpace, load_space
from codesign.tuner.tune import best_per_objective, design_file_name, pareto_records


@dataclasses.dataclass
class RunData:
    run_dir: Path
    space: SearchSpace
    records: list[Record]
    settings: dict
    front: list[Record]
    best: dict[str, Record]  # objective -> best feasible record

    @property
    def feasible(self) -> list[Record]:
        return [r for r in self.records if r.feasible]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The input shapes the run bound (None: the model's own)."""
        return {name: tuple(dims) for name, dims in self.settings.get("input_shapes", {}).items()} or None

    @property
    def input_values(self) -> dict[str, list[str]] | None:
        """The inputs the run froze to constants (None: none)."""
        return {
            name: [str(v) for v in values] for name, values in self.settings.get("input_values", {}).items()
        } or None

    @functools.cached_property
    def layer_names(self) -> list[str]:
        """The model's GEMM layers, which compression knobs refer to: as the tune recorded them in
        RUN/front/, or (a run without them) from the model, imported again."""
        recorded = read_front_layers(self.run_dir)
        if recorded is not None:
            return recorded
        from codesign.tuner.evaluator import gemm_layer_names

        return gemm_layer_names(self.settings["model"], self.input_shapes, self.input_values)

    def design_path(self, record: Record) -> Path:
        """The evaluation's design file (`codesign compile --design` reads it)."""
        return self.run_dir / design_file_name(record.index)


def load_run(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> RunData:
    """The run in a directory, read without writing to it (a tune may be appending records);
    `warn` gets the database's warnings (default: printed to stderr)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    for name in (DATABASE_FILE, SPACE_FILE):
        if not (run_dir / name).exists():
            raise UsageError(f"{run_dir}: no {name}; not a `codesign tune` run directory")
    settings = _read_settings(run_dir / SETTINGS_FILE)
    space = _space_of_run(run_dir, settings)
    records = Database(run_dir / DATABASE_FILE, warn).load(space.needed_metrics(), tuple(space.knobs))
    if not records:
        raise UsageError(f"{run_dir / DATABASE_FILE}: holds no finished evaluation")
    for record in records:
        for knob, choices in space.knobs.items():
            if record.config[knob] not in choices:
                raise UsageError(
                    f"{run_dir / DATABASE_FILE}: evaluation {record.index}: '{knob}' = "
                    f"{json.dumps(record.config[knob])[:40]} is not one of the space's choices"
                )
    return RunData(
        run_dir, space, records, settings, pareto_records(space, records), best_per_objective(space, records)
    )


def _space_of_run(run_dir: Path, settings: dict) -> SearchSpace:
    """The run's space, with a per-layer space's knobs for the model's layers (settings.json)."""
    space = load_space(run_dir / SPACE_FILE)
    layers = settings.get("layers")
    prunable = settings.get("prunable_layers")  # absent in runs before it was recorded: every layer
    grouped_convs = settings.get("grouped_convs")  # absent in runs before it was recorded: knob kept
    if space.per_layer_choices is None:
        return space.for_layers([], prunable, grouped_convs)
    if not (isinstance(layers, list) and all(isinstance(name, str) for name in layers)):
        raise UsageError(f"{run_dir / SETTINGS_FILE}: 'layers' (the layer names a per-layer space needs) is missing")
    return space.for_layers(layers, prunable, grouped_convs)


def _read_settings(path: Path) -> dict:
    """settings.json, written when a run starts; every field the report reads has its type."""
    if not path.exists():
        return {}
    with reading(path, "settings"):
        text = path.read_text(encoding="utf-8")
    settings = parse_json(text, path, UsageError)
    if not isinstance(settings, dict):
        raise UsageError(f"{path}: expected a JSON object")
    for field, kind in SETTINGS_TYPES.items():
        if field in settings and settings[field] is not None and not isinstance(settings[field], kind):
            raise UsageError(f"{path}: '{field}' = {json.dumps(settings[field])[:40]} has the wrong type")
    return settings


# settings.json fields the report reads -> their JSON types
SETTINGS_TYPES = {
    "model": str,
    "data": str,
    "space": str,
    "input_shapes": dict,
    "input_values": dict,
    "calibration_samples": int,
    "eval_samples": int,
    "seed": int,
    "strategy": str,
    "layers": list,
    "prunable_layers": list,
    "grouped_convs": list,
}
