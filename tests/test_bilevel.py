"""The bilevel search: its budget counts measured compression profiles, each profile's hardware
is swept exhaustively and its true feasible front recorded, dead outer knobs cost nothing, and a
run is reproducible and resumes without repeating a profile."""

from __future__ import annotations

import json
from pathlib import Path

from codesign.tuner.bilevel import BilevelSearch, plan_bilevel
from codesign.tuner.database import Database
from codesign.tuner.space import load_space, space_from_dict

LAYERS = ["conv2d_0", "conv2d_1", "matmul_0"]  # mnist-8's GEMM layers
TINY = Path(__file__).parent / "spaces" / "tiny.toml"
FLOAT_ACCURACY = 99.0
MAX_DROP = 1.5


def synthetic_space(unused_group: bool = False):
    groups = {"convs": ["conv2d_*"], "classifier": ["matmul_*"]}
    if unused_group:
        groups["unused"] = ["lstm_*"]  # matches no layer of the model
    return space_from_dict(
        {
            "objectives": ["latency", "energy", "accuracy"],
            "hardware": {
                "base": "vta_default",
                "block_in": [8, 16, 32],
                "block_out": [8, 16, 32],
                "dram_bytes_per_cycle": [4, 8, 16],
                "alu_multiplier": [True, False],
            },
            "compression": {"weight_bits": [8, 4], "prune": [0.0, 0.25, 0.5], "groups": groups},
            "constraints": {"accuracy_drop_max": MAX_DROP},
        },
        "synthetic space",
    )


def is_hardware(knob: str) -> bool:
    return knob.startswith("hw.") and knob != "hw.alu_multiplier"


class SyntheticExecutor:
    """Deterministic results from a configuration, without a model: a bigger core and DRAM port
    are faster, a bigger core costs energy, int4 and pruning cut work and cost accuracy. Records
    every profile it is asked to measure."""

    def __init__(self):
        self.profiles_measured: list[str] = []

    def run(self, tasks):
        tasks = list(tasks)
        self.profiles_measured += sorted({self.profile(config) for _, config in tasks})
        for index, config in tasks:
            yield index, config, self.result(config)

    @staticmethod
    def profile(config: dict) -> str:
        return profile_of(config)

    @staticmethod
    def result(config: dict) -> dict:
        core = config["hw.block_in"] * config["hw.block_out"]
        int4 = config["comp.convs.weight_bits"] == 4
        work = 1.0 - 0.4 * config["comp.convs.prune"] - 0.2 * int4
        slowdown = 1.0 if config["hw.alu_multiplier"] else 1.1
        latency = work * (1e-3 / core + 2e-3 / config["hw.dram_bytes_per_cycle"]) * slowdown
        energy = work * (1e-6 * core**0.5 + 1e-5 / config["hw.dram_bytes_per_cycle"])
        drop = 4 * config["comp.convs.prune"] + 3 * config["comp.classifier.prune"] + 0.5 * int4
        accuracy = FLOAT_ACCURACY - drop - 0.3 * (not config["hw.alu_multiplier"])
        metrics = {"latency": latency, "energy": energy, "accuracy": accuracy, "float_accuracy": FLOAT_ACCURACY}
        feasible = FLOAT_ACCURACY - accuracy <= MAX_DROP
        return {
            "feasible": feasible,
            "reason": None if feasible else "accuracy drop",
            "objectives": {name: metrics[name] for name in ("latency", "energy", "accuracy")},
            "metrics": metrics,
            "seconds": 0.001,
        }


def profile_of(config: dict) -> str:
    """The knobs that fix a configuration's measured profile (compression, ALU multiplier)."""
    return json.dumps({k: v for k, v in config.items() if not is_hardware(k)}, sort_keys=True)


def dominates(a: dict, b: dict) -> bool:
    """Lower latency and energy, higher accuracy: a at least as good everywhere and better once."""
    pairs = [(a["latency"], b["latency"]), (a["energy"], b["energy"]), (-a["accuracy"], -b["accuracy"])]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def brute_force_front(space, profile: dict) -> set[str]:
    """The profile's feasible Pareto front, by pairwise comparison of all its designs."""
    configs = [c for c in space.enumerate() if all(c[k] == v for k, v in profile.items())]
    results = [SyntheticExecutor.result(c) for c in configs]
    feasible = [(c, r["metrics"]) for c, r in zip(configs, results) if r["feasible"]]
    return {space.key(c) for c, m in feasible if not any(dominates(other, m) for _, other in feasible)}


def run(tmp_path: Path, budget: int, seed: int = 0, space=None, name: str = "db.jsonl", search=None):
    space = space or synthetic_space()
    executor = SyntheticExecutor()
    records = (search or BilevelSearch()).run(
        plan_bilevel(space, LAYERS), Database(tmp_path / name), executor, budget, seed, LAYERS
    )
    return records, executor


def test_outer_knobs_that_change_no_profile_are_held_and_cost_nothing():
    plan = plan_bilevel(synthetic_space(unused_group=True), LAYERS)
    assert plan.fixed == {"comp.unused.weight_bits": 8, "comp.unused.prune": 0.0}
    assert set(plan.outer.knobs) == {
        "hw.alu_multiplier",
        "comp.convs.weight_bits",
        "comp.convs.prune",
        "comp.classifier.weight_bits",
        "comp.classifier.prune",
    }
    assert len(plan.inner) == 3 * 3 * 3  # block_in x block_out x DRAM port, all swept


def test_a_prune_knob_whose_layers_cannot_be_pruned_is_held():
    # mnist-8's prunable layers (codesign.pruning.prunable_layers; test_tuner checks them):
    # its matmul's outputs are the model's, so the classifier group's prune knob prunes nothing.
    space = synthetic_space().for_layers(LAYERS, ["conv2d_0", "conv2d_1"])
    plan = plan_bilevel(space, LAYERS)
    assert plan.fixed == {"comp.classifier.prune": 0.0}
    assert {"comp.convs.prune", "comp.classifier.weight_bits"} <= set(plan.outer.knobs)
    config = {"comp.convs.prune": 0.25, "comp.classifier.prune": 0.5, "comp.classifier.weight_bits": 4}
    compression = space.compression(config, LAYERS)
    assert compression.prune == {"conv2d_0": 0.25, "conv2d_1": 0.25}
    assert compression.weight_bits == {"matmul_0": 4}


def test_the_budget_counts_profiles_and_each_records_its_true_front(tmp_path):
    space = synthetic_space()
    records, executor = run(tmp_path, budget=7, space=space)
    assert len(executor.profiles_measured) == len(set(executor.profiles_measured)) == 7
    by_profile: dict[str, list] = {}
    for record in records:
        profile = {k: v for k, v in record.config.items() if not is_hardware(k)}
        by_profile.setdefault(json.dumps(profile, sort_keys=True), []).append(record)
    assert len(by_profile) == 7
    for text, profile_records in by_profile.items():
        profile = json.loads(text)
        front = brute_force_front(space, profile)
        if front:
            assert {space.key(r.config) for r in profile_records} == front
            assert all(r.feasible for r in profile_records)
        else:  # no feasible design: its fastest one, so the outer level learns the profile failed
            assert len(profile_records) == 1 and not profile_records[0].feasible
    assert [r.index for r in records] == list(range(len(records)))
    assert all(r.design is not None and r.strategy == "bilevel" for r in records)


def test_the_first_profiles_are_the_baseline_under_each_multiplier_choice(tmp_path):
    _, executor = run(tmp_path, budget=4)
    baseline = {
        "comp.convs.weight_bits": 8,
        "comp.convs.prune": 0.0,
        "comp.classifier.weight_bits": 8,
        "comp.classifier.prune": 0.0,
    }
    first_two = [json.loads(profile) for profile in executor.profiles_measured[:2]]
    assert first_two == [{**baseline, "hw.alu_multiplier": True}, {**baseline, "hw.alu_multiplier": False}]
    assert len(set(executor.profiles_measured)) == 4  # then the outer strategy's, none repeated


def test_the_surrogate_finds_the_fronts_that_random_profiles_miss(tmp_path):
    """Over 5 seeds, the XGBoost outer level reaches at least random's hypervolume at the same
    number of profiles (both at a budget far below the 72 profiles of the space)."""
    from codesign.tuner.strategies import RandomSearch

    space = synthetic_space()

    def best_feasible_latency(records):
        return min(r.metrics["latency"] for r in records if r.feasible)

    surrogate = [best_feasible_latency(run(tmp_path, 8, seed, space, f"x{seed}")[0]) for seed in range(5)]
    random = [
        best_feasible_latency(run(tmp_path, 8, seed, space, f"r{seed}", BilevelSearch(RandomSearch()))[0])
        for seed in range(5)
    ]
    assert sorted(surrogate)[2] <= sorted(random)[2]


def test_same_seed_same_run_and_resume_repeats_no_profile(tmp_path):
    first, _ = run(tmp_path, budget=6, seed=4, name="a.jsonl")
    again, _ = run(tmp_path, budget=6, seed=4, name="b.jsonl")
    assert [(r.config, r.metrics) for r in first] == [(r.config, r.metrics) for r in again]
    # Interrupted after 3 profiles, then resumed to 6: the same records, the first 3 not measured again.
    run(tmp_path, budget=3, seed=4, name="c.jsonl")
    resumed, executor = run(tmp_path, budget=6, seed=4, name="c.jsonl")
    assert [(r.config, r.metrics) for r in resumed] == [(r.config, r.metrics) for r in first]
    assert len(executor.profiles_measured) == 3


def test_tune_cli_bilevel_budget_counts_accuracy_evaluations(tmp_path, mnist_test_set):
    """The real evaluator on mnist-8: --budget 2 measures two profiles, and the run's designs
    are each profile's hardware front. So the joint best of an objective is no worse than its
    sequential counterpart whenever that uses a profile the run measured (the run swept its
    hardware)."""
    import numpy as np

    from codesign.cli import main

    images, labels = mnist_test_set
    data = tmp_path / "eval.npz"
    np.savez(data, Input3=images[:200, 0], labels=labels[:200])
    model = Path(__file__).resolve().parent.parent / "codesign" / "data" / "mnist-8.onnx"
    argv = ["tune", str(model), "--space", str(TINY), "--data", str(data), "-o", str(tmp_path / "run")]
    assert main([*argv, "--strategy", "bilevel", "--budget", "2", "--seed", "1"]) == 0
    lines = (tmp_path / "run" / "database.jsonl").read_text().splitlines()
    space = load_space(TINY)
    configs = [json.loads(line)["config"] for line in lines]
    profiles = {profile_of(config) for config in configs}
    assert len(profiles) == 2
    assert all(len(config) == len(space.knobs) for config in configs)
    records = [json.loads(line) for line in lines]
    sequential = json.loads((tmp_path / "run" / "front" / "sequential.json").read_text())["objectives"]
    assert set(sequential) == set(space.objectives)
    compared = 0
    for objective in space.objectives:
        sign = -1 if objective == "accuracy" else 1
        joint = min(sign * r["metrics"][objective] for r in records if r["feasible"])
        counterpart = sequential[objective]["sequential"]
        assert sequential[objective]["joint"]["metrics"][objective] == sign * joint
        if profile_of(counterpart["config"]) in profiles:
            assert joint <= sign * counterpart["metrics"][objective]
            compared += 1
    assert compared  # seed 1 measures both int8 profiles, so every counterpart uses a measured one
