"""report.md: the summary tables for a pull request or a notebook."""

from __future__ import annotations

from pathlib import Path

from codesign.report.design_sim import SimulatedDesign, sequential_counterparts
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

MAX_FRONT_ROWS = 50


def _cell(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).replace("|", "\\|")
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _with_code(rows: list[list]) -> list[list]:
    return [[*row[:-1], f"`{row[-1]}`"] for row in rows]


def run_markdown(run: RunData, designs: list[SimulatedDesign], designs_note: str | None) -> str:
    model = Path(run.settings.get("model", "model")).name
    header, rows = best_table(run)
    front_header, front_rows = front_table(run)
    parts = [
        f"# codesign tuning report: {model}",
        f"{len(run.records):,} evaluations, {len(run.feasible):,} feasible, {len(run.front):,} on the Pareto front. "
        "Plots: report.html; every evaluation: evaluations.csv; the front: pareto.csv.",
        md_table(["setting", "value"], [list(r) for r in settings_rows(run)]),
        "## Best design per objective",
        md_table(header, _with_code(rows)),
        f"## Pareto front ({len(front_rows):,} designs)",
    ]
    if len(front_rows) > MAX_FRONT_ROWS:
        parts.append(f"The first {MAX_FRONT_ROWS} by {run.space.objectives[0]}; pareto.csv has all of them.")
    parts.append(md_table(front_header, _with_code(front_rows[:MAX_FRONT_ROWS])))
    if designs:
        for design in designs:
            parts += [f"## Per-layer breakdown: {design.label}", md_table(*layer_table(design))]
    else:
        parts.append(f"Per-layer breakdown not available: {designs_note}.")
    parts += codesign_markdown(run)
    return "\n\n".join(parts) + "\n"


def codesign_markdown(run: RunData) -> list[str]:
    """The co-design section: per objective, the joint design against its sequential counterpart."""
    parts = ["## Co-design: joint against sequential"]
    counterparts, why_not = sequential_counterparts(run)
    if why_not is not None:
        return [*parts, f"Not available: {why_not}."]
    parts.append(CODESIGN_NOTE + " Rooflines of both designs: report.html.")
    for objective, c in counterparts.items():
        parts.append(f"### {objective}")
        if isinstance(c, str):
            parts.append(f"Not available: {c}.")
            continue
        parts += [
            counterpart_verdict(c),
            md_table(*counterpart_summary(run, c)),
            hardware_step_note(c),
            md_table(*counterpart_hardware(run, c)),
            md_table(*counterpart_layers(run, c)),
        ]
    return parts


def design_markdown(design: SimulatedDesign, context: list[tuple[str, str]]) -> str:
    parts = [
        f"# codesign design report: {design.label}",
        md_table(["", ""], [list(r) for r in [*context, *totals_rows(design)]]),
        "## Layers",
        md_table(*layer_table(design)),
    ]
    return "\n\n".join(parts) + "\n"
