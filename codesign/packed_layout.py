"""Packed chaining: which int8 tensors stay in the accelerator's blocked layout between layers.

An accelerated conv reads (1, N/b, C/bi, H, W, b, bi) and writes (1, N/b, O/bo, H, W, b, bo)
(see schedules.packed_conv2d). When bi == bo, one conv's output is already the next conv's
input, so the host need not unpack it to NCHW and pack it again (an int4 layer on a
precision-scalable core reads the same bo-wide blocks, two per fused element: `input_gather`;
a grouped conv whose groups fall on whole blocks, depthwise convs the core runs as super-groups
of bi channels included, reads them as runs of blocks: `groups_fill_blocks`). Elementwise int8 host ops
(lookup tables, clamps, residual adds, squeeze-and-excitation gates) run on blocked tensors
just as well, and so do the ops that work on each channel alone: depthwise convs on the host,
average pools and global ones, max pools and nearest upsampling; and concatenations and splits
along the channels whose parts fill whole blocks (DenseNet's growth of 32 channels, YOLO's and
PP-OCR's necks, YOLOv8's C2f blocks). An im2col (a narrow-input conv's unfolded input) reads
NCHW and writes the blocks its conv reads (`writes_blocks`). So a chain conv -> HardSwish ->
conv, a residual block, a MobileNet block (conv -> depthwise conv -> SE -> conv) or a feature
pyramid's neck stays blocked throughout. The host
converts only where a consumer needs NCHW: model outputs, taps, and every other op.

The blocks zero-fill channels (and batch rows) up to whole blocks. What the padded channels
hold after a kernel or a host op is not zero in general (clamp(0), a table's entry for 0, ...),
and nothing here keeps it zero: no op chained through mixes channels or rows, and a conv's
packed weights are zero for its padded input channels, so padding never reaches a real value.

This module is the one home of the rule: lowering emits the conversions it says, and
`host_work` counts the same ones.
"""

from __future__ import annotations

import dataclasses
import math

ELEMENTWISE_OPS = ("lut", "clamp")
# int8 data movement within each channel: max pools and nearest upsampling by whole factors (the
# only resize quantize passes through).
SPATIAL_PASSTHROUGH_OPS = ("relax.nn.max_pool2d", "relax.image.resize2d")
BROADCASTING_OPS = ("add", "multiply")


@dataclasses.dataclass(frozen=True)
class Layouts:
    packed: frozenset[str] = frozenset()  # nodes whose value is computed in the blocked layout
    unpacked: frozenset[str] = frozenset()  # of those, the ones also needed as NCHW
    batch: int = 1
    block: int = 1

    def reads_packed(self, node, producer: str) -> bool:
        """Whether `node` reads its input `producer` in the blocked layout (no conversion)."""
        return node.name in self.packed and producer in self.packed

    def writes_nchw(self, node) -> bool:
        """Whether `node`'s value exists as NCHW (computed so, or unpacked for a consumer)."""
        return node.name not in self.packed or node.name in self.unpacked

    def packed_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(N, C, H, W) -> the blocked (1, N/b, C/bi, H, W, b, bi), padded up to whole blocks."""
        n, c, h, w = shape
        return (1, math.ceil(n / self.batch), math.ceil(c / self.block), h, w, self.batch, self.block)


def chains_kernel(node, qgraph, hw) -> bool:
    """An accelerated layer whose blocked output can feed the next one as is: a conv on a core
    whose output blocks are the blocks its input is stored in (an int4 layer on a
    precision-scalable core reads those too, two per element: `input_gather`), with one group
    or groups that fall on whole blocks (`groups_fill_blocks`). (An input padded with its zero
    point is padded by a host pass first, on the blocks: `quantize.prepadded`.)"""
    if node.op != "conv2d" or node.placement != "accel" or node.params.get("row_bands"):
        return False  # row bands read and write their own layout (schedules.row_bands)
    if node.params.get("input_bits"):
        return False  # a wide layer's int16 values are read dequantized, not as the int8 blocks
    layer_core = hw.for_layer_weights(qgraph.config.bits_for(node.name))
    if not layer_core.input_block == layer_core.block_out == hw.block_out:
        return False
    return node.params["groups"] == 1 or groups_fill_blocks(node, qgraph, layer_core)


def groups_fill_blocks(node, qgraph, core) -> bool:
    """Does a grouped conv's kernel read and write the layout's blocks as they are? Its groups
    (super-groups of narrow groups: schedules.narrow_groups) must each take whole input and
    output blocks, in channel order, and its rows one batch block: the kernel's (G, N/b, C/G/bi,
    H, W, b, bi) is then the layout's (1, N/b, C/bi, H, W, b, bi) cut into G runs of blocks."""
    out_channels, group_inputs = node.params["weight"].shape[:2]
    group_outputs = out_channels // node.params["groups"]
    rows = qgraph.nodes[node.inputs[0]].shape[0]
    if core.input_gather != 1 or math.ceil(rows / core.batch) != 1:
        return False
    if group_inputs < core.block_in:  # narrow groups, k = block_in / group_inputs per super-group
        k, remainder = divmod(core.block_in, group_inputs)
        return remainder == 0 and k * group_outputs == core.block_out
    return group_inputs % core.block_in == 0 and group_outputs % core.block_out == 0


def runs_on_blocks(node, qgraph, block: int) -> bool:
    """An int8 host op on 4-D tensors that may run on blocked ones: each output channel (and
    batch row) computed from the same channel (and row) of its inputs only, or a concatenation
    or split of whole blocks along the channels (and a split's parts)."""
    if node.op == "passthrough" and node.source.op == "relax.split":
        return splits_whole_blocks(node, qgraph, block)
    if node.op == "passthrough" and node.source.op == "TupleGetItem":
        return qgraph.nodes[node.inputs[0]].op == "passthrough"  # a part of an int8 split
    if node.shape is None or len(node.shape) != 4 or node.dtype != "int8":
        return False
    shapes = [qgraph.nodes[i].shape for i in node.inputs]
    if node.op == "concat":
        return node.params["axis"] % 4 == 1 and all(_whole_blocks(shape, node.shape, block) for shape in shapes)
    if node.op == "avg_pool2d" or (node.op == "passthrough" and node.source.op in SPATIAL_PASSTHROUGH_OPS):
        return True
    if node.op in ELEMENTWISE_OPS:
        return shapes == [node.shape]
    if node.op in BROADCASTING_OPS:
        return all(_broadcasts_spatially(shape, node.shape) for shape in shapes)
    if node.op == "mean":
        return node.params["keepdims"] and tuple(node.params["axes"]) == (2, 3)
    return node.op == "conv2d" and node.placement == "host" and is_depthwise(node, shapes[0])


def reads_blocks_itself(node) -> bool:
    """An accelerated layer whose own host passes read its input and write its output in either
    layout: a depthwise conv on row bands (schedules.row_bands), which relays rows out anyway."""
    return node.op == "conv2d" and node.placement == "accel" and bool(node.params.get("row_bands"))


def writes_blocks(node) -> bool:
    """A host op that reads NCHW and can write the blocked layout as it computes: im2col, the
    unfolded input of a narrow-input conv (schedules.narrow_inputs), read by that conv alone;
    blocked when the conv chains and its own input is NCHW (a model input), it spares the
    conv's packing pass."""
    return node.op == "im2col"


def splits_whole_blocks(node, qgraph, block: int) -> bool:
    """A split of a 4-D int8 tensor along the channels into parts of whole blocks (YOLOv8's C2f
    blocks split a conv's 2 x 16 channels or more in two)."""
    in_shape = qgraph.nodes[node.inputs[0]].shape
    attrs = node.source.call.attrs
    if in_shape is None or len(in_shape) != 4 or int(attrs.axis) % 4 != 1:
        return False
    try:  # indices (graph.split_points, without importing TVM here)
        return all(int(point) % block == 0 for point in attrs.indices_or_sections)
    except TypeError:  # a count of equal parts
        parts = int(attrs.indices_or_sections)
        return in_shape[1] % parts == 0 and (in_shape[1] // parts) % block == 0


def _whole_blocks(shape, out_shape, block: int) -> bool:
    """A concatenated input that fills whole channel blocks (no padded channel between parts)."""
    return shape is not None and len(shape) == 4 and shape[0] == out_shape[0] and shape[1] % block == 0


def _broadcasts_spatially(shape, out_shape) -> bool:
    """Same batch and channels as the output; rows and columns the output's or 1."""
    if shape is None or len(shape) != 4 or shape[:2] != out_shape[:2]:
        return False
    return all(size in (1, out) for size, out in zip(shape[2:], out_shape[2:]))


def _is_split(node) -> bool:
    return node.op == "passthrough" and node.source.op == "relax.split"


def is_depthwise(node, in_shape) -> bool:
    """A conv with one input and one output channel per group."""
    return node.params["groups"] == in_shape[1] == node.shape[1]


def can_be_blocked(node, qgraph, hw, blocked_before: set[str]) -> bool:
    """Can `node`'s value be blocked, given the values before it that can (`blocked_before`)?
    A kernel that chains writes blocks, a host op computes them from blocked values only, and
    an op that writes blocks from NCHW (`writes_blocks`) reads no value that could be blocked."""
    if chains_kernel(node, qgraph, hw):
        return True
    if reads_blocks_itself(node):
        return node.inputs[0] in blocked_before
    if runs_on_blocks(node, qgraph, hw.block_in) and all(i in blocked_before for i in node.inputs):
        return True
    return writes_blocks(node) and not any(i in blocked_before for i in node.inputs)


def plan_layouts(qgraph, hw, boundaries=()) -> Layouts:
    """The blocked values of the integer program. `boundaries` are node names read as NCHW
    beyond the model outputs (taps)."""
    chained = {n.name for n in qgraph.nodes.values() if chains_kernel(n, qgraph, hw)}
    candidates = set()  # forward
    for node in qgraph.nodes.values():
        if can_be_blocked(node, qgraph, hw, candidates):
            candidates.add(node.name)
    # Backward: a host op runs blocked only when some consumer reads it blocked.
    consumers = qgraph.consumers()
    packed = set(chained)
    for node in reversed(list(qgraph.nodes.values())):
        if node.name in candidates - chained and any(c in packed for c in consumers[node.name]):
            packed.add(node.name)
    # A blocked split's tuple is never unpacked: every part is blocked (and unpacked if need be).
    packed |= {c for name in packed if _is_split(qgraph.nodes[name]) for c in consumers[name]}
    nchw_readers = set(qgraph.outputs) | set(boundaries)
    unpacked = {name for name in packed if name in nchw_readers or any(c not in packed for c in consumers[name])}
    return Layouts(frozenset(packed), frozenset(unpacked), hw.batch, hw.block_in)
