"""The report pages: a tuning run, or a single design."""

from __future__ import annotations

from pathlib import Path

from codesign.report import figures
from codesign.report.design_sim import Counterpart, SimulatedDesign, sequential_counterparts
from codesign.report.html import Code, Section, figure, note, page, preformatted, subheading, table
from codesign.report.run_data import RunData
from codesign.report.tables import (
    CODESIGN_NOTE,
    best_table,
    counterpart_hardware,
    counterpart_layers,
    counterpart_summary,
    counterpart_verdict,
    front_table,
    hardware_step_note,
    layer_table,
    settings_rows,
    totals_rows,
)

BREAKDOWN_NOTE = (
    "Latency: compute is the time the GEMM core or the ALU is busy; the rest of a layer's accelerator "
    "time (compute waiting for data) is split between load and store by how long each module was busy; "
    "host is the host CPU's work (its ops, or packing and unpacking an offloaded layer). Energy is the "
    "accelerator's (the host's is not modelled): load and store count DRAM traffic and the scratchpad "
    "accesses it causes, static is leakage."
)
ROOFLINE_NOTE = (
    "Useful operations (2 per MAC) per byte moved from DRAM, against the throughput the layer attains; "
    "the roofs are the GEMM core's peak and the DRAM port's bandwidth."
)


def run_page(run: RunData, designs: list[SimulatedDesign], designs_note: str | None) -> str:
    model = Path(run.settings.get("model", "model")).name
    feasible = len(run.feasible)
    subtitle = (
        f"{len(run.records):,} evaluations, {feasible:,} feasible, {len(run.front):,} on the Pareto front "
        f"({', '.join(run.space.objectives)})"
    )
    best_header, best_rows = best_table(run)
    front_header, front_rows = front_table(run)
    cloud_shown = min(feasible - len(run.front), figures.MAX_CLOUD_POINTS)
    sections = [
        Section("best", "Best design per objective", table(best_header, [_code_last(r) for r in best_rows])),
        Section(
            "pareto",
            "Pareto front",
            note(
                f"Every pair of objectives; red: the {len(run.front):,} Pareto-optimal designs over all objectives, "
                f"grey: {cloud_shown:,} of the {feasible - len(run.front):,} other feasible evaluations "
                "(evaluations.csv has them all). Hover a point for its configuration."
            )
            + _figure_or_note(figures.pareto_pairs(run), "pareto-pairs", _no_pairs(run)),
        ),
        Section(
            "knobs",
            "Knobs and objectives",
            note("Each line is a design; drag along an axis to filter. Red: the Pareto front.")
            + _figure_or_note(figures.knob_parallel_coordinates(run), "knobs-parcoords", "No feasible evaluation."),
        ),
        Section("layers", "Per-layer breakdown", _design_figures(designs, designs_note, "stages")),
        Section("roofline", "Roofline", _design_figures(designs, designs_note, "roofline")),
        Section("codesign", CODESIGN_HEADING, _codesign_body(run)),
        Section(
            "front-table",
            f"Pareto designs ({len(front_rows):,})",
            note("Each command compiles the design exactly as it was evaluated (files in designs/).")
            + table(front_header, [_code_last(r) for r in front_rows], scroll=True),
        ),
        Section(
            "settings",
            "Run settings",
            table(["setting", "value"], [list(r) for r in settings_rows(run)])
            + preformatted((run.run_dir / "space.toml").read_text())
            + note("Files: evaluations.csv (every evaluation), pareto.csv, pareto.json, database.jsonl, report.md."),
        ),
    ]
    return page(f"codesign tuning report: {model}", subtitle, sections)


CODESIGN_HEADING = "Co-design: joint against sequential"


def _codesign_body(run: RunData) -> str:
    counterparts, why_not = sequential_counterparts(run)
    if why_not is not None:
        return note(f"Not available: {why_not}.")
    parts = [note(CODESIGN_NOTE)]
    for objective, counterpart in counterparts.items():
        parts.append(subheading(objective))
        if isinstance(counterpart, str):
            parts.append(note(f"Not available: {counterpart}."))
        else:
            parts.append(_counterpart_body(run, counterpart))
    return "".join(parts)


def _counterpart_body(run: RunData, c: Counterpart) -> str:
    return (
        note(counterpart_verdict(c))
        + table(*counterpart_summary(run, c))
        + note(hardware_step_note(c))
        + table(*counterpart_hardware(run, c))
        + table(*counterpart_layers(run, c), scroll=True)
        + note(ROOFLINE_NOTE)
        + figure(figures.roofline([c.joint_design, c.design]), f"roofline-codesign-{c.objective}")
    )


def design_page(design: SimulatedDesign, context: list[tuple[str, str]]) -> str:
    """A single design: totals, per-layer breakdown, roofline, the layer table, the description."""
    layer_header, layer_rows = layer_table(design)
    sections = [
        Section("summary", "Summary", table(["", ""], [list(r) for r in [*context, *totals_rows(design)]])),
        Section("layers", "Per-layer breakdown", _design_figures([design], None, "stages")),
        Section("roofline", "Roofline", _design_figures([design], None, "roofline")),
        Section("layer-table", "Layers", table(layer_header, layer_rows, scroll=True)),
        Section("hardware", "Accelerator description", preformatted(design.hw.to_toml())),
    ]
    return page(f"codesign design report: {design.label}", f"{design.hw.gemm_shape} GEMM core", sections)


def _design_figures(designs: list[SimulatedDesign], why_not: str | None, kind: str) -> str:
    if not designs:
        return note(f"Not available: {why_not}.")
    if kind == "stages":
        return note(BREAKDOWN_NOTE) + figure(figures.stage_breakdown(designs), "layer-stages")
    return note(ROOFLINE_NOTE) + figure(figures.roofline(designs), "roofline-plot")


def _figure_or_note(fig, div_id: str, empty: str) -> str:
    return figure(fig, div_id) if fig is not None else note(empty)


def _no_pairs(run: RunData) -> str:
    return "One objective: no pairs to plot." if len(run.space.objectives) < 2 else "No feasible evaluation yet."


def _code_last(row: list) -> list:
    return [*row[:-1], Code(row[-1])]
