"""The plan of a compiled model, layer by layer: where each layer runs and, on the accelerator,
its geometry, tiling, ALU program and precision. Lowering writes it, the manifest stores it, the
simulator, the tuner and the reports read it; neither compile nor simulator owns it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from codesign.schedules.layer import ConvShape
from codesign.schedules.tiling import Tiling

if TYPE_CHECKING:  # TVM is imported by what schedules kernels, not by what reads plans
    from tvm import tirx


@dataclasses.dataclass(frozen=True)
class AluOp:
    opcode: str  # ADD, MUL, SHR, MAX, MIN (VTA's ALU opcodes)
    vector: bool = False  # per-channel operand loaded into the accumulator; else an immediate


def requant_alu_ops(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> list[AluOp]:
    """The ALU program of codesign's requantization for one layer's parameters."""

    def varies(values) -> bool:
        return bool(np.any(np.asarray(values) != np.asarray(values).flat[0]))

    ops = []
    if np.any(bias != 0):
        ops.append(AluOp("ADD", vector=True))
    if np.any(multiplier != 1):
        ops.append(AluOp("MUL", vector=varies(multiplier)))
    if np.any(shift != 0):
        ops += [AluOp("ADD", vector=varies(shift)), AluOp("SHR", vector=varies(shift))]  # rounding, shift
    return [*ops, AluOp("MAX"), AluOp("MIN")]


@dataclasses.dataclass
class LayerPlan:
    """Where one layer runs and, on the accelerator, how it is tiled."""

    name: str
    op: str
    placement: str
    shape: ConvShape | None = None
    tiling: Tiling | None = None
    footprint: dict[str, int] | None = None
    kernel: tirx.PrimFunc | None = None  # the scheduled accelerator kernel (not in the manifest)
    alu_ops: list[AluOp] = dataclasses.field(default_factory=list)  # requantization on the ALU
    host_ops: float = 0.0  # work on the host CPU (for accelerated layers: packing)
    host_bytes: float = 0.0
    weight_bits: int | None = None  # the layer's weight width (int4 layers move half the bytes)
    weight_bytes: int | None = None  # its weight constant in the module (int4 two per byte)
    schedule: str = "rule"  # how the tiling was chosen: the tile rule, or "auto" (fastest modelled)
    # The conv as the model writes it, where the core runs another shape (`shape`): narrow groups
    # as block-diagonal super-groups (schedules.narrow_groups).
    layer_shape: ConvShape | None = None

    @property
    def macs(self) -> int:
        """The layer's multiply-accumulates as the model writes it: a super-grouped conv's real
        ones, not the zeros of its block-diagonal weight the core also executes. MAC shares count these."""
        shape = self.layer_shape or self.shape
        return shape.macs if shape else 0

    def describe(self) -> str:
        """The layer's geometry as the model writes it (and a super-grouped conv's on the core)."""
        if self.layer_shape is not None:
            return f"{self.layer_shape.describe()} (core: {self.shape.groups} block-diagonal groups)"
        return self.shape.describe() if self.shape else ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "placement": self.placement,
            "shape": dataclasses.asdict(self.shape) if self.shape else None,
            "macs": self.macs if self.shape else None,
            "tiling": self.tiling.to_dict() if self.tiling else None,
            "scratchpad_bytes": self.footprint,
            "alu_ops": [[op.opcode, op.vector] for op in self.alu_ops],
            "host_work": {"ops": self.host_ops, "bytes": self.host_bytes},
            "weight_bits": self.weight_bits,
            "weight_bytes": self.weight_bytes,
            "schedule": self.schedule,
            "layer_shape": dataclasses.asdict(self.layer_shape) if self.layer_shape else None,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> LayerPlan:
        """A plan read back from a manifest (without its kernel, which the caller reschedules)."""
        return cls(
            name=doc["name"],
            op=doc["op"],
            placement=doc["placement"],
            shape=ConvShape(**doc["shape"]) if doc["shape"] else None,
            tiling=Tiling(**doc["tiling"]) if doc["tiling"] else None,
            footprint=doc["scratchpad_bytes"],
            alu_ops=[AluOp(opcode, vector) for opcode, vector in doc["alu_ops"]],
            host_ops=doc["host_work"]["ops"],
            host_bytes=doc["host_work"]["bytes"],
            weight_bits=doc["weight_bits"],
            weight_bytes=doc["weight_bytes"],
            schedule=doc["schedule"],
            layer_shape=ConvShape(**doc["layer_shape"]) if doc["layer_shape"] else None,
        )
