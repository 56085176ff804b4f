"""Progress of compile and simulate: the stages in order with their counts, a live display on a
terminal only, and none with --quiet."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from codesign import cache, cli
from codesign.demo import MNIST_MODEL
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.plan_cache import plan_model
from codesign.progress import reporting


class Recorder:
    def __init__(self):
        self.stages: list[list] = []  # [name, total, items done]

    def stage(self, name, total):
        self.stages.append([name, total, 0])

    def advance(self):
        self.stages[-1][2] += 1


@pytest.fixture
def no_cache(monkeypatch):
    monkeypatch.setenv(cache.NO_CACHE_ENV, "1")  # calibration runs, so its samples are counted


def test_compile_and_plan_report_each_stage_with_its_items(mnist_calibration, no_cache):
    hw = load_hardware("vta_default")
    with reporting(Recorder()) as recorder:
        compile_model(MNIST_MODEL, hw, calibration=mnist_calibration, calibration_samples=16)
    # mnist-8 offloads its 2 convs and its matmul
    stages = [
        ["import", None, 0],
        ["calibrate", 16, 16],
        ["correct biases", 3, 3],
        ["schedule", 3, 3],
        ["build", None, 0],
    ]
    assert recorder.stages == stages
    with reporting(Recorder()) as recorder:
        plan_model(MNIST_MODEL, hw, calibration=mnist_calibration, calibration_samples=8)
    assert recorder.stages == [
        ["import", None, 0],
        ["calibrate", 8, 8],
        ["schedule", 3, 3],
    ]  # plans need no bias values


@pytest.mark.parametrize(
    ("terminal", "quiet", "shown"), [(True, False, True), (True, True, False), (False, False, False)]
)
def test_the_live_display_is_on_a_terminal_only_and_off_with_quiet(
    tmp_path, monkeypatch, mnist_calibration, no_cache, terminal, quiet, shown
):
    screen = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=terminal, width=120))
    argv = ["simulate", str(MNIST_MODEL), "--hw", "vta_default", "--calibration", str(mnist_calibration)]
    assert cli.main([*argv, *(["--quiet"] if quiet else [])]) == 0
    output = screen.getvalue()
    assert "latency" in output  # the simulation is printed either way
    assert ("calibrate" in output and "schedule" in output) == shown
