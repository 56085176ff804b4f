"""Co-design benchmark: joint search against a sequential baseline, at the same budget.

For each model:
- joint: the XGBoost tuner searches hardware and compression together for the whole budget;
- sequential: half the budget tunes the hardware for the int8 model (no compression); the
  fastest feasible design is then fixed and the other half tunes the compression for it.
Both keep the VTA default's area as the area budget and at most a 1-point accuracy drop. The
script prints the best latency and EDP each reaches, and the ratios.
- mnist-8: real accuracy on MNIST test images;
- a ResNet-18-shaped model (random weights): top-1 agreement with the float model on random
  inputs as the accuracy proxy.

    python scripts/bench_codesign.py [--budget-mnist 96] [--budget-resnet 48] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from resnet18 import INPUT_SHAPE, build_resnet18
from rich.console import Console
from rich.table import Table

from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.hardware import area_mm2, load_hardware
from codesign.tuner.database import Database
from codesign.tuner.evaluator import Evaluator
from codesign.tuner.executors import SerialExecutor
from codesign.tuner.space import space_from_dict
from codesign.tuner.strategies import XGBoostSearch
from codesign.tuner.tune import run_tuning

console = Console()
HARDWARE = {
    "block_in": [8, 16, 32],
    "block_out": [8, 16, 32],
    "inp_buffer_kib": [8, 16, 32],
    "wgt_buffer_kib": [32, 128, 256],
    "acc_buffer_kib": [32, 64, 128],
    "dram_bytes_per_cycle": [4, 8, 16],
    "alu_multiplier": [True, False],
}
COMPRESSION = {"weight_bits": [8, 4], "prune": [0.0, 0.25, 0.5]}


def joint_space():
    area = area_mm2(load_hardware("vta_default"))["total"]
    return space_from_dict(
        {
            "objectives": ["latency", "energy", "accuracy"],
            "hardware": {"base": "vta_default", **HARDWARE},
            "compression": COMPRESSION,
            "constraints": {"area_mm2_max": round(area, 4), "accuracy_drop_max": 1.0},
        },
        "co-design space",
    )


def restricted(space, fixed: dict):
    knobs = {name: ([fixed[name]] if name in fixed else choices) for name, choices in space.knobs.items()}
    return dataclasses.replace(space, knobs=knobs)


def best(records, metric: str):
    feasible = [r for r in records if r.feasible]
    return min(feasible, key=lambda r: (r.metrics[metric], r.index)) if feasible else None


def tune(space, evaluator, budget, seed, folder: Path, name: str):
    database = Database(folder / f"{name}.jsonl")
    return run_tuning(
        space, XGBoostSearch(initial=min(16, budget // 3)), database, SerialExecutor(None, evaluator), budget, 8, seed
    )


def compare(model, data, shapes, budget: int, seed: int, folder: Path, calibration_samples: int) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="run-", dir=folder))  # each model's runs apart
    space = joint_space()
    evaluator = Evaluator(model, space, data, shapes, calibration_samples=calibration_samples)
    start = time.perf_counter()
    joint = tune(space, evaluator, budget, seed, folder, "joint")
    int8 = {name: choices[0] for name, choices in space.knobs.items() if name.startswith("comp.")}
    int8.update({n: 8 for n in int8 if n.endswith("weight_bits")} | {n: 0.0 for n in int8 if n.endswith("prune")})
    hardware_first = tune(restricted(space, int8), evaluator, budget // 2, seed, folder, "sequential_hw")
    fastest = best(hardware_first, "latency")
    fixed_hw = {k: v for k, v in fastest.config.items() if k.startswith("hw.")}
    then_compression = tune(
        restricted(space, fixed_hw), evaluator, budget - budget // 2, seed, folder, "sequential_comp"
    )
    sequential = hardware_first + then_compression
    return {
        "joint": {m: best(joint, m) for m in ("latency", "edp")},
        "sequential": {m: best(sequential, m) for m in ("latency", "edp")},
        "float_accuracy": evaluator.float_accuracy(),
        "seconds": time.perf_counter() - start,
        "profiles": len(evaluator.profiles),
    }


def mnist_data(folder: Path, samples: int) -> Path:
    images, labels = load_mnist_test()
    path = folder / "mnist.npz"
    np.savez(path, Input3=images[:samples, 0], labels=labels[:samples])
    return path


def resnet_data(folder: Path, samples: int) -> tuple[Path, Path]:
    model = build_resnet18(folder / "resnet18.onnx")
    path = folder / "resnet.npz"
    np.savez(path, input=np.random.default_rng(7).standard_normal((samples, *INPUT_SHAPE[1:]), dtype=np.float32))
    return model, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mnist", type=int, default=96)
    parser.add_argument("--budget-resnet", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        console.print("mnist-8: joint vs sequential ...")
        results["mnist-8 (accuracy)"] = compare(
            MNIST_MODEL, mnist_data(folder, 2000), None, args.budget_mnist, args.seed, folder, 64
        )
        console.print("ResNet-18-shaped: joint vs sequential (compiles each compression choice; minutes) ...")
        model, data = resnet_data(folder, 24)
        results["ResNet-18 (agreement)"] = compare(model, data, None, args.budget_resnet, args.seed, folder, 4)
    report(results)


def report(results: dict) -> None:
    table = Table(title="Best design at accuracy drop <= 1 point and area <= VTA default", title_justify="left")
    for column in ("model", "search", "best latency", "best EDP", "latency: seq / joint", "EDP: seq / joint"):
        table.add_column(column, justify="left" if column in ("model", "search") else "right")
    for model, r in results.items():
        for search in ("sequential", "joint"):
            latency, edp = r[search]["latency"], r[search]["edp"]
            row = [model, search, _ms(latency), _edp(edp), "", ""]
            if search == "joint" and all(r[s][m] for s in ("sequential", "joint") for m in ("latency", "edp")):
                row[4] = f"{r['sequential']['latency'].metrics['latency'] / latency.metrics['latency']:.2f}x"
                row[5] = f"{r['sequential']['edp'].metrics['edp'] / edp.metrics['edp']:.2f}x"
            table.add_row(*row)
        summary = f"float accuracy {r['float_accuracy']:.2f} %, {r['profiles']} compression profiles measured"
        console.print(f"{model}: {summary}, {r['seconds']:.0f} s")
    console.print(table)


def _ms(record) -> str:
    if record is None:
        return "none feasible"
    return f"{record.metrics['latency'] * 1e3:.4f} ms (acc {record.metrics['accuracy']:.1f} %)"


def _edp(record) -> str:
    return "none feasible" if record is None else f"{record.metrics['edp'] * 1e9:.4f} nJ*s"


if __name__ == "__main__":
    main()
