"""The tuning loop and its outputs.

Batches of `batch_size` configurations are proposed from the finished earlier batches (with a
generator seeded from (seed, batch)), evaluated by the executor and appended to the database as
each finishes. Resuming re-proposes the interrupted batch (the same, by construction) and
evaluates only what is missing. Every record holds its design (hardware, compression,
schedule). Outputs: the database; `designs/eval_N.json`, the Design of every evaluation whose
hardware is valid (what `codesign compile --design` reads); pareto.json; and for every
objective the best feasible design as a hardware description plus a compression file, both
written from that Design.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from codesign.design import Design
from codesign.errors import CodesignError, HardwareError
from codesign.files import write_text_atomic as write_text
from codesign.tuner.database import Database, Record
from codesign.tuner.pareto import pareto_mask
from codesign.tuner.space import OBJECTIVES, SearchSpace
from codesign.tuner.strategies import minimised_points

DESIGNS_DIR = "designs"  # in a run directory: eval_N.json, the Design of evaluation N


def run_tuning(
    space: SearchSpace,
    strategy,
    database: Database,
    executor,
    budget: int,
    batch_size: int,
    seed: int,
    on_record=None,
    layers: list[str] | None = None,
):
    """Evaluate `budget` configurations; with the model's GEMM `layers`, each record holds its design."""
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
            design = None if layers is None else design_document(space, config, layers, index, result.get("placements"))
            record = result_record(index, batch, config, result, seed, strategy.name, design)
            database.append(record)
            history.append(record)
            done.add(index)
            if on_record:
                on_record(record, history)
    return sorted(history, key=lambda r: r.index)


def result_record(index: int, batch: int, config: dict, result: dict, seed: int, strategy: str, design) -> Record:
    """The record of an evaluator's result."""
    return Record(
        index=index,
        batch=batch,
        config=config,
        feasible=result["feasible"],
        objectives=result["objectives"],
        metrics=result.get("metrics", {}),
        reason=result.get("reason"),
        seconds=result["seconds"],
        seed=seed,
        strategy=strategy,
        design=design,
    )


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


def design_document(space: SearchSpace, config: dict, layers: list[str], index: int, placements=None) -> dict | None:
    """A configuration's Design as a record holds it, with the placements its profile chose
    pinned (`placements`, when known: CompressionProfile.placements); None if its hardware is invalid."""
    try:
        design = space.design(config, layers, name=f"eval_{index}")
    except HardwareError:
        return None
    if placements is not None:
        design = dataclasses.replace(design, compression=design.compression.with_placements(placements))
    return design.to_dict()


def record_design(space: SearchSpace, record: Record, layers: list[str]) -> Design | None:
    """The record's Design (derived from its configuration for a record written before records
    held designs); None if its hardware is invalid."""
    if record.design is not None:
        return Design.from_dict(record.design, f"evaluation {record.index}'s design")
    document = design_document(space, record.config, layers, record.index)
    return None if document is None else Design.from_dict(document)


def design_file_name(index: int) -> str:
    """Evaluation `index`'s design file, relative to the run directory."""
    return f"{DESIGNS_DIR}/eval_{index}.json"


def write_outputs(run_dir: Path, space: SearchSpace, records: list[Record], layers: list[str]) -> None:
    designs = {r.index: d for r in records if (d := record_design(space, r, layers)) is not None}
    write_design_files(run_dir, designs)
    front = pareto_records(space, records)
    rows = [_row(space, r, designs[r.index]) for r in front]
    write_text(run_dir / "pareto.json", json.dumps(rows, indent=2) + "\n")
    for objective, record in best_per_objective(space, records).items():
        design = designs[record.index]
        hw = design.hardware.with_changes(name=f"best_{objective}")
        header = f"# codesign tune: best {objective}, evaluation {record.index} ({design_file_name(record.index)})\n"
        write_text(run_dir / f"best_{objective}.toml", header + hw.to_toml())
        write_text(run_dir / f"best_{objective}.json", json.dumps(design.compression.to_dict(), indent=2) + "\n")


def write_design_files(run_dir: Path, designs: dict[int, Design]) -> None:
    """designs/eval_N.json for every design, each replaced atomically."""
    try:
        (Path(run_dir) / DESIGNS_DIR).mkdir(exist_ok=True)
    except OSError as err:
        raise CodesignError(f"{run_dir / DESIGNS_DIR}: cannot create ({err.strerror})") from err
    for index, design in designs.items():
        design.save(Path(run_dir) / design_file_name(index))


def _row(space: SearchSpace, record: Record, design: Design) -> dict:
    return {
        "index": record.index,
        "objectives": {o: record.metrics[o] for o in space.objectives},
        "metrics": record.metrics,
        "config": record.config,
        "compression": design.compression.to_dict(),
        "design": design_file_name(record.index),
    }
