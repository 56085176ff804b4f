"""The batch evaluator: a batch of configurations -> their results, in order.

The configurations are grouped by compression profile; the profiles not measured yet are handed,
all at once, to `measure` (in this process, or spread over an executor's workers); then every
design of the batch is costed in one vectorised call of the cost model, and the constraints are
checked. It runs in the tuner's process: it holds what every executor shares (the space, the
model's GEMM layer names, the float model's accuracy and the measured profiles).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from codesign.compression import CompressionConfig
from codesign.errors import HardwareError
from codesign.hardware import HardwareSpec
from codesign.tuner.constraints import violation
from codesign.tuner.cost_model import CostModel
from codesign.tuner.profile_builder import CompressionProfile, ProfileKey, profile_key
from codesign.tuner.space import SearchSpace

# The profiles to measure, {key: (compression, ALU multiplier)} -> {key: profile}
Measure = Callable[[dict[ProfileKey, tuple[CompressionConfig, bool]]], dict[ProfileKey, CompressionProfile]]


@dataclasses.dataclass
class _Group:
    """The configurations of a batch sharing a compression profile."""

    request: tuple[CompressionConfig, bool]  # what measures the profile: (compression, ALU multiplier)
    positions: list[int] = dataclasses.field(default_factory=list)  # in the batch
    # (hardware, grouped-conv placement: SearchSpace.grouped_convs) per configuration
    designs: list[tuple[HardwareSpec, str]] = dataclasses.field(default_factory=list)


class BatchEvaluator:
    def __init__(self, space: SearchSpace, layers: list[str], float_accuracy: float, measure: Measure):
        self.space, self.layers, self.float_accuracy = space, layers, float_accuracy
        self.measure = measure
        self.cost_model = CostModel(space.schedule_mode)
        self.profiles: dict[ProfileKey, CompressionProfile] = {}

    def profile(self, config: dict, multiplier: bool) -> CompressionProfile:
        """The profile of a configuration's compression (with this multiplier choice), measured if new."""
        compression = self.space.compression(config, self.layers)
        key = profile_key(compression, multiplier)
        self.measure_missing({key: (compression, multiplier)})
        return self.profiles[key]

    def measure_missing(self, wanted: dict[ProfileKey, tuple[CompressionConfig, bool]]) -> None:
        missing = {key: request for key, request in wanted.items() if key not in self.profiles}
        if missing:
            self.profiles.update(self.measure(missing))

    def evaluate_many(self, configs: list[dict]) -> list[dict]:
        """Results in the order of `configs`; each records the batch's wall time per configuration."""
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(configs)
        groups = self._group(configs, results)
        self.measure_missing({key: group.request for key, group in groups.items()})
        costs = self.cost_model.cost([(self.profiles[key], group.designs) for key, group in groups.items()])
        for (key, group), group_costs in zip(groups.items(), costs):
            for position, design_costs, (_, grouped_convs) in zip(group.positions, group_costs, group.designs):
                results[position] = self._result(design_costs, self.profiles[key], grouped_convs)
        elapsed = (time.perf_counter() - start) / max(len(configs), 1)
        for result in results:
            result["seconds"] = elapsed
        return results

    def _group(self, configs: list[dict], results: list[dict | None]) -> dict[ProfileKey, _Group]:
        """The configurations by compression profile; one whose hardware is invalid gets its
        (infeasible) result in `results` instead."""
        groups: dict[ProfileKey, _Group] = {}
        for position, config in enumerate(configs):
            try:
                hw = self.space.hardware(config)
            except HardwareError as err:
                results[position] = {"feasible": False, "reason": str(err), "objectives": {}, "metrics": {}}
                continue
            compression = self.space.compression(config, self.layers)
            key = profile_key(compression, hw.alu_has_multiplier)
            group = groups.setdefault(key, _Group((compression, hw.alu_has_multiplier)))
            group.positions.append(position)
            group.designs.append((hw, self.space.grouped_convs(config)))
        return groups

    def _result(self, costs: dict, profile: CompressionProfile, grouped_convs: str) -> dict:
        metrics = {**costs, "accuracy": profile.accuracy, "float_accuracy": self.float_accuracy}
        reason = violation(metrics, self.space.constraints)
        return {
            "feasible": reason is None,
            "reason": reason,
            "objectives": {name: metrics[name] for name in self.space.objectives},
            "metrics": metrics,
            "placements": profile.placements[grouped_convs],  # pinned in the design's compression
        }
