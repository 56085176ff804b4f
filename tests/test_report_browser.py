"""The reports as a person sees them: opened in headless Chromium (Debian's chromium and
chromium-driver; .ci/run installs them), with no console errors, nothing fetched from the
network, every plot drawn, and a screenshot saved to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_check import chromium_missing, open_report
from conftest import TEST_MODELS

from codesign.cli import main
from codesign.report.run_data import load_run

ARTIFACTS = Path(__file__).parent / "artifacts"
MISSING = chromium_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no headless browser: {MISSING}")


def check_page(page: Path, screenshot: Path, plots: set[str]):
    ARTIFACTS.mkdir(exist_ok=True)
    check = open_report(page, screenshot)
    assert check.console_errors == []
    assert check.resource_requests == []
    assert {p.div_id for p in check.plots} == plots
    assert [p.div_id for p in check.plots if not p.rendered] == []
    assert screenshot.stat().st_size > 20_000
    return check


def test_run_report_renders_in_chromium(tuned_run):
    plots = {"pareto-pairs", "knobs-parcoords", "layer-stages", "roofline-plot"}
    plots |= {f"roofline-codesign-{objective}" for objective in load_run(tuned_run).space.objectives}
    check = check_page(tuned_run / "report.html", ARTIFACTS / "report_run.png", plots)
    # Hovering a Pareto point shows the design: its evaluation, objectives and every knob.
    first = load_run(tuned_run).front[0]  # the front is drawn in evaluation order
    for text in (f"evaluation {first.index}", "latency = ", f"hw.block_in = {first.config['hw.block_in']}"):
        assert text in check.front_hover
    assert "comp.all.prune = " in check.front_hover


def test_design_report_renders_in_chromium(tmp_path, mnist_calibration):
    argv = ["simulate", str(TEST_MODELS["mnist"][0]), "--hw", "edge_1x8x8", "--calibration", str(mnist_calibration)]
    assert main([*argv, "--report", str(tmp_path)]) == 0
    check = check_page(tmp_path / "report.html", ARTIFACTS / "report_design.png", {"layer-stages", "roofline-plot"})
    assert check.front_hover is None
