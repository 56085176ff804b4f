"""Open a report in headless Chromium as a reader would and check what they would see: the
page loads without console errors or network requests, and every plot is drawn (its marks exist
and its pixels are not blank). Needs Debian's chromium and chromium-driver, and the `test`
extra (selenium, pillow). Test tooling, not part of the package: used by
tests/test_report_browser.py and scripts/bench_report.py."""

from __future__ import annotations

import dataclasses
import io
import shutil
import time
from pathlib import Path

import numpy as np

from codesign.report.figures import FRONT_NAME

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    # Software WebGL (the parallel-coordinates plot) without a GPU.
    "--enable-unsafe-swiftshader",
    # This machine's network is closed: no background connections to refuse.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--window-size=1400,1000",
)
# Pixels a plot's marks colour: far from grey (the background, grid and axes are grey or white).
INK_CHROMA = 60

# Hovers the first point of the first trace named arguments[1] in plot arguments[0]; returns the
# text the hover label shows.
HOVER_JS = """
const gd = document.getElementById(arguments[0]);
const curve = gd.data.findIndex(t => t.name === arguments[1]);
if (curve < 0) return null;
Plotly.Fx.hover(gd, [{curveNumber: curve, pointNumber: 0}], 'xy');
const label = gd.querySelector('.hoverlayer .hovertext');
return label ? label.textContent : '';
"""

PLOTS_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id,
  ready: !!gd._fullLayout,
  svg_marks: gd.querySelectorAll('.scatterlayer path.point, .scatterlayer path.js-line, .barlayer path').length,
  canvases: Array.from(gd.querySelectorAll('.gl-container canvas'))
      .filter(c => c.width > 0 && c.height > 0).length,
}));
"""


@dataclasses.dataclass
class PlotCheck:
    div_id: str
    svg_marks: int
    canvases: int
    ink_pixels: int

    @property
    def rendered(self) -> bool:
        return (self.svg_marks > 0 or self.canvases > 0) and self.ink_pixels > 0


@dataclasses.dataclass
class PageCheck:
    open_seconds: float  # navigation start until every plot is drawn
    console_errors: list[str]
    resource_requests: list[str]  # anything the page fetched (an offline report fetches nothing)
    plots: list[PlotCheck]
    front_hover: str | None  # what hovering the first Pareto point shows (None: no such plot)


def chromium_missing() -> str | None:
    """Why the browser check cannot run here, or None."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian: apt-get install chromium chromium-driver)"
    try:
        import PIL  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install -e '.[test]')"
    return None


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def open_report(path: str | Path, screenshot: str | Path | None = None, timeout: float = 60.0) -> PageCheck:
    """Load the page, wait until every plot is drawn, check it; optionally save a full-page
    screenshot."""
    driver = _driver()
    try:
        start = time.perf_counter()
        driver.get(Path(path).resolve().as_uri())
        plots = _wait_for_plots(driver, start + timeout)
        open_seconds = time.perf_counter() - start
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        requests = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        checks = [PlotCheck(p["id"], p["svg_marks"], p["canvases"], _ink_pixels(driver, p["id"])) for p in plots]
        front_hover = _front_hover(driver, [p["id"] for p in plots])
        if screenshot is not None:
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(height + 120, 16000))
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(screenshot))
        return PageCheck(open_seconds, errors, requests, checks, front_hover)
    finally:
        driver.quit()


def _front_hover(driver, div_ids: list[str]) -> str | None:
    for div_id in div_ids:
        text = driver.execute_script(HOVER_JS, div_id, FRONT_NAME)
        if text is not None:
            return text
    return None


def _wait_for_plots(driver, deadline: float) -> list[dict]:
    while True:
        plots = driver.execute_script(PLOTS_JS)
        drawn = all(p["ready"] and (p["svg_marks"] or p["canvases"]) for p in plots)
        if (plots and drawn) or time.perf_counter() > deadline:
            return plots
        time.sleep(0.02)


def _ink_pixels(driver, div_id: str) -> int:
    from PIL import Image
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, div_id)
    driver.execute_script("arguments[0].scrollIntoView()", element)
    image = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB")).astype(int)
    chroma = image.max(axis=2) - image.min(axis=2)
    return int((chroma > INK_CHROMA).sum())
