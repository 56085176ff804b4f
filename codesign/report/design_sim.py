"""Simulated designs for the reports: a run's best designs layer by layer the way the tuner
evaluated them (analytic cycle model, tuned schedules), or one compiled design.

A run's designs are read from RUN/front/, which the tune wrote from the plans it held
(`codesign.tuner.front`). For a run without those files (written by an older codesign, or
interrupted before it ended), a design is simulated again the old way: the model imported,
calibrated on the run's data and lowered for the design.
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
from codesign.tuner.front import CYCLE_MODEL, read_front_simulation

DEFAULT_CALIBRATION_SAMPLES = 64  # what the tuner's evaluator calibrates on


@dataclasses.dataclass
class SimulatedDesign:
    label: str  # what the report calls it: "best latency (evaluation 12)"
    hw: HardwareSpec
    simulation: SimulationReport


def simulate_run_designs(run: RunData) -> tuple[list[SimulatedDesign], str | None]:
    """The best design of every objective (one entry per distinct design), simulated layer by
    layer with the analytic model the tuner used; or no designs and why not."""
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
            compression = run.space.compression(record.config, run.layer_names)
            plans = plan_model(
                model, hw, run.input_shapes, data, samples, lambda m: None, compression, run.input_values
            )
            simulations[record.index] = simulate_plans(plans, hw, CYCLE_MODEL)
    except CodesignError as err:
        return {}, f"simulating the best designs failed: {err}"
    return simulations, None
