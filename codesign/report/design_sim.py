"""Simulated designs for the reports: a run's best designs layer by layer the way the tuner
evaluated them (the tuner's cycle model and schedules), or one compiled design.

A run's designs are read from RUN/front/, which the tune wrote from the plans it held
(`codesign.tuner.front`). For a run without those files (written by an older codesign, or
interrupted before it ended), a design is simulated again the old way: the model imported,
calibrated on the run's data and lowered for the design.

The co-design comparison (`sequential_counterparts`) pairs each objective's joint best design with
its sequential counterpart, both as the tune simulated them (RUN/front/eval_N.json and
RUN/front/sequential.json); a run without sequential.json has no comparison.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codesign.errors import CodesignError
from codesign.hardware import HardwareSpec
from codesign.plan_cache import plan_model
from codesign.report.run_data import RunData
from codesign.simulator.simulate import SimulationReport, simulate_plans
from codesign.tuner.database import Record
from codesign.tuner.front import cycle_model, read_front_simulation, read_sequential, simulation_from_dict
from codesign.tuner.tune import record_design

DEFAULT_CALIBRATION_SAMPLES = 64  # what the tuner's evaluator calibrates on


@dataclasses.dataclass
class SimulatedDesign:
    label: str  # what the report calls it: "best latency (evaluation 12)"
    hw: HardwareSpec
    simulation: SimulationReport


def simulate_run_designs(run: RunData) -> tuple[list[SimulatedDesign], str | None]:
    """The best design of every objective (one entry per distinct design), simulated layer by
    layer with the cycle model the tuner used; or no designs and why not."""
    if not run.best:
        return [], "the run has no feasible design"
    objectives_of: dict[int, list[str]] = {}
    for objective, record in run.best.items():
        objectives_of.setdefault(record.index, []).append(objective)
    records = {r.index: r for r in run.best.values()}
    persisted = {index: read_front_simulation(run.run_dir, records[index]) for index in objectives_of}
    missing = [records[index] for index, simulation in persisted.items() if simulation is None]
    simulated_again, why_not = _simulate_again(run, missing)
    if why_not is not None:
        return [], why_not
    designs = []
    for index, objectives in objectives_of.items():
        hw = run.space.hardware(records[index].config, name=f"eval_{index}")
        label = f"best {', '.join(objectives)} (evaluation {index})"
        designs.append(SimulatedDesign(label, hw, persisted[index] or simulated_again[index]))
    return designs, None


@dataclasses.dataclass
class Counterpart:
    """An objective's joint best design beside its sequential counterpart."""

    objective: str
    joint: Record
    joint_design: SimulatedDesign
    config: dict  # the sequential design's configuration ...
    metrics: dict  # ... and metrics, as the tuner's evaluator gave them
    design: SimulatedDesign
    evaluation: int | None  # the run's evaluation of the sequential design (None: not evaluated)
    hardware_step: dict  # metrics of step 1's design: the baseline compression on the chosen hardware
    hardware_designs: int  # how many hardware combinations step 1 costed ...
    sampled: bool  # ... sampled from the space rather than all of them

    def same_design(self) -> bool:
        return self.evaluation == self.joint.index or self.config == self.joint.config


def sequential_counterparts(run: RunData) -> tuple[dict[str, Counterpart | str], str | None]:
    """Per objective its Counterpart, or why there is none; or nothing and why (no
    RUN/front/sequential.json: a run tuned by an older codesign, or one that did not end)."""
    document = read_sequential(run.run_dir)
    if document is None:
        return (
            {},
            "the run has no front/sequential.json (a tune writes it when it ends; older codesign did not)",
        )
    counterparts = {}
    for objective in run.space.objectives:
        entry = document["objectives"].get(objective)
        counterparts[objective] = _counterpart(run, objective, entry, document)
    return counterparts, None


def _counterpart(run: RunData, objective: str, entry, document: dict) -> Counterpart | str:
    if not isinstance(entry, dict):
        return "the tune did not compare it"
    if "unavailable" in entry:
        return str(entry["unavailable"])
    joint = run.best.get(objective)
    try:
        if joint is None or entry["joint"]["index"] != joint.index:
            return "the run's records changed since the tune compared its designs"
        sequential = entry["sequential"]
        simulation = simulation_from_dict(sequential["simulation"])
        config, metrics = dict(sequential["config"]), dict(sequential["metrics"])
        hardware_step = dict(entry["hardware_step"]["metrics"])
        hardware_designs, sampled = int(document["hardware_designs"]), bool(document["sampled"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return "front/sequential.json is unreadable"
    joint_simulation = read_front_simulation(run.run_dir, joint)
    if joint_simulation is None:
        return f"front/eval_{joint.index}.json is missing"
    joint_hw = run.space.hardware(joint.config, name=f"eval_{joint.index}")
    hw = run.space.hardware(config, name=f"sequential_{objective}")
    return Counterpart(
        objective,
        joint,
        SimulatedDesign(f"joint: best {objective} (evaluation {joint.index})", joint_hw, joint_simulation),
        config,
        metrics,
        SimulatedDesign(f"sequential: best {objective}, hardware first", hw, simulation),
        sequential.get("evaluation"),
        hardware_step,
        hardware_designs,
        sampled,
    )


def _simulate_again(run: RunData, records: list[Record]) -> tuple[dict[int, SimulationReport], str | None]:
    """Designs the run did not persist, simulated from the model (imported, calibrated on the
    run's data and lowered for each design); or none and why not."""
    if not records:
        return {}, None
    settings = run.settings
    model, data = settings.get("model"), settings.get("data")
    for what, path in (("model", model), ("data", data)):
        if not path or not Path(path).exists():
            return {}, f"the run's {what} file ({path or 'not recorded'}) is not available"
    samples = settings.get("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
    simulations = {}
    try:
        for record in records:
            hw = run.space.hardware(record.config, name=f"eval_{record.index}")
            compression = record_design(run.space, record, run.layer_names).compression  # placements pinned
            plans = plan_model(
                model, hw, run.input_shapes, data, samples, lambda m: None, compression, run.input_values
            )
            simulations[record.index] = simulate_plans(plans, hw, cycle_model(run.space.schedule_mode))
    except CodesignError as err:
        return {}, f"simulating the best designs failed: {err}"
    return simulations, None
