"""The profile builder: compiles one compression profile, reusing the model imported once.

A compression profile is what a compression choice (and whether the ALU has a multiplier, which
changes the requantization) fixes whatever the rest of the hardware: the measured accuracy and
the integer program, with its placements. Profiles are compiled on the space's base hardware
with that multiplier choice; the placements quantization chose there are pinned in every design
evaluated with the profile (`CompressionProfile.placements`), so each design's module computes
exactly what was measured.

Where the grouped convs run (the space's `sched.grouped_convs`: "cost", as quantization placed
them on the base, or "core", every one on the core) changes the program's placements but not
its integers: a host conv computes the core's requantization, and a lookup merged into it the
same table (tests/test_tuned_core_geometry.py checks the outputs are equal). So it is not
measured again: the "core" variant is quantized and planned (no build, no accuracy run) with
the measured profile's other placements pinned, and the hardware level sweeps both variants.

What a core's geometry (batch, blocks, precision-scalable lanes: `schedules.mapper.core_key`)
changes is planned for each geometry the space reaches: the shapes the core runs (a narrow-group
conv's super-groups of block_in channels) and the host's work (which values stay blocked, the
padded sizes of blocked host ops: `codesign.packed_layout`, `codesign.host_work`). The cost model
and the front tile those plans for each design.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codesign.compression import CompressionConfig, resolve_compression
from codesign.hardware import HardwareSpec
from codesign.host_work import node_work
from codesign.importer import ImportedModel
from codesign.lowering import plan_layers
from codesign.packed_layout import plan_layouts
from codesign.pipeline import CompileResult, compile_model, quantize_model
from codesign.plan import LayerPlan
from codesign.quantize import QuantizedGraph, gemm_shape, kernel_shape
from codesign.schedules.mapper import Layer, core_key


@dataclasses.dataclass
class CompressionProfile:
    """What a compression choice fixes, whatever the hardware: accuracy and the integer program."""

    accuracy: float
    # Lowering's plans (without kernels) per (grouped-conv placement, core geometry of the space:
    # `core_key`)
    plans_by_core: dict
    # Per grouped-conv placement ("cost", "core"), the placements of its program
    # (CompressionConfig's pinned fields): a design lists them, so it compiles as evaluated.
    placements: dict[str, dict[str, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # the wall time its measurement took (build, accuracy run, variants planned)

    @classmethod
    def from_compiled(
        cls, result: CompileResult, accuracy: float, cores=(), all_on_core: tuple | None = None
    ) -> CompressionProfile:
        """`cores`: hardware of the other core geometries to plan for (the compiled one's always
        is). `all_on_core`: (quantized graph, plans) of the variant with every grouped conv on
        the core, on the compiled hardware (ProfileBuilder.plan_all_on_core), when wanted."""
        variants = {"cost": (result.qgraph, [dataclasses.replace(p, kernel=None) for p in result.lowered.plans])}
        if all_on_core is not None:
            variants["core"] = all_on_core
        plans_by_core, placements = {}, {}
        for choice, (qgraph, base_plans) in variants.items():
            plans_by_core[choice, core_key(result.hw)] = base_plans
            for hw in cores:
                plans_by_core.setdefault((choice, core_key(hw)), plans_on_core(base_plans, qgraph, hw))
            placements[choice] = dict(qgraph.placements)
        return cls(accuracy, plans_by_core, placements)

    def plans(self, hw, grouped_convs: str = "cost") -> list[LayerPlan]:
        """The plans for `hw`'s core geometry with the grouped convs placed by `grouped_convs`,
        untiled where the geometry differs from the base's."""
        try:
            return self.plans_by_core[grouped_convs, core_key(hw)]
        except KeyError:
            geometry = f"batch {hw.batch}, blocks {hw.block_in}x{hw.block_out}"
            raise KeyError(
                f"{hw.name} ({geometry}, grouped convs by {grouped_convs}): not a variant of the profile's space"
            ) from None

    def layers(self, hw, grouped_convs: str = "cost") -> list[Layer]:
        """The offloaded layers, as the cost model prices them on `hw`."""
        plans = self.plans(hw, grouped_convs)
        return [Layer(p.shape, tuple(p.alu_ops), p.weight_bits, p.input_bits) for p in plans if p.placement == "accel"]

    def host_work(self, hw, grouped_convs: str = "cost") -> list[tuple[float, float]]:
        """(ops, bytes) of every node on `hw`'s host."""
        return [(plan.host_ops, plan.host_bytes) for plan in self.plans(hw, grouped_convs)]


def plans_on_core(plans: list[LayerPlan], qgraph: QuantizedGraph, hw) -> list[LayerPlan]:
    """The plans lowering writes for `hw` with the placements of `plans` (untiled): the core's
    shape of each offloaded layer and every node's host work on `hw`'s blocked layout."""
    layouts = plan_layouts(qgraph, hw)
    on_core = []
    for plan in plans:
        node = qgraph.nodes[plan.name]
        ops, nbytes = node_work(node, qgraph, layouts)
        changes = {"host_ops": ops, "host_bytes": nbytes}
        if plan.placement == "accel":
            shape, layer_shape = kernel_shape(node, qgraph, hw), gemm_shape(node, qgraph)
            changes.update(shape=shape, layer_shape=layer_shape if layer_shape != shape else None, tiling=None)
        on_core.append(dataclasses.replace(plan, **changes))
    return on_core


ProfileKey = tuple[str, bool]  # (compression key, ALU multiplier)


def profile_key(compression: CompressionConfig, multiplier: bool) -> ProfileKey:
    return compression.key(), multiplier


class ProfileBuilder:
    def __init__(
        self,
        model: str,
        imported: ImportedModel,
        base: HardwareSpec,
        calibration: Path,
        input_shapes: dict | None = None,
        input_values: dict | None = None,
    ):
        """`imported`: `model` imported with `input_shapes` and `input_values` (done once, by the caller)."""
        self.model, self.imported, self.base, self.calibration = model, imported, base, calibration
        self.input_shapes, self.input_values = input_shapes, input_values

    def hardware(self, multiplier: bool) -> HardwareSpec:
        """The hardware a profile is compiled for: the space's base, with or without the multiplier."""
        return self.base.with_changes(alu_has_multiplier=multiplier)

    def plan_all_on_core(self, result: CompileResult) -> tuple[QuantizedGraph, list[LayerPlan]]:
        """A built profile's variant with every grouped conv on the core, its other placements
        pinned as built: (quantized graph, plans on the built hardware). Quantized and planned
        only; its integers are the built ones (see the module's docstring)."""
        pinned = {**result.qgraph.placements, "host_convs": (), "row_bands": None}  # the fastest core mapping
        compression = result.compression.with_placements(pinned)
        graph, qgraph, _ = quantize_model(
            self.imported, result.hw, self.calibration, warn=lambda m: None, compression=compression
        )
        return qgraph, plan_layers(qgraph, self.imported, result.hw, resolve_compression(compression, graph))

    def build(self, compression: CompressionConfig, multiplier: bool) -> CompileResult:
        return compile_model(
            self.model,
            self.hardware(multiplier),
            self.input_shapes,
            self.calibration,
            warn=lambda m: None,
            compression=compression,
            input_values=self.input_values,
            imported=self.imported,
            kernel_per_module=True,  # a profile recompiles only the kernels it changes
        )
