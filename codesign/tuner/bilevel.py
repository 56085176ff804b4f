"""The bilevel search: the budget counts accuracy evaluations, and each one buys its best hardware.

Measuring a compression profile (compile it and run it on the data) is the expensive step;
costing a hardware design for a measured profile is the vectorised cost model, thousands a
second. So the search has two levels:

- outer: which compression profiles to measure (the `comp.*` knobs, and `hw.alu_multiplier`,
  which changes the requantization and so the accuracy). An outer strategy (XGBoost surrogates
  by default) proposes them from the profiles measured so far, each summarised by the best value
  of every objective among its feasible designs;
- inner: every combination of the other knobs (the hardware), costed for the profile at once;
  the profile's feasible Pareto front is recorded (or, when no design is feasible, its best
  one, so the outer level learns what failed).

Outer knobs that change no profile (a compression group that matches no layer, a multiplier
choice the space fixes, a group's prune ratio when none of its layers can be pruned: mnist-8's
classifier) are detected before the search and held at their first choice, so no accuracy
evaluation is spent on them; a per-layer space has no prune knob on a layer whose pruning
cannot act (SearchSpace.for_layers). The first profiles measured are the anchors: the space's
baseline (every knob at its first choice), then the baseline under each other multiplier
choice. A batch is proposed from a generator seeded from (seed, batch) and from the records of
earlier batches only, so a run is reproducible and resumes the interrupted batch (the same
proposals) by recording only what is missing.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from codesign.tuner.database import Database, Record
from codesign.tuner.pareto import pareto_mask
from codesign.tuner.space import OBJECTIVES, SearchSpace
from codesign.tuner.strategies import XGBoostSearch, minimised_points
from codesign.tuner.tune import design_document, result_record

PROFILE_HARDWARE_KNOBS = ("hw.alu_multiplier",)  # hardware knobs that change the measured profile


def is_profile_knob(name: str) -> bool:
    return name.startswith("comp.") or name in PROFILE_HARDWARE_KNOBS


@dataclasses.dataclass
class BilevelPlan:
    """The space split in two: the outer space of profiles (live knobs only) and the inner
    hardware combinations each measured profile is swept over."""

    space: SearchSpace
    outer: SearchSpace
    fixed: dict  # outer knobs that change no profile, at their first choice
    inner: list[dict]  # every combination of the inner knobs

    def configs(self, profile: dict) -> list[dict]:
        return [{**self.fixed, **profile, **hardware} for hardware in self.inner]


def plan_bilevel(space: SearchSpace, layers: list[str]) -> BilevelPlan:
    """Split `space` for a model with these GEMM layers, dropping outer knobs that change no profile."""
    outer_knobs = {name: choices for name, choices in space.knobs.items() if is_profile_knob(name)}
    live = {
        name: choices for name, choices in outer_knobs.items() if _changes_profile(space, layers, name, outer_knobs)
    }
    fixed = {name: choices[0] for name, choices in outer_knobs.items() if name not in live}
    inner_knobs = {name: choices for name, choices in space.knobs.items() if not is_profile_knob(name)}
    names = list(inner_knobs)
    inner = [dict(zip(names, values)) for values in itertools.product(*inner_knobs.values())]
    constraints = {k: v for k, v in space.constraints.items() if k != "area_mm2_max"}  # the inner level's
    outer = dataclasses.replace(space, knobs=live or {"profile": [None]}, constraints=constraints)
    return BilevelPlan(space, outer, fixed, inner)


def _changes_profile(space: SearchSpace, layers: list[str], name: str, outer_knobs: dict) -> bool:
    """Whether some choice of knob `name` gives another profile than its first, the other outer
    knobs at any of their first 256 settings (a knob that matters shows it at once: a group's
    layers, or the multiplier, change the profile whatever the others are)."""
    others = {k: v for k, v in outer_knobs.items() if k != name}
    settings = list(itertools.islice(itertools.product(*others.values()), 256))
    for values in settings:
        base = dict(zip(others, values))
        keys = {_profile_identity(space, layers, {**base, name: choice}) for choice in outer_knobs[name]}
        if len(keys) > 1:
            return True
    return False


def _profile_identity(space: SearchSpace, layers: list[str], config: dict) -> tuple:
    return space.compression(config, layers).key(), config.get("hw.alu_multiplier")


def _profile_id(plan: BilevelPlan, config: dict) -> str:
    return plan.outer.key({name: config[name] for name in plan.outer.knobs if name in config})


def outer_records(plan: BilevelPlan, history: list[Record]) -> list[Record]:
    """One record per measured profile: its outer knobs, and per objective the best value among
    its feasible designs (among all its designs when none is feasible)."""
    by_profile: dict[str, list[Record]] = {}
    for record in history:
        by_profile.setdefault(_profile_id(plan, record.config), []).append(record)
    summaries = []
    for records in by_profile.values():
        feasible = [r for r in records if r.feasible]
        pool = feasible or records
        metrics = dict(pool[0].metrics)
        for objective in plan.space.objectives:
            values = [r.metrics[objective] for r in pool if objective in r.metrics]
            if values:
                metrics[objective] = max(values) if OBJECTIVES[objective] == "max" else min(values)
        config = {name: pool[0].config.get(name) for name in plan.outer.knobs}
        summaries.append(dataclasses.replace(pool[0], config=config, feasible=bool(feasible), metrics=metrics))
    return summaries


def profile_front(space: SearchSpace, configs: list[dict], results: list[dict]) -> list[int]:
    """Positions of the profile's designs to record: its feasible Pareto front (designs tied on
    every objective all kept), or its best design by the first objective when none is feasible."""
    feasible = [i for i, result in enumerate(results) if result["feasible"]]
    if feasible:
        points = minimised_points(space, [_as_record(configs[i], results[i]) for i in feasible])
        return [i for i, keep in zip(feasible, pareto_mask(points, keep_ties=True)) if keep]
    measured = [i for i, result in enumerate(results) if result.get("metrics")]
    if not measured:
        return []
    first = space.objectives[0]
    sign = -1 if OBJECTIVES[first] == "max" else 1
    return [min(measured, key=lambda i: sign * results[i]["metrics"][first])]


def _as_record(config: dict, result: dict) -> Record:
    return Record(0, 0, config, result["feasible"], result["objectives"], result["metrics"], None, 0.0, 0, "")


def anchors(plan: BilevelPlan) -> list[dict]:
    """The profiles every search measures first: the space's baseline (every knob at its first
    choice: by convention int8, nothing pruned, a feasible anchor), then the baseline under each
    other choice of a hardware knob that changes the profile (the ALU multiplier). What the
    hardware alone does for the uncompressed model is known before compression is searched, as
    a hardware-first search would know it."""
    baseline = {name: choices[0] for name, choices in plan.outer.knobs.items()}
    variants = [
        {**baseline, name: choice} for name in PROFILE_HARDWARE_KNOBS for choice in plan.outer.knobs.get(name, [])[1:]
    ]
    return [baseline, *variants]


class BilevelSearch:
    """Counts its budget in measured profiles; `outer` proposes them (an XGBoostSearch by default)."""

    name = "bilevel"

    def __init__(self, outer=None, profiles_per_batch: int = 1):
        self.outer = outer or XGBoostSearch(initial=4, pool=400)
        self.profiles_per_batch = profiles_per_batch

    def run(self, plan: BilevelPlan, database: Database, executor, budget: int, seed: int, layers, on_record=None):
        """Measure `budget` profiles (those recorded count), sweeping the hardware of each."""
        history = database.load(plan.space.needed_metrics(), tuple(plan.space.knobs))
        for batch in range(-(-budget // self.profiles_per_batch)):
            count = min(self.profiles_per_batch, budget - batch * self.profiles_per_batch)
            measured = {_profile_id(plan, r.config) for r in history if r.batch == batch}
            if len(measured) >= count:
                continue
            prior = sorted((r for r in history if r.batch < batch), key=lambda r: r.index)
            rng = np.random.default_rng([seed, batch])
            for profile in self._proposals(plan, prior, count, rng):
                profile = {k: v for k, v in profile.items() if k in plan.space.knobs}
                if _profile_id(plan, profile) in measured:
                    continue  # recorded before an interruption (a profile's front is written at once)
                records = self._sweep(plan, profile, batch, seed, layers, executor, len(history))
                database.append_many(records)
                for record in records:
                    history.append(record)
                    if on_record:
                        on_record(record, history)
        return sorted(history, key=lambda r: r.index)

    def _proposals(self, plan: BilevelPlan, prior: list[Record], count: int, rng) -> list[dict]:
        """The anchors not measured yet (`anchors`), then the outer strategy's profiles."""
        measured = {_profile_id(plan, record.config) for record in prior}
        pending = [anchor for anchor in anchors(plan) if plan.outer.key(anchor) not in measured]
        if len(pending) >= count:
            return pending[:count]
        keys = {plan.outer.key(anchor) for anchor in pending}
        proposed = self.outer.propose(plan.outer, outer_records(plan, prior), count, rng)
        others = [p for p in proposed if plan.outer.key(p) not in keys]
        return [*pending, *others][:count]

    def _sweep(self, plan, profile, batch, seed, layers, executor, next_index) -> list[Record]:
        configs = plan.configs(profile)
        tasks = list(enumerate(configs))
        results = [result for _, _, result in executor.run(tasks)]
        records = []
        for position in profile_front(plan.space, configs, results):
            config, index = configs[position], next_index + len(records)
            result = {**results[position], "seconds": results[position]["seconds"] * len(configs)}  # the sweep's
            design = design_document(plan.space, config, layers, index, result.get("placements"))
            records.append(result_record(index, batch, config, result, seed, self.name, design))
        return records
