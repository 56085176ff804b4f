"""Design-space exploration reports: what a tuning run's report holds, checked against the
run's database, an independent Pareto computation and the tuner's own measurements."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
import sys

import numpy as np
import pytest
from conftest import TEST_MODELS

from codesign.cli import main
from codesign.deploy import read_manifest
from codesign.design import Design
from codesign.plan import LayerPlan
from codesign.report.design_sim import simulate_run_designs
from codesign.report.run_data import _space_of_run, load_run
from codesign.simulator.simulate import simulate_plans
from codesign.tuner.database import Database

MNIST = TEST_MODELS["mnist"][0]


def read_csv(path) -> list[dict]:
    with path.open() as rows:
        return list(csv.DictReader(rows))


def nondominated(points: np.ndarray) -> np.ndarray:
    """Brute force: a point stays unless another is no worse everywhere and better somewhere."""
    keep = np.ones(len(points), dtype=bool)
    for i, p in enumerate(points):
        dominated = np.all(points <= p, axis=1) & np.any(points < p, axis=1)
        keep[i] = not dominated.any()
    return keep


def test_tune_writes_a_self_contained_report(tuned_run):
    page = (tuned_run / "report.html").read_text()
    assert re.findall(r"<(?:script|link|img)[^>]*(?:src|href)\s*=", page) == []  # nothing fetched
    assert page.count("plotly.js v") == 1  # the library, inlined once
    for div in ("pareto-pairs", "knobs-parcoords", "layer-stages", "roofline-plot"):
        assert f'id="{div}"' in page
    for section in ("Best design per objective", "Pareto designs", "Run settings", "space.toml"):
        assert section in page
    settings = json.loads((tuned_run / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["budget"] == 16 and settings["wall_seconds"] > 0
    assert f"{settings['wall_seconds']:.1f} s" in page and "tvm 0.27" in page


def test_csvs_hold_every_evaluation_and_an_independently_computed_front(tuned_run):
    records = Database(tuned_run / "database.jsonl").load()
    rows = read_csv(tuned_run / "evaluations.csv")
    assert [int(r["index"]) for r in rows] == [r.index for r in records]
    for row, record in zip(rows, records):
        assert (row["feasible"] == "True") == record.feasible
        if record.feasible:
            assert float(row["latency_s"]) == record.metrics["latency"]
            assert float(row["accuracy_pct"]) == record.metrics["accuracy"]
            assert int(row["hw.block_in"]) == record.config["hw.block_in"]
    feasible = [r for r in records if r.feasible]
    points = np.array(
        [[r.metrics["latency"], r.metrics["energy"], r.metrics["area"], -r.metrics["accuracy"]] for r in feasible]
    )
    expected = {r.index for r, keep in zip(feasible, nondominated(points)) if keep}
    assert {int(r["index"]) for r in read_csv(tuned_run / "pareto.csv")} == expected
    summary = (tuned_run / "report.md").read_text()
    assert f"## Pareto front ({len(expected)} designs)" in summary
    assert all(f"| {index} |" in summary for index in expected)


def test_per_layer_breakdown_adds_up_to_what_the_tuner_measured(tuned_run):
    run = load_run(tuned_run)
    designs, why_not = simulate_run_designs(run)
    assert why_not is None
    assert {d.label for d in designs} == {
        f"best {', '.join(o for o, r in run.best.items() if r.index == index)} (evaluation {index})"
        for index in {r.index for r in run.best.values()}
    }
    for design in designs:
        index = int(re.search(r"evaluation (\d+)", design.label).group(1))
        metrics = next(r.metrics for r in run.records if r.index == index)
        layers = design.simulation.layers
        assert sum(sum(layer.stage_seconds.values()) for layer in layers) == pytest.approx(metrics["latency"], rel=1e-6)
        energy = sum(sum(layer.stage_energy_pj.values()) for layer in layers) * 1e-12
        assert energy == pytest.approx(metrics["energy"], rel=1e-6)


def test_a_pareto_command_compiles_the_design_it_lists(tuned_run, tmp_path, monkeypatch):
    run = load_run(tuned_run)
    record = run.front[0]
    summary = (tuned_run / "report.md").read_text()
    command = re.search(rf"`(codesign compile [^`]*-o eval_{record.index})`", summary).group(1)
    assert f"--design {tuned_run}/designs/eval_{record.index}.json" in command
    # The report wrote over none of the tune's design files: each is still a whole design.
    files = sorted((tuned_run / "designs").iterdir())
    assert [f.name for f in files] == sorted(f"eval_{r.index}.json" for r in run.records if r.design is not None)
    assert all(Design.load(f).hardware.fingerprint() for f in files)
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    module = tmp_path / f"eval_{record.index}"
    plans = [LayerPlan.from_dict(layer) for layer in read_manifest(module)["layers"]]
    hw = run.space.hardware(record.config)
    totals = simulate_plans(plans, hw, "analytic").totals()
    assert totals["latency_seconds"] == pytest.approx(record.metrics["latency"], rel=1e-6)
    assert totals["energy_joules"] == pytest.approx(record.metrics["energy"], rel=1e-6)


def test_report_of_an_interrupted_run_without_its_model(tuned_run, tmp_path, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("database.jsonl", "space.toml"):
        shutil.copy(tuned_run / name, copy / name)
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert "Not available: the run&#x27;s model file (not recorded) is not available." in page
    assert 'id="pareto-pairs"' in page
    assert len(read_csv(copy / "evaluations.csv")) == 16
    assert "Wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "no such run directory"),
        (lambda d: d, "no database.jsonl; not a `codesign tune` run directory"),
    ],
)
def test_report_rejects_what_is_not_a_run_in_one_line(make, message, tmp_path, capsys):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "report.html").exists()


def test_simulate_and_compile_write_a_single_design_report(tmp_path, mnist_calibration):
    report = tmp_path / "sim_report"
    argv = ["simulate", str(MNIST), "--hw", "vta_default", "--calibration", str(mnist_calibration)]
    assert main([*argv, "--json", str(tmp_path / "sim.json"), "--report", str(report)]) == 0
    totals = json.loads((tmp_path / "sim.json").read_text())["totals"]
    layers = read_csv(report / "layers.csv")
    stages = sum(float(r[f"{s}_s"]) for r in layers for s in ("load", "compute", "store", "host"))
    assert stages == pytest.approx(totals["latency_seconds"], rel=1e-9)
    assert [r["layer"] for r in layers if r["runs_on"] == "accelerator"] == ["conv2d_0", "conv2d_1", "matmul_0"]
    page = (report / "report.html").read_text()
    assert 'id="layer-stages"' in page and 'id="roofline-plot"' in page and "[gemm]" in page
    assert "conv2d_1" in (report / "report.md").read_text()

    compiled = tmp_path / "compiled_report"
    argv = ["compile", str(MNIST), "--hw", "vta_default", "--calibration", str(mnist_calibration)]
    assert main([*argv, "-o", str(tmp_path / "module"), "--report", str(compiled)]) == 0
    assert read_csv(compiled / "layers.csv") == layers  # the same design, event model both times


def test_report_of_a_run_without_a_feasible_design(tuned_run, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(tuned_run / "space.toml", copy / "space.toml")
    shutil.copy(tuned_run / "settings.json", copy / "settings.json")
    lines = []
    for line in (tuned_run / "database.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.update(feasible=False, reason="area 9 mm2 > 1")
        lines.append(json.dumps(record) + "\n")
    (copy / "database.jsonl").write_text("".join(lines))
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert "No feasible evaluation yet." in page and "the run has no feasible design" in page
    assert read_csv(copy / "pareto.csv") == [] and len(read_csv(copy / "evaluations.csv")) == 16


def per_layer_sections(summary: str) -> list[str]:
    return [part for part in summary.split("\n## ") if part.startswith("Per-layer breakdown")]


def test_the_persisted_front_equals_the_designs_simulated_again(tuned_run, tmp_path):
    """The tune writes its best designs per layer to RUN/front/; the report reads them, and they
    are what importing, calibrating and lowering each design again (an older run's path) gives."""
    run = load_run(tuned_run)
    assert all((tuned_run / "front" / f"eval_{r.index}.json").exists() for r in run.best.values())
    persisted, why_not = simulate_run_designs(run)
    older = tmp_path / "older_run"  # the same run without front/, as an older codesign wrote it
    older.mkdir()
    for name in ("database.jsonl", "space.toml", "settings.json"):
        shutil.copy(tuned_run / name, older / name)
    simulated_again, why_not_again = simulate_run_designs(load_run(older))
    assert why_not is None and why_not_again is None and persisted
    assert [d.label for d in persisted] == [d.label for d in simulated_again]
    assert [d.simulation.to_dict() for d in persisted] == [d.simulation.to_dict() for d in simulated_again]
    assert main(["report", str(older)]) == 0
    unavailable = "Not available: the run has no front/sequential.json"
    assert unavailable in (older / "report.md").read_text() and unavailable in (older / "report.html").read_text()
    sections = per_layer_sections((tuned_run / "report.md").read_text())
    assert sections and sections == per_layer_sections((older / "report.md").read_text())


def test_report_of_a_run_with_its_front_neither_imports_nor_compiles_the_model(tuned_run, tmp_path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(tuned_run, copy)
    (copy / "report.md").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("the report imported or compiled the model")

    stages = (
        "import_onnx",
        "import_model",
        "compile_model",
        "plan_model",
        "quantize_model",
        "lower_to_relax",
        "plan_layers",
    )
    for name, module in list(sys.modules.items()):
        for stage in stages:
            if name.startswith("codesign") and hasattr(module, stage):
                monkeypatch.setattr(module, stage, refuse)
    assert main(["report", str(copy)]) == 0
    summary = (copy / "report.md").read_text()
    labels = {f"Per-layer breakdown: {d.label}" for d in simulate_run_designs(load_run(copy))[0]}
    assert labels and {section.split("\n")[0] for section in per_layer_sections(summary)} == labels
    assert per_layer_sections(summary) == per_layer_sections((tuned_run / "report.md").read_text())
    assert 'id="layer-stages"' in (copy / "report.html").read_text()


def codesign_section(summary: str, objective: str) -> str:
    section = summary.split("## Co-design: joint against sequential")[1]
    return section.split(f"### {objective}\n")[1].split("\n### ")[0].strip()


def test_the_report_compares_each_joint_best_with_its_sequential_counterpart(tuned_run):
    """RUN/front/sequential.json against the run's records: the joint design is the run's best,
    the hardware step is no worse than any int8, unpruned design the run evaluated, compression
    on that hardware only improves on it, and the report shows the ratio recomputed here."""
    records = Database(tuned_run / "database.jsonl").load()
    document = json.loads((tuned_run / "front" / "sequential.json").read_text())
    summary, page = (tuned_run / "report.md").read_text(), (tuned_run / "report.html").read_text()
    feasible = [r for r in records if r.feasible]
    int8 = [r for r in feasible if (r.config["comp.all.weight_bits"], r.config["comp.all.prune"]) == (8, 0.0)]
    assert int8 and document["hardware_designs"] == 32
    for objective, sign in (("latency", 1), ("energy", 1), ("area", 1), ("accuracy", -1)):
        entry = document["objectives"][objective]
        joint = min(feasible, key=lambda r: (sign * r.metrics[objective], r.index))
        assert entry["joint"]["index"] == joint.index
        step, sequential = entry["hardware_step"], entry["sequential"]
        assert sign * step["metrics"][objective] <= min(sign * r.metrics[objective] for r in int8)
        assert sign * sequential["metrics"][objective] <= sign * step["metrics"][objective]
        hardware = {k: v for k, v in step["config"].items() if k.startswith("hw.")}
        assert hardware.items() <= sequential["config"].items()
        evaluated = [r for r in records if r.config == sequential["config"]]
        if evaluated:
            assert evaluated[0].metrics == sequential["metrics"]
            assert sign * joint.metrics[objective] <= sign * sequential["metrics"][objective]
        else:
            assert sequential["evaluation"] is None
        ratio = f"{sequential['metrics'][objective] / joint.metrics[objective]:.3f}"
        section = codesign_section(summary, objective)
        row = next(line for line in section.splitlines() if line.startswith(f"| {objective} (the objective) |"))
        assert row.split(" | ")[3] == ratio
        difference = sign * (sequential["metrics"][objective] - joint.metrics[objective])
        verdict = "joint design wins" if difference > 0 else "sequential design is better" if difference < 0 else "tie"
        if sequential["config"] == joint.config:
            verdict = f"The joint design equals the sequential one (evaluation {joint.index})"
        assert verdict in section
        if difference < 0:  # a design the joint search never evaluated
            assert not evaluated and "the joint search never evaluated it" in section
        cells = rf"<td>{objective} \(the objective\)</td><td>[^<]*</td><td>[^<]*</td><td>{ratio}</td>"
        assert re.search(cells, page) and f'id="roofline-codesign-{objective}"' in page


def test_a_joint_design_equal_to_its_sequential_counterpart_is_said_plainly(tuned_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tuned_run, copy)
    path = copy / "front" / "sequential.json"
    document = json.loads(path.read_text())
    entry = document["objectives"]["latency"]
    joint = json.loads((copy / "front" / f"eval_{entry['joint']['index']}.json").read_text())
    entry["sequential"] = {**entry["joint"], "evaluation": entry["joint"]["index"], "simulation": joint["simulation"]}
    path.write_text(json.dumps(document))
    assert main(["report", str(copy)]) == 0
    section = codesign_section((copy / "report.md").read_text(), "latency")
    assert section.startswith(f"The joint design equals the sequential one (evaluation {entry['joint']['index']})")
    assert "| latency (the objective) |" in section and " | 1.000 | " in section
    assert "differs" not in section.split("| layer |")[0]


@pytest.mark.parametrize(
    ("recorded", "prune_knobs"),
    [(["conv2d_0"], ["comp.conv2d_0.prune"]), (None, ["comp.conv2d_0.prune", "comp.matmul_0.prune"])],
)
def test_the_report_rebuilds_a_per_layer_space_with_the_prune_knobs_the_tune_had(tmp_path, recorded, prune_knobs):
    """settings.json records the layers a per-layer space gave a prune knob; a run written before
    that was recorded gets one on every layer, as its tune did."""
    (tmp_path / "space.toml").write_text(
        '[hardware]\nbase = "vta_default"\nblock_in = [8, 16]\n\n'
        "[compression]\nweight_bits = [8, 4]\nprune = [0.0, 0.5]\nper_layer = true\n"
    )
    settings = {"layers": ["conv2d_0", "matmul_0"], **({"prunable_layers": recorded} if recorded else {})}
    space = _space_of_run(tmp_path, settings)
    assert [k for k in space.knobs if k.endswith(".prune")] == prune_knobs
    bits_knobs = [k for k in space.knobs if k.endswith(".weight_bits")]
    assert bits_knobs == ["comp.conv2d_0.weight_bits", "comp.matmul_0.weight_bits"]


@pytest.mark.parametrize(
    ("recorded", "pruned"), [(["conv2d_0"], {"conv2d_0": 0.5}), (None, {"conv2d_0": 0.5, "matmul_0": 0.5})]
)
def test_the_report_gives_a_group_space_s_prune_ratio_to_the_layers_the_tune_pruned(tmp_path, recorded, pruned):
    """A group's prune ratio reaches only the layers whose pruning acts (settings.json), as in
    the tune: the report recompiles the designs the tune measured."""
    (tmp_path / "space.toml").write_text(
        '[hardware]\nbase = "vta_default"\nblock_in = [8, 16]\n\n[compression]\nprune = [0.0, 0.5]\n'
    )
    settings = {"layers": ["conv2d_0", "matmul_0"], **({"prunable_layers": recorded} if recorded else {})}
    space = _space_of_run(tmp_path, settings)
    assert space.compression({"comp.all.prune": 0.5}, settings["layers"]).prune == pruned
