"""Tuned designs whose cores differ in geometry simulate, as compiled modules, to what the tuner
recorded: the host's work and the core's shapes are planned for each design's own batch and
blocks, and the placements chosen on the space's base hardware are pinned in every design.

mobilenetv2_mini has host ops on blocked tensors (depthwise convs on the host, a residual add of
24 channels: padded to 32 on 16- and 32-wide blocks) and narrow-group convs whose placement is
decided by modelled cost. A seeded `codesign tune` over batch, blocks, int4 weights, the ALU
multiplier and where the depthwise convs run (`sched.grouped_convs`: by the base's cost, or on
the core; swept with the hardware, as it changes no integer) records designs; designs of as
many core geometries as it reached are compiled with
`codesign compile --design` and simulated with `codesign simulate`, and so are the best designs
the report draws. Latency, host seconds, energy and area equal the records bit for bit, the
report's per-layer simulations equal the modules', and the host seconds differ between
geometries (a profile priced by its base hardware's host work alone would record one value for
them all). And the two placements compute the same outputs, which is why the tuner measures
one profile for both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.deploy import load, read_manifest
from codesign.design import Design
from codesign.tuner.database import Database
from codesign.tuner.front import FRONT_DIR, cycle_model
from codesign.tuner.run_files import DATABASE_FILE, SETTINGS_FILE
from codesign.tuner.tune import design_file_name

MODEL = Path(__file__).parent / "models" / "mobilenetv2_mini.onnx"
SHAPE = ["--input-shape", "input=1,3,32,32"]
SPACE = """
objectives = ["latency", "energy", "accuracy"]
[hardware]
base = "vta_default"
batch = [1, 2]
block_in = [8, 16, 32]
block_out = [8, 16, 32]
alu_multiplier = [true, false]
[compression]
weight_bits = [8, 4]
[schedule]
mode = "auto"
grouped_convs = ["cost", "core"]
"""
GEOMETRIES = 5  # designs compiled, each of another core geometry
GROUPED = {"conv2d_2", "conv2d_5", "conv2d_8"}  # the depthwise convs


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, its data) of a finished `codesign tune`."""
    folder = tmp_path_factory.mktemp("tune_geometry")
    rng = np.random.default_rng(0)
    data = folder / "data.npz"
    np.savez(data, input=rng.standard_normal((24, 3, 32, 32)).astype(np.float32), labels=rng.integers(0, 10, 24))
    space = folder / "space.toml"
    space.write_text(SPACE)
    out = folder / "run"
    argv = ["tune", str(MODEL), "--space", str(space), "--data", str(data), "-o", str(out), *SHAPE]
    argv += ["--budget", "16", "--batch-size", "8", "--strategy", "random", "--seed", "3"]
    assert main(argv) == 0
    return out, data


def geometry(design: dict) -> tuple:
    gemm = design["hardware"]["gemm"]
    return gemm["batch"], gemm["block_in"], gemm["block_out"]


@pytest.fixture(scope="module")
def compiled(run, tmp_path_factory) -> dict[int, tuple]:
    """Evaluation -> (record, design, manifest, `simulate --json`) of feasible designs of
    distinct geometries, of the best designs the report draws (RUN/front/) and of one with
    every depthwise conv on the core."""
    run, data = run
    records = {r.index: r for r in Database(run / DATABASE_FILE).load()}
    by_geometry = {}
    for record in records.values():
        if record.feasible:
            by_geometry.setdefault(geometry(record.design), record.index)
    best = [json.loads(path.read_text())["index"] for path in (run / FRONT_DIR).glob("eval_*.json")]
    on_core = next(r.index for r in records.values() if r.feasible and r.config["sched.grouped_convs"] == "core")
    chosen = sorted({*list(by_geometry.values())[:GEOMETRIES], *best, on_core})
    samples = json.loads((run / SETTINGS_FILE).read_text())["calibration_samples"]
    modules = tmp_path_factory.mktemp("geometry_modules")
    results = {}
    for index in chosen:
        design_file, module = run / design_file_name(index), modules / f"eval_{index}"
        argv = ["compile", str(MODEL), "--design", str(design_file), *SHAPE, "-o", str(module), "--quiet"]
        argv += ["--calibration", str(data), "--calibration-samples", str(samples)]
        assert main(argv) == 0
        design = Design.load(design_file)
        sim = modules / f"eval_{index}.json"
        assert main(["simulate", str(module), "--model", cycle_model(design.schedule), "--json", str(sim)]) == 0
        results[index] = (records[index], design, read_manifest(module), json.loads(sim.read_text()))
    return results


def test_designs_of_several_geometries_pin_the_base_placements(compiled):
    """Placed by cost, the depthwise convs go where the base puts them (its host) whatever the
    design's geometry; with grouped_convs = "core", every one goes to the core."""
    assert len({geometry(record.design) for record, _, _, _ in compiled.values()}) >= GEOMETRIES
    by_knob = {"cost": set(), "core": set()}
    for record, design, manifest, _ in compiled.values():
        host_convs = design.compression.host_convs
        by_knob[record.config["sched.grouped_convs"]].add(host_convs)
        placed = {layer["name"]: layer["placement"] for layer in manifest["layers"]}
        grouped = [name for name in placed if name in GROUPED]
        assert [placed[name] for name in grouped] == ["host" if name in host_convs else "accel" for name in grouped]
        assert manifest["compression"] == design.compression.to_dict()
    assert len(by_knob["cost"]) == 1 and next(iter(by_knob["cost"])), "the base places them on its host"
    assert by_knob["core"] == {()}


def test_each_module_simulates_to_its_record_exactly(compiled):
    for record, _, _, simulation in compiled.values():
        totals = simulation["totals"]
        simulated = {
            "latency": totals["latency_seconds"],
            "accelerator_seconds": totals["accelerator_seconds"],
            "host_seconds": totals["host_seconds"],
            "energy": totals["energy_joules"],
            "area": totals["area_mm2"],
        }
        assert simulated == {key: record.metrics[key] for key in simulated}, f"evaluation {record.index}"


def test_the_host_work_depends_on_the_geometry(compiled):
    host_seconds = {geometry(record.design): record.metrics["host_seconds"] for record, _, _, _ in compiled.values()}
    assert len(set(host_seconds.values())) > 1, host_seconds


def test_the_report_simulates_the_best_designs_as_their_modules(run, compiled):
    """The report's per-layer simulations (RUN/front/, from the profiles' plans for each
    design's geometry) are the modules', layer for layer."""
    front_files = sorted((run[0] / FRONT_DIR).glob("eval_*.json"))
    assert front_files
    for path in front_files:
        persisted = json.loads(path.read_text())
        assert persisted["simulation"] == compiled[persisted["index"]][3], path.name


def test_where_the_grouped_convs_run_changes_no_output(run, compiled, tmp_path):
    """A design with every depthwise conv on the core, and the same design with them on the
    host where the base puts them, compute the same outputs: the tuner measures one profile's
    accuracy for both placements (tuner.profile_builder)."""
    run_dir, data = run
    values = list(compiled.values())
    _, on_core, _, _ = next(v for v in values if v[0].config["sched.grouped_convs"] == "core")
    host_convs = next(v[1].compression.host_convs for v in values if v[0].config["sched.grouped_convs"] == "cost")
    on_host = Design(on_core.hardware, dataclasses.replace(on_core.compression, host_convs=host_convs))
    samples = json.loads((run_dir / SETTINGS_FILE).read_text())["calibration_samples"]
    inputs = np.load(data)["input"][:4]
    outputs = {}
    for name, design in (("core", on_core), ("host", on_host)):
        design_file, module = tmp_path / f"{name}.json", tmp_path / name
        design.save(design_file)
        argv = ["compile", str(MODEL), "--design", str(design_file), *SHAPE, "-o", str(module), "--quiet"]
        assert main([*argv, "--calibration", str(data), "--calibration-samples", str(samples)]) == 0
        placed = {layer["name"]: layer["placement"] for layer in read_manifest(module)["layers"]}
        on_the_host = host_convs if name == "host" else ()
        assert {conv: placed[conv] for conv in GROUPED} == {c: "host" if c in on_the_host else "accel" for c in GROUPED}
        deployed = load(module)
        outputs[name] = [deployed.run(inputs[i : i + 1])[0] for i in range(len(inputs))]
    for core_output, host_output in zip(outputs["core"], outputs["host"]):
        np.testing.assert_array_equal(core_output, host_output)
