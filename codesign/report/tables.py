"""Rows shared by the HTML page, the Markdown summary and the CSVs: units, configurations, the
command that reproduces a design, per-layer breakdowns and run settings."""

from __future__ import annotations

import shlex

from codesign.hardware import HardwareSpec
from codesign.report.design_sim import DEFAULT_CALIBRATION_SAMPLES, Counterpart, SimulatedDesign
from codesign.report.run_data import RunData
from codesign.tuner.database import Record
from codesign.tuner.space import OBJECTIVES, is_design_knob
from codesign.units import axis_title, format_objective, objective_unit

# Metric -> CSV column (SI units, as the database holds them).
METRIC_COLUMNS = {
    "latency": "latency_s",
    "energy": "energy_j",
    "edp": "edp_js",
    "area": "area_mm2",
    "accuracy": "accuracy_pct",
    "accelerator_seconds": "accelerator_s",
    "host_seconds": "host_s",
}


def format_knob(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_lines(run: RunData, config: dict) -> list[str]:
    return [f"{knob} = {format_knob(config[knob])}" for knob in run.space.knobs]


def compile_command(run: RunData, record: Record) -> str:
    settings = run.settings
    words = ["codesign", "compile", settings.get("model", "MODEL.onnx")]
    words += ["--design", str(run.design_path(record))]
    if settings.get("data"):
        samples = settings.get("calibration_samples", DEFAULT_CALIBRATION_SAMPLES)
        words += ["--calibration", settings["data"], "--calibration-samples", str(samples)]
    for name, dims in (run.input_shapes or {}).items():
        words += ["--input-shape", f"{name}={','.join(str(d) for d in dims)}"]
    for name, values in (run.input_values or {}).items():
        words += ["--input-value", f"{name}={','.join(values)}"]
    words += ["-o", f"eval_{record.index}"]
    return shlex.join(words)


def evaluation_header(run: RunData) -> list[str]:
    return ["index", "batch", "feasible", "reason", *METRIC_COLUMNS.values(), *run.space.knobs]


def evaluation_row(run: RunData, record: Record) -> list:
    metrics = [record.metrics.get(name, "") for name in METRIC_COLUMNS]
    knobs = [record.config[k] for k in run.space.knobs]
    return [record.index, record.batch, record.feasible, record.reason or "", *metrics, *knobs]


LAYER_HEADER = [
    "layer",
    "op",
    "runs_on",
    "shape",
    "macs",
    "dram_bytes",
    "cycles",
    "utilization",
    "bound",
    "load_s",
    "compute_s",
    "store_s",
    "host_s",
    "energy_load_pj",
    "energy_compute_pj",
    "energy_store_pj",
    "energy_static_pj",
]


def layer_rows(design: SimulatedDesign) -> list[list]:
    rows = []
    for layer in design.simulation.layers:
        energy = layer.stage_energy_pj or {}
        rows.append(
            [
                layer.name,
                layer.op,
                "accelerator" if layer.placement == "accel" else "host",
                layer.shape,
                layer.macs,
                layer.dram_bytes,
                layer.cycles,
                layer.utilization,
                layer.bound,
                *(layer.stage_seconds[s] for s in ("load", "compute", "store", "host")),
                *(energy.get(s, 0.0) for s in ("load", "compute", "store", "static")),
            ]
        )
    return rows


def settings_rows(run: RunData) -> list[tuple[str, str]]:
    s = run.settings
    rows = [
        ("model", s.get("model", "?")),
        ("data", s.get("data", "?")),
        ("search space", f"{s.get('space', '?')} ({_count(run.space.size())} configurations, copy in space.toml)"),
        ("objectives", ", ".join(run.space.objectives)),
        ("constraints", ", ".join(f"{k} = {v}" for k, v in run.space.constraints.items()) or "none"),
        ("strategy", s.get("strategy", "?")),
        ("budget", f"{s.get('budget', '?')} (evaluations recorded: {len(run.records):,})"),
        ("seed", str(s.get("seed", "?"))),
        ("parallel jobs", f"{s.get('jobs', '?')} ({s.get('executor', '?')} executor)"),
    ]
    if "wall_seconds" in s:
        rows.append(("wall time", f"{s['wall_seconds']:.1f} s"))
    else:
        rows.append(("wall time", "not recorded (the run has not finished)"))
    versions = ", ".join(f"{k.removesuffix('_version')} {v}" for k, v in s.items() if k.endswith("_version"))
    rows.append(("versions", versions or "not recorded"))
    return rows


# ---- display tables (HTML and Markdown render the same rows) ---------------------------------


def objective_units(run: RunData) -> dict[str, tuple[float, str]]:
    """(scale, unit) of every objective, from its feasible values."""
    return {o: objective_unit(o, [r.metrics[o] for r in run.feasible]) for o in run.space.objectives}


def best_table(run: RunData) -> tuple[list[str], list[list]]:
    units = objective_units(run)
    header = ["best", "value", "evaluation", "configuration", "reproduce"]
    rows = []
    for objective, record in run.best.items():
        scale, unit = units[objective]
        value = f"{record.metrics[objective] / scale:.4g} {unit}"
        config = ", ".join(config_lines(run, record.config))
        rows.append([objective, value, record.index, config, compile_command(run, record)])
    return header, rows


def front_table(run: RunData) -> tuple[list[str], list[list]]:
    """The Pareto designs, ordered by the first objective."""
    units = objective_units(run)
    first = run.space.objectives[0]
    ordered = sorted(run.front, key=lambda r: (r.metrics[first], r.index))
    header = ["evaluation", *(axis_title(o, units[o][1]) for o in run.space.objectives), *run.space.knobs]
    header.append("reproduce")
    rows = [
        [
            r.index,
            *(r.metrics[o] / units[o][0] for o in run.space.objectives),
            *(format_knob(r.config[k]) for k in run.space.knobs),
            compile_command(run, r),
        ]
        for r in ordered
    ]
    return header, rows


def layer_table(design: SimulatedDesign) -> tuple[list[str], list[list]]:
    header = ["layer", "runs on", "shape", "MACs", "cycles", "util", "bound"]
    header += ["load µs", "compute µs", "store µs", "host µs", "energy µJ"]
    rows = []
    for layer in design.simulation.layers:
        energy = (layer.energy_pj or {}).get("total", 0.0) * 1e-6
        stages = [layer.stage_seconds[s] * 1e6 for s in ("load", "compute", "store", "host")]
        on_accel = layer.placement == "accel"
        rows.append(
            [
                layer.name,
                "accelerator" if on_accel else "host",
                layer.shape,
                layer.macs,
                round(layer.cycles) if on_accel else "",
                f"{100 * layer.utilization:.1f} %" if on_accel else "",
                layer.bound,
                *stages,
                energy,
            ]
        )
    return header, rows


def totals_rows(design: SimulatedDesign) -> list[tuple[str, str]]:
    t = design.simulation.totals()
    return [
        ("latency", f"{t['latency_seconds'] * 1e3:.4g} ms"),
        ("  on the accelerator", f"{t['accelerator_seconds'] * 1e3:.4g} ms ({t['accelerator_cycles']:,.0f} cycles)"),
        ("  on the host", f"{t['host_seconds'] * 1e3:.4g} ms"),
        ("accelerator energy", f"{t['energy_joules'] * 1e6:.4g} µJ"),
        ("area", f"{t['area_mm2']:.4g} mm²"),
        ("MACs on the accelerator", f"{t['macs']:,}"),
        ("DRAM traffic", f"{t['dram_bytes']:,} B"),
    ]


# ---- co-design: joint against sequential ------------------------------------------------------

CODESIGN_NOTE = (
    "The sequential counterpart is what a hardware-first flow picks for the same objective: the best "
    "feasible hardware for the int8, unpruned model, then, that hardware fixed, the best of the "
    "compression profiles the run measured (the same accuracy evaluations). Per layer: a layer whose "
    "MACs per DRAM byte are below its hardware's ridge point (peak MACs per cycle for its weight width "
    "/ DRAM bytes per cycle) cannot reach the core's peak for want of bandwidth; above it, only compute "
    "limits it. The bound column is "
    "the simulator's, which also counts a core the layer fills poorly (a layer can be compute-bound "
    "below the ridge)."
)


def ratio_text(sequential: float, joint: float) -> str:
    """sequential / joint, as the report shows it."""
    return f"{sequential / joint:.3f}" if joint else "n/a"


def counterpart_verdict(c: Counterpart) -> str:
    """One sentence: which design wins, by how much, and whether they are the same design."""
    joint, sequential = c.joint.metrics[c.objective], c.metrics[c.objective]
    both = f"sequential {format_objective(c.objective, sequential)}, joint {format_objective(c.objective, joint)}"
    ratio = ratio_text(sequential, joint)
    if c.same_design():
        return (
            f"The joint design equals the sequential one (evaluation {c.joint.index}): for {c.objective}, "
            f"co-design finds what choosing hardware first, then compression, finds ({both})."
        )
    better = -1 if OBJECTIVES[c.objective] == "max" else 1
    if sequential == joint:
        return f"The two designs tie on {c.objective} ({both}; ratio {ratio})."
    if better * (sequential - joint) > 0:
        return f"The joint design wins on {c.objective}: sequential / joint = {ratio} ({both})."
    unseen = "; the joint search never evaluated it" if c.evaluation is None else ""
    return f"The sequential design is better on {c.objective}: sequential / joint = {ratio} ({both}){unseen}."


def hardware_step_note(c: Counterpart) -> str:
    """How the sequential flow chose its hardware."""
    costed = f"{c.hardware_designs:,} {'sampled ' if c.sampled else ''}hardware combinations"
    where = f"evaluation {c.evaluation} of the run" if c.evaluation is not None else "not evaluated by the run"
    return (
        f"Sequential, hardware first: the best {c.objective} over {costed} (and the run's int8, unpruned "
        f"designs) with every layer int8 and unpruned; then the best compression on that hardware. "
        f"The sequential design is {where}."
    )


def counterpart_summary(run: RunData, c: Counterpart) -> tuple[list[str], list[list]]:
    """Every objective of both designs, their ratio, and the hardware step's int8 design."""
    units = objective_units(run)
    header = ["metric", "joint", "sequential", "sequential / joint", "hardware step (int8, unpruned)"]
    rows = []
    for objective in run.space.objectives:
        scale, unit = units[objective]
        values = (c.joint.metrics[objective], c.metrics[objective], c.hardware_step[objective])
        name = f"{objective} (the objective)" if objective == c.objective else objective
        joint, sequential, step = (f"{value / scale:.4g} {unit}" for value in values)
        rows.append([name, joint, sequential, ratio_text(values[1], values[0]), step])
    return header, rows


def counterpart_hardware(run: RunData, c: Counterpart) -> tuple[list[str], list[list]]:
    """The hardware knobs side by side (a difference marked), and what they give: peak, bandwidth, ridge."""
    header = ["hardware", "joint", "sequential", ""]
    rows = []
    for knob in (k for k in run.space.knobs if is_design_knob(k)):
        joint, sequential = format_knob(c.joint.config[knob]), format_knob(c.config[knob])
        rows.append([knob, joint, sequential, "differs" if joint != sequential else ""])
    for name, value_of in DERIVED_HARDWARE.items():
        joint, sequential = value_of(c.joint_design.hw), value_of(c.design.hw)
        rows.append([name, joint, sequential, "differs" if joint != sequential else ""])
    return header, rows


DERIVED_HARDWARE = {
    "peak MACs per cycle (int8)": lambda hw: hw.macs_per_cycle,
    "DRAM bytes per cycle": lambda hw: f"{hw.dram_bytes_per_cycle:g}",
    "ridge point (MACs per DRAM byte, int8)": lambda hw: f"{ridge_point(hw, 8):.3g}",
}


def ridge_point(hw: HardwareSpec, weight_bits: int) -> float:
    """MACs per DRAM byte above which a layer of this weight width is compute-bound on `hw`."""
    return hw.for_layer_weights(weight_bits).macs_per_cycle / hw.dram_bytes_per_cycle


COUNTERPART_LAYER_HEADER = [
    "layer",
    "shape",
    "MACs joint / seq.",
    "weight bits joint / seq.",
    "pruned joint / seq.",
    "cycles joint",
    "cycles seq.",
    "bound joint / seq.",
    "MAC/B joint (ridge)",
    "MAC/B seq. (ridge)",
]


def counterpart_layers(run: RunData, c: Counterpart) -> tuple[list[str], list[list]]:
    """The accelerated layers of both designs: precision, pruning, cycles, bound and intensity
    against each design's ridge point for the layer's weight width."""
    joint_compression = run.space.compression(c.joint.config, run.layer_names)
    compression = run.space.compression(c.config, run.layer_names)
    sequential_layers = {layer.name: layer for layer in c.design.simulation.layers}
    rows = []
    for joint in c.joint_design.simulation.layers:
        sequential = sequential_layers.get(joint.name)
        if sequential is None or "accel" not in (joint.placement, sequential.placement):
            continue
        bits = (joint_compression.weight_bits.get(joint.name, 8), compression.weight_bits.get(joint.name, 8))
        pruned = (joint_compression.prune.get(joint.name, 0.0), compression.prune.get(joint.name, 0.0))
        rows.append(
            [
                joint.name,
                joint.shape,
                f"{joint.macs:,} / {sequential.macs:,}",
                f"{bits[0]} / {bits[1]}",
                f"{pruned[0]:.0%} / {pruned[1]:.0%}",
                round(joint.cycles),
                round(sequential.cycles),
                f"{joint.bound or 'host'} / {sequential.bound or 'host'}",
                _intensity(joint, c.joint_design.hw, bits[0]),
                _intensity(sequential, c.design.hw, bits[1]),
            ]
        )
    return COUNTERPART_LAYER_HEADER, rows


def _intensity(layer, hw: HardwareSpec, weight_bits: int) -> str:
    if layer.placement != "accel" or not layer.dram_bytes:
        return "host"
    return f"{layer.macs / layer.dram_bytes:.3g} ({ridge_point(hw, weight_bits):.3g})"


def _count(number: int) -> str:
    """An exact count with thousands separators, or in powers of ten when it is astronomical."""
    return f"{number:,}" if number < 10**12 else f"{float(number):.3g}"
