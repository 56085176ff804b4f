"""The plan of a compiled model, layer by layer: where each layer runs and, on the accelerator,
its geometry, tiling, ALU program and precision. Lowering writes it, the manifest stores it, the
simulator, the tuner and the reports read it; neither compile nor simulator owns it."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from codesign.schedules.layer import ConvShape
from codesign.schedules.row_bands import is_row_banded
from codesign.schedules.tiling import Tiling

if TYPE_CHECKING:  # TVM is imported by what schedules kernels, not by what reads plans
    from tvm import tirx


@dataclasses.dataclass(frozen=True)
class AluOp:
    opcode: str  # ADD, MUL, SHR, MAX, MIN (VTA's ALU opcodes)
    vector: bool = False  # per-channel operand loaded into the accumulator; else an immediate


def requant_alu_ops(
    bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, adds_bias: bool = False
) -> list[AluOp]:
    """The ALU program of codesign's requantization for one layer's parameters (`adds_bias`: add
    the bias even where it is zero, as a bias-corrected layer does)."""

    def varies(values) -> bool:
        return bool(np.any(np.asarray(values) != np.asarray(values).flat[0]))

    ops = []
    if adds_bias or np.any(bias != 0):
        ops.append(AluOp("ADD", vector=True))
    if np.any(multiplier != 1):
        ops.append(AluOp("MUL", vector=varies(multiplier)))
    if np.any(shift != 0):
        ops += [AluOp("ADD", vector=varies(shift)), AluOp("SHR", vector=varies(shift))]  # rounding, shift
    return [*ops, AluOp("MAX"), AluOp("MIN")]


# Fixed-point fraction bits of an activation on the ALU: a HardSwish gate clamp(a * x + b, 0, 1)
# is an integer in [0, 256] (steps of 1/256: at most a quarter of an int8 output step of error,
# as x * gate's scale is at most 127 output steps per unit gate), a LeakyReLU slope alpha is
# round(alpha * 256) / 256. With int32 accumulators and ALU multipliers of up to 16 bits, every
# intermediate stays within 2**63 (the kernels compute in int64, as the requantization does).
ACTIVATION_FRACTION_BITS = 8


@dataclasses.dataclass(frozen=True)
class AluActivation:
    """An activation the ALU computes on the accumulator x = acc + bias before the layer's
    requantization (which then takes its result instead of x):

    hardswish  x * clamp(((x + gate_bias) * gate_multiplier + round) >> gate_shift, 0, one) + offset
               (per-channel gate_bias, gate_multiplier, gate_shift in the layer's params)
    leakyrelu  max(x << fraction_bits, x * slope) + offset

    with a per-channel `offset` (a constant added after the activation, often zero).
    """

    kind: str  # "hardswish" | "leakyrelu"
    slope: int = 0  # leakyrelu: round(alpha * one)
    fraction_bits: int = ACTIVATION_FRACTION_BITS

    @property
    def one(self) -> int:
        return 1 << self.fraction_bits

    @property
    def channel_params(self) -> tuple[str, ...]:
        """Per-channel parameters of the layer's params the activation reads."""
        gate = ("gate_bias", "gate_multiplier", "gate_shift") if self.kind == "hardswish" else ()
        return (*gate, "offset")


def layer_alu_ops(params: dict) -> list[AluOp]:
    """The ALU program of an accelerated layer: the requantization of its params, with its
    activation's ops after the bias (on a copy of the accumulator tile, then one tensor-tensor op
    that combines the copy with the accumulator)."""
    # A bias-corrected layer adds its bias whatever its values: its program is known before the
    # correction is measured (a plan without a module skips the measurement).
    adds_bias = params.get("bias_corrected", False)
    ops = requant_alu_ops(params["bias"], params["multiplier"], params["shift"], adds_bias)
    if params.get("input_bits"):  # a wide layer: the accumulator shifts left a byte between its passes
        ops = [AluOp("SHR"), *ops]
    activation = params.get("activation")
    if activation is None:
        return ops
    if activation.kind == "hardswish":
        gate = requant_alu_ops(params["gate_bias"], params["gate_multiplier"], params["gate_shift"])
        extra = [*gate, AluOp("MUL")]  # gate = requantized copy clamped to [0, one]; x * gate
    else:
        extra = [AluOp("MUL"), AluOp("SHR"), AluOp("MAX")]  # copy * slope; x << bits; max of both
    if np.any(params["offset"] != 0):
        extra.append(AluOp("ADD", vector=True))
    after_bias = 1 if adds_bias or np.any(params["bias"] != 0) else 0
    return [*ops[:after_bias], *extra, *ops[after_bias:]]


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
    alu_ops: list[AluOp] = dataclasses.field(default_factory=list)  # requantization (+ activation) on the ALU
    host_ops: float = 0.0  # work on the host CPU (for accelerated layers: packing)
    host_bytes: float = 0.0
    weight_bits: int | None = None  # the layer's weight width (int4 layers move half the bytes)
    weight_bytes: int | None = None  # its weight constant in the module (int4 two per byte)
    input_bits: int | None = None  # a wide layer's activations (16), else the core's (`CoreGeometry.for_layer`)
    schedule: str = "rule"  # how the tiling was chosen: the tile rule, or "auto" (schedules.mapper)
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
        """The layer's geometry as the model writes it (and a depthwise or narrow-group conv's
        on the core, a wide layer's activations)."""
        if self.layer_shape is not None and is_row_banded(self.layer_shape, self.shape):
            return f"{self.layer_shape.describe()} (core: {self.shape.in_channels}-pixel row bands)"
        if self.layer_shape is not None:
            return f"{self.layer_shape.describe()} (core: {self.shape.groups} block-diagonal groups)"
        if self.input_bits:
            return f"{self.shape.describe()} (int{self.input_bits} activations)"
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
            "input_bits": self.input_bits,
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
            input_bits=doc.get("input_bits"),
            schedule=doc["schedule"],
            layer_shape=ConvShape(**doc["layer_shape"]) if doc["layer_shape"] else None,
        )
