"""Write reports; every file is written atomically, so a report is the old one or the new one,
never half of one."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from codesign.errors import DeployError
from codesign.files import write_text_atomic as write_text
from codesign.report.design_sim import SimulatedDesign, simulate_run_designs
from codesign.report.markdown import design_markdown, run_markdown
from codesign.report.pages import design_page, run_page
from codesign.report.run_data import RunData, load_run
from codesign.report.tables import LAYER_HEADER, evaluation_header, evaluation_row, layer_rows


def write_run_report(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> RunData:
    """RUN/report.html, report.md, evaluations.csv, pareto.csv and designs/ for every Pareto
    and best design (the files its `codesign compile` command names); `warn` gets the
    database's warnings (default: printed to stderr)."""
    run = load_run(run_dir, warn)
    write_design_files(run)
    designs, why_not = simulate_run_designs(run)
    header = evaluation_header(run)
    write_text(run.run_dir / "evaluations.csv", _csv(header, [evaluation_row(run, r) for r in run.records]))
    write_text(run.run_dir / "pareto.csv", _csv(header, [evaluation_row(run, r) for r in run.front]))
    write_text(run.run_dir / "report.md", run_markdown(run, designs, why_not))
    write_text(run.run_dir / "report.html", run_page(run, designs, why_not))
    return run


def write_design_files(run: RunData) -> None:
    records = {r.index: r for r in [*run.front, *run.best.values()]}
    model = run.settings.get("model")
    if not records or not model or not Path(model).exists():
        return
    (run.run_dir / "designs").mkdir(exist_ok=True)
    for record in records.values():
        hw = run.space.hardware(record.config, name=f"eval_{record.index}")
        header = f"# codesign tune: evaluation {record.index} of {run.run_dir}\n"
        write_text(run.design_path(record, ".toml"), header + hw.to_toml())
        compression = run.space.compression(record.config, run.layer_names)
        write_text(run.design_path(record, ".json"), json.dumps(compression.to_dict(), indent=2) + "\n")


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
