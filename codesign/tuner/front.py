"""The front, simulated layer by layer: what the report draws of a run's best designs, persisted.

When a tune ends, the best design of every objective is simulated layer by layer with the cycle
model the tuner's cost model used (`cycle_model`: the event simulation under "auto", the closed
form under the tile rule; every offloaded layer tiled for the design as the cost model tiled
it), from the layer plans of the design's compression profile, which the evaluator holds:
nothing is imported, calibrated or lowered again. Files, each written atomically:

    RUN/front/layers.json   {"gemm_layers": [...]}: the model's GEMM layers (what compression
                            knobs name), so the report need not import the model
    RUN/front/eval_N.json   {"index": N, "config": {...}, "simulation": SimulationReport.to_dict()}
    RUN/front/sequential.json  per objective, the joint best design's sequential counterpart

The sequential counterpart (`write_sequential`) is the design a sequential flow would have chosen
for the objective, hardware first and compression second, each step keeping the best feasible
design for the objective (ties: the first in the order below):

1. hardware: the space's baseline compression (every comp.* knob at 8 bits / pruning 0.0, whether
   or not the space lists those choices) on every combination of the space's hw.* and sched.*
   knobs (the hardware and its mapping; the ALU multiplier's settings included when it is
   searched), enumerated in the space's order when
   there are at most MAX_ENUMERATED_HARDWARE of them, else SAMPLED_HARDWARE combinations drawn
   with a generator seeded with SEQUENTIAL_SEED; then the hardware of the run's records of that
   compression, so the step is never worse than a baseline design the run evaluated. All are
   costed with the baseline profile: the run's, or measured here when the run did not measure it
   (one accuracy evaluation per multiplier setting).
2. compression: that hardware fixed, the baseline compression and every compression setting of
   the run's records whose profile the run measured with the hardware's multiplier setting (a
   record of valid hardware with that setting and multiplier), costed on it.

So the counterpart reuses the run's accuracy evaluations: it is the sequential flow given the
same measured profiles (a resumed run's profiles measured before it resumed are not held, and so
not candidates). It may be a design the joint search never evaluated, and then it can beat the
joint best; the file says whether the run evaluated it. Its document, per objective:

    {"joint": {"index", "config", "metrics"},
     "hardware_step": {"config", "metrics"},                 # step 1's baseline-compression design
     "sequential": {"config", "metrics", "evaluation": N or null, "simulation": {...}}}
    or {"unavailable": why}; beside them "hardware_designs" (step 1's count) and "sampled".

The report reads them back with `read_front_layers`, `read_front_simulation` and `read_sequential`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np

from codesign.errors import CodesignError, HardwareError
from codesign.files import write_text_atomic
from codesign.hardware import HardwareSpec
from codesign.plan import LayerPlan
from codesign.schedules.mapper import select_tiling
from codesign.simulator.simulate import LayerResult, SimulationReport, simulate_plans
from codesign.tuner.database import Record
from codesign.tuner.profile_builder import CompressionProfile, profile_key
from codesign.tuner.space import OBJECTIVES, SearchSpace, is_design_knob
from codesign.tuner.tune import best_per_objective

FRONT_DIR = "front"
LAYERS_FILE = "layers.json"
SEQUENTIAL_FILE = "sequential.json"
MAX_ENUMERATED_HARDWARE = 20_000  # hardware combinations the sequential flow enumerates; above, it samples
SAMPLED_HARDWARE = 20_000
SEQUENTIAL_SEED = 0
# Per comp.<group>.<knob>: int8, nothing pruned
BASELINE_COMPRESSION = {"weight_bits": 8, "prune": 0.0}


def cycle_model(schedule: str) -> str:
    """The cycle model the tuner's figures are the simulator's by: under "auto" the mapper times
    each layer's chosen tiling with the event simulation (schedules.mapper), under the tile rule
    the closed form prices it."""
    return "event" if schedule == "auto" else "analytic"


def front_file(run_dir: str | Path, index: int) -> Path:
    return Path(run_dir) / FRONT_DIR / f"eval_{index}.json"


def write_front(run_dir: str | Path, space: SearchSpace, records: list[Record], evaluator) -> list[Path]:
    """Simulate the best design of every objective layer by layer into RUN/front/ (one file per
    distinct design, and layers.json); returns the files written. `evaluator` holds the
    profiles: `layers` (the model's GEMM layer names) and `profile(config, multiplier)`."""
    folder = _front_folder(run_dir)
    written = [_write_json(folder / LAYERS_FILE, {"gemm_layers": list(evaluator.layers)})]
    best = {record.index: record for record in best_per_objective(space, records).values()}
    for index, record in best.items():
        hw = space.hardware(record.config, name=f"eval_{index}")
        profile = evaluator.profile(record.config, hw.alu_has_multiplier)
        simulation = simulate_design(profile, hw, space.schedule_mode, space.grouped_convs(record.config))
        document = {"index": index, "config": record.config, "simulation": simulation.to_dict()}
        written.append(_write_json(front_file(run_dir, index), document))
    return written


def write_sequential(run_dir: str | Path, space: SearchSpace, records: list[Record], evaluator) -> Path:
    """RUN/front/sequential.json: the sequential counterpart of every objective's joint best
    design, chosen as the module's docstring says. `evaluator` is write_front's, which also has
    `evaluate_many(configs)` and `profiles`."""
    best = best_per_objective(space, records)
    hardware, sampled = hardware_combinations(space)
    int8_designs, int8_results = _hardware_step_designs(space, records, hardware, evaluator) if best else ([], [])
    objectives = {}
    for objective in space.objectives:
        if objective not in best:
            objectives[objective] = {"unavailable": "the run has no feasible design"}
            continue
        step = _best_position(objective, int8_designs, int8_results)
        if step is None:
            objectives[objective] = {"unavailable": "no design of the baseline compression (int8) is feasible"}
            continue
        joint = best[objective]
        objectives[objective] = {
            "joint": {"index": joint.index, "config": joint.config, "metrics": joint.metrics},
            "hardware_step": {"config": int8_designs[step], "metrics": int8_results[step]["metrics"]},
            "sequential": _compression_step(space, records, objective, int8_designs[step], evaluator),
        }
    document = {"hardware_designs": len(hardware), "sampled": sampled, "objectives": objectives}
    return _write_json(_front_folder(run_dir) / SEQUENTIAL_FILE, document)


def _hardware_step_designs(space: SearchSpace, records: list[Record], hardware: list[dict], evaluator):
    """Step 1's candidates, the baseline compression on each hardware combination and on the
    hardware of the run's baseline-compression records, and their results."""
    baseline = baseline_compression(space)
    baseline_key = space.compression(baseline, evaluator.layers).key()
    evaluated = [
        _hardware_part(r.config) for r in records if space.compression(r.config, evaluator.layers).key() == baseline_key
    ]
    designs = _distinct(space, [{**baseline, **hw} for hw in [*hardware, *evaluated]], evaluator.layers)
    return designs, evaluator.evaluate_many(designs)


def hardware_combinations(space: SearchSpace) -> tuple[list[dict], bool]:
    """The space's hardware and mapping knob combinations (hw.*, sched.*: in its order), or a
    seeded sample of them when there are more than MAX_ENUMERATED_HARDWARE; and whether they
    are sampled."""
    knobs = {name: choices for name, choices in space.knobs.items() if is_design_knob(name)}
    if math.prod(len(choices) for choices in knobs.values()) <= MAX_ENUMERATED_HARDWARE:
        return [dict(zip(knobs, values)) for values in itertools.product(*knobs.values())], False
    rng = np.random.default_rng(SEQUENTIAL_SEED)
    draws = [
        {name: choices[int(rng.integers(len(choices)))] for name, choices in knobs.items()}
        for _ in range(SAMPLED_HARDWARE)
    ]
    return list({space.key(draw): draw for draw in draws}.values()), True


def baseline_compression(space: SearchSpace) -> dict:
    """Every comp.* knob at int8 / unpruned (the knob's own equal choice when it lists one)."""
    baseline = {}
    for name, choices in space.knobs.items():
        if name.startswith("comp."):
            value = BASELINE_COMPRESSION[name.rsplit(".", 1)[1]]
            baseline[name] = next((choice for choice in choices if choice == value), value)
    return baseline


def _compression_step(
    space: SearchSpace, records: list[Record], objective: str, hardware_config: dict, evaluator
) -> dict:
    """The best feasible design for `objective` on step 1's hardware among its baseline compression
    and the compression settings of the run's records whose profile the run measured with this
    hardware's multiplier setting (and the evaluator holds)."""
    hardware = _hardware_part(hardware_config)
    multiplier = space.hardware(hardware).alu_has_multiplier
    measured = _measured_profiles(space, records, evaluator.layers)
    settings = [{**_compression_part(r.config), **hardware} for r in records]
    measured_settings = [
        design
        for design in settings
        if (key := profile_key(space.compression(design, evaluator.layers), multiplier)) in measured
        and key in evaluator.profiles
    ]
    designs = _distinct(space, [hardware_config, *measured_settings], evaluator.layers)
    results = evaluator.evaluate_many(designs)
    position = _best_position(objective, designs, results)  # step 1's design is feasible: never None
    config = designs[position]
    hw = space.hardware(config, name=f"sequential_{objective}")
    profile = evaluator.profile(config, hw.alu_has_multiplier)
    simulation = simulate_design(profile, hw, space.schedule_mode, space.grouped_convs(config))
    design_key = _design_key(space, config, evaluator.layers)
    evaluation = next((r.index for r in records if _design_key(space, r.config, evaluator.layers) == design_key), None)
    return {
        "config": config,
        "metrics": results[position]["metrics"],
        "evaluation": evaluation,
        "simulation": simulation.to_dict(),
    }


def _measured_profiles(space: SearchSpace, records: list[Record], layers: list[str]) -> set:
    """The profile keys of the run's records whose hardware is valid (the others measured nothing)."""
    measured = set()
    for record in records:
        try:
            multiplier = space.hardware(record.config).alu_has_multiplier
        except HardwareError:
            continue
        measured.add(profile_key(space.compression(record.config, layers), multiplier))
    return measured


def _best_position(objective: str, designs: list[dict], results: list[dict]) -> int | None:
    sign = -1 if OBJECTIVES[objective] == "max" else 1
    feasible = [i for i, result in enumerate(results) if result["feasible"]]
    return min(feasible, key=lambda i: (sign * results[i]["metrics"][objective], i), default=None)


def _distinct(space: SearchSpace, configs: list[dict], layers: list[str]) -> list[dict]:
    """The configurations without two of the same design, in their order."""
    distinct: dict[tuple, dict] = {}
    for config in configs:
        distinct.setdefault(_design_key(space, config, layers), config)
    return list(distinct.values())


def _design_key(space: SearchSpace, config: dict, layers: list[str]) -> tuple[str, str]:
    """What makes a configuration's design: its hardware knobs and its compression (knobs of a
    group that matches no layer change nothing)."""
    return space.key(_hardware_part(config)), space.compression(config, layers).key()


def _hardware_part(config: dict) -> dict:
    return {name: value for name, value in config.items() if is_design_knob(name)}


def _compression_part(config: dict) -> dict:
    return {name: value for name, value in config.items() if name.startswith("comp.")}


def simulate_design(
    profile: CompressionProfile, hw: HardwareSpec, schedule: str, grouped_convs: str = "cost"
) -> SimulationReport:
    """A design simulated layer by layer from its compression profile's plans for its core and
    grouped-conv placement (tiled under the space's `schedule` mode)."""
    return simulate_plans(plans_for_design(profile.plans(hw, grouped_convs), hw), hw, cycle_model(schedule))


def plans_for_design(plans: list[LayerPlan], hw: HardwareSpec) -> list[LayerPlan]:
    """A profile's plans for `hw`'s core geometry (CompressionProfile.plans) as lowering for `hw` writes them:
    every offloaded layer tiled for `hw`, kernels left for the simulator to schedule."""
    return [dataclasses.replace(plan, tiling=_tiling_for(plan, hw), kernel=None) for plan in plans]


def _tiling_for(plan: LayerPlan, hw: HardwareSpec):
    if plan.placement != "accel":
        return plan.tiling
    return select_tiling(plan.shape, hw, plan.alu_ops, plan.weight_bits, plan.schedule, plan.input_bits)


def _front_folder(run_dir: str | Path) -> Path:
    folder = Path(run_dir) / FRONT_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as err:
        raise CodesignError(f"{folder}: cannot create ({err.strerror})") from err
    return folder


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
        return simulation_from_dict(document["simulation"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def read_sequential(run_dir: str | Path) -> dict | None:
    """RUN/front/sequential.json (`write_sequential`'s document); None if missing or unreadable."""
    document = _read_json(Path(run_dir) / FRONT_DIR / SEQUENTIAL_FILE)
    if isinstance(document, dict) and isinstance(document.get("objectives"), dict):
        return document
    return None


def simulation_from_dict(document: dict) -> SimulationReport:
    """A SimulationReport from its `to_dict()` (KeyError, TypeError, ValueError or AttributeError
    when it is not one)."""
    layers = [LayerResult(**layer) for layer in document["layers"]]
    return SimulationReport(document["hardware"], document["model"], layers, document["area_mm2"])


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
