"""Search-quality benchmark: how many evaluations each strategy needs to find the Pareto front.

The joint space of spaces/bench_mnist.toml (5,832 hardware x compression points) is evaluated
exhaustively first: accuracy measured on real MNIST test images for each compression choice
(cached), latency, energy and area from the analytic simulator with tuned schedules. That gives
the true feasible Pareto front and its hypervolume (objectives normalised over the feasible
points, reference point 1.1). Each strategy (XGBoost surrogate, random search, NSGA-II) then
runs on a lookup of those results for 5 seeds; the script prints the evaluations needed to
reach 95 % and 99 % of the true hypervolume (median over seeds) and the ratio to random search.
Target: the default (XGBoost) strategy needs at least 3x fewer evaluations than random to 99 %.

    python scripts/bench_tune.py [--seeds 5] [--eval-samples 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.tuner.database import Database
from codesign.tuner.evaluator import Evaluator
from codesign.tuner.pareto import hypervolume, normalise, pareto_mask
from codesign.tuner.space import load_space
from codesign.tuner.strategies import NSGA2Search, RandomSearch, XGBoostSearch, minimised_points
from codesign.tuner.tune import run_tuning

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
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eval-samples", type=int, default=1000)
    args = parser.parse_args()

    space = load_space(SPACE)
    with tempfile.TemporaryDirectory() as folder:
        images, labels = load_mnist_test()
        data = Path(folder) / "mnist.npz"
        np.savez(data, Input3=images[: args.eval_samples, 0], labels=labels[: args.eval_samples])
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
            for seed in range(args.seeds):
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
