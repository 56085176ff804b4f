"""Simulated designs for the reports: a run's best designs simulated layer by layer the way the
tuner evaluated them (analytic cycle model, tuned schedules), or one compiled design."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codesign.errors import CodesignError
from codesign.hardware import HardwareSpec
from codesign.pipeline import plan_model
from codesign.report.run_data import RunData
from codesign.simulator.simulate import SimulationReport, simulate_plans

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
    settings = run.settings
    model, data = settings.get("model"), settings.get("data")
    for what, path in (("model", model), ("data", data)):
        if not path or not Path(path).exists():
            return [], f"the run's {what} file ({path or 'not recorded'}) is not available"
    samples = settings.get("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
    objectives_of: dict[int, list[str]] = {}
    for objective, record in run.best.items():
        objectives_of.setdefault(record.index, []).append(objective)
    records = {r.index: r for r in run.best.values()}
    designs = []
    try:
        for index, objectives in objectives_of.items():
            config = records[index].config
            hw = run.space.hardware(config, name=f"eval_{index}")
            compression = run.space.compression(config, run.layer_names)
            plans = plan_model(
                model, hw, run.input_shapes, data, samples, lambda m: None, compression, run.input_values
            )
            label = f"best {', '.join(objectives)} (evaluation {index})"
            designs.append(SimulatedDesign(label, hw, simulate_plans(plans, hw, "analytic")))
    except CodesignError as err:
        return [], f"simulating the best designs failed: {err}"
    return designs, None
