"""Tuned designs, compiled as a user compiles them, simulate to the figures the tuner recorded.

A small seeded `codesign tune` of mnist-8 over hardware, int4 weights and pruning, once per
schedule mode. The designs of its Pareto front, its best design per objective, and pruned and
int4 ones are compiled with `codesign compile --design RUN/designs/eval_N.json` (calibrated on
the run's data and as many samples as the run's settings.json says, as the report does: pruning
refits weights to the calibration samples, and the weights decide the ALU program) and simulated
with `codesign simulate MODULE --json`.

- With the cycle model the tuner prices designs with (the closed form under the tile rule, the
  event simulation under "auto": `cycle_model`), latency, energy and area equal the record
  bit for bit: the tuner and the simulator sum the same per-layer figures in the same order
  (the module's plans are lowered for the design; the tuner's are the design's compression
  profile tiled for the design by the same mapper).
- The other cycle model agrees within the 5 % the two are held to (test_cost_model_agreement).
- The report's per-layer simulations of the best designs (RUN/front/) are the modules', layer
  for layer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.deploy import read_manifest
from codesign.design import Design
from codesign.simulator.simulate import MODELS
from codesign.tuner.database import Database
from codesign.tuner.front import FRONT_DIR, cycle_model
from codesign.tuner.run_files import DATABASE_FILE, SETTINGS_FILE
from codesign.tuner.tune import design_file_name

MNIST = Path(__file__).resolve().parent.parent / "codesign" / "data" / "mnist-8.onnx"
MODEL_AGREEMENT = 0.05  # the event and analytic cycle models, on every offloaded layer
# Small scratchpads and narrow blocks among the choices: layers split into several tiles,
# with and without virtual threads.
SPACE = """
objectives = ["latency", "energy", "area", "accuracy"]
[hardware]
base = "vta_default"
batch = [1, 2]
block_in = [8, 16]
block_out = [8, 16, 32]
inp_buffer_kib = [2, 32]
wgt_buffer_kib = [16, 256]
acc_buffer_kib = [4, 128]
dram_bytes_per_cycle = [4, 16]
clock_mhz = [100, 250]
alu_multiplier = [true, false]
[compression]
weight_bits = [8, 4]
prune = [0.0, 0.25, 0.5]
[schedule]
mode = "{mode}"
"""


@dataclasses.dataclass
class CompiledDesign:
    """A recorded design, compiled to a module and simulated with each cycle model."""

    index: int
    metrics: dict  # what the tuner recorded
    design: Design
    manifest: dict
    simulations: dict[str, dict]  # cycle model -> `codesign simulate --json` of the module


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory, mnist_test_set):
    path = tmp_path_factory.mktemp("tuned_designs") / "mnist_eval.npz"
    images, labels = mnist_test_set
    np.savez(path, Input3=images[:100, 0], labels=labels[:100])
    return path


@pytest.fixture(scope="module", params=["auto"])  # the spaces' mode; "rule" plans are checked in test_simulator
def tuned_run(request, tmp_path_factory, eval_data) -> tuple[Path, str]:
    """(run directory, schedule mode) of a finished `codesign tune`."""
    folder = tmp_path_factory.mktemp(f"tune_{request.param}")
    space = folder / "space.toml"
    space.write_text(SPACE.format(mode=request.param))
    run = folder / "run"
    argv = ["tune", str(MNIST), "--space", str(space), "--data", str(eval_data), "-o", str(run)]
    argv += ["--budget", "12", "--batch-size", "6", "--strategy", "random", "--seed", "2", "--eval-samples", "100"]
    assert main(argv) == 0
    return run, request.param


@pytest.fixture(scope="module")
def compiled(tuned_run, eval_data, tmp_path_factory) -> list[CompiledDesign]:
    run, _ = tuned_run
    records = {r.index: r for r in Database(run / DATABASE_FILE).load()}
    modules = tmp_path_factory.mktemp("modules")
    return [compile_and_simulate(run, records[index], eval_data, modules) for index in chosen_indices(run, records)]


def chosen_indices(run: Path, records: dict) -> list[int]:
    """The front, the best design of each objective (those the report draws), and the first
    feasible pruned and int4 designs."""
    front = [row["index"] for row in json.loads((run / "pareto.json").read_text())]
    best = [json.loads(path.read_text())["index"] for path in sorted((run / FRONT_DIR).glob("eval_*.json"))]
    feasible = [r for r in records.values() if r.feasible]
    pruned = next(r.index for r in feasible if r.design["compression"]["prune"])
    int4 = next(r.index for r in feasible if 4 in r.design["compression"]["weight_bits"].values())
    return sorted({*front, *best, pruned, int4})


def compile_and_simulate(run: Path, record, data: Path, modules: Path) -> CompiledDesign:
    design_file = run / design_file_name(record.index)
    module = modules / f"eval_{record.index}"
    samples = json.loads((run / SETTINGS_FILE).read_text())["calibration_samples"]
    compile_args = ["compile", str(MNIST), "--design", str(design_file), "--calibration", str(data)]
    compile_args += ["--calibration-samples", str(samples)]
    assert main([*compile_args, "-o", str(module), "--quiet"]) == 0
    simulations = {model: simulate(module, model) for model in MODELS}
    return CompiledDesign(record.index, record.metrics, Design.load(design_file), read_manifest(module), simulations)


def simulate(module: Path, model: str) -> dict:
    path = module.with_name(f"{module.name}.{model}.json")
    assert main(["simulate", str(module), "--model", model, "--json", str(path), "--quiet"]) == 0
    return json.loads(path.read_text())


def test_the_designs_vary_hardware_compression_and_schedule(tuned_run, compiled):
    _, mode = tuned_run
    designs = [c.design for c in compiled]
    assert any(d.compression.prune for d in designs)
    assert any(4 in d.compression.weight_bits.values() for d in designs)
    assert len({(d.hardware.batch, d.hardware.block_in, d.hardware.block_out) for d in designs}) > 1
    for c in compiled:  # the module is the design: its hardware, compression and schedule
        assert c.design.schedule == mode
        assert c.manifest["hardware"]["sha256"] == c.design.hardware.fingerprint()
        assert c.manifest["compression"] == c.design.compression.to_dict()
        assert {layer["schedule"] for layer in c.manifest["layers"] if layer["placement"] == "accel"} == {mode}


def other_model(schedule: str) -> str:
    return next(model for model in MODELS if model != cycle_model(schedule))


def test_the_module_simulates_to_the_tuner_record_exactly(compiled):
    for c in compiled:
        totals = c.simulations[cycle_model(c.design.schedule)]["totals"]
        simulated = {
            "latency": totals["latency_seconds"],
            "accelerator_seconds": totals["accelerator_seconds"],
            "host_seconds": totals["host_seconds"],
            "energy": totals["energy_joules"],
            "edp": totals["edp_joule_seconds"],
            "area": totals["area_mm2"],
        }
        assert simulated == {key: c.metrics[key] for key in simulated}, f"evaluation {c.index}"


def test_the_other_cycle_model_agrees_within_the_models_tolerance(compiled):
    for c in compiled:
        totals = c.simulations[other_model(c.design.schedule)]["totals"]
        assert totals["accelerator_seconds"] == pytest.approx(c.metrics["accelerator_seconds"], rel=MODEL_AGREEMENT)
        assert totals["energy_joules"] == pytest.approx(c.metrics["energy"], rel=MODEL_AGREEMENT)
        assert totals["area_mm2"] == c.metrics["area"]


def test_the_report_simulates_the_best_designs_as_their_modules(tuned_run, compiled):
    run, _ = tuned_run
    modules = {c.index: c for c in compiled}
    front_files = sorted((run / FRONT_DIR).glob("eval_*.json"))
    assert front_files
    for path in front_files:
        persisted = json.loads(path.read_text())
        module = modules[persisted["index"]]
        assert persisted["simulation"] == module.simulations[cycle_model(module.design.schedule)], path.name
