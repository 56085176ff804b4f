"""The reports as a person sees them: opened in headless Chromium (Debian's chromium and
chromium-driver; .ci/run installs them), with no console errors, nothing fetched from the
network, every plot drawn, and a screenshot saved to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TEST_MODELS

from codesign.cli import main
from codesign.report.browser_check import chromium_missing, open_report

ARTIFACTS = Path(__file__).parent / "artifacts"
MISSING = chromium_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no headless browser: {MISSING}")


def check_page(page: Path, screenshot: Path, plots: set[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    check = open_report(page, screenshot)
    assert check.console_errors == []
    assert check.resource_requests == []
    assert {p.div_id for p in check.plots} == plots
    assert [p.div_id for p in check.plots if not p.rendered] == []
    assert screenshot.stat().st_size > 20_000


def test_run_report_renders_in_chromium(tuned_run):
    plots = {"pareto-pairs", "knobs-parcoords", "layer-stages", "roofline-plot"}
    check_page(tuned_run / "report.html", ARTIFACTS / "report_run.png", plots)


def test_design_report_renders_in_chromium(tmp_path, mnist_calibration):
    argv = ["simulate", str(TEST_MODELS["mnist"][0]), "--hw", "edge_1x8x8", "--calibration", str(mnist_calibration)]
    assert main([*argv, "--report", str(tmp_path)]) == 0
    check_page(tmp_path / "report.html", ARTIFACTS / "report_design.png", {"layer-stages", "roofline-plot"})
