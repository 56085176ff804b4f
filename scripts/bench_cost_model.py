"""Scan the analytic cycle model against the event-level simulation over many seeds.

Runs the sampler of tests/test_cost_model_agreement.py (random designs, real layers, the rule's,
auto's and random tilings) for seeds FIRST..LAST and, per triple, the instruction stream on the
event simulator and the closed form (`schedules.cost_model.estimate`). Prints the triples whose
cycles differ by more than 5 % (design, layer, tiling), their count, the worst and the median
error, and whether any triple's DRAM bytes differ. With `--cache FILE` the event simulation's
results are kept in FILE by triple (they do not depend on the cost model), so that a rerun after
changing the model only recomputes the closed form. `--sweep N` instead times the vectorised
design sweep (`simulator.design_sweep.evaluate_designs`, the tuner's path through the model) on
the test's layers over N random designs, in process CPU seconds (best of a few runs, so that
other load on the machine counts little; and the first, cold run, whose candidates are
enumerated and, under `auto`, event-timed). `--shortlist N` checks the shortlist `auto` times: on N
random (design, layer) pairs it event-simulates the closed form's best `SHORTLIST_DEPTH`
(tiling, threads) and prints where among them the event simulation's fastest ranks, and what
timing only the best 1, 2 or 3 loses against it. Run from the repository root:

    python scripts/bench_cost_model.py [--seeds 1-30] [--pairs 200] [--cache FILE]
    python scripts/bench_cost_model.py --sweep 2000
    python scripts/bench_cost_model.py --shortlist 1000
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import pickle
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
from test_cost_model_agreement import (
    LAYERS,
    TOLERANCE,
    both_models,
    describe,
    random_alu_program,
    random_design,
    sample_triples,
)

from codesign.schedules.cost_model import estimate, layer_features
from codesign.schedules.mapper import TIMED_CANDIDATES, Layer, candidate_tilings
from codesign.schedules.tiling import fits, tile_footprint
from codesign.simulator.design_sweep import evaluate_designs

SWEEP_REPEATS = 3
SHORTLIST_DEPTH = 8


def seed_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def triple_key(triple: dict) -> tuple:
    return triple["hw"], triple["shape"], tuple(triple["alu"]), triple["tiling"]


def analytic(triple: dict) -> tuple[float, int]:
    shape, hw, alu, tiling = triple["shape"], triple["hw"], triple["alu"], triple["tiling"]
    timing = estimate(
        layer_features(shape, tiling, hw, alu), hw.dram_latency_cycles, hw.dram_bytes_per_cycle,
        hw.alu_vectors_per_cycle,
    )  # fmt: skip
    return float(timing["cycles"][0]), int(timing["dram_bytes"][0])


def scan(seeds: range, pairs: int, cache: Path | None) -> None:
    events = pickle.loads(cache.read_bytes()) if cache and cache.exists() else {}
    errors, beyond, byte_mismatches = [], [], 0
    start = time.perf_counter()
    for seed in seeds:
        for triple in sample_triples(seed, pairs):
            key = triple_key(triple)
            if key in events:
                (event_cycles, event_bytes), (analytic_cycles, analytic_bytes) = events[key], analytic(triple)
            else:
                event, analytic_cycles, analytic_bytes = both_models(triple)
                event_cycles, event_bytes = events[key] = event.cycles, event.dram_bytes
            byte_mismatches += analytic_bytes != event_bytes
            error = abs(analytic_cycles - event_cycles) / event_cycles
            errors.append(error)
            if error > TOLERANCE:
                beyond.append(f"seed {seed}: " + describe(triple, event_cycles, analytic_cycles))
    if cache:
        cache.write_bytes(pickle.dumps(events))
    for line in beyond:
        print(line)
    print(
        f"seeds {seeds.start}-{seeds.stop - 1}: {len(errors)} triples, {len(beyond)} beyond {TOLERANCE:.0%}, "
        f"worst {100 * max(errors):.2f} %, median {100 * statistics.median(errors):.3f} %, "
        f"DRAM byte mismatches {byte_mismatches} ({time.perf_counter() - start:.0f} s)"
    )


def time_sweep(count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    layers = [Layer(shape, tuple(random_alu_program(rng, True))) for shape in LAYERS]
    designs = [random_design(rng) for _ in range(count)]
    for schedule in ("rule", "auto"):
        start = time.process_time()
        evaluate_designs(layers, designs, schedule)  # cold: candidate tilings enumerated (and timed) and cached
        cold = time.process_time() - start
        best = float("inf")
        for _ in range(SWEEP_REPEATS):
            start = time.process_time()
            evaluate_designs(layers, designs, schedule)
            best = min(best, time.process_time() - start)
        print(
            f"design sweep ({schedule}), {len(layers)} layers: {count / best:,.0f} designs/s ({best:.3f} s CPU), "
            f"cold {count / cold:,.0f} designs/s ({cold:.3f} s CPU)"
        )


def shortlist_regret(pairs: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    ranks, regrets = collections.Counter(), {k: [] for k in range(1, TIMED_CANDIDATES + 1)}
    while sum(ranks.values()) < pairs:
        hw, shape = random_design(rng), LAYERS[int(rng.integers(len(LAYERS)))]
        alu = random_alu_program(rng, hw.alu_has_multiplier)
        ranked = sorted(_priced_tilings(shape, hw, alu), key=lambda entry: entry[:3])[:SHORTLIST_DEPTH]
        if not ranked:
            continue
        cycles = [both_models({"shape": shape, "hw": hw, "alu": alu, "tiling": e[3]})[0].cycles for e in ranked]
        ranks[cycles.index(min(cycles)) + 1] += 1
        for k, values in regrets.items():
            values.append(min(cycles[:k]) / min(cycles) - 1)
    print(f"{pairs} (design, layer) pairs: rank of the event-fastest of the closed form's best {SHORTLIST_DEPTH}:")
    print("  " + ", ".join(f"{rank}: {count}" for rank, count in sorted(ranks.items())))
    for k, values in regrets.items():
        values = np.array(values)
        print(
            f"  timing the best {k}: cycles lost mean {100 * values.mean():.3f} %, max {100 * values.max():.2f} %, "
            f"pairs losing more than 1 %: {int((values > 0.01).sum())}"
        )


def _priced_tilings(shape, hw, alu) -> list[tuple]:
    """(closed-form cycles, threads, candidate index, tiling) of every fitting (tiling, threads),
    two threads only with two output tiles to alternate between."""
    priced = []
    for index, candidate in enumerate(candidate_tilings(shape, hw)):
        for threads in (1, 2):
            tiling = dataclasses.replace(candidate, virtual_threads=threads)
            triple = {"shape": shape, "hw": hw, "alu": alu, "tiling": tiling}
            if fits(tile_footprint(shape, tiling, hw), hw, threads) and _output_tiles(triple) >= threads:
                priced.append((analytic(triple)[0], threads, index, tiling))
    return priced


def _output_tiles(triple: dict) -> float:
    return layer_features(triple["shape"], triple["tiling"], triple["hw"], triple["alu"])["tiles"][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_range, default=seed_range("1-30"), help="FIRST-LAST (inclusive)")
    parser.add_argument("--pairs", type=int, default=200, help="(design, layer) pairs per seed, 4 tilings each")
    parser.add_argument("--cache", type=Path, help="event results by triple, read and updated")
    parser.add_argument("--sweep", type=int, metavar="N", help="time the design sweep over N designs instead")
    parser.add_argument("--shortlist", type=int, metavar="N", help="check auto's shortlist on N pairs instead")
    args = parser.parse_args()
    if args.sweep:
        time_sweep(args.sweep)
    elif args.shortlist:
        shortlist_regret(args.shortlist)
    else:
        scan(args.seeds, args.pairs, args.cache)


if __name__ == "__main__":
    main()
