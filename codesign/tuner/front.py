"""The front, simulated layer by layer: what the report draws of a run's best designs, persisted.

When a tune ends, the best design of every objective is simulated layer by layer with the cycle
model the tuner's cost model used (`simulate_plans(..., "analytic")`, every offloaded layer tiled
for the design as the cost model tiled it), from the layer plans of the design's compression
profile, which the evaluator holds: nothing is imported, calibrated or lowered again. Files,
each written atomically:

    RUN/front/layers.json   {"gemm_layers": [...]}: the model's GEMM layers (what compression
                            knobs name), so the report need not import the model
    RUN/front/eval_N.json   {"index": N, "config": {...}, "simulation": SimulationReport.to_dict()}

The report reads them back with `read_front_layers` and `read_front_simulation`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from codesign.errors import CodesignError
from codesign.files import write_text_atomic
from codesign.hardware import HardwareSpec
from codesign.plan import LayerPlan
from codesign.schedules.mapper import select_tiling
from codesign.simulator.simulate import LayerResult, SimulationReport, simulate_plans
from codesign.tuner.database import Record
from codesign.tuner.profile_builder import CompressionProfile
from codesign.tuner.space import SearchSpace
from codesign.tuner.tune import best_per_objective

FRONT_DIR = "front"
LAYERS_FILE = "layers.json"
CYCLE_MODEL = "analytic"  # the model the tuner's cost model evaluates designs with


def front_file(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / FRONT_DIR / f"eval_{index}.json"


def write_front(run_dir: str | Path, space: SearchSpace, records: list[Record], evaluator) -> list[Path]:
    """Simulate the best design of every objective layer by layer into RUN/front/ (one file per
    distinct design, and layers.json); returns the files written. `evaluator` holds the
    profiles: `layers` (the model's GEMM layer names) and `profile(config, multiplier)`."""
    folder = Path(run_dir) / FRONT_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise CodesignError(f"{folder}: cannot create ({err.strerror})") from err
    written = [_write_json(folder / LAYERS_FILE, {"gemm_layers": list(evaluator.layers)})]
    best = {record.index: record for record in best_per_objective(space, records).values()}
    for index, record in best.items():
        hw = space.hardware(record.config, name=f"eval_{index}")
        simulation = simulate_design(evaluator.profile(record.config, hw.alu_has_multiplier), hw)
        document = {"index": index, "config": record.config, "simulation": simulation.to_dict()}
        written.append(_write_json(front_file(run_dir, index), document))
    return written


def simulate_design(profile: CompressionProfile, hw: HardwareSpec) -> SimulationReport:
    """A design simulated layer by layer from its compression profile's plans."""
    return simulate_plans(plans_for_design(profile.plans, hw), hw, CYCLE_MODEL)


def plans_for_design(plans: list[LayerPlan], hw: HardwareSpec) -> list[LayerPlan]:
    """A profile's plans (lowered for the space's base hardware) as lowering for `hw` writes them:
    every offloaded layer tiled for `hw`, kernels left for the simulator to schedule."""
    return [dataclasses.replace(plan, tiling=_tiling_for(plan, hw), kernel=None) for plan in plans]


def _tiling_for(plan: LayerPlan, hw: HardwareSpec):
    if plan.placement != "accel":
        return plan.tiling
    layer_hw = hw.for_layer_weights(plan.weight_bits)
    return select_tiling(plan.shape, layer_hw, plan.alu_ops, plan.weight_bits, plan.schedule)


def _write_json(path: Path, document: dict) -> Path:
    write_text_atomic(path, json.dumps(document, indent=1) + "\n")
    return path


# ---- reading back ------------------------------------------------------------------------------


def read_front_layers(run_dir: str | Path) -> list[str] | None:
    """The model's GEMM layer names the tune recorded; None without a readable RUN/front/layers.json."""
    document = _read_json(Path(run_dir) / FRONT_DIR / LAYERS_FILE)
    layers = document.get("gemm_layers") if isinstance(document, dict) else None
    if isinstance(layers, list) and all(isinstance(name, str) for name in layers):
        return layers
    return None


def read_front_simulation(run_dir: str | Path, record: Record) -> SimulationReport | None:
    """The record's design as the tune simulated it; None if its file is missing, unreadable, or
    of another configuration (the caller then simulates it itself)."""
    document = _read_json(front_file(run_dir, record.index))
    if not isinstance(document, dict) or document.get("index") != record.index:
        return None
    if document.get("config") != record.config:
        return None
    try:
        return _simulation_from_dict(document["simulation"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _simulation_from_dict(document: dict) -> SimulationReport:
    layers = [LayerResult(**layer) for layer in document["layers"]]
    return SimulationReport(document["hardware"], document["model"], layers, document["area_mm2"])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
