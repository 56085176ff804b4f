"""The profile builder: compiles one compression profile, reusing the model imported once.

A compression profile is what a compression choice (and whether the ALU has a multiplier, which
changes the requantization) fixes whatever the rest of the hardware: the measured accuracy, the
work of every layer, and the layer plans lowering wrote. Profiles are built on the space's base
hardware with that multiplier choice; the cost model and the front re-tile their layers for each
design.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from codesign.compression import CompressionConfig
from codesign.hardware import HardwareSpec
from codesign.importer import ImportedModel
from codesign.pipeline import CompileResult, compile_model
from codesign.plan import LayerPlan
from codesign.schedules.mapper import Layer


@dataclasses.dataclass
class CompressionProfile:
    """What a compression choice fixes, whatever the hardware: accuracy and the layers' work."""

    accuracy: float
    layers: list[Layer]  # the offloaded layers, as the cost model prices them
    host_work: list[tuple[float, float]]  # (ops, bytes) of every host op
    plans: list[LayerPlan] = dataclasses.field(default_factory=list)  # lowering's plans, without kernels
    # The narrow-input convs the profile unfolded (decided on the base hardware): a design
    # evaluated with this profile lists them in its compression, so it compiles as evaluated.
    unfolded: tuple[str, ...] = ()

    @classmethod
    def from_compiled(cls, result: CompileResult, accuracy: float) -> CompressionProfile:
        plans = result.lowered.plans
        layers = [
            Layer(plan.shape, tuple(plan.alu_ops), plan.weight_bits) for plan in plans if plan.placement == "accel"
        ]
        host_work = [(plan.host_ops, plan.host_bytes) for plan in plans]
        # Kernels are TIR (large, not picklable to the tuner's main process); the front re-tiles anyway.
        qgraph = result.qgraph
        unfolded = tuple(sorted(n.name for n in qgraph.gemm_nodes() if qgraph.nodes[n.inputs[0]].op == "im2col"))
        return cls(accuracy, layers, host_work, [dataclasses.replace(plan, kernel=None) for plan in plans], unfolded)


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
