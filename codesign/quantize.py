"""Stage 3, quantization: Graph + tensor ranges + hardware -> QuantizedGraph (integer program).

Post-training static quantization, symmetric (no zero points, as VTA's int8 datapath):
- weights per output channel, bias in int32 at the accumulator's scale;
- activations per tensor from calibration ranges, or per channel where that pays and every
  reader can take it (channel_scaled): a conv folds its input's channel scales into its weights
  before quantizing them, a lookup table gets one row per channel, an integer add, multiply or
  spatial mean gets one multiplier per channel, a dequantize broadcasts.
  MobileNet-style blocks need it: a depthwise conv mixes no channels, so a channel whose range
  is a small fraction of the tensor's would keep only a few int8 levels through it. A conv that
  mixes channels gains too, less: the folded scales move the channels' spread into its weights,
  so a tensor it reads gets SmoothQuant's balance (balanced_ranges) instead of full channel
  scales (PP-OCRv4's recogniser: the input error of its 480-channel pointwise convs halves);
- every int8 result is produced by one requantization,
      q = clamp(((acc + bias) * multiplier + ((1 << shift) >> 1)) >> shift, lo, hi)
  where multiplier / 2**shift approximates the real rescaling factor. With an ALU multiplier
  of B bits the multiplier has B bits; a shift-only ALU forces power-of-two scales so that the
  factor is an exact power of two (multiplier 1, or a left shift when the factor exceeds 1);
- ReLU / Clip are folded into lo, hi (affine steps around them, e.g. HardSigmoid, into the
  weights and bias: codesign.graph);
- HardSwish and LeakyReLU behind an accelerated layer, where the ALU has a multiplier, nothing
  else reads the layer's own output and the core's extra ALU time is modelled shorter than the
  host's lookup table, become part of its ALU program
  (codesign.alu_activations, codesign.plan.AluActivation): the layer's QNode then stands for the
  activation's output, and no int8 rounding happens between the layer and its activation;
- a conv with fewer input channels than the core's block_in (a first layer on an image) becomes
  im2col on the host + a 1x1 conv where the cost model prices that faster
  (schedules.narrow_inputs): the same integers, with the core's input lanes filled;
- a --wide-layers GEMM (lower_wide_gemm) has int16 activations, in and out, on int8 weights:
  its input is quantized to int16 on the host (within a range that keeps its accumulator in
  int32), the core runs it in two passes over the input's bytes (`CoreGeometry.for_layer`),
  requantizes it to int16, and its readers take it dequantized; for a model whose int8
  activations lose too much (silero-vad's LSTM variant: its states on quiet audio);
- max-pool, reshape and transpose run on int8 directly; residual adds, squeeze-and-excitation
  gates and means are integer ops with their own requantization, per channel where an input or
  the output has channel scales (PP-OCRv4's recogniser: int8 cosine 0.976 -> 0.981 over 16
  text lines); everything else runs in float on the host between a dequantize and a quantize.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import math

import numpy as np

from codesign.alu_activations import HardSwish, chain_activation
from codesign.calibration import TensorRanges
from codesign.errors import HardwareError, ModelError
from codesign.float_numpy import is_static_slice, supports_node, window_counts
from codesign.graph import FLOAT_MAX, FLOAT_MIN, Graph, Node, channel_shaped, remove_dead
from codesign.host_work import host_seconds, node_work
from codesign.lookup_tables import ELEMENTWISE_OPS, channel_constant_count, tabulate, tabulated_values
from codesign.packed_layout import Layouts, can_be_blocked, chains_kernel, reads_blocks_itself
from codesign.plan import ACTIVATION_FRACTION_BITS, AluActivation, layer_alu_ops
from codesign.schedules.layer import ConvShape
from codesign.schedules.narrow_groups import accelerator_seconds, is_narrow, super_grouped
from codesign.schedules.narrow_inputs import unfolded_weight, unfolding_pays
from codesign.schedules.row_bands import banded, fits_bands
from codesign.schedules.tiling import TilingError

INT8_MIN, INT8_MAX = -128, 127
# A wide layer's (--wide-layers) activations: int16, symmetric, over this many times their
# calibrated range. int16 has steps to spare; what costs accuracy is clipping an input beyond
# the calibration's (silero-vad's LSTM variant, its first encoder conv on its evaluation inputs:
# relative error 4.1 % at 1x, 1.9 % at 2x and 4x, the weights' 1.9 % alone).
WIDE_BITS = 16
WIDE_MAX = 2 ** (WIDE_BITS - 1) - 1
WIDE_HEADROOM = 4
# The largest bias (in accumulator units) a layer may hold: int32 with room for its products.
BIAS_LIMIT = 2.0**30
# Host-side integer ops (residual add, mean, host convs) use this multiplier width.
HOST_MULTIPLIER_BITS = 16
# A channel's scale is at least this fraction of its tensor's: a near-dead channel carries
# noise, and a tiny scale would ask the requantization for a huge multiplier.
CHANNEL_SCALE_FLOOR = 1 / 256
# SmoothQuant's migration strength (Xiao et al., 2023): a tensor read by a conv that mixes its
# channels gets channel ranges balanced_ranges(), moving this share of the channels' spread into
# the weights the scales are folded into. Measured on the corpus (int8 cosine against
# onnxruntime on 16 of scripts/bench_models.py's inputs, with per-channel adds, means and gates
# and exact requantization multipliers): strength 0.5 / 0.75 gives PP-OCRv4 det 0.974 / 0.983,
# rec 0.981 / 0.982, YOLOX 0.998 / 0.998, and PP-OCR's classifier on a shift-only ALU 99.75 %
# top-1 on 400 rendered lines at both (before per-channel adds, 0.75 cost it half a point).
MIXED_CHANNEL_MIGRATION = 0.75
# A table is one-sided where its values reach below zero by at most this share of their reach
# above it (HardSwish: 0.375 below, several units above). A symmetric int8 scale leaves such a
# tensor half of its codes; a zero point gives it all 256 at (at least) 1.5x finer steps
# (README, "Zero points on one-sided activations": PP-OCRv4 det's int8 cosine 0.9854 -> 0.9904).
ONE_SIDED_REACH = 1 / 3
INT8_PASSTHROUGH_OPS = {
    "relax.reshape",
    "relax.permute_dims",
    "relax.flatten",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.nn.max_pool2d",
    "relax.split",  # its parts (TupleGetItem) keep the scale: YOLOv8's C2f blocks split a conv's output
    "TupleGetItem",
    "relax.max",  # a reduction: rounding is monotone, so the max of int8 values is the int8 of the max
}


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    weight_bits: int = 8
    shift_only: bool = False  # the ALU has no multiplier: power-of-two scales
    multiplier_bits: int = 16
    layer_weight_bits: dict[str, int] = dataclasses.field(default_factory=dict)  # per-layer overrides
    block_in: int = 16  # the core's input lanes: fewer channels per group make a narrow-group conv
    float_layers: tuple[str, ...] = ()  # glob patterns of layers kept in float on the host
    wide_layers: tuple[str, ...] = ()  # glob patterns of GEMM layers with int16 activations (lower_wide_gemm)
    # Weighted GEMM layers get their biases corrected on the calibration data (codesign.bias_correction),
    # so each adds a bias in its ALU program: params["bias_corrected"], set before any pricing.
    bias_correction: bool = True
    # Pinned placements (codesign.compression): None where the cost model decides
    unfold: tuple[str, ...] | None = None  # narrow-input convs to unfold
    host_convs: tuple[str, ...] | None = None  # grouped convs on the host
    row_bands: tuple[str, ...] | None = None  # depthwise convs on the core as row bands
    alu_activations: tuple[str, ...] | None = None  # GEMMs computing their activation in the ALU
    zero_point_pads: tuple[str, ...] | None = None  # padded grouped convs reading a zero point
    offset_tables: bool = True  # one-sided tables read by unpadded GEMMs (or zero_point_pads) get a zero point
    # The description narrow-group convs are priced on, to place them (None: they stay on the host).
    hardware: object = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def for_hardware(
        cls,
        hw,
        weight_bits: int | None = None,
        layer_weight_bits=None,
        float_layers=(),
        placements=None,
        bias_correction: bool = True,
        wide_layers=(),
    ) -> QuantConfig:
        """Quantization the core can execute; weights may be narrower than its weight width.
        `placements`: {"unfold" | "host_convs" | "row_bands" | "alu_activations" | "zero_point_pads": layer
        names or None}."""
        for name, bits in {"all layers": weight_bits, **(layer_weight_bits or {})}.items():
            if bits is not None and bits > hw.weight_bits:
                raise HardwareError(
                    f"{bits}-bit weights ({name}) do not fit {hw.name}'s {hw.weight_bits}-bit weight datapath"
                )
        return cls(
            weight_bits=weight_bits or hw.weight_bits,
            shift_only=not hw.alu_has_multiplier,
            multiplier_bits=hw.alu_multiplier_bits if hw.alu_has_multiplier else 0,
            layer_weight_bits=dict(layer_weight_bits or {}),
            block_in=hw.block_in,
            float_layers=tuple(float_layers),
            wide_layers=tuple(wide_layers),
            **{field: None if names is None else tuple(names) for field, names in (placements or {}).items()},
            bias_correction=bias_correction,
            hardware=hw,
        )

    def keeps_float(self, layer: str) -> bool:
        return any(fnmatch.fnmatchcase(layer, pattern) for pattern in self.float_layers)

    def names_wide(self, layer: str) -> bool:
        """Does a --wide-layers pattern match this layer (`_Quantizer.is_wide` says if it can be)?"""
        return any(fnmatch.fnmatchcase(layer, pattern) for pattern in self.wide_layers)

    def bits_for(self, layer: str) -> int:
        return self.layer_weight_bits.get(layer, self.weight_bits)

    def to_dict(self) -> dict:
        doc = dataclasses.asdict(dataclasses.replace(self, hardware=None))
        del doc["hardware"]
        return doc


@dataclasses.dataclass
class QNode:
    """One step of the integer program. `params` holds op-specific numpy arrays and ints:

    quantize   inv_scale                         int8 = clamp(floor(x * inv_scale + 0.5))
               (a wide layer's input: int16, clamped to lo, hi)
    dequantize scale (scalar or (1, C, 1, 1)),   float = (int8 - zero_point) * scale
               zero_point where the input has one (the same shape)
    conv2d     weight (O,I/g,KH,KW) int8, bias/multiplier/shift (O,) int32, lo, hi,
               strides, padding (t,l,b,r), groups; a host conv may hold the `table` of the
               lookup that read it alone, applied to its int8 result (merge_tables_into_host_convs)
    matmul     weight (K,N) int8 or None (second operand is a tensor), bias/multiplier/shift
               (N,) int32, lo, hi
               both may hold a fused `activation` (codesign.plan.AluActivation) and its
               per-channel parameters (gate_bias/gate_multiplier/gate_shift for HardSwish);
               a wide layer's hold input_bits = 16 (int16 in and out: lower_wide_gemm)
    lut        table (256,) int8: y = table[x + 128], an elementwise float chain tabulated;
               (C, 256) when input or output has channel scales: y = table[c, x + 128];
               a one-sided table's result has a zero point (QNode.zero_point)
    add        multiplier_a, multiplier_b, shift, lo, hi
    multiply   multiplier, shift (of a * b, broadcasting)
    concat     axis, multipliers (one per input), shift
    mean       axes, keepdims, multiplier, shift
    avg_pool2d kernel, strides, padding (t,l,b,r), multiplier (C or 1, OH, OW) int64, shift: window
               sums, each output's multiplier folding in its divisor and its channel's scales
               add, multiply and mean hold int64 arrays (C,) instead of integers where an
               input or the output has channel scales: channel c's multipliers and shift
    clamp      lo, hi
    passthrough / float: the graph node's original op (`source`) on int8 / float inputs
    """

    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...] | None
    dtype: str
    scale: float | np.ndarray | None = None  # an array: one scale per channel (axis 1)
    placement: str = "host"  # "accel": runs on the GEMM core
    params: dict = dataclasses.field(default_factory=dict)
    source: Node | None = None
    # The float graph's tensor this value stands for where that is not `name`'s: an activation
    # fused into the GEMM or host conv before it.
    float_name: str | None = None
    # real = (int8 - zero_point) * scale: nonzero only for one-sided tables (`_Quantizer.offset`),
    # an array where the scale is one
    zero_point: int | np.ndarray = 0


@dataclasses.dataclass
class QuantizedGraph:
    nodes: dict[str, QNode]
    inputs: list[str]
    outputs: list[str]
    config: QuantConfig
    # GEMM layer -> the real value of one unit of its accumulator, per output channel
    acc_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # The placements quantization chose, as CompressionConfig pins them (a lowering fallback
    # moving a layer to the host afterwards is not among them: it changes no arithmetic).
    placements: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def gemm_nodes(self) -> list[QNode]:
        return [n for n in self.nodes.values() if n.op in ("conv2d", "matmul")]

    def consumers(self) -> dict[str, list[str]]:
        """Each node's readers (the model's outputs not among them)."""
        users: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for producer in node.inputs:
                users[producer].append(node.name)
        return users


# ---- scales and fixed-point multipliers -----------------------------------------------------


def gemm_shape(node: QNode, qgraph: QuantizedGraph) -> ConvShape:
    """A GEMM layer's geometry (see schedules.layer): a grouped conv's groups on the group axis."""
    in_shape = qgraph.nodes[node.inputs[0]].shape
    p = node.params
    if node.op == "conv2d":
        return ConvShape.conv2d(in_shape, p["weight"].shape, p["groups"], p["strides"], p["padding"], p["dilation"])
    k, cols = in_shape[-1], node.shape[-1]
    if p["weight"] is not None or len(qgraph.nodes[node.inputs[1]].shape) == 2:
        return ConvShape.dense(int(np.prod(in_shape[:-1])), k, cols)
    return ConvShape.dense(in_shape[-2], k, cols, groups=int(np.prod(in_shape[:-2])))


def kernel_shape(node: QNode, qgraph: QuantizedGraph, hw) -> ConvShape:
    """The geometry the core runs for an offloaded layer: a depthwise conv's row bands
    (schedules.row_bands, on rows the host pads), a narrow-group conv's super-groups, on an
    input the host padded with its zero point where it has one (`prepadded`)."""
    shape = gemm_shape(node, qgraph)
    if node.op != "conv2d":
        return shape
    if node.params.get("row_bands"):
        return banded(shape, hw.block_in)
    return super_grouped(prepadded(shape) if "pad_value" in node.params else shape, hw.block_in)


def prepadded(shape: ConvShape) -> ConvShape:
    """The conv on its input padded beforehand: the core's loads pad with zeros, a zero point's
    padding must hold the zero point."""
    return dataclasses.replace(
        shape,
        in_h=shape.in_h + shape.pad_top + shape.pad_bottom,
        in_w=shape.in_w + shape.pad_left + shape.pad_right,
        pad_top=0,
        pad_left=0,
        pad_bottom=0,
        pad_right=0,
    )


def activation_scale(absmax: float | np.ndarray, config: QuantConfig, qmax: int = INT8_MAX) -> float | np.ndarray:
    """The int8 scale of a range (or of each channel's range, given an array); with `qmax`, the
    scale of a symmetric range of that many steps each side (a wide layer's int16)."""
    scale = np.maximum(absmax, 1e-8) / qmax
    if config.shift_only:
        scale = 2.0 ** np.ceil(np.log2(scale))
    return float(scale) if np.ndim(scale) == 0 else np.asarray(scale, dtype=np.float64)


def balanced_ranges(channel_absmax: np.ndarray, absmax: float) -> np.ndarray:
    """Channel ranges absmax * (channel_absmax / absmax) ** MIXED_CHANNEL_MIGRATION: between one
    range per tensor (strength 0) and the channels' own (strength 1)."""
    if absmax <= 0:
        return channel_absmax
    return absmax * (channel_absmax / absmax) ** MIXED_CHANNEL_MIGRATION


def input_channel_scales(in_scales: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """The scale of the input channel each weight (O, I/groups, KH, KW) multiplies, shaped to broadcast."""
    out_channels, group_inputs = weight.shape[:2]
    group = np.arange(out_channels) // (out_channels // groups)
    channel = group[:, None] * group_inputs + np.arange(group_inputs)[None, :]
    return in_scales[channel][:, :, None, None]


def zero_point_sums(weight: np.ndarray, zero_point: int | np.ndarray, layer) -> np.ndarray:
    """Per output channel, the sum of the weights times their input's zero point: what the
    accumulator holds beyond the real values' sum, so the bias takes it away."""
    weight = weight.astype(np.int64)
    if layer.kind != "conv2d":  # a matmul's (K, N) weight; its input has one zero point
        return int(zero_point) * weight.sum(axis=0)
    if np.ndim(zero_point):
        zero_point = input_channel_scales(np.asarray(zero_point, dtype=np.int64), weight, layer.groups)
    return (weight * zero_point).sum(axis=(1, 2, 3))


def weight_scales(weight: np.ndarray, channel_axis: int, config: QuantConfig) -> np.ndarray:
    """Per-output-channel scales; power-of-two ones pick whichever neighbour has less error."""
    qmax = 2 ** (config.weight_bits - 1) - 1
    axes = tuple(a for a in range(weight.ndim) if a != channel_axis)
    absmax = np.maximum(np.abs(weight).max(axis=axes), 1e-8).astype(np.float64)
    if not config.shift_only:
        return absmax / qmax
    upper = 2.0 ** np.ceil(np.log2(absmax / qmax))
    choices = np.stack([upper, upper / 2])
    errors = []
    for scales in choices:
        shaped = np.expand_dims(scales, axes)
        restored = np.clip(np.round(weight / shaped), -qmax - 1, qmax) * shaped
        errors.append(((restored - weight) ** 2).sum(axis=axes))
    return choices[np.argmin(np.stack(errors), axis=0), np.arange(absmax.size)]


def bias_fitting_scales(bias: np.ndarray | None, scale_factor: float, config: QuantConfig) -> np.ndarray | float:
    """The smallest weight scale per channel at which the channel's bias fits the int32 accumulator
    with room for the products: a channel whose weights are all zero or nearly so (a dead channel
    of a re-parameterised block, 6 of PP-OCRv4 rec's 480 in one layer) would otherwise get a bias
    clipped to 2**31 - 1, and an output stuck at a wrong value. Its weights round to zero either way."""
    if bias is None:
        return 0.0
    scales = np.abs(bias.astype(np.float64)) / (abs(float(scale_factor)) * BIAS_LIMIT)
    if config.shift_only:  # a power of two, as weight_scales gives
        scales = np.where(scales > 0, 2.0 ** np.ceil(np.log2(np.maximum(scales, 1e-300))), 0.0)
    return scales


def exact_requantization_scales(w_scales: np.ndarray, scale_factor, out_scale, bits: int) -> np.ndarray:
    """Weight scales raised (by less than 2**(1 - bits) of themselves) so that each channel's
    requantization factor w_scale * scale_factor / out_scale is exactly multiplier / 2**shift
    with a `bits`-wide multiplier. VTA's ALU multiplies by 8 bits: a rounded multiplier would
    scale each channel by up to 1 + 2**-8, an error that accumulates layer after layer (PP-OCRv4
    rec: int8 cosine 0.9805, 0.9837 with 16-bit multipliers, 0.9809 with this; the rest is in its
    matmuls of two run-time operands, whose scales are not free)."""
    factor = np.asarray(w_scales * scale_factor / out_scale, dtype=np.float64)
    shift = bits - 1 - np.floor(np.log2(factor))
    return np.ceil(factor * 2.0**shift) * 2.0**-shift * out_scale / scale_factor


def quantize_weight(weight: np.ndarray, scales: np.ndarray, channel_axis: int, bits: int) -> np.ndarray:
    qmax = 2 ** (bits - 1) - 1
    shape = [1] * weight.ndim
    shape[channel_axis] = -1
    return np.clip(np.round(weight / scales.reshape(shape)), -qmax - 1, qmax).astype(np.int8)


def fixed_point(real: np.ndarray, bits: int, shift_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """real ~= multiplier / 2**shift, with a `bits`-wide multiplier (or powers of two only)."""
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(real <= 0):
        raise ModelError("requantization factor must be positive")
    exponent = np.floor(np.log2(real)).astype(np.int64)
    if shift_only:
        multiplier = np.ones_like(exponent)
        shift = -exponent
    else:
        shift = bits - 1 - exponent
        multiplier = np.round(real * 2.0**shift).astype(np.int64)
        overflow = multiplier >= 2**bits
        multiplier[overflow] //= 2
        shift[overflow] -= 1
    # A factor above one becomes a left shift folded into the multiplier.
    left = shift < 0
    multiplier[left] <<= -shift[left]
    shift[left] = 0
    shift = np.minimum(shift, 62)
    return multiplier.astype(np.int32), shift.astype(np.int32)


def clamp_range(bounds: tuple[float, float], scale: float, qmax: int = INT8_MAX) -> tuple[int, int]:
    """A float clamp's bounds in steps of `scale`, within [-qmax - 1, qmax] (int8 by default). A
    lower bound above zero stays above it (a floor before a logarithm: log(0) is -inf)."""
    qmin = -qmax - 1
    round_low = np.ceil if bounds[0] > 0 else np.round
    low = qmin if not np.isfinite(bounds[0]) else int(np.clip(round_low(bounds[0] / scale), qmin, qmax))
    high = qmax if not np.isfinite(bounds[1]) else int(np.clip(np.round(bounds[1] / scale), qmin, qmax))
    return low, high


# ---- the pass -------------------------------------------------------------------------------


class _Quantizer:
    def __init__(self, graph: Graph, ranges: TensorRanges, config: QuantConfig):
        self.graph, self.config = graph, config
        self.absmax, self.channel_absmax = ranges.absmax, ranges.channel_absmax
        self.nodes: dict[str, QNode] = {}
        self.converted: dict[tuple[str, str], str] = {}  # (node, "int8"/"float32") -> QNode name
        self.lut_roots: dict[str, str] = {}  # elementwise node -> the int8 tensor it is a function of
        self.users = graph.consumers()
        self.int8_wanted: dict[str, bool] = {}
        self.acc_scales: dict[str, np.ndarray] = {}  # GEMM -> real scale of its accumulator, per channel
        self.fused: dict[str, str] = {}  # activation fused into a GEMM -> the GEMM
        self.blocked: set[str] = set()  # of the values lowered so far (`blocked_values`), those that can be blocked
        self.blocked_checked = 0  # how many of `nodes` `blocked` has looked at

    def run(self) -> QuantizedGraph:
        for node in self.graph.nodes.values():
            self.nodes[node.name] = self.lower(node)
        outputs = [self.as_float(name) for name in self.graph.outputs]
        self.fill_lookup_tables()
        outputs = self.drop_fused_names(outputs)
        qgraph = QuantizedGraph(self.nodes, list(self.graph.inputs), outputs, self.config, self.acc_scales)
        remove_dead(qgraph)  # e.g. the intermediate steps of a tabulated chain
        merge_tables_into_host_convs(qgraph)
        fuse_tables_into_conv_inputs(qgraph)
        qgraph.placements = chosen_placements(qgraph)
        return qgraph

    def lut_root(self, node: Node) -> str | None:
        """The int8 tensor x this elementwise node is a function of (directly or through other
        such nodes), or None."""
        if node.op not in ELEMENTWISE_OPS or node.dtype != "float32" or not node.inputs:
            return None
        if channel_constant_count(node) == 0:
            return None
        roots = {self.lut_roots.get(i, i if self.nodes[i].dtype == "int8" else None) for i in node.inputs}
        if len(roots) != 1 or None in roots:
            return None
        root = roots.pop()
        if self.nodes[root].shape != node.shape:
            return None
        if node.op == "clamp" and node.inputs[0] not in self.lut_roots:
            return None  # a clamp of an int8 tensor is an integer clamp
        return root if self.wants_int8(node.name) else None

    def max_reduces(self, name: str) -> bool:
        """Is this node a max over axes that keeps few of its input's values (magika's max over
        time after a GELU), not the model's output? A table before it then costs one rounding of
        the values the max keeps, and spares the float function on every element it reads."""
        node = self.graph.nodes[name]
        if node.op != "relax.max" or "<output>" in self.users[name] or node.shape is None:
            return False
        return math.prod(node.shape) * 4 <= math.prod(self.graph.nodes[node.inputs[0]].shape)

    def wants_int8(self, name: str) -> bool:
        """Does an int8 result here pay off: is it consumed, directly or through data movement and
        elementwise steps, by a GEMM? If only float ops (or the model's output) read it, producing
        it in int8 would add a rounding the float path does not have (a normalisation reading
        x and x * x would lose its variance to it)."""
        if name not in self.int8_wanted:
            self.int8_wanted[name] = False  # cycles cannot occur; this guards re-entry
            self.int8_wanted[name] = any(self.consumer_wants_int8(user) for user in self.users[name])
        return self.int8_wanted[name]

    def consumer_wants_int8(self, user: str) -> bool:
        if user == "<output>":
            return False
        op = self.graph.nodes[user].op
        if op == "gemm":
            return not self.is_wide(self.graph.nodes[user])
        if self.max_reduces(user):
            return True
        transparent = op in ELEMENTWISE_OPS or op in ("relax.mean", "relax.concat", "relax.nn.avg_pool2d")
        transparent = transparent or moves_int8(self.graph.nodes[user], self.graph)
        return transparent and self.wants_int8(user)

    def drop_fused_names(self, outputs: list[str]) -> list[str]:
        """A fused activation's uses become uses of its GEMM (whose QNode it named while lowering)."""
        for name in self.fused:
            del self.nodes[name]
        for qnode in self.nodes.values():
            qnode.inputs = [self.fused.get(i, i) for i in qnode.inputs]
        return [self.fused.get(o, o) for o in outputs]

    def fuse_activation(self, node: Node, root: str) -> QNode | None:
        """The accelerated GEMM producing `root` with the elementwise chain root -> node fused into
        its ALU program, where the ALU computes the chain (HardSwish, LeakyReLU) faster than the
        host's table would (`alu_is_faster`), or None."""
        gemm = self.nodes[root]
        form = self.alu_activation(node, root) if self.takes_activation(gemm) else None
        if form is None:
            return None
        out_scale, zero_point = self.output_scale(node.name), 0
        offset = self.offset(node, root, out_scale)
        if offset is not None:
            out_scale, zero_point = offset
        params = self.activation_params(form, self.acc_scales[root], out_scale, zero_point)
        table = QNode(node.name, "lut", [root], node.shape, "int8", out_scale, zero_point=zero_point)
        if not self.fuses(gemm, params, table):
            return None
        gemm.params.update(params)
        gemm.scale, gemm.zero_point = out_scale, zero_point
        gemm.float_name = node.name
        self.fused[node.name] = root
        return gemm

    def takes_activation(self, gemm: QNode) -> bool:
        """Can this node's ALU program take an activation: an accelerated GEMM without one nor a
        folded clamp, on an ALU with a multiplier?"""
        if self.config.shift_only or gemm.op not in ("conv2d", "matmul") or gemm.placement != "accel":
            return False
        return "activation" not in gemm.params and gemm.source.layer.clamp == (FLOAT_MIN, FLOAT_MAX)

    def alu_activation(self, node: Node, root: str):
        """The HardSwish / LeakyReLU form (codesign.alu_activations) the chain root -> node
        computes, if nothing but the chain reads root or the chain's steps and the activation
        does not go on after node; else None."""
        self.lut_roots[node.name] = root  # for lut_chain; a fused node is no table's step
        chain = self.lut_chain(node.name)
        del self.lut_roots[node.name]
        if any(user not in chain for step in [root, *chain[:-1]] for user in self.users[step]):
            return None
        form = chain_activation(self.graph, root, chain)
        return None if form is None or self.activation_continues(node, root, chain) else form

    def fuses(self, gemm: QNode, fused_params: dict, table: QNode) -> bool:
        """Does the activation go into the GEMM's ALU program? Where the ALU is faster; if the
        compression lists GEMMs (a tuned design's, as its profile was), those and no others."""
        if self.config.alu_activations is not None:
            return gemm.name in self.config.alu_activations
        return self.alu_is_faster(gemm, fused_params, table)

    def alu_is_faster(self, gemm: QNode, fused_params: dict, table: QNode) -> bool:
        """Does the activation cost the core less time than the host's table would? Both priced
        by the description, as narrow-group convs are placed (`conv_mapping`): the analytic cost
        model's time with and without the activation's ALU ops, against the table's host time.
        On vta_default (one accumulator vector per ALU cycle at 100 MHz against a 650 MHz host)
        a table is faster than HardSwish's 7 ALU ops; a core retiring 4 vectors per cycle is not."""
        hw = self.config.hardware
        if hw is None:
            return False
        shape = kernel_shape(gemm, self, hw)
        bits = self.config.bits_for(gemm.name) if gemm.params["weight"] is not None else None
        try:
            before = accelerator_seconds(shape, hw, layer_alu_ops(gemm.params), bits)
            after = accelerator_seconds(shape, hw, layer_alu_ops({**gemm.params, **fused_params}), bits)
        except TilingError:
            return False
        return after - before < host_seconds(*node_work(table, self), hw)

    def activation_continues(self, node: Node, root: str, chain: list[str]) -> bool:
        """Does the activation go on in node's one reader (x * clip(x + 3, 0, 6), then / 6)? Then
        that reader is the one to fuse."""
        readers = self.users[node.name]
        if len(readers) != 1 or readers[0] not in self.graph.nodes:
            return False
        return chain_activation(self.graph, root, [*chain, readers[0]]) is not None

    def activation_params(self, form, acc_scale: np.ndarray, out_scale, zero_point=0) -> dict:
        """Requantization params computing the activation `form` (codesign.alu_activations) of the
        accumulator, of real scale `acc_scale` with its bias, at an int8 output of `out_scale`
        and `zero_point`. The activation's result has the real scale c * acc_scale / one. Its
        multipliers have at most 16 bits, so that x * gate * multiplier stays within int64. The
        zero point joins the offset added before the requantization, as zero_point * 2**shift /
        multiplier rounded: the output's zero point is then within half a rescaling factor (far
        below one int8 step) of the integer its readers take out."""
        bits = min(self.config.multiplier_bits, 16)
        if isinstance(form, HardSwish):
            activation = AluActivation("hardswish")
        else:
            activation = AluActivation("leakyrelu", slope=round(form.alpha * (1 << ACTIVATION_FRACTION_BITS)))
        multiplier, shift = fixed_point(form.c * acc_scale / (activation.one * out_scale), bits, False)
        params = {"activation": activation, "multiplier": multiplier, "shift": shift, "lo": INT8_MIN, "hi": INT8_MAX}
        offset = np.round(form.d * activation.one / (form.c * acc_scale))  # d in the result's units
        offset = offset + np.round(zero_point * 2.0**shift / multiplier)
        params["offset"] = np.clip(offset, -(2**31), 2**31 - 1).astype(np.int32)
        if isinstance(form, HardSwish):  # gate = clamp(a * real + b, 0, 1) in steps of 1 / one
            gate_bias = np.round(form.b / (form.a * acc_scale))
            params["gate_bias"] = np.clip(gate_bias, -(2**31), 2**31 - 1).astype(np.int32)
            gate_factor = activation.one * form.a * acc_scale
            params["gate_multiplier"], params["gate_shift"] = fixed_point(gate_factor, bits, False)
        return params

    def lower_lut(self, node: Node, root: str) -> QNode:
        qnode = QNode(node.name, "lut", [root], node.shape, "int8", self.output_scale(node.name), source=node)
        offset = self.offset(node, root, qnode.scale)
        if offset is not None:
            qnode.scale, qnode.zero_point = offset
        self.lut_roots[node.name] = root
        return qnode

    def offset(self, node: Node, root: str, scale) -> tuple | None:
        """The finer scale and zero point of a one-sided table (ONE_SIDED_REACH), per channel where
        `scale` is, or None. Only where every reader is a GEMM that takes the zero point into its
        bias (`reads_zero_point`): the same integers wherever the reader runs."""
        if not self.config.offset_tables or not all(
            self.reads_zero_point(user, node.name) for user in self.users[node.name]
        ):
            return None
        self.lut_roots[node.name] = root
        chain = self.lut_chain(node.name)
        del self.lut_roots[node.name]
        if not all(supports_node(self.graph.nodes[step]) for step in chain):
            return None  # its values would need a compiled function here
        values = tabulated_values(
            self.graph, {node.name: (root, chain)}, {node.name: self.nodes[root].scale}, {node.name: scale}
        )
        with np.errstate(invalid="ignore"):
            low = np.min(np.where(np.isnan(values[node.name]), np.inf, values[node.name]), axis=1)
        reach_below = np.maximum(-low, 0.0) if np.ndim(scale) else np.maximum(-low.min(), 0.0)
        reach_above = INT8_MAX * np.asarray(scale, dtype=np.float64)
        finer = np.asarray(activation_scale((reach_above + reach_below) / 2, self.config), dtype=np.float64)
        one_sided = (reach_below <= ONE_SIDED_REACH * reach_above) & (finer < scale)
        if not np.any(one_sided):
            return None
        new_scale = np.where(one_sided, finer, scale)
        zero_point = np.where(one_sided, INT8_MIN + np.ceil(reach_below / new_scale), 0).astype(np.int32)
        if np.ndim(scale) == 0:
            return float(new_scale), int(zero_point)
        return new_scale, zero_point

    def reads_zero_point(self, user: str, producer: str) -> bool:
        """Does this reader take a zero point in its bias: an integer GEMM with constant weights
        reading `producer` as its data, without padding (a pad would insert real zeros), or a
        padded grouped conv (PP-OCR's depthwise ones) of `zero_point_pads` (None: any), which
        pads with the zero point instead: in its own loop on the host, in a host pass over the
        blocks for the core, whose loads pad with zeros. Padded dense convs keep symmetric
        inputs: on the core, where they run, that pass would cost host time."""
        node = self.graph.nodes.get(user)  # None: the model's output
        if node is None or node.op != "gemm" or self.config.keeps_float(user):
            return False
        layer = node.layer
        if node.inputs[0] != producer or producer in node.inputs[1:] or layer.weight is None:
            return False
        if not any(int(p) for p in layer.padding):
            return True
        pinned = self.config.zero_point_pads
        return layer.kind == "conv2d" and layer.groups > 1 and (pinned is None or user in pinned)

    def fill_lookup_tables(self) -> None:
        luts = [n for n in self.nodes.values() if n.op == "lut"]
        chains = {n.name: (n.inputs[0], self.lut_chain(n.name)) for n in luts}
        scales = {name: self.nodes[name].scale for name in {*chains, *(root for root, _ in chains.values())}}
        zero_points = {name: self.nodes[name].zero_point for name in chains}
        for name, table in tabulate(self.graph, chains, scales, zero_points).items():
            self.nodes[name].params["table"] = table

    def lut_chain(self, name: str) -> list[str]:
        """Graph nodes from a LUT node's root to it, in graph order."""
        members, pending = set(), [name]
        while pending:
            current = pending.pop()
            if current in self.lut_roots and current not in members:
                members.add(current)
                pending.extend(self.graph.nodes[current].inputs)
        return [n for n in self.graph.nodes if n in members]

    def scale_for(self, name: str) -> float:
        return activation_scale(self.absmax[name], self.config)

    def output_scale(self, name: str) -> float | np.ndarray:
        """The scale of a conv's or lookup table's int8 result: per channel where channel_scaled."""
        scale = self.scale_for(name)
        if not self.channel_scaled(name):
            return scale
        ranges = self.channel_absmax[name]
        if self.channels_mixed(name):
            ranges = balanced_ranges(ranges, self.absmax[name])
        return np.maximum(activation_scale(ranges, self.config), scale * CHANNEL_SCALE_FLOOR)

    def channels_mixed(self, name: str) -> bool:
        """Does a conv that sums over several of this tensor's channels read it (directly or through
        max-pooling or upsampling)?"""
        for user in self.users[name]:
            node = self.graph.nodes.get(user)  # None: the model's output
            if node is None:
                continue
            if node.op == "gemm" and node.layer.kind == "conv2d" and node.layer.weight.shape[1] > 1:
                return True
            moves = node.op == "relax.nn.max_pool2d" or is_nearest_upsample(node, self.graph)
            if moves and self.channels_mixed(user):
                return True
        return False

    def channel_scaled(self, name: str) -> bool:
        """Per-channel scales for this tensor: every reader takes them and one gains from them."""
        node = self.graph.nodes[name]
        if name not in self.channel_absmax or (node.op == "gemm" and not _channel_requantizable(node)):
            return False
        verdicts = [self.reads_channel_scales(user, name) for user in self.users[name]]
        return None not in verdicts and any(verdicts)

    def reads_channel_scales(self, user: str, producer: str) -> bool | None:
        """None: this reader needs one scale; True: it takes channel scales and gains (a conv, an
        elementwise chain tabulated per channel); False: it takes them, no gain."""
        if user == "<output>" or self.config.keeps_float(user):
            return False  # read through a dequantize
        node = self.graph.nodes[user]
        if node.op == "gemm":
            return True if node.layer.kind == "conv2d" else None
        if node.op == "relax.nn.max_pool2d" or is_nearest_upsample(node, self.graph):
            verdicts = [self.reads_channel_scales(reader, user) for reader in self.users[user]]
            return None if None in verdicts else any(verdicts)
        if node.op in ELEMENTWISE_OPS:
            chained = node.op != "clamp" and all(self.follows_elementwise(i, producer) for i in node.inputs)
            return True if chained or self.rescales_channels(node, producer) else None
        if node.op == "relax.mean":
            return True if self.rescales_channels(node, producer) else None
        if node.op == "relax.nn.avg_pool2d" and integer_pool(node):
            return True
        if moves_int8(node, self.graph) or node.op == "relax.concat":
            return None
        return False  # a float op, read through a dequantize

    def rescales_channels(self, node: Node, producer: str) -> bool:
        """Is `node` an integer add or multiply of two tensors, or a mean over rows and columns,
        whose channel c reads the producer's channel c? Its requantization then takes the
        producer's channel scales into per-channel multipliers (the tensor keeps them: a residual
        stream's channels span two orders of magnitude in PP-OCRv4's recogniser)."""
        in_shape, out_shape = self.graph.nodes[producer].shape, node.shape
        if in_shape is None or out_shape is None or len(in_shape) != 4 or len(out_shape) not in (2, 4):
            return False
        if in_shape[1] != out_shape[1]:
            return False
        if node.op == "relax.mean":
            axes = node.call.attrs.axis
            return axes is not None and {int(a) % 4 for a in axes} <= {2, 3}
        return node.op in ("relax.add", "relax.multiply") and len(node.inputs) == 2 and len(out_shape) == 4

    def follows_elementwise(self, name: str, root: str) -> bool:
        """Is graph node `name` the root itself or an elementwise function of it alone?"""
        node = self.graph.nodes[name]
        if name == root:
            return True
        return (
            node.op in ELEMENTWISE_OPS
            and bool(node.inputs)
            and all(self.follows_elementwise(i, root) for i in node.inputs)
        )

    def as_int8(self, name: str) -> str:
        node = self.nodes[name]
        if node.dtype == "int8":
            return name
        key = (name, "int8")
        if key not in self.converted:
            scale = self.scale_for(name)
            qname = f"{name}.quantize"
            source = self.as_float(name)  # a wide layer's int16 result is dequantized first
            self.nodes[qname] = QNode(
                qname, "quantize", [source], node.shape, "int8", scale, params={"inv_scale": np.float32(1.0 / scale)}
            )
            self.converted[key] = qname
        return self.converted[key]

    def as_int16(self, name: str, qmax: int) -> str:
        """A tensor quantized to int16 within [-qmax, qmax] for a wide layer (from float: an int8
        or int16 one is dequantized first)."""
        key = (name, f"int16/{qmax}")
        if key not in self.converted:
            scale = activation_scale(WIDE_HEADROOM * self.absmax[name], self.config, qmax)
            qname = f"{name}.quantize_wide" if qmax == WIDE_MAX else f"{name}.quantize_wide{qmax}"
            params = {"inv_scale": np.float32(1.0 / scale), "lo": -qmax, "hi": qmax}
            source = self.as_float(name)
            self.nodes[qname] = QNode(
                qname, "quantize", [source], self.nodes[name].shape, "int16", scale, params=params
            )
            self.converted[key] = qname
        return self.converted[key]

    def as_float(self, name: str) -> str:
        node = self.nodes[name]
        if node.dtype not in ("int8", "int16"):
            return name
        key = (name, "float32")
        if key not in self.converted:
            dname = f"{name}.dequantize"
            scale = np.asarray(node.scale, dtype=np.float32)
            scale = channel_shaped(scale, node.shape) if scale.ndim else scale[()]
            params = {"scale": scale}
            if np.any(node.zero_point):
                zero_point = np.asarray(node.zero_point, dtype=np.int32)
                params["zero_point"] = channel_shaped(zero_point, node.shape) if zero_point.ndim else zero_point[()]
            self.nodes[dname] = QNode(dname, "dequantize", [name], node.shape, "float32", params=params)
            self.converted[key] = dname
        return self.converted[key]

    def lower(self, node: Node) -> QNode:
        if node.op == "input":
            return QNode(node.name, "input", [], node.shape, node.dtype)
        if self.config.keeps_float(node.name):
            return self.lower_float(node)
        if node.op == "gemm" and self.is_wide(node):
            return self.lower_wide_gemm(node)
        if node.op == "gemm":
            return self.lower_gemm(node)
        root = self.lut_root(node)
        if root is not None:
            return self.fuse_activation(node, root) or self.lower_lut(node, root)
        if self.quantizes_inputs_first(node):
            return self.lower_entering_move(node)
        int8_inputs = all(self.nodes[i].dtype == "int8" for i in node.inputs)
        moves_data = moves_int8(node, self.graph)
        if moves_data and len(node.inputs) == 1 and int8_inputs and not _mixes_channel_scales(node, self.nodes):
            producer = self.nodes[node.inputs[0]]
            return QNode(node.name, "passthrough", node.inputs, node.shape, "int8", producer.scale, source=node)
        if node.op == "clamp" and int8_inputs:
            scale = self.nodes[node.inputs[0]].scale
            lo, hi = clamp_range(node.bounds, scale)
            return QNode(node.name, "clamp", node.inputs, node.shape, "int8", scale, params={"lo": lo, "hi": hi})
        if node.op == "relax.add" and len(node.inputs) == 2 and int8_inputs and node.dtype == "float32":
            return self.lower_add(node)
        if node.op == "relax.concat" and int8_inputs and node.dtype == "float32" and self.wants_int8(node.name):
            return self.lower_concat(node)
        two_int8 = len(node.inputs) == 2 and int8_inputs and node.dtype == "float32"
        if node.op == "relax.multiply" and two_int8 and self.wants_int8(node.name):
            return self.lower_multiply(node)
        if node.op == "relax.mean" and len(node.inputs) == 1 and int8_inputs:
            return self.lower_mean(node)
        if node.op == "relax.nn.avg_pool2d" and int8_inputs and integer_pool(node) and self.wants_int8(node.name):
            return self.lower_avg_pool(node)
        return self.lower_float(node)

    def quantizes_inputs_first(self, node: Node) -> bool:
        """Does this op only move values of the model's float inputs (and int8 tensors) on their
        way to int8 readers (YOLOX's Focus stem: four strided slices of the image and their
        concat; an input's layout transpose)? Then the inputs are quantized where they enter,
        and the op moves int8 values, a quarter of the bytes, instead of floats quantized after it."""
        moves = moves_int8(node, self.graph) or is_static_slice(node)
        if not node.inputs or not (moves or node.op == "relax.concat"):
            return False
        entering = [i for i in node.inputs if self.nodes[i].op == "input" and self.nodes[i].dtype == "float32"]
        others_int8 = all(self.nodes[i].dtype == "int8" for i in node.inputs if i not in entering)
        return bool(entering) and others_int8 and self.wants_int8(node.name)

    def lower_entering_move(self, node: Node) -> QNode:
        """The op of `quantizes_inputs_first` on its inputs quantized: a concat rescaled as any, a
        single input's move (a strided slice too: it keeps values as they are) at its scale.
        Slices elsewhere stay float: in int8 they would make the elementwise steps after them
        int8 too (an STFT's real and imaginary parts, squared, lose their range)."""
        inputs = [self.as_int8(i) for i in node.inputs]
        if node.op == "relax.concat":
            qnode = self.lower_concat(dataclasses.replace(node, inputs=inputs))
            qnode.source = node
            return qnode
        scale = self.nodes[inputs[0]].scale
        return QNode(node.name, "passthrough", inputs, node.shape, "int8", scale, source=node)

    def lower_float(self, node: Node) -> QNode:
        inputs = [self.as_float(i) for i in node.inputs]
        return QNode(node.name, "float", inputs, node.shape, node.dtype, source=node)

    def gemm_integers(
        self, node: Node, inputs: list[str], out_scale, qmax: int = INT8_MAX, exact_scales: bool = True
    ) -> dict:
        """A GEMM layer's integer parameters for its quantized `inputs` and output scale: weights
        per output channel (their input's channel scales folded in), the bias in int32 at the
        accumulator's scale (less its input's zero point's sums), the requantization's multiplier
        and shift, its clamp (within [-qmax - 1, qmax]); records the accumulator's scale. With
        `exact_scales` the weight scales are raised so that the requantization is exact
        (exact_requantization_scales); else the multiplier is rounded."""
        layer, config = node.layer, self.config
        in_scales = [self.nodes[i].scale for i in inputs]
        input_factor, real_weight = in_scales[0], layer.weight
        if np.ndim(input_factor):  # channel scales fold into the weights before they are quantized
            real_weight = layer.weight * input_channel_scales(input_factor, layer.weight, layer.groups)
            input_factor = 1.0
        if layer.weight is not None:
            channel_axis = 0 if layer.kind == "conv2d" else 1
            layer_config = dataclasses.replace(config, weight_bits=config.bits_for(node.name))
            w_scales = weight_scales(real_weight, channel_axis, layer_config)
            w_scales = np.maximum(w_scales, bias_fitting_scales(layer.bias, input_factor * layer.out_scale, config))
            if exact_scales and not config.shift_only:
                w_scales = exact_requantization_scales(
                    w_scales, input_factor * layer.out_scale, out_scale, config.multiplier_bits
                )
            weight = quantize_weight(real_weight, w_scales, channel_axis, layer_config.weight_bits)
        else:
            w_scales = np.full(node.shape[-1], in_scales[1], dtype=np.float64)
            weight = None
        acc_scale = input_factor * w_scales * layer.out_scale
        bias = np.zeros(acc_scale.size) if layer.bias is None else layer.bias.astype(np.float64)
        bias_q = np.round(bias / acc_scale)
        if np.any(self.nodes[inputs[0]].zero_point):
            bias_q = bias_q - zero_point_sums(weight, self.nodes[inputs[0]].zero_point, layer)
        bias_q = np.clip(bias_q, -(2**31), 2**31 - 1).astype(np.int32)
        self.acc_scales[node.name] = np.broadcast_to(acc_scale, bias_q.shape)
        multiplier, shift = fixed_point(acc_scale / out_scale, config.multiplier_bits, config.shift_only)
        lo, hi = clamp_range(layer.clamp, float(np.max(out_scale)), qmax)  # channel-independent when scales vary
        params = {"weight": weight, "bias": bias_q, "multiplier": multiplier, "shift": shift, "lo": lo, "hi": hi}
        if weight is not None and config.bias_correction:
            params["bias_corrected"] = True
        if layer.kind == "conv2d":
            params.update(strides=layer.strides, padding=layer.padding, groups=layer.groups, dilation=layer.dilation)
        return params

    def is_wide(self, node: Node) -> bool:
        """Is this GEMM a wide layer? One a --wide-layers pattern matches, if it can be: a conv of
        one group or a matmul by a constant weight, with 8-bit weights. A glob skips the layers
        that cannot; a layer named exactly must be able to."""
        if not self.config.names_wide(node.name):
            return False
        layer = node.layer
        grouped = layer.kind == "conv2d" and layer.groups > 1
        if layer.weight is not None and not grouped and self.config.bits_for(node.name) == 8:
            return True
        if node.name in self.config.wide_layers:
            raise ModelError(
                f"layer '{node.name}': --wide-layers takes convs of one group and matmuls by a constant "
                "weight, with 8-bit weights"
            )
        return False

    def lower_wide_gemm(self, node: Node) -> QNode:
        """A --wide-layers GEMM: int8 weights on int16 activations, in and out, for a model whose
        int8 activations lose too much (silero-vad's LSTM variant: its states on quiet audio).
        Its float input is quantized to int16 on the host, in a range that keeps its reduction
        within the int32 accumulator; the core runs it in two passes over the input's bytes
        (`CoreGeometry.for_layer`), requantizes to int16, and its readers take it dequantized.

        Its weights keep the scales of their own ranges, and the requantization's multiplier is
        rounded instead (`exact_scales`): raising the scales for an exact multiplier re-rounds the
        weights by up to 2**(1 - multiplier bits) of a step, differently for each calibration
        set, and on a wide layer the weights' rounding is most of the error left. On vta_default
        (8-bit multipliers), silero-vad's LSTM variant's least state cosine over three calibration
        sets and four methods: 0.9736-0.9912 raised, 0.9867-0.9916 rounded."""
        layer = node.layer
        conv = layer.kind == "conv2d"
        inputs = [self.as_int16(node.inputs[0], self.wide_input_qmax(layer))]
        out_scale = activation_scale(WIDE_HEADROOM * self.absmax[node.name], self.config, WIDE_MAX)
        params = self.gemm_integers(node, inputs, out_scale, WIDE_MAX, exact_scales=False)
        params["input_bits"] = WIDE_BITS
        qnode = QNode(node.name, layer.kind, inputs, node.shape, "int16", out_scale, "accel", params, node)
        if conv and self.unfolds(qnode):
            self.unfold(qnode)
        return qnode

    def wide_input_qmax(self, layer) -> int:
        """A wide layer's input range [-qmax, qmax]: its largest sum of int8 weight magnitudes times
        qmax, beside a bias of up to BIAS_LIMIT, stays within the int32 accumulator (per output
        channel weights are quantized to full range, so the sums are known before the input's
        scale; a scale raised for its bias to fit only shrinks them)."""
        channel_axis = 0 if layer.kind == "conv2d" else 1
        scales = weight_scales(layer.weight, channel_axis, self.config)
        weight = np.abs(quantize_weight(layer.weight, scales, channel_axis, 8).astype(np.int64))
        largest_sum = int(
            np.moveaxis(weight, channel_axis, 0).reshape(weight.shape[channel_axis], -1).sum(axis=1).max()
        )
        return min(WIDE_MAX, (2**31 - 1 - int(BIAS_LIMIT)) // max(largest_sum, 1))

    def lower_gemm(self, node: Node) -> QNode:
        layer = node.layer
        inputs = [self.as_int8(i) for i in node.inputs]
        out_scale = self.output_scale(node.name)
        params = self.gemm_integers(node, inputs, out_scale)
        acc_scale = self.acc_scales[node.name]
        if layer.kind == "conv2d" and any(int(p) for p in layer.padding) and np.any(self.nodes[inputs[0]].zero_point):
            params["pad_value"] = self.nodes[inputs[0]].zero_point
        qnode = QNode(node.name, layer.kind, inputs, node.shape, "int8", out_scale, "accel", params, node)
        mapping = self.conv_mapping(qnode) if layer.kind == "conv2d" else "core"
        if mapping == "row_bands":
            params["row_bands"] = True
        if mapping == "host":
            qnode.placement = "host"
            params["multiplier"], params["shift"] = fixed_point(
                acc_scale / out_scale, HOST_MULTIPLIER_BITS, self.config.shift_only
            )
        elif layer.kind == "conv2d" and self.unfolds(qnode):
            self.unfold(qnode)
        return qnode

    def unfolds(self, qnode: QNode) -> bool:
        """Is a narrow-input conv compiled as im2col + a 1x1 conv (schedules.narrow_inputs)? Where
        that is modelled faster; if the compression lists layers (a tuned design's, as its
        profile was), those and no others."""
        if self.config.unfold is not None:
            return qnode.name in self.config.unfold
        hw = self.config.hardware
        if hw is None:
            return False
        shape = gemm_shape(qnode, self)
        return unfolding_pays(shape, hw, layer_alu_ops(qnode.params), self.config.bits_for(qnode.name))

    def unfold(self, qnode: QNode) -> None:
        """`qnode` (a conv) becomes a 1x1 conv reading a new host node, NAME.im2col, that
        unfolds its input (codesign.reference.im2col says what it computes)."""
        p, source = qnode.params, self.nodes[qnode.inputs[0]]
        kernel = tuple(int(k) for k in p["weight"].shape[2:])
        channels = source.shape[1] * math.prod(kernel)
        scale = source.scale if np.ndim(source.scale) == 0 else np.repeat(source.scale, math.prod(kernel))
        name = f"{qnode.name}.im2col"
        im2col = {"kernel": kernel, "strides": p["strides"], "padding": p["padding"], "dilation": p["dilation"]}
        shape = (source.shape[0], channels, *qnode.shape[2:])
        self.nodes[name] = QNode(name, "im2col", [source.name], shape, source.dtype, scale, params=im2col)
        if np.any(source.zero_point):  # an unpadded unfolding moves values only
            zero_point = source.zero_point
            self.nodes[name].zero_point = (
                zero_point if np.ndim(zero_point) == 0 else np.repeat(zero_point, math.prod(kernel))
            )
        qnode.inputs = [name, *qnode.inputs[1:]]
        p.update(weight=unfolded_weight(p["weight"]), strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1))

    def conv_mapping(self, qnode: QNode) -> str:
        """Where and how a conv runs: "core" (dense convs and groups of at least block_in
        channels always), else the fastest of the host conv ("host") and the core's mappings
        that fit (`core_mappings`), each priced by the description: the core's time (analytic
        cost model, under the tile rule's tiling) plus the host's packing or relayout, against
        the host conv's time (2 ops per real MAC).
        Block-diagonal super-groups (schedules.narrow_groups) use channels_per_group of a
        block's block_in lanes (a depthwise conv's: 1), row bands (schedules.row_bands) up to
        K of them for a K-wide kernel, at ceil((15 s + K) / 16) weight tiles per kernel row.
        So on vta_default (100 MHz core) the text recognisers' 5x5 depthwise convs over
        80-column maps run as row bands (PP-OCRv4 rec's 240-channel ones: 2.57 ms on the core
        and 0.82 ms of relayout against 4.6 ms on the host; either looks up the HardSwish tables
        before and after it in its own passes: `fuse_tables_into_conv_inputs`,
        `merge_tables_into_host_convs`), the other depthwise convs on the host
        (PP-OCR cls's 200-channel 5x5 one: 0.83 ms on the core as super-groups against 0.74
        ms); groups of 4 channels go to vta_default's core, and on faster or wider cores
        (wide_1x32x32) depthwise convs do too, as super-groups.
        That is the "fastest" placement policy; the default, "accelerator", lists no host convs
        (CompressionConfig.placements). If the compression lists host convs (a tuned design's, as
        its profile was), those and no others run on the host; if it lists row bands, those and
        no other depthwise convs on the core run so."""
        shape = gemm_shape(qnode, self)
        hw = self.config.hardware
        if not is_narrow(shape, self.config.block_in):
            return "core"
        pinned = self.config.host_convs
        if pinned is not None and qnode.name in pinned:
            return "host"
        seconds = self.core_mappings(qnode, shape, hw) if hw is not None else {}
        if pinned is not None:
            return min(seconds, key=seconds.get) if seconds else "core"  # lowering moves what does not fit
        if not seconds:
            return "host"
        fastest = min(seconds, key=seconds.get)
        on_host = host_seconds(*node_work(self.merging_input_table(qnode, "host"), self), hw)
        on_host -= self.merged_input_table_seconds(qnode, hw)
        return fastest if seconds[fastest] < on_host else "host"

    def core_mappings(self, qnode: QNode, shape: ConvShape, hw) -> dict[str, float]:
        """Modelled seconds of each way the core can run a narrow-group conv, of those that fit
        the scratchpads: "core" (super-groups) and, for a depthwise conv, "row_bands"; each with
        its host packing (none where it chains: `chained_layouts`) or relayout."""
        alu_ops = layer_alu_ops(qnode.params)
        if self.config.zero_point_pads is None:  # priced as it runs without one (quantize_graph)
            qnode = dataclasses.replace(qnode, params={k: v for k, v in qnode.params.items() if k != "pad_value"})
        candidates = {"core": qnode}
        if fits_bands(shape):
            banded_conv = dataclasses.replace(qnode, params={**qnode.params, "row_bands": True})
            candidates["row_bands"] = self.merging_input_table(banded_conv, "accel")
        if self.config.row_bands is not None:  # pinned: one way
            candidates.pop("core" if qnode.name in self.config.row_bands else "row_bands", None)
        seconds = {}
        for mapping, candidate in candidates.items():
            try:
                core = accelerator_seconds(
                    kernel_shape(candidate, self, hw), hw, alu_ops, self.config.bits_for(qnode.name)
                )
            except TilingError:
                continue
            seconds[mapping] = core + host_seconds(*node_work(candidate, self, self.chained_layouts(candidate, hw)), hw)
        if "row_bands" in seconds:
            seconds["row_bands"] -= self.merged_input_table_seconds(qnode, hw)
        return seconds

    def merged_input_table_seconds(self, qnode: QNode, hw) -> float:
        """The host time of the table pass a conv's input pass on the host would take over
        (`fuse_tables_into_conv_inputs`): a table that only this conv reads."""
        source = self.nodes[qnode.inputs[0]]
        if source.op != "lut" or self.users.get(source.name) != [qnode.name]:
            return 0.0
        return host_seconds(*node_work(source, self), hw)

    def merging_input_table(self, qnode: QNode, placement: str) -> QNode:
        """The conv as it would run with `placement`, with the table before it merged into its
        input pass where one would be (priced: its lookups)."""
        params = dict(qnode.params)
        if self.nodes[qnode.inputs[0]].op == "lut" and self.users.get(qnode.inputs[0]) == [qnode.name]:
            params["input_table"] = qnode.inputs[0]
        return dataclasses.replace(qnode, placement=placement, params=params)

    def chained_layouts(self, qnode: QNode, hw) -> Layouts:
        """The layouts a conv on the core would read and write: its blocked input as it is, if
        that can be blocked and the conv chains or reads the blocks itself (row bands; its output
        then stays blocked for its readers, as a host conv's on blocked values would), else NCHW,
        packed and unpacked."""
        reads_blocks = chains_kernel(qnode, self, hw) or reads_blocks_itself(qnode)
        if not reads_blocks or qnode.inputs[0] not in self.blocked_values(hw):
            return Layouts(batch=hw.batch, block=hw.block_in)
        producer = self.nodes[qnode.inputs[0]].name  # an activation fused into a GEMM is that GEMM
        return Layouts(frozenset({qnode.name, producer}), frozenset(), hw.batch, hw.block_in)

    def blocked_values(self, hw) -> set[str]:
        """The values lowered so far that can be blocked (`packed_layout.can_be_blocked`)."""
        for name in itertools.islice(self.nodes, self.blocked_checked, None):
            if can_be_blocked(self.nodes[name], self, hw, self.blocked):
                self.blocked.add(name)
        self.blocked_checked = len(self.nodes)
        return self.blocked

    def rescaling(self, node: Node, out_scale) -> tuple[list, int | np.ndarray]:
        """Multipliers (one per input) and a shift taking each int8 input to `out_scale`:
        integers, or arrays over the channels where an input or the output has channel scales."""
        scales = [np.asarray(self.nodes[i].scale, dtype=np.float64) / out_scale for i in node.inputs]
        ratios = np.stack(np.broadcast_arrays(*scales))
        multipliers, shifts = fixed_point(ratios.ravel(), HOST_MULTIPLIER_BITS, self.config.shift_only)
        multipliers = multipliers.astype(np.int64).reshape(ratios.shape)
        shifts = shifts.astype(np.int64).reshape(ratios.shape)
        shift = shifts.max(axis=0)
        multipliers <<= shift - shifts
        if ratios.ndim == 1:
            return [int(m) for m in multipliers], int(shift)
        return list(multipliers), shift

    def requantization(self, factor: float | np.ndarray, shift_only: bool | None = None) -> dict:
        """A host op's multiplier and shift for a rescaling factor: integers, or arrays over the
        channels for per-channel factors."""
        shift_only = self.config.shift_only if shift_only is None else shift_only
        multiplier, shift = fixed_point(factor, HOST_MULTIPLIER_BITS, shift_only)
        if np.ndim(factor) == 0:
            return {"multiplier": int(multiplier[0]), "shift": int(shift[0])}
        return {"multiplier": multiplier.astype(np.int64), "shift": shift.astype(np.int64)}

    def lower_concat(self, node: Node) -> QNode:
        """Concatenation of int8 tensors, each rescaled to the output's scale (e.g. CSP blocks)."""
        out_scale = self.scale_for(node.name)
        multipliers, shift = self.rescaling(node, out_scale)
        params = {"axis": int(node.call.attrs.axis), "multipliers": multipliers, "shift": shift}
        return QNode(node.name, "concat", node.inputs, node.shape, "int8", out_scale, params=params, source=node)

    def lower_add(self, node: Node) -> QNode:
        out_scale = self.output_scale(node.name)
        multipliers, shift = self.rescaling(node, out_scale)
        params = {
            "multiplier_a": multipliers[0],
            "multiplier_b": multipliers[1],
            "shift": shift,
            "lo": INT8_MIN,
            "hi": INT8_MAX,
        }
        return QNode(node.name, "add", node.inputs, node.shape, "int8", out_scale, params=params, source=node)

    def lower_multiply(self, node: Node) -> QNode:
        """a * b of two int8 tensors (broadcasting, e.g. squeeze-and-excitation gates): one requantization."""
        out_scale = self.output_scale(node.name)
        a, b = (np.asarray(self.nodes[i].scale, dtype=np.float64) for i in node.inputs)
        params = self.requantization(a * b / out_scale)
        return QNode(node.name, "multiply", node.inputs, node.shape, "int8", out_scale, params=params, source=node)

    def lower_mean(self, node: Node) -> QNode:
        attrs = node.call.attrs
        in_shape = self.nodes[node.inputs[0]].shape
        axes = (
            tuple(sorted(int(a) % len(in_shape) for a in attrs.axis))
            if attrs.axis is not None
            else tuple(range(len(in_shape)))
        )
        count = int(np.prod([in_shape[a] for a in axes]))
        out_scale = self.output_scale(node.name)
        in_scale = np.asarray(self.nodes[node.inputs[0]].scale, dtype=np.float64)
        # Division by the element count is exact only as a multiplier, so the host does it.
        params = {"axes": axes, "keepdims": bool(attrs.keepdims)}
        params.update(self.requantization(in_scale / (count * out_scale), shift_only=False))
        return QNode(node.name, "mean", node.inputs, node.shape, "int8", out_scale, params=params, source=node)

    def lower_avg_pool(self, node: Node) -> QNode:
        """Window sums in integers, each output requantized by its own multiplier: the divisor
        (the window's cells inside the input, without count_include_pad) and the channel scales
        fold into it, so DenseNet's transitions and Inception's pool branches stay int8."""
        attrs = node.call.attrs
        in_shape = self.nodes[node.inputs[0]].shape
        kernel = tuple(int(k) for k in attrs.pool_size)
        counts = window_counts(attrs, in_shape[2], in_shape[3], kernel, node.shape[2:])
        out_scale = self.output_scale(node.name)
        channel_factor = np.asarray(self.nodes[node.inputs[0]].scale, dtype=np.float64) / out_scale
        ratios = channel_factor.reshape(-1, 1, 1) / np.broadcast_to(counts, node.shape[2:])
        multipliers, shifts = fixed_point(ratios.ravel(), HOST_MULTIPLIER_BITS, shift_only=False)
        shift = int(shifts.max())
        multipliers = (multipliers.astype(np.int64) << (shift - shifts)).reshape(ratios.shape)
        params = {
            "kernel": kernel,
            "strides": tuple(int(s) for s in attrs.strides),
            "padding": tuple(int(p) for p in attrs.padding),
            "multiplier": multipliers,
            "shift": shift,
        }
        return QNode(node.name, "avg_pool2d", node.inputs, node.shape, "int8", out_scale, params=params, source=node)


def fuse_tables_into_conv_inputs(qgraph: QuantizedGraph) -> None:
    """A lookup table whose one reader is a conv that pads its input on the host (a host conv,
    or one on the core's row bands, whose host pass relays its input out: schedules.row_bands)
    is looked up in that pass, as it reads each value: lowering emits no pass of its own for it
    (unless its value is tapped), and the host's work counts the lookups in the conv. The
    program keeps the table as a node, so its integers and tensors are as before. PP-OCR's and
    PicoDet's HardSwish before each depthwise conv."""
    readers = qgraph.consumers()
    for table in [node for node in qgraph.nodes.values() if node.op == "lut"]:
        if len(readers[table.name]) != 1 or table.name in qgraph.outputs:
            continue
        conv = qgraph.nodes[readers[table.name][0]]
        if pads_on_the_host(conv) and conv.inputs[0] == table.name:
            conv.params["input_table"] = table.name
            table.params["fused_into"] = conv.name


def pads_on_the_host(node: QNode) -> bool:
    """A conv whose input a host pass pads: on the host, or on the core's row bands."""
    return node.op == "conv2d" and (node.placement == "host" or bool(node.params.get("row_bands")))


def merge_tables_into_host_convs(qgraph: QuantizedGraph) -> None:
    """A lookup table that alone reads a host conv's result becomes part of that conv: the conv
    looks each int8 result up as it writes it, and the table's pass over memory is gone (the
    values are the same). PP-OCR's and PicoDet's depthwise convs, each followed by its
    HardSwish, are the host's largest work on vta_default. A conv on the core's row bands
    does it in the host pass that writes its output (schedules.row_bands)."""
    readers = qgraph.consumers()
    merged: dict[str, str] = {}
    for table in [node for node in qgraph.nodes.values() if node.op == "lut"]:
        conv = qgraph.nodes[table.inputs[0]]
        if not pads_on_the_host(conv) or "table" in conv.params:
            continue
        if readers[conv.name] != [table.name] or conv.name in qgraph.outputs:
            continue
        conv.params["table"] = table.params["table"]
        conv.scale, conv.zero_point, conv.float_name = table.scale, table.zero_point, table.name
        merged[table.name] = conv.name
    qgraph.nodes = {name: node for name, node in qgraph.nodes.items() if name not in merged}
    for node in qgraph.nodes.values():
        node.inputs = [merged.get(i, i) for i in node.inputs]
    qgraph.outputs = [merged.get(o, o) for o in qgraph.outputs]


def integer_pool(node: Node) -> bool:
    """An average pool the integer program runs: NCHW, no dilation, no ceil mode (whose extra
    windows PyTorch and ONNX divide differently)."""
    attrs = node.call.attrs
    if attrs.layout != "NCHW" or getattr(attrs, "out_layout", "NCHW") != "NCHW" or attrs.ceil_mode:
        return False
    return node.shape is not None and len(node.shape) == 4 and all(int(d) == 1 for d in attrs.dilation)


NEAREST_REPEAT_MODES = {
    ("asymmetric", "floor"),
    ("half_pixel", "round_prefer_floor"),
    ("half_pixel", "round_prefer_ceil"),
}


def moves_int8(node: Node, graph: Graph) -> bool:
    """Does the op only move its input's values (so it runs on int8 data at the input's scale)?"""
    return node.op in INT8_PASSTHROUGH_OPS or is_nearest_upsample(node, graph)


def _mixes_channel_scales(node: Node, nodes: dict[str, QNode]) -> bool:
    """Would a max reduction compare int8 values of channels at different scales?"""
    scale = nodes[node.inputs[0]].scale
    if node.op != "relax.max" or np.ndim(scale) == 0:
        return False
    axes = node.call.attrs.axis
    return axes is None or 1 in {int(axis) % len(nodes[node.inputs[0]].shape) for axis in axes}


def is_nearest_upsample(node: Node, graph: Graph) -> bool:
    """A nearest-neighbour resize by whole factors (ONNX's default Resize): pure data movement."""
    if node.op != "relax.image.resize2d" or node.shape is None:
        return False
    attrs = node.call.attrs
    in_shape = graph.nodes[node.inputs[0]].shape
    whole = all(out % size == 0 for out, size in zip(node.shape[2:], in_shape[2:]))
    # With a whole factor f, output x*f + j reads input x under these modes (half-pixel centres
    # land within 0.5 - 0.5/f of x), so the resize repeats each element f times.
    repeats = (attrs.coordinate_transformation_mode, attrs.rounding_method) in NEAREST_REPEAT_MODES
    return attrs.method == "nearest_neighbor" and attrs.layout == "NCHW" and repeats and whole


def _channel_requantizable(node: Node) -> bool:
    """Can this GEMM requantize each output channel to its own scale? It must be a conv (its
    output channels are the tensor's channel axis) and a folded clamp must give the same integer
    bounds whatever the scale (none, or ReLU)."""
    low, high = node.layer.clamp
    return node.layer.kind == "conv2d" and (not np.isfinite(low) or low == 0) and not np.isfinite(high)


# Ops a value passes through on its way to a logarithm keeping its dynamic range (a spectrum's
# power, summed into mel bands, clamped away from zero), and the layouts between them.
RANGE_CARRYING_OPS = {
    "clamp", "relax.clip", "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.power",
    "relax.square", "relax.sqrt", "relax.abs", "relax.maximum", "relax.minimum", "relax.reshape",
    "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.strided_slice",
    "relax.concat", "relax.split", "TupleGetItem", "relax.sum", "relax.mean",
}  # fmt: skip


def layers_before_logarithm(graph: Graph) -> list[str]:
    """GEMM layers whose output reaches a logarithm through RANGE_CARRYING_OPS (and other such
    layers): a log-mel front end's STFT convs and mel filterbank. A log expands the small values
    int8 rounds away (a spectrum spans 80 dB and more, int8 42 dB), so they stay in float."""
    layers, seen = [], set()
    pending = [i for node in graph.nodes.values() if node.op == "relax.log" for i in node.inputs]
    while pending:
        name = pending.pop()
        node = graph.nodes.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        if node.op == "gemm":
            layers.append(name)
            pending.append(node.inputs[0])
        elif node.op in RANGE_CARRYING_OPS:
            pending.extend(node.inputs)
    return sorted(layers)


def quantize_graph(graph: Graph, ranges: TensorRanges, config: QuantConfig) -> QuantizedGraph:
    """The integer program. Unless pinned, the padded grouped convs that pad with a zero point
    are those on the host and the core's row bands (whose rows the host pads anyway): for
    super-groups, the pad costs a host pass (`prepadded`). So the first pass places them as they
    run without one, and where any landed on the core as super-groups, the graph is quantized
    again with the others pinned."""
    qgraph = _Quantizer(graph, ranges, config).run()
    if config.zero_point_pads is not None:
        return qgraph
    padding = [n for n in qgraph.gemm_nodes() if "pad_value" in n.params]
    free = tuple(sorted(n.name for n in padding if n.placement == "host" or n.params.get("row_bands")))
    if len(free) == len(padding):
        return qgraph
    return _Quantizer(graph, ranges, dataclasses.replace(config, zero_point_pads=free)).run()


def chosen_placements(qgraph: QuantizedGraph) -> dict[str, tuple[str, ...]]:
    """The placements of a quantized graph, by CompressionConfig's field."""
    gemms = qgraph.gemm_nodes()
    return {
        "unfold": tuple(sorted(n.name for n in gemms if qgraph.nodes[n.inputs[0]].op == "im2col")),
        "host_convs": tuple(sorted(n.name for n in gemms if n.op == "conv2d" and n.placement == "host")),
        "row_bands": tuple(sorted(n.name for n in gemms if n.params.get("row_bands"))),
        "alu_activations": tuple(sorted(n.name for n in gemms if "activation" in n.params)),
        "zero_point_pads": tuple(sorted(n.name for n in gemms if "pad_value" in n.params)),
    }
