"""The evaluator split by job: a batch evaluated at once gives what one-at-a-time evaluation gives,
profiles are compiled from the model imported once, and the front the tuner persists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import codesign.pipeline
from codesign.tuner.database import Database
from codesign.tuner.executors import EvaluatorSpec, SerialExecutor
from codesign.tuner.front import front_file, read_front_layers, read_front_simulation
from codesign.tuner.space import load_space
from codesign.tuner.strategies import RandomSearch
from codesign.tuner.tune import best_per_objective, run_tuning

SPACE = Path(__file__).parent / "spaces" / "tiny.toml"
MNIST = Path(__file__).resolve().parent.parent / "codesign" / "data" / "mnist-8.onnx"


@pytest.fixture(scope="module")
def spec(tmp_path_factory, mnist_test_set):
    path = tmp_path_factory.mktemp("evaluator") / "mnist_eval.npz"
    images, labels = mnist_test_set
    np.savez(path, Input3=images[:100, 0], labels=labels[:100])
    return EvaluatorSpec(str(MNIST), str(SPACE), str(path), eval_samples=100, calibration_samples=16)


@pytest.fixture(scope="module")
def serial(spec):
    executor = SerialExecutor(spec)
    yield executor
    executor.close()


def without_timing(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "seconds"}


def test_a_batch_gives_the_metrics_of_one_at_a_time(serial):
    space = serial.evaluator.space  # as codesign tune has it: for the model's layers and prunable ones
    configs = [space.sample(np.random.default_rng(seed)) for seed in range(24)]
    configs.append({**configs[0], "hw.block_in": 3})  # invalid hardware: infeasible, in its place
    tasks = list(enumerate(configs))
    batch = list(serial.run(tasks))  # one batch: grouped by profile, costed in one call
    single = [next(serial.run([task])) for task in tasks]
    assert [(i, c) for i, c, _ in batch] == tasks
    assert [without_timing(r) for _, _, r in batch] == [without_timing(r) for _, _, r in single]
    profiles = {(space.compression(c, serial.evaluator.layers).key(), c["hw.alu_multiplier"]) for c in configs}
    assert set(serial.evaluator.profiles) == profiles  # each measured once
    assert not batch[-1][2]["feasible"] and "block_in" in batch[-1][2]["reason"]
    assert sum(r["feasible"] for _, _, r in batch) > 0
    assert all(r["metrics"]["float_accuracy"] == serial.evaluator.float_accuracy() for _, _, r in batch[:-1])


def test_profiles_are_compiled_from_the_model_imported_once(serial, monkeypatch):
    evaluator = serial.evaluator

    def refuse(*args, **kwargs):
        raise AssertionError("the model was imported again")

    monkeypatch.setattr(codesign.pipeline, "import_model", refuse)
    monkeypatch.setattr("codesign.tuner.evaluator.import_onnx", refuse)
    compression = load_space(SPACE).compression({"comp.all.weight_bits": 4, "comp.all.prune": 0.25}, evaluator.layers)
    profile = evaluator.measure_profile(compression, False)
    assert 0 < profile.accuracy <= 100
    base = evaluator.space.base
    assert [layer.weight_bits for layer in profile.layers(base)] == [4, 4, 4]
    assert all(plan.kernel is None for plan in profile.plans(base))  # plans kept, kernels dropped
    assert [plan.name for plan in profile.plans(base) if plan.placement == "accel"] == evaluator.layers


def test_front_after_close_measures_what_the_executor_did_not(spec, tmp_path):
    """A resumed run's best design may come from an earlier process: the closed executor measures
    its profile with an evaluator of its own and writes the same front."""
    space = load_space(SPACE)
    executor = SerialExecutor(spec)
    records = run_tuning(space, RandomSearch(), Database(tmp_path / "db.jsonl"), executor, 8, 8, seed=1)
    for run in ("open", "closed"):
        (tmp_path / run).mkdir()
    executor.write_front(tmp_path / "open", space, records)
    executor.close()
    executor.batches.profiles.clear()  # as after a resume: nothing measured in this process
    executor.write_front(tmp_path / "closed", space, records)
    best = {r.index: r for r in best_per_objective(space, records).values()}
    assert best and read_front_layers(tmp_path / "closed") == executor.evaluator.layers
    for index, record in best.items():
        files = [json.loads(front_file(tmp_path / run, index).read_text()) for run in ("open", "closed")]
        assert files[0] == files[1] and files[0]["config"] == record.config
        simulation = read_front_simulation(tmp_path / "closed", record)
        assert simulation.totals()["latency_seconds"] == pytest.approx(record.metrics["latency"], rel=1e-9)
        assert simulation.totals()["energy_joules"] == pytest.approx(record.metrics["energy"], rel=1e-9)
    other = next(r for r in records if r.index not in best)
    assert read_front_simulation(tmp_path / "closed", other) is None  # no file: the caller falls back
