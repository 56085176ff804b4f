"""Search-quality benchmark: how many evaluations each strategy needs to find the Pareto front.

The joint space of spaces/bench_mnist.toml (5,832 hardware x compression points) is evaluated
exhaustively first: accuracy measured on real MNIST test images for each compression choice
(cached), latency, energy and area from the analytic simulator with tuned schedules. That gives
the true feasible Pareto front and its hypervolume (objectives normalised over the feasible
points, reference point 1.1). Each strategy (XGBoost surrogate, random search, NSGA-II) then
runs on a lookup of those results for 5 seeds; the script prints the evaluations needed to
reach 95 % and 99 % of the true hypervolume (median over seeds) and the ratio to random search.
Target: the default (XGBoost) strategy needs at least 3x fewer evaluations than random to 99 %.

`--per-layer` runs the second benchmark: a space too large to enumerate, with per-layer mixed
precision and pruning (every GEMM layer of PP-OCR's text-direction classifier, 54 layers, its
own weight bits and pruning ratio) and the hardware knobs of scripts/bench_codesign.py, on real
accuracy (top-1 on rendered text lines of known orientation, calibrated on other lines). Budgets
count accuracy evaluations (compression profiles compiled and run on the data): NSGA-II and
random search evaluate one design per profile, the tuner (the bilevel search) gets a fifth of
their budget and sweeps the hardware of each profile. All three start from the space's baseline
design (int8, nothing pruned, the first hardware choices). Hypervolume is taken against the union of
every run's feasible designs (objectives normalised over it, reference point 1.1). Target: the
tuner reaches NSGA-II's final hypervolume with at most a fifth of NSGA-II's evaluations.

    python scripts/bench_tune.py [--seeds 5] [--eval-samples 1000]
    python scripts/bench_tune.py --per-layer [--seeds 3] [--budget 30] [--eval-samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_codesign import HARDWARE, OCR_MODEL, OCR_SHAPE  # the co-design benchmark's hardware space
from rich.console import Console
from rich.table import Table

from codesign.corpus import text_directions
from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.hardware import area_mm2, load_hardware
from codesign.tuner.bilevel import BilevelSearch, plan_bilevel
from codesign.tuner.database import Database
from codesign.tuner.evaluator import Evaluator
from codesign.tuner.executors import SerialExecutor
from codesign.tuner.pareto import hypervolume, normalise, pareto_mask
from codesign.tuner.space import load_space, space_from_dict
from codesign.tuner.strategies import NSGA2Search, RandomSearch, XGBoostSearch, minimised_points
from codesign.tuner.tune import result_record, run_tuning

SPACE = Path(__file__).resolve().parent.parent / "spaces" / "bench_mnist.toml"
BUDGETS = {"xgboost": 600, "random": 5832, "nsga2": 1600}
BATCH = 8
console = Console()


class LookupExecutor:
    """Serves precomputed results: the strategies are compared on evaluations, not wall time."""

    def __init__(self, space, table: dict):
        self.space, self.table = space, table

    def run(self, tasks):
        for index, config in tasks:
            yield index, config, self.table[self.space.key(config)]


def exhaustive(space, evaluator) -> dict:
    configs = list(space.enumerate())
    results = evaluator.evaluate_many(configs)
    return {space.key(c): r for c, r in zip(configs, results)}


def evaluations_to_reach(space, records, low, high, true_hv, fraction) -> int | None:
    feasible_so_far = []
    for count, record in enumerate(records, start=1):
        if record.feasible:
            feasible_so_far.append(record)
        if count % BATCH and count != len(records):
            continue
        if feasible_so_far:
            points = normalise(minimised_points(space, feasible_so_far), low, high)
            if hypervolume(points, np.full(points.shape[1], 1.1)) >= fraction * true_hv:
                return count
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="default: 5 (3 with --per-layer)")
    parser.add_argument("--eval-samples", type=int, default=None, help="default: 1000 (200 with --per-layer)")
    parser.add_argument("--per-layer", action="store_true", help="the per-layer space on PP-OCR's classifier")
    parser.add_argument("--budget", type=int, default=30, help="--per-layer: NSGA-II's and random's evaluations")
    args = parser.parse_args()
    if args.per_layer:
        per_layer_benchmark(args.seeds or 3, args.eval_samples or 200, args.budget)
    else:
        enumerable_benchmark(args.seeds or 5, args.eval_samples or 1000)


def enumerable_benchmark(seeds: int, eval_samples: int) -> None:
    space = load_space(SPACE)
    with tempfile.TemporaryDirectory() as folder:
        images, labels = load_mnist_test()
        data = Path(folder) / "mnist.npz"
        np.savez(data, Input3=images[:eval_samples, 0], labels=labels[:eval_samples])
        started = time.perf_counter()
        evaluator = Evaluator(MNIST_MODEL, space, data)
        table = exhaustive(space, evaluator)
        console.print(f"Evaluated all {len(table):,} points in {time.perf_counter() - started:.1f} s")

        feasible = [r for r in table.values() if r["feasible"]]
        points = np.array(
            [[-r["metrics"][o] if o == "accuracy" else r["metrics"][o] for o in space.objectives] for r in feasible]
        )
        low, high = points.min(axis=0), points.max(axis=0)
        normalised = normalise(points, low, high)
        true_hv = hypervolume(normalised[pareto_mask(normalised)], np.full(points.shape[1], 1.1))
        front = int(pareto_mask(normalised).sum())
        console.print(f"{len(feasible):,} feasible points, true front of {front}, hypervolume {true_hv:.4f}")

        strategies = {"xgboost": XGBoostSearch, "random": RandomSearch, "nsga2": lambda: NSGA2Search(population=16)}
        reached = {name: {0.95: [], 0.99: []} for name in strategies}
        for name, make in strategies.items():
            for seed in range(seeds):
                start = time.perf_counter()
                database = Database(Path(folder) / f"{name}_{seed}.jsonl")
                records = run_tuning(space, make(), database, LookupExecutor(space, table), BUDGETS[name], BATCH, seed)
                for fraction in (0.95, 0.99):
                    reached[name][fraction].append(evaluations_to_reach(space, records, low, high, true_hv, fraction))
                hits = reached[name][0.99][-1]
                took = time.perf_counter() - start
                console.print(
                    f"  {name:8s} seed {seed}: 99 % after {hits or f'> {BUDGETS[name]}'} evaluations ({took:.1f} s)"
                )

    report(reached)


# ---- the per-layer space (--per-layer) ---------------------------------------------------------


def per_layer_space():
    area = area_mm2(load_hardware("vta_default"))["total"]
    return space_from_dict(
        {
            "objectives": ["latency", "energy", "area", "accuracy"],
            "hardware": {"base": "vta_default", **HARDWARE},
            "compression": {"weight_bits": [8, 4], "prune": [0.0, 0.25], "per_layer": True},
            "schedule": {"mode": "auto"},
            "constraints": {"area_mm2_max": round(area, 4), "accuracy_drop_max": 5.0},
        },
        "per-layer space",
    )


def per_layer_benchmark(seeds: int, eval_samples: int, budget: int) -> None:
    tuner_budget = max(1, budget // 5)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        images, labels = text_directions(OCR_SHAPE, eval_samples, seed=1)
        np.savez(folder / "eval.npz", x=images, labels=labels)
        np.savez(folder / "calibration.npz", x=text_directions(OCR_SHAPE, 32, seed=2)[0])
        evaluator = Evaluator(
            OCR_MODEL,
            per_layer_space(),
            folder / "eval.npz",
            {"x": OCR_SHAPE},
            calibration_data=folder / "calibration.npz",
        )
        space, layers = evaluator.space, evaluator.layers
        executor = SerialExecutor(None, evaluator)
        console.print(
            f"ppocr_cls: {len(layers)} GEMM layers, {len(space.knobs)} knobs ({space.size():.3g} designs), "
            f"float accuracy {evaluator.float_accuracy():.1f} % on {eval_samples} lines; budgets: NSGA-II and "
            f"random {budget} evaluations, tuner {tuner_budget} profiles"
        )
        runs: dict[str, list[list]] = {"tuner": [], "nsga2": [], "random": []}
        for seed in range(seeds):
            for strategy, records in _per_layer_runs(space, layers, executor, folder, budget, tuner_budget, seed):
                runs[strategy].append(records)
                console.print(
                    f"  {strategy:6s} seed {seed}: {_profiles_measured(space, layers, records)} accuracy evaluations, "
                    f"{sum(r.feasible for r in records)} feasible designs of {len(records)}"
                )
        evaluator.close()
    per_layer_report(space, layers, runs, budget)


def _per_layer_runs(space, layers, executor, folder: Path, budget: int, tuner_budget: int, seed: int):
    """NSGA-II and random search start, as the tuner does, from the space's baseline design (every
    knob at its first choice: int8, nothing pruned), recorded as their first evaluation."""
    baseline = {name: choices[0] for name, choices in space.knobs.items()}
    for strategy, make in (("nsga2", lambda: NSGA2Search(population=10)), ("random", RandomSearch)):
        database = Database(folder / f"{strategy}_{seed}.jsonl")
        [(_, _, result)] = executor.run([(0, baseline)])
        database.append(result_record(0, 0, baseline, result, seed, strategy, None))
        yield strategy, run_tuning(space, make(), database, executor, budget, 5, seed, layers=layers)
    database = Database(folder / f"tuner_{seed}.jsonl")
    yield "tuner", BilevelSearch().run(plan_bilevel(space, layers), database, executor, tuner_budget, seed, layers)


def _profiles_measured(space, layers, records) -> int:
    """Accuracy evaluations a run needed: its distinct (compression, ALU multiplier) profiles."""
    return len({(space.compression(r.config, layers).key(), r.config.get("hw.alu_multiplier")) for r in records})


def _hypervolume_curve(space, layers, records, low, high) -> list[tuple[int, float]]:
    """(accuracy evaluations so far, hypervolume of the feasible designs so far) after each new profile."""
    seen, feasible, curve = set(), [], []
    for record in records:
        profile = (space.compression(record.config, layers).key(), record.config.get("hw.alu_multiplier"))
        if profile not in seen and seen:
            curve.append((len(seen), _hv(space, feasible, low, high)))
        seen.add(profile)
        feasible += [record] if record.feasible else []
    return [*curve, (len(seen), _hv(space, feasible, low, high))]


def _hv(space, records, low, high) -> float:
    if not records:
        return 0.0
    points = normalise(minimised_points(space, records), low, high)
    return hypervolume(points, np.full(points.shape[1], 1.1))


def per_layer_report(space, layers, runs: dict, budget: int) -> None:
    feasible = [r for records in runs.values() for run in records for r in run if r.feasible]
    points = minimised_points(space, feasible)
    low, high = points.min(axis=0), points.max(axis=0)
    curves = {
        name: [_hypervolume_curve(space, layers, run, low, high) for run in records] for name, records in runs.items()
    }
    best_hv = _hv(space, feasible, low, high)
    table = Table(title="Per-layer space: hypervolume (of all runs' union front) per strategy", title_justify="left")
    for column in ("strategy", "accuracy evaluations", "final hypervolume: median [range]", "share of the union's"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, runs_curves in curves.items():
        finals = [curve[-1][1] for curve in runs_curves]
        evaluations = statistics.median(curve[-1][0] for curve in runs_curves)
        spread = f"{statistics.median(finals):.4f} [{min(finals):.4f}-{max(finals):.4f}]"
        table.add_row(name, f"{evaluations:.0f}", spread, f"{statistics.median(finals) / best_hv:.1%}")
    console.print(table)
    needed = []
    for tuner_curve, nsga_curve in zip(curves["tuner"], curves["nsga2"]):
        target = nsga_curve[-1][1]
        needed.append(next((count for count, hv in tuner_curve if hv >= target), None))
    shown = ", ".join(str(n) if n is not None else "not reached" for n in needed)
    console.print(f"tuner's accuracy evaluations to reach NSGA-II's final hypervolume, per seed: {shown}")
    verdict = "PASS" if all(n is not None and n <= budget / 5 for n in needed) else "FAIL"
    console.print(f"target: at most a fifth of NSGA-II's {budget} evaluations in every seed: {verdict}")


def median(values: list, budget: int) -> float:
    return statistics.median(v if v is not None else float("inf") for v in values) if values else float("nan")


def report(reached: dict) -> None:
    table = Table(
        title="Evaluations to reach a fraction of the true hypervolume (median of seeds)", title_justify="left"
    )
    for column in ("strategy", "95 %", "99 %", "random / strategy at 99 %", "runs reaching 99 %"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    random99 = median(reached["random"][0.99], BUDGETS["random"])
    for name, fractions in reached.items():
        m95, m99 = median(fractions[0.95], BUDGETS[name]), median(fractions[0.99], BUDGETS[name])
        ratio = random99 / m99 if np.isfinite(m99) else float("nan")
        hits = sum(v is not None for v in fractions[0.99])
        table.add_row(name, _count(m95), _count(m99), f"{ratio:.2f}x", f"{hits}/{len(fractions[0.99])}")
    console.print(table)
    xgb = median(reached["xgboost"][0.99], BUDGETS["xgboost"])
    verdict = "PASS" if np.isfinite(xgb) and random99 / xgb >= 3 else "FAIL"
    console.print(f"target: XGBoost needs >= 3x fewer evaluations than random to reach 99 %: {verdict}")


def _count(value: float) -> str:
    return f"{value:,.0f}" if np.isfinite(value) else "not reached"


if __name__ == "__main__":
    main()
