"""The joint tuner: search spaces, records, strategies, determinism, parallel and Ray
execution, kill -9 and resume."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codesign.demo import MNIST_MODEL
from codesign.errors import UsageError
from codesign.importer import import_onnx
from codesign.schedules.mapper import core_key
from codesign.tuner.bilevel import plan_bilevel
from codesign.tuner.database import Database, Record
from codesign.tuner.evaluator import gemm_layer_names, prunable_layer_names
from codesign.tuner.executors import EvaluatorSpec, ProcessExecutor, RayExecutor, SerialExecutor
from codesign.tuner.space import load_space, space_from_dict
from codesign.tuner.strategies import NSGA2Search, RandomSearch, XGBoostSearch
from codesign.tuner.tune import best_per_objective, pareto_records, run_tuning

SPACE = Path(__file__).parent / "spaces" / "tiny.toml"
PROCESS_SPACE = Path(__file__).parent / "spaces" / "two_profiles.toml"  # few compiles per process
MNIST = Path(__file__).resolve().parent.parent / "codesign" / "data" / "mnist-8.onnx"
NO_COMPRESSION = {"weight_bits": {}, "prune": {}, "schedule": "auto"}  # int8, nothing pruned


def with_unfolding(compression: dict) -> dict:
    """A compression as a record of this space holds it: its placements pinned, mnist-8's first
    conv unfolded, as every profile on the space's vta_default unfolds it
    (schedules.narrow_inputs), and no grouped conv or ALU activation."""
    return {
        **compression,
        "unfold": ["conv2d_0"],
        "host_convs": [],
        "row_bands": [],
        "alu_activations": [],
        "zero_point_pads": [],
    }


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory, mnist_test_set):
    path = tmp_path_factory.mktemp("tune") / "mnist_eval.npz"
    images, labels = mnist_test_set
    np.savez(path, Input3=images[:300, 0], labels=labels[:300])
    return path


@pytest.fixture(scope="module")
def spec(eval_data):
    return EvaluatorSpec(str(MNIST), str(SPACE), str(eval_data), eval_samples=300, calibration_samples=32)


@pytest.fixture(scope="module")
def serial(spec):
    return SerialExecutor(spec)


@pytest.fixture(scope="module")
def process_spec(eval_data):
    return EvaluatorSpec(str(MNIST), str(PROCESS_SPACE), str(eval_data), eval_samples=300, calibration_samples=32)


def tune(tmp_path, executor, strategy, budget=16, seed=3, name="db.jsonl", space=SPACE):
    database = Database(tmp_path / name)
    records = run_tuning(load_space(space), strategy, database, executor, budget, 4, seed)
    return [(r.index, json.dumps(r.config, sort_keys=True), r.feasible, r.metrics) for r in records]


def test_space_maps_configs_to_hardware_and_compression():
    space = load_space(SPACE)
    assert space.size() == 2**7
    config = {
        **space.sample(np.random.default_rng(0)),
        "hw.block_in": 8,
        "hw.wgt_buffer_kib": 32,
        "comp.all.prune": 0.25,
    }
    hw = space.hardware(config)
    assert hw.block_in == 8 and hw.wgt_buffer_bytes == 32 * 1024
    assert hw.energy_wgt_pj_per_byte < space.base.energy_wgt_pj_per_byte  # a smaller SRAM costs less per byte
    compression = space.compression(config, ["conv2d_0", "matmul_0"])
    assert compression.prune == {"conv2d_0": 0.25, "matmul_0": 0.25}
    assert len(list(space.enumerate())) == space.size()


def test_the_core_geometries_of_a_space_are_those_its_designs_reach():
    """One hardware per (batch, blocks, precision-scalable lanes) among every design of the space:
    the geometries a profile is planned for (CompressionProfile.plans)."""
    space = load_space(SPACE)
    reached = {core_key(space.hardware(config)) for config in space.enumerate()}
    variants = space.core_variants()
    assert {core_key(hw) for hw in variants} == reached and len(variants) == len(reached) == 4
    assert all(hw.wgt_buffer_bytes == space.base.wgt_buffer_bytes for hw in variants)  # the rest: the base's


def test_the_grouped_convs_knob_is_a_mapping_knob_swept_with_the_hardware():
    """sched.grouped_convs places every grouped conv on the core or leaves it to cost; it changes
    the design, not the compression profile (both placements compute the same integers), so the
    bilevel search sweeps it with the hardware and measures no profile for it."""
    doc = {"hardware": {"block_in": [8, 16]}, "schedule": {"grouped_convs": ["cost", "core"]}}
    space = space_from_dict(doc)
    assert space.knobs["sched.grouped_convs"] == ["cost", "core"]
    cost, core = ({"hw.block_in": 16, "sched.grouped_convs": choice} for choice in ("cost", "core"))
    assert space.compression(cost, ["conv2d_0"]) == space.compression(core, ["conv2d_0"])  # one profile
    assert space.design(cost, ["conv2d_0"]).compression.host_convs is None  # by cost
    assert space.design(core, ["conv2d_0"]).compression.host_convs == ()  # none on the host
    plan = plan_bilevel(space, ["conv2d_0"])
    assert "sched.grouped_convs" not in plan.outer.knobs
    assert {config["sched.grouped_convs"] for config in plan.inner} == {"cost", "core"}
    assert "sched.grouped_convs" in space.for_layers(["conv2d_0"], None, ["conv2d_0"]).knobs
    assert "sched.grouped_convs" not in space.for_layers(["conv2d_0"], None, []).knobs  # it would change nothing
    with pytest.raises(UsageError, match=r"'schedule.grouped_convs' = \['host'\]: choices must be"):
        space_from_dict({**doc, "schedule": {"grouped_convs": ["host"]}})
    with pytest.raises(UsageError, match=r"unknown compression knob 'compression.grouped_convs'.*\[schedule\] knob"):
        space_from_dict({**doc, "compression": {"grouped_convs": ["cost"]}})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"hardware": {"block_inn": [8]}}, "unknown hardware knob 'hardware.block_inn'"),
        ({"hardware": {"block_in": []}}, "'hardware.block_in' must be a non-empty list"),
        ({"compression": {"weight_bits": [2, 8]}}, "choices must be 4 or 8"),
        ({"compression": {"prune": [1.5]}}, "ratios must be in [0, 1)"),
        ({"compression": {"activation_bits": [4]}}, "only 8-bit activations"),
        ({"hardware": {"block_in": [8]}, "objectives": ["speed"]}, "unknown objective 'speed'"),
        ({"hardware": {"block_in": [8]}, "constraints": {"area_max": 1}}, "unknown constraint 'area_max'"),
        ({"hardware": {"block_in": [8]}, "schedule": {"mode": "fast"}}, "'schedule.mode' = 'fast'"),
    ],
)
def test_space_errors_name_the_problem(doc, message):
    with pytest.raises(UsageError) as err:
        space_from_dict(doc, "space.toml")
    assert str(err.value).startswith("space.toml: ") and message in str(err.value)


def test_database_survives_a_line_cut_by_a_kill(tmp_path):
    database = Database(tmp_path / "db.jsonl")
    first = Record(0, 0, {"a": 1}, True, {"latency": 1.0}, {"latency": 1.0}, None, 0.1, 0, "random")
    database.append(first)
    with (tmp_path / "db.jsonl").open("a") as out:
        out.write('{"index": 1, "batch": 0, "con')  # what kill -9 leaves
    reopened = Database(tmp_path / "db.jsonl")
    reopened.append(Record(2, 0, {"a": 2}, False, {}, {}, "too big", 0.1, 0, "random"))
    assert [r.index for r in reopened.load()] == [0, 2]


def test_records_without_a_design_still_load_and_a_design_round_trips(tmp_path):
    from codesign.design import Design

    path = tmp_path / "db.jsonl"
    old = Record(0, 0, {"a": 1}, True, {"latency": 1.0}, {"latency": 1.0}, None, 0.1, 0, "random")
    line = json.loads(old.to_json())
    del line["design"]  # a database written before records held designs
    space = load_space(SPACE)
    design = space.design(space.sample(np.random.default_rng(1)), ["conv2d_0", "matmul_0"])
    new = Record(1, 0, {"a": 2}, True, {"latency": 2.0}, {"latency": 2.0}, None, 0.1, 0, "random", design.to_dict())
    path.write_text(json.dumps(line) + "\n" + new.to_json() + "\n")
    loaded = Database(path).load()
    assert loaded[0].design is None and Design.from_dict(loaded[1].design) == design
    path.write_text(new.to_json().replace('"design": {', '"design": 3, "x": {') + "\n")
    with pytest.raises(UsageError, match="line 1: 'design' = 3 must be an object or null"):
        Database(path).load()


def test_same_seed_same_run_and_strategies_propose_unseen_configs(tmp_path, serial):
    first = tune(tmp_path, serial, XGBoostSearch(initial=8), name="a.jsonl")
    again = tune(tmp_path, serial, XGBoostSearch(initial=8), name="b.jsonl")
    other = tune(tmp_path, serial, XGBoostSearch(initial=8), seed=4, name="c.jsonl")
    assert first == again
    assert first != other
    assert len({config for _, config, _, _ in first}) == len(first) == 16
    for strategy in (RandomSearch(), NSGA2Search(population=8)):
        runs = [tune(tmp_path, serial, strategy, budget=12, name=f"{strategy.name}{i}.jsonl") for i in range(2)]
        assert runs[0] == runs[1]


def test_unseen_random_returns_the_last_unseen_configs_in_a_seeded_order():
    from codesign.tuner.strategies import unseen_random

    space = load_space(PROCESS_SPACE)  # 32 points
    every = [space.key(c) for c in space.enumerate()]
    seen = set(every[:29])
    drawn = {seed: unseen_random(space, set(seen), 5, np.random.default_rng(seed)) for seed in range(4)}
    for seed, configs in drawn.items():
        assert sorted(space.key(c) for c in configs) == sorted(every[29:])  # all three, nothing seen
        assert configs == unseen_random(space, set(seen), 5, np.random.default_rng(seed))
    assert len({tuple(space.key(c) for c in configs) for configs in drawn.values()}) > 1  # the order is drawn
    assert unseen_random(space, set(every), 5, np.random.default_rng(0)) == []


def test_parallel_processes_give_the_serial_run(tmp_path, process_spec):
    serial = SerialExecutor(process_spec)
    expected = tune(tmp_path, serial, XGBoostSearch(initial=8), name="serial.jsonl", space=PROCESS_SPACE)
    parallel = ProcessExecutor(process_spec, 2)
    try:
        got = tune(tmp_path, parallel, XGBoostSearch(initial=8), name="parallel.jsonl", space=PROCESS_SPACE)
        assert got == expected
    finally:
        parallel.close()


def test_ray_with_two_workers_gives_the_serial_front(tmp_path, process_spec):
    import ray  # the 'distributed' extra; the test extra installs it

    serial = SerialExecutor(process_spec)
    expected = tune(tmp_path, serial, RandomSearch(), budget=12, name="serial.jsonl", space=PROCESS_SPACE)
    executor = RayExecutor(process_spec, workers=2)
    try:
        assert tune(tmp_path, executor, RandomSearch(), budget=12, name="ray.jsonl", space=PROCESS_SPACE) == expected
    finally:
        executor.close()
        ray.shutdown()
    space = load_space(PROCESS_SPACE)
    fronts = [pareto_records(space, Database(tmp_path / n).load()) for n in ("serial.jsonl", "ray.jsonl")]
    assert [r.index for r in fronts[0]] == [r.index for r in fronts[1]]


# Tries at killing a tune mid-run: on a loaded machine the poll can miss the moment (CI once saw
# all 12 rows before the kill).
KILL_ATTEMPTS = 3


def test_kill_9_then_resume_loses_and_repeats_nothing(tmp_path, eval_data, capsys):
    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "codesign.cli", "tune", str(MNIST), "--space", str(PROCESS_SPACE),
            "--data", str(eval_data), "--budget", "12", "--batch-size", "4", "--seed", "5", "--eval-samples", "100",
            "-o", str(out), *extra,
        ]  # fmt: skip

    from codesign.cli import main

    reference = tmp_path / "reference"  # the same run undisturbed (in this process: kernels compiled here are reused)
    assert main(command(reference)[3:]) == 0
    killed = tmp_path / "killed"
    database = killed / "database.jsonl"
    for _ in range(KILL_ATTEMPTS):  # a run whose last batch finished before the poll saw the fifth row starts afresh
        shutil.rmtree(killed, ignore_errors=True)
        process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and (not database.exists() or len(database.read_text().splitlines()) < 5):
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        finished = len(Database(database).load())
        if finished < 12:
            break
    assert 5 <= finished < 12
    resumed = subprocess.run(command(killed, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in database.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(12))  # nothing repeated, nothing lost

    def run(folder):
        return [(r.index, r.config, r.metrics) for r in Database(folder / "database.jsonl").load()]

    assert run(killed) == run(reference)
    assert json.loads((killed / "pareto.json").read_text()) == json.loads((reference / "pareto.json").read_text())
    for objective in ("latency", "energy", "area", "accuracy"):
        assert (killed / f"best_{objective}.toml").exists() and (killed / f"best_{objective}.json").exists()


def test_int4_and_pruning_change_the_simulated_work_and_the_measured_accuracy(serial):
    from codesign.compression import CompressionConfig
    from codesign.hardware import load_hardware
    from codesign.pipeline import compile_model
    from codesign.simulator.simulate import simulate_plans

    edge = load_hardware("edge_1x8x8")  # 8-wide blocks: pruning 16 -> 8 channels removes blocks

    def counters(compression):
        result = compile_model(MNIST, edge, warn=lambda m: None, compression=compression)
        return simulate_plans(result.lowered.plans, edge, "analytic").totals()["counters"]

    plain = counters(None)
    int4 = counters(CompressionConfig(weight_bits={"conv2d_1": 4, "matmul_0": 4}))
    pruned = counters(CompressionConfig(prune={"conv2d_1": 0.5}))
    assert int4["wgt_load_nbytes"] < plain["wgt_load_nbytes"] and int4["gemm_counter"] == plain["gemm_counter"]
    assert pruned["gemm_counter"] < plain["gemm_counter"] and pruned["wgt_load_nbytes"] < plain["wgt_load_nbytes"]

    evaluator = serial.evaluator
    base = {name: choices[0] for name, choices in evaluator.space.knobs.items()}
    accuracies = {
        (bits, prune): evaluator.evaluate({**base, "comp.all.weight_bits": bits, "comp.all.prune": prune})["metrics"][
            "accuracy"
        ]
        for bits in (8, 4)
        for prune in (0.0, 0.25)
    }
    assert len(set(accuracies.values())) > 1  # compression changes what is measured
    assert abs(accuracies[(8, 0.0)] - evaluator.float_accuracy()) <= 1.0


def test_best_design_files_compile_to_what_the_tuner_measured(tmp_path, serial):
    from codesign.compression import load_compression
    from codesign.hardware import load_hardware
    from codesign.pipeline import compile_model
    from codesign.simulator.simulate import simulate_plans
    from codesign.tuner.tune import best_per_objective, write_outputs

    space = serial.evaluator.space  # as codesign tune has it: for the model's layers and prunable ones
    records = run_tuning(space, RandomSearch(), Database(tmp_path / "db.jsonl"), serial, 12, 4, seed=8)
    write_outputs(tmp_path, space, records, serial.evaluator.layers)
    record = best_per_objective(space, records)["latency"]
    hw = load_hardware(tmp_path / "best_latency.toml")
    compression = load_compression(tmp_path / "best_latency.json")
    assert compression.schedule == "auto"
    result = compile_model(MNIST, hw, calibration=serial.evaluator.calibration, compression=compression)
    totals = simulate_plans(result.lowered.plans, hw, "analytic").totals()
    assert totals["latency_seconds"] == pytest.approx(record.metrics["latency"], rel=1e-6)
    assert totals["energy_joules"] == pytest.approx(record.metrics["energy"], rel=1e-6)
    assert totals["area_mm2"] == pytest.approx(record.metrics["area"], rel=1e-9)


def test_a_recorded_design_compiles_and_simulates_to_what_the_tuner_measured(tmp_path, serial, capsys):
    """`compile --design RUN/designs/eval_N.json` reproduces evaluation N: its hardware (manifest
    fingerprint), compression and schedule; simulating the module with the tuner's cycle model
    (the event simulation under "auto": `cycle_model`) gives the latency recorded."""
    from codesign.cli import main
    from codesign.deploy import read_manifest
    from codesign.design import Design
    from codesign.tuner.front import cycle_model
    from codesign.tuner.tune import write_outputs

    space, layers = load_space(SPACE), serial.evaluator.layers
    run_tuning(space, RandomSearch(), Database(tmp_path / "db.jsonl"), serial, 8, 4, seed=11, layers=layers)
    records = Database(tmp_path / "db.jsonl").load()  # the designs as the database holds them
    for record in records:
        expected = space.design(record.config, layers, name=f"eval_{record.index}").to_dict()
        assert record.design == {**expected, "compression": with_unfolding(expected["compression"])}
    write_outputs(tmp_path, space, records, layers)
    assert sorted(p.name for p in (tmp_path / "designs").iterdir()) == sorted(f"eval_{r.index}.json" for r in records)
    compressed = [r for r in records if r.feasible and with_unfolding(NO_COMPRESSION) != r.design["compression"]]
    record = compressed[0]  # int4 or pruned layers: the compression must reach the module
    design_file = tmp_path / "designs" / f"eval_{record.index}.json"
    design = Design.load(design_file)
    assert design.to_dict() == record.design and design.schedule == "auto"

    out, calibration = tmp_path / "module", serial.evaluator.calibration
    compile_args = ["compile", str(MNIST), "--design", str(design_file), "--calibration", str(calibration)]
    assert main([*compile_args, "-o", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest["hardware"]["sha256"] == design.hardware.fingerprint()
    assert manifest["compression"] == design.compression.to_dict()
    latencies = []
    for target, extra in ((out, []), (MNIST, ["--design", str(design_file), "--calibration", str(calibration)])):
        sim = tmp_path / f"sim{len(latencies)}.json"
        assert main(["simulate", str(target), *extra, "--model", cycle_model(design.schedule), "--json", str(sim)]) == 0
        latencies.append(json.loads(sim.read_text())["totals"]["latency_seconds"])
    assert latencies == pytest.approx([record.metrics["latency"]] * 2, rel=1e-9)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--space": "no_such_space.toml"}, "no_such_space.toml: no such search-space file"),
        ({"--strategy": "annealing"}, "--strategy annealing: expected one of xgboost, random, nsga2"),
        ({"--executor": "slurm"}, "--executor slurm: expected local or ray"),
    ],
)
def test_tune_cli_rejects_bad_input_in_one_line(change, message, tmp_path, eval_data, capsys):
    from codesign.cli import main

    options = {"--space": str(SPACE), "--data": str(eval_data), "-o": str(tmp_path / "run"), "--strategy": "random"}
    options.update(change)
    argv = ["tune", str(MNIST), "--budget", "4", *[item for pair in options.items() for item in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_tune_cli_refuses_to_overwrite_a_run_without_resume(tmp_path, eval_data, capsys):
    from codesign.cli import main

    argv = ["tune", str(MNIST), "--space", str(SPACE), "--data", str(eval_data), "-o", str(tmp_path / "run")]
    argv += ["--budget", "4", "--batch-size", "4", "--strategy", "random", "--eval-samples", "100"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0


def test_results_finishing_out_of_order_change_nothing(tmp_path, serial):
    class Reversed:
        """Evaluates like the serial executor but reports each batch last-first, as parallel
        workers may."""

        def run(self, tasks):
            yield from reversed(list(serial.run(tasks)))

    expected = tune(tmp_path, serial, XGBoostSearch(initial=8), name="in_order.jsonl")
    assert tune(tmp_path, Reversed(), XGBoostSearch(initial=8), name="reversed.jsonl") == expected


def test_the_sequential_counterpart_is_hardware_first_then_compression(tmp_path, serial):
    """Against a brute force: step 1 is the best int8, unpruned design over every hardware
    combination (both multiplier settings), step 2 the best of the run's measured profiles on
    that hardware; no accuracy evaluation but the baseline's is added."""
    space = serial.evaluator.space  # as codesign tune has it: for the model's layers and prunable ones
    records = run_tuning(space, RandomSearch(), Database(tmp_path / "db.jsonl"), serial, 8, 8, seed=11)
    evaluator = serial.evaluator
    held_before = set(evaluator.profiles)
    serial.write_front(tmp_path, space, records)
    document = json.loads((tmp_path / "front" / "sequential.json").read_text())
    baseline = {"comp.all.weight_bits": 8, "comp.all.prune": 0.0}
    assert {key[0] for key in set(evaluator.profiles) - held_before} <= {
        space.compression(baseline, evaluator.layers).key()
    }
    hardware_knobs = {k: v for k, v in space.knobs.items() if k.startswith("hw.")}
    int8 = [{**dict(zip(hardware_knobs, values)), **baseline} for values in itertools.product(*hardware_knobs.values())]
    int8_results = evaluator.evaluate_many(int8)
    assert document["hardware_designs"] == len(int8) == 32 and not document["sampled"]
    run_profiles = {
        (r.config["comp.all.weight_bits"], r.config["comp.all.prune"], r.config["hw.alu_multiplier"]) for r in records
    }
    joint = best_per_objective(space, records)
    for objective, sign in (("latency", 1), ("energy", 1), ("area", 1), ("accuracy", -1)):
        entry = document["objectives"][objective]
        feasible = [i for i, result in enumerate(int8_results) if result["feasible"]]
        step = min(feasible, key=lambda i: (sign * int8_results[i]["metrics"][objective], i))
        assert entry["hardware_step"]["config"] == int8[step]
        assert entry["hardware_step"]["metrics"] == int8_results[step]["metrics"]
        hardware = {k: v for k, v in int8[step].items() if k.startswith("hw.")}
        multiplier = hardware["hw.alu_multiplier"]
        profiles = sorted({(b, p) for b, p, m in run_profiles if m == multiplier} | {(8, 0.0)})
        candidates = [{**hardware, "comp.all.weight_bits": b, "comp.all.prune": p} for b, p in profiles]
        results = evaluator.evaluate_many(candidates)
        best = min(sign * result["metrics"][objective] for result in results if result["feasible"])
        sequential = entry["sequential"]
        assert sequential["config"] in candidates and sign * sequential["metrics"][objective] == best
        assert entry["joint"]["index"] == joint[objective].index
        totals = sequential["simulation"]["totals"]
        assert totals["latency_seconds"] == pytest.approx(sequential["metrics"]["latency"], rel=1e-9)
        evaluated = [r for r in records if r.config == sequential["config"]]
        assert sequential["evaluation"] == (evaluated[0].index if evaluated else None)
        if evaluated:  # a design the joint search evaluated cannot beat its best
            assert sign * joint[objective].metrics[objective] <= sign * sequential["metrics"][objective]


PER_LAYER = {
    "hardware": {"block_in": [8, 16]},
    "compression": {"weight_bits": [8, 4], "prune": [0.0, 0.5], "per_layer": True},
}


def test_a_per_layer_space_gives_every_layer_its_own_compression_knobs():
    space = space_from_dict(PER_LAYER).for_layers(["conv2d_0", "conv2d_1", "matmul_0"])
    assert space.size() == 2 * (2 * 2) ** 3
    own_knobs = [k for k in space.knobs if k.startswith("comp.conv2d_1")]
    assert own_knobs == ["comp.conv2d_1.weight_bits", "comp.conv2d_1.prune"]
    config = {k: choices[0] for k, choices in space.knobs.items()}
    config.update({"comp.conv2d_1.weight_bits": 4, "comp.matmul_0.prune": 0.5})
    compression = space.compression(config, ["conv2d_0", "conv2d_1", "matmul_0"])
    assert compression.weight_bits == {"conv2d_1": 4} and compression.prune == {"matmul_0": 0.5}
    grouped = space_from_dict({**PER_LAYER, "compression": {"weight_bits": [8, 4]}})
    assert grouped.for_layers(["conv2d_0"]) is grouped  # a grouped space does not depend on the model


def test_a_per_layer_space_gives_prune_knobs_only_to_the_layers_that_can_prune():
    """mnist-8's matmul_0 produces the model output: pruning it cannot act, so it gets no knob
    (nor would a depthwise conv or a gate's excitation, which follow another layer's channels:
    tests/test_pruning.py)."""
    layers = gemm_layer_names(MNIST_MODEL)
    prunable = prunable_layer_names(import_onnx(MNIST_MODEL))
    assert layers == ["conv2d_0", "conv2d_1", "matmul_0"] and prunable == ["conv2d_0", "conv2d_1"]
    space = space_from_dict(PER_LAYER).for_layers(layers, prunable)
    assert [k for k in space.knobs if k.endswith(".prune")] == ["comp.conv2d_0.prune", "comp.conv2d_1.prune"]
    assert space.size() == 2 * 2**3 * 2**2


@pytest.mark.parametrize(
    ("compression", "message"),
    [
        ({"weight_bits": [8, 4], "per_layer": True, "groups": {"a": ["*"]}}, "exclude each other"),
        ({"weight_bits": [8, 4], "per_layer": "yes"}, "'compression.per_layer' = 'yes' must be true or false"),
    ],
)
def test_per_layer_space_errors_name_the_problem(compression, message):
    with pytest.raises(UsageError, match=message):
        space_from_dict({"compression": compression}, "space.toml")


def test_a_per_layer_tune_runs_and_its_report_reads_the_layers(tmp_path, eval_data, capsys):
    """The tuner binds the space to mnist-8's three layers, records them in settings.json, and
    `codesign report` rebuilds the same knobs from there."""
    from codesign.cli import main
    from codesign.report.run_data import load_run

    space = tmp_path / "per_layer.toml"
    space.write_text("[hardware]\nblock_in = [8, 16]\n[compression]\nweight_bits = [8, 4]\nper_layer = true\n")
    out = tmp_path / "run"
    argv = ["tune", str(MNIST), "--space", str(space), "--data", str(eval_data), "-o", str(out), "--budget", "4"]
    assert main([*argv, "--batch-size", "4", "--strategy", "random", "--eval-samples", "100"]) == 0
    capsys.readouterr()
    run = load_run(out)
    layers = json.loads((out / "settings.json").read_text())["layers"]
    assert layers == ["conv2d_0", "conv2d_1", "matmul_0"]
    assert sorted(run.space.knobs) == sorted(["hw.block_in", *(f"comp.{layer}.weight_bits" for layer in layers)])
    assert all(set(record.config) == set(run.space.knobs) for record in run.records)


def test_tune_calibrates_on_its_own_data_when_given_and_resume_checks_it(tmp_path, eval_data, mnist_test_set, capsys):
    from codesign.cli import main

    images = mnist_test_set[0]
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, Input3=images[5000:5032, 0])  # disjoint from the 300 evaluation images
    out = tmp_path / "run"
    argv = ["tune", str(MNIST), "--space", str(SPACE), "--data", str(eval_data), "-o", str(out), "--budget", "2"]
    argv += ["--batch-size", "2", "--strategy", "random", "--eval-samples", "100"]
    assert main([*argv, "--calibration", str(calibration)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["calibration_data"] == str(calibration.resolve())
    spec = EvaluatorSpec(str(MNIST), str(SPACE), str(eval_data), calibration_data=settings["calibration_data"])
    evaluator = spec.build()
    with np.load(evaluator.calibration) as used:
        assert np.array_equal(used["Input3"][:, 0], images[5000:5032, 0])  # (sample, batch, C, H, W)
    evaluator.close()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2  # without the calibration data the run was made with
    assert "--calibration (none) is not the run's" in capsys.readouterr().err


def test_a_new_run_stopped_as_its_first_file_lands_leaves_its_directory_as_it_was(tmp_path, monkeypatch):
    """A signal that arrives just after a new run wrote a file (before it noted it as its own)
    still has the run remove it: a run that recorded nothing leaves nothing."""
    from codesign.tuner import run as run_module
    from codesign.tuner.run_files import RUN_FILE

    real_write = run_module.write_text_atomic

    def write_then_signal(path, text):
        real_write(path, text)
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(run_module, "write_text_atomic", write_then_signal)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), run_module.RunDirectory(out, resume=False) as run_dir:
        run_dir.write(RUN_FILE, "{}")
    assert not out.exists()
