"""The tuning loop and its outputs.

Batches of `batch_size` configurations are proposed from the finished earlier batches (with a
generator seeded from (seed, batch)), evaluated by the executor and appended to the database as
each finishes. Resuming re-proposes the interrupted batch (the same, by construction) and
evaluates only what is missing. Outputs: the database, pareto.json, and for
every objective the best feasible design as a hardware description plus a compression file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from codesign.files import write_text_atomic as write_text
from codesign.tuner.database import Database, Record
from codesign.tuner.pareto import pareto_mask
from codesign.tuner.space import OBJECTIVES, SearchSpace
from codesign.tuner.strategies import minimised_points


def run_tuning(
    space: SearchSpace, strategy, database: Database, executor, budget: int, batch_size: int, seed: int, on_record=None
):
    history = database.load(space.needed_metrics(), tuple(space.knobs))
    done = {r.index for r in history}
    for batch in range((budget + batch_size - 1) // batch_size):
        first = batch * batch_size
        count = min(batch_size, budget - first)
        if all(first + slot in done for slot in range(count)):
            continue
        # In index order: parallel executors finish (and record) in any order.
        prior = sorted((r for r in history if r.batch < batch), key=lambda r: r.index)
        configs = strategy.propose(space, prior, count, np.random.default_rng([seed, batch]))
        tasks = [(first + slot, config) for slot, config in enumerate(configs) if first + slot not in done]
        for index, config, result in executor.run(tasks):
            record = Record(
                index=index,
                batch=batch,
                config=config,
                feasible=result["feasible"],
                objectives=result["objectives"],
                metrics=result.get("metrics", {}),
                reason=result.get("reason"),
                seconds=result["seconds"],
                seed=seed,
                strategy=strategy.name,
            )
            database.append(record)
            history.append(record)
            done.add(index)
            if on_record:
                on_record(record, history)
    return sorted(history, key=lambda r: r.index)


def pareto_records(space: SearchSpace, records: list[Record]) -> list[Record]:
    feasible = [r for r in records if r.feasible]
    if not feasible:
        return []
    mask = pareto_mask(minimised_points(space, feasible))
    return [r for r, keep in zip(feasible, mask) if keep]


def best_per_objective(space: SearchSpace, records: list[Record]) -> dict[str, Record]:
    feasible = [r for r in records if r.feasible]
    best = {}
    for objective in space.objectives:
        sign = -1 if OBJECTIVES[objective] == "max" else 1
        if feasible:
            best[objective] = min(feasible, key=lambda r: (sign * r.metrics[objective], r.index))
    return best


def write_outputs(run_dir: Path, space: SearchSpace, records: list[Record], layers: list[str]) -> None:
    front = pareto_records(space, records)
    write_text(run_dir / "pareto.json", json.dumps([_row(space, r, layers) for r in front], indent=2) + "\n")
    for objective, record in best_per_objective(space, records).items():
        hw = space.hardware(record.config, name=f"best_{objective}")
        header = f"# codesign tune: best {objective}, evaluation {record.index}\n"
        write_text(run_dir / f"best_{objective}.toml", header + hw.to_toml())
        compression = space.compression(record.config, layers)
        write_text(run_dir / f"best_{objective}.json", json.dumps(compression.to_dict(), indent=2) + "\n")


def _row(space: SearchSpace, record: Record, layers: list[str]) -> dict:
    return {
        "index": record.index,
        "objectives": {o: record.metrics[o] for o in space.objectives},
        "metrics": record.metrics,
        "config": record.config,
        "compression": space.compression(record.config, layers).to_dict(),
    }
