"""Per-layer simulation of a design: a hardware description plus compression choices, the way
the tuner evaluated it (analytic cycle model, tuned schedules) or as compiled (any model)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codesign.compression import CompressionConfig
from codesign.errors import CodesignError
from codesign.hardware import HardwareSpec
from codesign.lowering import LayerPlan
from codesign.report.run_data import RunData
from codesign.simulator.simulate import SimulationReport, simulate_plans

DEFAULT_CALIBRATION_SAMPLES = 64  # what the tuner's evaluator calibrates on


@dataclasses.dataclass
class SimulatedDesign:
    label: str  # what the report calls it: "best latency (evaluation 12)"
    hw: HardwareSpec
    simulation: SimulationReport


def lowered_plans(
    model, hw: HardwareSpec, compression: CompressionConfig, calibration, calibration_samples, input_shapes=None
) -> list[LayerPlan]:
    from codesign.importer import import_onnx
    from codesign.lowering import lower_to_relax
    from codesign.pipeline import quantize_model

    imported = import_onnx(model, input_shapes)
    _, qgraph, _ = quantize_model(
        imported, hw, calibration, calibration_samples, warn=lambda m: None, compression=compression
    )
    return lower_to_relax(qgraph, imported, hw, compression).plans


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
    shapes = {name: tuple(dims) for name, dims in settings.get("input_shapes", {}).items()} or None
    samples = settings.get("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
    objectives_of: dict[int, list[str]] = {}
    for objective, record in run.best.items():
        objectives_of.setdefault(record.index, []).append(objective)
    records = {r.index: r for r in run.best.values()}
    designs = []
    try:
        from codesign.tuner.evaluator import gemm_layer_names

        layers = gemm_layer_names(model, shapes)
        for index, objectives in objectives_of.items():
            config = records[index].config
            hw = run.space.hardware(config, name=f"eval_{index}")
            plans = lowered_plans(model, hw, run.space.compression(config, layers), data, samples, shapes)
            label = f"best {', '.join(objectives)} (evaluation {index})"
            designs.append(SimulatedDesign(label, hw, simulate_plans(plans, hw, "analytic")))
    except CodesignError as err:
        return [], f"simulating the best designs failed: {err}"
    return designs, None
