"""Write reports; every file is written atomically, so a report is the old one or the new one,
never half of one."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from codesign.errors import DeployError
from codesign.files import write_text_atomic as write_text
from codesign.report.design_sim import SimulatedDesign, simulate_run_designs
from codesign.report.markdown import design_markdown, run_markdown
from codesign.report.pages import design_page, run_page
from codesign.report.run_data import RunData, load_run
from codesign.report.tables import LAYER_HEADER, evaluation_header, evaluation_row, layer_rows
from codesign.tuner.tune import record_design, write_design_files


def write_run_report(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> RunData:
    """RUN/report.html, report.md, evaluations.csv and pareto.csv (and, for a run from before
    designs were recorded, designs/eval_N.json of the Pareto and best designs, which its
    `codesign compile --design` commands name); `warn` gets the database's warnings (default:
    printed to stderr)."""
    run = load_run(run_dir, warn)
    write_missing_design_files(run)
    designs, why_not = simulate_run_designs(run)
    header = evaluation_header(run)
    write_text(run.run_dir / "evaluations.csv", _csv(header, [evaluation_row(run, r) for r in run.records]))
    write_text(run.run_dir / "pareto.csv", _csv(header, [evaluation_row(run, r) for r in run.front]))
    write_text(run.run_dir / "report.md", run_markdown(run, designs, why_not))
    write_text(run.run_dir / "report.html", run_page(run, designs, why_not))
    return run


def write_missing_design_files(run: RunData) -> None:
    """designs/eval_N.json of the Pareto and best designs, for a run whose tune did not write them
    (codesign before designs were recorded): the files the report's `compile --design` commands name."""
    records = {r.index: r for r in [*run.front, *run.best.values()]}
    missing = {i: r for i, r in records.items() if not run.design_path(r).exists()}
    model = run.settings.get("model")
    if not missing or not model or not Path(model).exists():  # its GEMM layers come from the model
        return
    designs = {i: d for i, r in missing.items() if (d := record_design(run.space, r, run.layer_names)) is not None}
    write_design_files(run.run_dir, designs)


def write_design_report(out_dir: str | Path, design: SimulatedDesign, context: list[tuple[str, str]]) -> Path:
    """OUT/report.html, report.md and layers.csv for one simulated design."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeployError(f"{out_dir}: cannot create the report directory ({err.strerror})") from err
    write_text(out_dir / "layers.csv", _csv(LAYER_HEADER, layer_rows(design)))
    write_text(out_dir / "report.md", design_markdown(design, context))
    write_text(out_dir / "report.html", design_page(design, context))
    return out_dir / "report.html"


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
