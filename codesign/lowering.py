"""Stage 4, lowering: QuantizedGraph + hardware -> Relax module (LoweredModel).

GEMM layers placed on the accelerator become `call_tir` to the packed, tensorized kernels of
`schedules/` (one tiling per layer, chosen by `schedules.mapper` and checked against the
description's scratchpads); the host packs and unpacks their operands, except where
`codesign.packed_layout` keeps a value in the blocked layout from one layer to the next. Host integer ops are
TE functions with the same formulas as `codesign.reference` (and the kernels' requantization);
float host ops keep their original Relax op.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import tvm
from tvm import relax, te, tirx

from codesign import progress
from codesign.compression import CompressionConfig
from codesign.emit import emit_float_node, emit_host_call, module_without_main
from codesign.errors import HardwareError
from codesign.graph import channel_axis, split_points
from codesign.host_work import node_work
from codesign.importer import ImportedModel
from codesign.packed_layout import plan_layouts
from codesign.plan import LayerPlan, layer_alu_ops
from codesign.quantize import INT8_MAX, INT8_MIN, QNode, QuantizedGraph, gemm_shape, kernel_shape
from codesign.schedules.gemm_intrin import ACC_SCOPE, INP_SCOPE, WGT_SCOPE
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import select_tiling
from codesign.schedules.narrow_groups import block_diagonal_weight
from codesign.schedules.packed_conv2d import (
    channel_param_names,
    check_footprint,
    kernel_buffer_shapes,
    measured_footprint,
    pack_activation_te,
    pack_channel_params_numpy,
    pack_matmul_weight_te,
    pack_weight_numpy,
    packed_conv2d_func,
    requantize_expr,
    rescale_expr,
    schedule_packed_conv2d,
    unpack_int4_te,
    unpack_output_te,
    weight_image,
)
from codesign.schedules.row_bands import banded_weight
from codesign.schedules.schedule_walk import walk_schedule
from codesign.schedules.tile_geometry import TileGeometry, tile_geometry
from codesign.schedules.tiling import TilingError, tile_footprint
from codesign.tvm_build import ACCELERATED_PREFIX


@dataclasses.dataclass
class LoweredModel:
    mod: tvm.IRModule
    plans: list[LayerPlan]


def is_float_gemm(node: QNode) -> bool:
    """A conv / matmul kept in float on the host (--float-layers)."""
    return node.op == "float" and node.source is not None and node.source.op == "gemm"


def float_gemm_view(node: QNode) -> QNode:
    """A float conv / matmul described like a quantized one, for its geometry."""
    layer = node.source.layer
    params = {"weight": layer.weight}
    if layer.kind == "conv2d":
        params.update(strides=layer.strides, padding=layer.padding, groups=layer.groups, dilation=layer.dilation)
    return QNode(node.name, layer.kind, node.inputs, node.shape, node.dtype, params=params)


def plan_accelerated_layer(
    name: str,
    op: str,
    shape: ConvShape,
    hw,
    clamp: tuple[int, int],
    alu_ops=(),
    weight_bits=None,
    schedule="rule",
    activation=None,
    kernel=True,
    input_bits=None,
):
    """Tile (the tile rule, or the fastest modelled tiling with schedule="auto"), schedule and
    check one layer; returns (scheduled PrimFunc, LayerPlan). Narrow weights pack in the buffer;
    `activation` (codesign.plan.AluActivation) runs on the ALU before the requantization.
    Without `kernel` (a plan for the simulator alone) nothing is scheduled: the plan's
    scratchpad bytes are the tile rule's, which the scheduled TIR's equal (tests/test_schedules.py),
    and the kernel is None."""
    hw = hw.for_layer(weight_bits, input_bits)
    try:
        tiling = select_tiling(shape, hw, alu_ops, weight_bits, schedule)
    except TilingError as err:
        raise HardwareError(f"layer '{name}': {err}") from err
    footprint = tile_footprint(shape, tiling, hw)
    if kernel:
        scheduled, used, walked = _scheduled_kernel(shape, hw, tuple(clamp), weight_bits, activation, tiling)
    else:
        scheduled, walked = None, None
        used = {INP_SCOPE: footprint.inp_bytes, WGT_SCOPE: footprint.wgt_bytes, ACC_SCOPE: footprint.acc_bytes}
    problems = check_footprint(used, footprint, hw, tiling.virtual_threads)
    if problems:
        raise HardwareError(f"layer '{name}': scratchpad too small: " + "; ".join(problems))
    if kernel:
        _check_kernel_tiles(name, walked, tile_geometry(shape, tiling, hw))
    plan = LayerPlan(name, op, "accel", shape, tiling, dict(used), scheduled, schedule=schedule, input_bits=input_bits)
    return scheduled, plan


@functools.lru_cache(maxsize=1024)
def _scheduled_kernel(shape: ConvShape, hw, clamp: tuple[int, int], weight_bits, activation, tiling):
    """(scheduled kernel, its measured scratchpad bytes, its walked tiles) of one layer geometry:
    the layers of a network that share one (a ResNet's repeated blocks), and a tuner's profiles
    that leave a layer as it was, schedule it once."""
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, *clamp, weight_bits, activation), tiling, hw)
    return scheduled, measured_footprint(scheduled, hw), walk_schedule(scheduled)


def _check_kernel_tiles(name: str, walked, geometry: TileGeometry) -> None:
    """The kernel the module runs must tile the layer as its tiling says: the TIR walk of it
    (`walked`) is the independent cross-check of the tile geometry the simulator builds the
    instruction stream from."""
    if not geometry.same_tiles(walked):
        raise RuntimeError(f"layer '{name}': the scheduled kernel's tiles {walked} are not its tiling's {geometry}")


class _Lowerer:
    def __init__(
        self, qgraph: QuantizedGraph, imported: ImportedModel, hw, compression: CompressionConfig, kernels=True
    ):
        """`kernels`: schedule the accelerated layers' TIR (False: their plans only, for the simulator)."""
        self.qgraph, self.imported, self.hw, self.compression = qgraph, imported, hw, compression
        self.schedules_kernels = kernels
        self.bb = relax.BlockBuilder(module_without_main(imported.mod))
        self.plans: list[LayerPlan] = []
        # Tile and schedule every accelerated layer first: a layer that does not fit fails
        # before any Relax is built.
        self.kernels = {}
        offloaded = [node for node in qgraph.gemm_nodes() if node.placement == "accel"]
        progress.stage("schedule", len(offloaded))
        for node in offloaded:
            self.plan_kernel(node)
            progress.advance()
        self.layouts = plan_layouts(qgraph, hw)  # after planning: a layer may have moved to the host

    def plan_kernel(self, node: QNode) -> None:
        """Tile and schedule one offloaded layer. A dilated conv whose dilated window cannot fit
        the input buffer even for one output stays on the host (its arithmetic is the same), and
        so does a narrow-group conv whose super-groups do not fit."""
        p = node.params
        shape = kernel_shape(node, self.qgraph, self.hw)
        try:
            self.kernels[node.name] = plan_accelerated_layer(
                node.name,
                node.op,
                shape,
                self.hw,
                (p["lo"], p["hi"]),
                layer_alu_ops(p),
                self.weight_bits(node),
                self.compression.schedule,
                p.get("activation"),
                self.schedules_kernels,
                p.get("input_bits"),
            )
        except HardwareError:
            narrow_groups = node.op == "conv2d" and shape != gemm_shape(node, self.qgraph)  # super-groups, row bands
            if node.op != "conv2d" or (tuple(p["dilation"]) == (1, 1) and not narrow_groups):
                raise
            node.placement = "host"
            p.pop("row_bands", None)

    def layer_core(self, node: QNode):
        """The core as an accelerated layer uses it (`CoreGeometry.for_layer`)."""
        return self.hw.for_layer(self.weight_bits(node), node.params.get("input_bits"))

    def weight_bits(self, node: QNode) -> int | None:
        """A GEMM layer's weight width; None for a matmul of two activations."""
        return self.qgraph.config.bits_for(node.name) if node.params["weight"] is not None else None

    def run(self, taps: list[str] = ()) -> LoweredModel:
        bb = self.bb
        self.layouts = plan_layouts(self.qgraph, self.hw, boundaries=taps)
        params = [relax.Var(s.name, relax.TensorType(s.shape, s.dtype)) for s in self.imported.inputs]
        with bb.function("main", params):
            with bb.dataflow():
                values = {s.name: p for s, p in zip(self.imported.inputs, params)}  # NCHW values
                blocked: dict[str, relax.Expr] = {}  # values in the blocked layout
                for node in self.qgraph.nodes.values():
                    if node.op == "input":
                        continue
                    if node.params.get("fused_into") and node.name not in taps:  # looked up by its reader
                        self.plans.append(self.plan_for(node))
                        continue
                    if node.name in self.layouts.packed:
                        blocked[node.name] = self.emit_blocked(node, values, blocked)
                    else:
                        values[node.name] = self.emit(node, [values[i] for i in self.read_names(node)])
                    if node.name in self.layouts.unpacked:
                        values[node.name] = self.emit_unpack(blocked[node.name], node.shape)
                    self.plans.append(self.plan_for(node))
                outputs = [values[n] for n in self.qgraph.outputs] + [self.real_valued(values, n) for n in taps]
                result = bb.emit_output(outputs[0] if len(outputs) == 1 else relax.Tuple(outputs))
            bb.emit_func_output(result)
        return LoweredModel(bb.get(), self.plans)

    def read_names(self, node: QNode) -> list[str]:
        """The values a node's TE reads: a conv's input before the table it looks up as it pads
        it (`quantize.fuse_tables_into_conv_inputs`), its inputs otherwise."""
        if "input_table" not in node.params:
            return node.inputs
        return [self.qgraph.nodes[node.inputs[0]].inputs[0], *node.inputs[1:]]

    def input_table(self, node: QNode) -> np.ndarray:
        """The table a conv looks its input up in as it pads it."""
        return self.qgraph.nodes[node.params["input_table"]].params["table"]

    def real_valued(self, values: dict, name: str) -> relax.Expr:
        """A node's value in real units (int8 dequantized by its scale), for comparison with float."""
        node = self.qgraph.nodes[name]
        if node.dtype not in ("int8", "int16"):
            return values[name]
        return self.emit_dequantize(values[name], np.asarray(node.scale, dtype=np.float32), "tap", node.zero_point)

    def emit_dequantize(
        self, x: relax.Expr, scale: np.ndarray, hint: str = "dequantize", zero_point: int | np.ndarray = 0
    ) -> relax.Expr:
        """int8 -> float32 by one scale, or by a scale per channel (axis 1); less a zero point
        where the tensor has one (one, or one per channel)."""
        if np.any(zero_point):
            zero_points = np.broadcast_to(np.asarray(zero_point, dtype=np.int32).reshape(-1), (scale.size,))
            operands = [relax.const(scale.reshape(-1).astype(np.float32)), relax.const(zero_points.copy())]
            return self.bb.emit_te(_dequantize_offset_te, x, *operands, primfunc_name_hint=hint)
        if scale.size == 1:
            # The scale as an operand, not a literal: a tuner's profiles, whose output scales
            # differ, then share one compiled kernel.
            scalar = relax.const(scale.reshape(1).astype(np.float32))
            return self.bb.emit_te(_dequantize_te, x, scalar, primfunc_name_hint=hint)
        channel_scales = relax.const(scale.reshape(-1).astype(np.float32))
        return self.bb.emit_te(_dequantize_channels_te, x, channel_scales, primfunc_name_hint=hint)

    def plan_for(self, node: QNode) -> LayerPlan:
        ops, nbytes = node_work(node, self.qgraph, self.layouts)
        if node.name in self.kernels:
            plan = self.kernels[node.name][1]
            p = node.params
            plan.alu_ops = layer_alu_ops(p)
            layer_shape = gemm_shape(node, self.qgraph)
            plan.layer_shape = layer_shape if layer_shape != plan.shape else None
        elif is_float_gemm(node):
            plan = LayerPlan(node.name, node.source.layer.kind, "host", gemm_shape(float_gemm_view(node), self.qgraph))
        else:
            op = node.source.op.rsplit(".", 1)[-1] if node.op in ("passthrough", "float") else node.op
            shape = gemm_shape(node, self.qgraph) if node.op in ("conv2d", "matmul") else None
            plan = LayerPlan(node.name, op, "host", shape)
        plan.host_ops, plan.host_bytes = ops, nbytes
        if node.op in ("conv2d", "matmul") and node.params["weight"] is not None:
            plan.weight_bits = self.qgraph.config.bits_for(node.name)
            plan.weight_bytes = self.weight_image_bytes(node, plan)
        return plan

    def weight_image_bytes(self, node: QNode, plan: LayerPlan) -> int:
        """Bytes of the layer's weight constant in the module (`CoreGeometry.weight_bytes`, int4
        two per byte): an accelerated layer's whole blocks, their zero padding included."""
        core = self.hw.for_layer_weights(plan.weight_bits)
        if node.name in self.kernels:
            return core.weight_bytes(math.prod(kernel_buffer_shapes(plan.shape, core)["weight"]))
        return core.weight_bytes(self.host_weight(node).size)

    def emit(self, node: QNode, args: list[relax.Expr]) -> relax.Expr:
        p = node.params
        if node.op == "quantize":
            bounds = (p.get("lo", INT8_MIN), p.get("hi", INT8_MAX))
            return self.bb.emit_te(
                lambda x: _quantize_te(x, float(p["inv_scale"]), *bounds, node.dtype),
                args[0],
                primfunc_name_hint="quantize",
            )
        if node.op == "dequantize":
            return self.emit_dequantize(
                args[0], np.asarray(p["scale"], dtype=np.float32), zero_point=p.get("zero_point", 0)
            )
        if node.op in ("conv2d", "matmul") and node.placement == "accel":
            return self.emit_accelerated(node, args)
        if node.op == "conv2d":
            weight = self.host_weight(node)
            consts = [relax.const(p[key]) for key in channel_param_names(p.get("activation"))]
            consts += [relax.const(p["table"])] if "table" in p else []
            input_table = [relax.const(self.input_table(node))] if "input_table" in p else []
            skip = len(input_table)
            return self.bb.emit_te(
                lambda x, w, z, *c: _host_conv2d_te(
                    x, _unpacked_te(w, weight.shape), *c[skip:], node=node, pad=z, input_table=c[:skip]
                ),
                args[0],
                self.host_weight_const(weight, node),
                self.pad_value_const(node),
                *input_table,
                *consts,
                primfunc_name_hint="host_conv2d",
            )
        if node.op in RESCALING_OPS:
            return self.emit_rescaling(node, args, p)
        if node.op == "concat":
            return self.bb.emit_te(lambda *xs: _concat_te(xs, p), *args, primfunc_name_hint="int_concat")
        if node.op == "clamp":
            return self.bb.emit_te(lambda x: _clamp_te(x, p["lo"], p["hi"]), args[0], primfunc_name_hint="clamp")
        if node.op == "im2col":
            return self.bb.emit_te(lambda x: _im2col_te(x, p, node.shape), args[0], primfunc_name_hint="im2col")
        if node.op == "avg_pool2d":
            multiplier = relax.const(p["multiplier"])
            pool = functools.partial(_avg_pool_te, p=p)
            return self.bb.emit_te(pool, args[0], multiplier, primfunc_name_hint="int_avg_pool")
        if node.op == "lut":
            table = relax.const(p["table"])
            lookup = _lut_te if p["table"].ndim == 1 else _channel_lut_te
            return self.bb.emit_te(lookup, args[0], table, primfunc_name_hint="lookup_table")
        if node.op == "passthrough":
            return emit_host_call(self.bb, node.source, args)
        if node.op == "float":
            return emit_float_node(self.bb, node.source, args)
        raise NotImplementedError(node.op)

    def emit_accelerated(self, node: QNode, args: list[relax.Expr]) -> relax.Expr:
        """The layer's operands packed for the core as it uses it (`for_layer_weights`: an int4
        layer on a precision-scalable core packs twice the input channels per block), its kernel
        called, the output unpacked."""
        bb, hw, p = self.bb, self.layer_core(node), node.params
        shape = self.kernels[node.name][1].shape
        if p.get("row_bands"):
            return self.emit_row_bands(node, args[0])
        grouped = node.op == "conv2d" and p["groups"] > 1
        data = args[0]
        if "pad_value" in p:  # the core's loads pad with zeros; this padding holds the zero point
            pad = self.pad_value_const(node)
            data = bb.emit_te(lambda x, z: _padded_te(x, z, p["padding"]), data, pad, primfunc_name_hint="pad")
        data = self.grouped_input(data, shape) if grouped else self.group_major_input(data, shape)
        packed_data = bb.emit_te(lambda x: pack_activation_te(x, hw), data, primfunc_name_hint="pack_activation")
        packed_out = self.emit_kernel(node, packed_data, args)
        out = bb.emit_te(
            lambda y: unpack_output_te(y, shape.batch, shape.out_channels),
            packed_out,
            primfunc_name_hint="unpack_output",
        )
        if grouped:
            return self.grouped_output(out, node.shape)
        return bb.emit(relax.op.reshape(out, node.shape))

    def emit_row_bands(self, node: QNode, data: relax.Expr, blocked_output: bool = False) -> relax.Expr:
        """A depthwise conv on the core's row bands (schedules.row_bands). One host pass writes
        the kernel's input from `data` (NCHW, or the layout's blocks): each row padded (with the
        input's zero point where it has one) and widened to whole bands, the kernel's input
        channels. One pass writes its output bands, cut back to the row's width, as NCHW or
        (`blocked_output`) as the layout's blocks."""
        bb, p = self.bb, node.params
        hw = self.hw.for_layer_weights(self.weight_bits(node))
        shape = self.kernels[node.name][1].shape
        in_shape = tuple(self.qgraph.nodes[node.inputs[0]].shape)
        block = self.layouts.block
        read = functools.partial(
            _row_band_input_te, in_shape=in_shape, padding=p["padding"], core=shape, hw=hw, block=block
        )
        tables = [relax.const(self.input_table(node))] if "input_table" in p else []
        packed_data = bb.emit_te(read, data, self.pad_value_const(node), *tables, primfunc_name_hint="row_bands")
        packed_out = self.emit_kernel(node, packed_data, [])
        write = functools.partial(
            _row_band_output_te, out_shape=tuple(node.shape), core=shape, hw=hw, block=block if blocked_output else None
        )
        table = [relax.const(p["table"])] if "table" in p else []
        return bb.emit_te(write, packed_out, *table, primfunc_name_hint="row_band_output")

    def emit_kernel(self, node: QNode, packed_data: relax.Expr, args: list[relax.Expr]) -> relax.Expr:
        """The accelerated layer on blocked data (blocked for the core as the layer uses it); its
        output blocked."""
        bb, hw, p = self.bb, self.layer_core(node), node.params
        scheduled, plan = self.kernels[node.name]
        shape = plan.shape
        kernel = bb.add_func(scheduled.without_attr("global_symbol"), f"{ACCELERATED_PREFIX}{node.name}")
        packed_weight = self.packed_weight(node, shape, args, hw)
        channel = [
            relax.const(pack_channel_params_numpy(self.channel_values(p[key], shape, p.get("row_bands")), hw))
            for key in channel_param_names(p.get("activation"))
        ]
        out_shape = kernel_buffer_shapes(shape, hw)["out"]
        return bb.emit(
            relax.call_tir(
                kernel, [packed_data, packed_weight, *channel], relax.TensorType(out_shape, f"int{hw.output_bits}")
            )
        )

    def emit_blocked(self, node: QNode, values: dict, blocked: dict) -> relax.Expr:
        """A node of `layouts.packed`, computed in the blocked layout from blocked inputs (a
        chained layer packs an NCHW input itself)."""
        p, block = node.params, self.layouts.block
        if p.get("row_bands"):  # its own passes read and write the blocks (packed_layout.can_be_blocked)
            source = self.read_names(node)[0]
            return self.emit_row_bands(node, blocked.get(source, values.get(source)), blocked_output=True)
        if node.name in self.kernels:
            source = node.inputs[0]
            data = blocked[source] if source in blocked else self.emit_pack(values[source])
            if "pad_value" in p:  # the core's loads pad with zeros; this padding holds the zero point
                pad = self.pad_value_const(node, block)
                data = self.bb.emit_te(
                    lambda x, z: _blocked_padded_te(x, z, p["padding"]), data, pad, primfunc_name_hint="pad"
                )
            return self.emit_chained_kernel(node, data)
        if node.op == "im2col":  # reads NCHW, writes the blocks (packed_layout.writes_blocks)
            unfold = functools.partial(_blocked_im2col_te, p=p, out_shape=tuple(node.shape), hw=self.hw)
            return self.bb.emit_te(unfold, values[node.inputs[0]], primfunc_name_hint="im2col")
        args = [blocked[i] for i in self.read_names(node)]
        if node.op == "lut" and p["table"].ndim == 2:
            table = relax.const(_blocked_rows(p["table"], block))
            return self.bb.emit_te(_blocked_channel_lut_te, args[0], table, primfunc_name_hint="lookup_table")
        if node.op == "mean":  # over rows and columns: axes 3 and 4 of the blocked layout
            return self.emit_rescaling(node, args, {**p, "axes": (3, 4)})
        if node.op == "concat":  # of whole blocks: along axis 2 of the blocked layout
            return self.bb.emit_te(lambda *xs: _concat_te(xs, {**p, "axis": 2}), *args, primfunc_name_hint="int_concat")
        if node.op == "avg_pool2d":
            multiplier = p["multiplier"] if len(p["multiplier"]) == 1 else _blocked_rows(p["multiplier"], block)
            pool = functools.partial(_avg_pool_te, p=p)
            return self.bb.emit_te(pool, args[0], relax.const(multiplier), primfunc_name_hint="int_avg_pool")
        if node.op == "conv2d":  # depthwise, on the host
            weight = self.host_weight(node)
            keys = channel_param_names(p.get("activation"))
            channel = [np.broadcast_to(p[key], (node.shape[1],)) for key in keys]
            consts = [relax.const(_blocked_rows(values, block)) for values in channel]
            if "table" in p:
                table = p["table"] if p["table"].ndim == 1 else _blocked_rows(p["table"], block)
                consts.append(relax.const(table))
            input_table = []
            if "input_table" in p:
                table = self.input_table(node)
                rows = table if table.ndim == 1 else _blocked_rows(table, block)
                input_table.append(relax.const(rows))
            skip = len(input_table)
            return self.bb.emit_te(
                lambda x, w, z, *c: _blocked_depthwise_conv2d_te(
                    x, _unpacked_te(w, weight.shape), *c[skip:], node=node, pad=z, input_table=c[:skip]
                ),
                args[0],
                self.host_weight_const(weight, node),
                self.pad_value_const(node, block),
                *input_table,
                *consts,
                primfunc_name_hint="host_conv2d",
            )
        if node.op == "passthrough" and node.source.op == "relax.split":  # whole blocks: along axis 2
            return self.bb.emit(blocked_split(args[0], node.source.call.attrs, block))
        if node.op == "passthrough" and node.source.op == "TupleGetItem":
            return self.bb.emit(relax.TupleGetItem(args[0], node.source.call.index))
        if node.op == "passthrough":  # a max pool or a nearest upsampling, on axes 3 and 4
            spatial = _blocked_max_pool_te if node.source.op == "relax.nn.max_pool2d" else _blocked_upsample_te
            te_func = functools.partial(spatial, attrs=node.source.call.attrs, out_hw=tuple(node.shape[2:]))
            return self.bb.emit_te(te_func, args[0], primfunc_name_hint="blocked_" + node.source.op.rsplit(".", 1)[-1])
        return self.emit(node, args)  # lut by one table, clamp, add, multiply: the same TE on any shape

    def emit_rescaling(self, node: QNode, args: list[relax.Expr], p: dict) -> relax.Expr:
        """An integer add, multiply or mean; its per-channel multipliers and shifts, if any, as
        constants (on blocked values, with rows for the padded channels)."""
        block = self.layouts.block if node.name in self.layouts.packed else None
        keys = [key for key in RESCALING_OPS[node.op] if np.ndim(p[key])]
        channel = [np.asarray(p[key], dtype=np.int64) for key in keys]
        consts = [relax.const(_blocked_rows(values, block) if block else values) for values in channel]
        compute, count = RESCALING_TE[node.op], len(args)

        def te_func(*tensors):
            return compute(tensors[:count], {**p, **dict(zip(keys, tensors[count:]))})

        return self.bb.emit_te(te_func, *args, *consts, primfunc_name_hint=f"int_{node.op}")

    def pad_value_const(self, node: QNode, block: int | None = None) -> relax.Expr:
        """A conv's padding value per input channel (on blocked data: rows up to whole blocks):
        its input's zero point, else 0."""
        channels = self.qgraph.nodes[node.inputs[0]].shape[1]
        values = np.broadcast_to(np.asarray(node.params.get("pad_value", 0), dtype=np.int8), (channels,))
        return relax.const(_blocked_rows(values, block) if block else values.copy())

    def host_weight(self, node: QNode) -> np.ndarray:
        """A host conv's int8 weights as its TE reads them: a blocked depthwise conv's as
        (C, KH, KW) with zero rows up to whole blocks."""
        weight = node.params["weight"]
        if node.name in self.layouts.packed:
            return _blocked_rows(weight.reshape(weight.shape[0], *weight.shape[2:]), self.layouts.block)
        return weight

    def host_weight_const(self, weight: np.ndarray, node: QNode) -> relax.Expr:
        """The weights' constant in the module: int4 two per byte (`weight_image`)."""
        return relax.const(weight_image(weight, self.weight_bits(node)))

    def emit_chained_kernel(self, node: QNode, data: relax.Expr) -> relax.Expr:
        """A chained layer on the layout's (1, N/b, C/bi, H, W, b, bi) blocks: a grouped kernel
        reads them as its (G, N/b, C/G/bi, ...) runs of blocks and writes its output's the same
        way (`packed_layout.groups_fill_blocks`), so both are reshapes."""
        groups = self.kernels[node.name][1].shape.groups
        if groups > 1:
            _, row_blocks, blocks, *rest = (int(d) for d in data.ty.shape)
            data = self.bb.emit(relax.op.reshape(data, (groups, row_blocks, blocks // groups, *rest)))
        out = self.emit_kernel(node, data, [])
        if groups > 1:
            _, row_blocks, blocks, *rest = (int(d) for d in out.ty.shape)
            out = self.bb.emit(relax.op.reshape(out, (1, row_blocks, groups * blocks, *rest)))
        return out

    def emit_pack(self, x: relax.Expr) -> relax.Expr:
        """An NCHW value in the layout's blocks."""
        data = self.bb.emit(relax.op.expand_dims(x, 0))
        return self.bb.emit_te(lambda v: pack_activation_te(v, self.hw), data, primfunc_name_hint="pack_activation")

    def emit_unpack(self, packed: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        """A blocked (1, N/b, C/bi, H, W, b, bi) value as NCHW."""
        out = self.bb.emit_te(
            lambda y: unpack_output_te(y, shape[0], shape[1]), packed, primfunc_name_hint="unpack_output"
        )
        return self.bb.emit(relax.op.reshape(out, shape))

    def group_major_input(self, x: relax.Expr, shape: ConvShape) -> relax.Expr:
        """The layer's input as (G, N, C, H, W): rows of a matmul on N, its heads on G."""
        return self.bb.emit(relax.op.reshape(x, (shape.groups, shape.batch, shape.in_channels, shape.in_h, shape.in_w)))

    def grouped_input(self, x: relax.Expr, shape: ConvShape) -> relax.Expr:
        """(N, C, H, W) -> (G, N, C/G, H, W); zero channels fill a last, partial super-group."""
        channels = int(x.ty.shape[1])
        if shape.groups * shape.in_channels > channels:
            x = self.bb.emit_te(
                lambda v: _zero_padded_channels_te(v, shape.groups * shape.in_channels), x, primfunc_name_hint="pad"
            )
        x = self.bb.emit(relax.op.reshape(x, (shape.batch, shape.groups, shape.in_channels, shape.in_h, shape.in_w)))
        return self.bb.emit(relax.op.permute_dims(x, [1, 0, 2, 3, 4]))

    def grouped_output(self, out: relax.Expr, out_shape: tuple[int, ...]) -> relax.Expr:
        """(G, N, O/G, H, W) -> (N, O, H, W), without a last super-group's padding channels."""
        groups, n, group_channels, h, w = (int(d) for d in out.ty.shape)
        out = self.bb.emit(relax.op.permute_dims(out, [1, 0, 2, 3, 4]))
        out = self.bb.emit(relax.op.reshape(out, (n, groups * group_channels, h, w)))
        if groups * group_channels > out_shape[1]:
            out = self.bb.emit(relax.op.strided_slice(out, axes=[1], begin=[0], end=[out_shape[1]]))
        return out

    @staticmethod
    def channel_values(values: np.ndarray, shape: ConvShape, row_bands: bool = False) -> np.ndarray:
        """Per-output-channel values as (G, O/G) for the kernel (row bands: a channel's value
        for each of its group's pixels)."""
        if row_bands and np.ndim(values):
            return np.repeat(np.reshape(values, (shape.groups, 1)), shape.out_channels, axis=1)
        if np.ndim(values) == 0 or np.size(values) == shape.out_channels:
            return np.broadcast_to(values, (shape.groups, shape.out_channels))
        padding = shape.groups * shape.out_channels - np.size(values)  # a last super-group's dropped outputs
        return np.reshape(np.pad(np.ravel(values), (0, padding)), (shape.groups, shape.out_channels))

    def packed_weight(self, node: QNode, shape: ConvShape, args: list[relax.Expr], hw) -> relax.Expr:
        """The kernel's weight operand: constant weights blocked as the module stores them (int4
        two per byte, `weight_image`), a matmul's run-time operand blocked on the host."""
        weight = node.params["weight"]
        if node.params.get("row_bands"):
            blocked = pack_weight_numpy(banded_weight(weight, shape), hw)
        elif weight is not None and node.op == "conv2d" and node.params["groups"] > 1:
            blocked = pack_weight_numpy(block_diagonal_weight(weight, shape), hw)
        elif weight is not None:
            oihw = weight if node.op == "conv2d" else weight.T[:, :, None, None]
            blocked = pack_weight_numpy(oihw[None], hw)
        else:
            operand = self.bb.emit(relax.op.reshape(args[1], (shape.groups, shape.in_channels, shape.out_channels)))
            return self.bb.emit_te(lambda w: pack_matmul_weight_te(w, hw), operand, primfunc_name_hint="pack_weight")
        return relax.const(weight_image(blocked, self.weight_bits(node)))


def lower_to_relax(
    qgraph: QuantizedGraph,
    imported: ImportedModel,
    hw,
    compression: CompressionConfig | None = None,
    taps: list[str] = (),
) -> LoweredModel:
    """The integer program as Relax; `taps` adds those nodes' real values after the outputs."""
    return _Lowerer(qgraph, imported, hw, compression or CompressionConfig()).run(list(taps))


def plan_layers(
    qgraph: QuantizedGraph, imported: ImportedModel, hw, compression: CompressionConfig | None = None
) -> list[LayerPlan]:
    """The plans `lower_to_relax` writes, without scheduling the kernels or emitting the Relax
    program: what the simulator needs (tests/test_simulator.py checks they are lowering's)."""
    lowerer = _Lowerer(qgraph, imported, hw, compression or CompressionConfig(), kernels=False)
    return [lowerer.plan_for(node) for node in qgraph.nodes.values() if node.op != "input"]


# ---- host integer ops: the formulas of codesign.reference, as TE -----------------------------


def _quantize_te(x: te.Tensor, inv_scale: float, lo: int = INT8_MIN, hi: int = INT8_MAX, dtype="int8") -> te.Tensor:
    """floor(x * inv_scale + 0.5) clamped to [lo, hi] (a wide layer's input: int16)."""

    def q(*i):
        scaled = tirx.floor(x(*i) * tirx.const(inv_scale, "float32") + tirx.const(0.5, "float32"))
        return tirx.max(tirx.min(scaled, tirx.const(hi, "float32")), tirx.const(lo, "float32")).astype(dtype)

    return te.compute(x.shape, q, name="quantize")


def _dequantize_te(x: te.Tensor, scale: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: x(*i).astype("float32") * scale[0], name="dequantize")


def _dequantize_offset_te(x: te.Tensor, scales: te.Tensor, zero_points: te.Tensor) -> te.Tensor:
    """(x - zero point) * scale: one of each, or one per channel (axis 1)."""
    axis = channel_axis(tuple(x.shape)) if int(scales.shape[0]) > 1 else None

    def channel(i):
        return 0 if axis is None else i[axis]

    return te.compute(
        x.shape,
        lambda *i: (x(*i).astype("int32") - zero_points[channel(i)]).astype("float32") * scales[channel(i)],
        name="dequantize",
    )


def _dequantize_channels_te(x: te.Tensor, scales: te.Tensor) -> te.Tensor:
    axis = channel_axis(tuple(x.shape))
    return te.compute(x.shape, lambda *i: x(*i).astype("float32") * scales[i[axis]], name="dequantize")


def _clamp_te(x: te.Tensor, lo: int, hi: int) -> te.Tensor:
    return te.compute(
        x.shape, lambda *i: tirx.max(tirx.min(x(*i), tirx.const(hi, "int8")), tirx.const(lo, "int8")), name="clamp"
    )


def _lut_te(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") + 128], name="lookup_table")


def _channel_lut_te(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    """A table with a row per channel: channel scales and channel constants are both on axis 1."""
    return te.compute(x.shape, lambda *i: table[i[1], x(*i).astype("int32") + 128], name="lookup_table")


def _blocked_channel_lut_te(x: te.Tensor, table: te.Tensor) -> te.Tensor:
    """The per-channel table on a blocked (1, N/b, C/bi, H, W, b, bi) tensor: channel c * bi + i."""
    block = int(x.shape[6])

    def lookup(g, n, c, y, xx, b, i):
        return table[c * block + i, x[g, n, c, y, xx, b, i].astype("int32") + 128]

    return te.compute(x.shape, lookup, name="lookup_table")


def _blocked_max_pool_te(x: te.Tensor, attrs, out_hw: tuple[int, int]) -> te.Tensor:
    """codesign.reference.max_pool2d on blocked (1, N/b, C/bi, H, W, b, bi) data: -128 outside
    the input (ceil mode's extra rows and columns too)."""
    (kh, kw), (sh, sw), (dh, dw) = ((int(v) for v in pair) for pair in (attrs.pool_size, attrs.strides, attrs.dilation))
    top, left = int(attrs.padding[0]), int(attrs.padding[1])
    h, w = int(x.shape[3]), int(x.shape[4])
    out_shape = (*(int(d) for d in x.shape[:3]), *out_hw, int(x.shape[5]), int(x.shape[6]))
    r, c = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="c")

    def window_max(g, n, k, y, xx, b, i):
        row, col = y * sh + r * dh - top, xx * sw + c * dw - left
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        value = tirx.if_then_else(inside, x[g, n, k, row, col, b, i], tirx.const(INT8_MIN, "int8"))
        return te.max(value, axis=[r, c])

    return te.compute(out_shape, window_max, name="blocked_max_pool")


def _blocked_upsample_te(x: te.Tensor, attrs, out_hw: tuple[int, int]) -> te.Tensor:
    """Nearest upsampling by whole factors on blocked data: each element repeated."""
    factor_h, factor_w = out_hw[0] // int(x.shape[3]), out_hw[1] // int(x.shape[4])
    out_shape = (*(int(d) for d in x.shape[:3]), *out_hw, int(x.shape[5]), int(x.shape[6]))
    return te.compute(
        out_shape, lambda g, n, k, y, xx, b, i: x[g, n, k, y // factor_h, xx // factor_w, b, i], name="blocked_upsample"
    )


def _blocked_rows(values: np.ndarray, block: int) -> np.ndarray:
    """Per-channel values (a table, weights, ...) with zero rows for the padded channels too
    (whatever they give is never read as a real channel)."""
    rows = -(-values.shape[0] // block) * block
    return np.concatenate([values, np.zeros((rows - values.shape[0], *values.shape[1:]), values.dtype)])


def _blocked_padded_te(x: te.Tensor, pad: te.Tensor, padding, *table: te.Tensor) -> te.Tensor:
    """Blocked (1, N/b, C/bi, H, W, b, bi) int8 padded by (top, left, bottom, right) with
    `pad[c * bi + i]` in channel c * bi + i; its values through a merged table, if given."""
    _, nb, cb, h, wd, b, bi = (int(d) for d in x.shape)
    top, left, bottom, right = (int(v) for v in padding)

    def value(g, n, c, y, xx, r, i):
        inside = tirx.all(y >= top, y < h + top, xx >= left, xx < wd + left)
        looked_up = _looked_up(x[g, n, c, y - top, xx - left, r, i], table, c * bi + i)
        return tirx.if_then_else(inside, looked_up, pad[c * bi + i])

    return te.compute((1, nb, cb, h + top + bottom, wd + left + right, b, bi), value, name="pad")


def _blocked_depthwise_conv2d_te(
    x: te.Tensor, weight: te.Tensor, *channel: te.Tensor, node: QNode, pad: te.Tensor, input_table=()
) -> te.Tensor:
    """A depthwise conv on blocked (1, N/b, C/bi, H, W, b, bi) int8 data, weights (C, KH, KW):
    `_host_conv2d_te` with channel c * bi + i reading its own input channel."""
    p = node.params
    _, nb, cb, _, _, b, bi = (int(d) for d in x.shape)
    _, kh, kw = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = p["strides"], p["dilation"]
    out_shape = (1, nb, cb, node.shape[2], node.shape[3], b, bi)

    xpad = _blocked_padded_te(x, pad, p["padding"], *input_table)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        out_shape,
        lambda g, n, c, y, xx, r, i: te.sum(
            xpad[g, n, c, y * sh + ry * dh, xx * sw + rx * dw, r, i].astype("int32")
            * weight[c * bi + i, ry, rx].astype("int32"),
            axis=[ry, rx],
        ),
        name="acc",
    )

    names = channel_param_names(p.get("activation"))

    def requantized(g, n, c, y, xx, r, i):
        values = {name: param[c * bi + i] for name, param in zip(names, channel)}
        value = requantize_expr(acc[g, n, c, y, xx, r, i], values, p["lo"], p["hi"], p.get("activation"))
        return _looked_up(value, channel[len(names) :], c * bi + i)

    return te.compute(out_shape, requantized, name="host_conv2d")


def _row_band_input_te(
    x: te.Tensor, pad: te.Tensor, *table: te.Tensor, in_shape, padding, core: ConvShape, hw, block: int
) -> te.Tensor:
    """A row-banded conv's packed kernel input (C, N/b, P/ib, padded rows, bands, b, ib): pixel
    i of band wb of padded row y of channel c, from `x`: (N, C, H, W), or the layout's
    (1, N/b, C/block, H, W, b, block) blocks, through its merged input table if it has one. The
    padding and widening hold pad[c]."""
    n, _, h, w = in_shape
    top, left = int(padding[0]), int(padding[1])
    pixels, lanes, batch = core.in_channels, hw.input_block, hw.batch
    blocked = len(x.shape) == 7

    def value(ch, row_block, lane_block, y, band, b, lane):
        row, pixel = row_block * batch + b, lane_block * lanes + lane
        col = band * pixels + pixel - left
        if blocked:
            inner = x[0, row // batch, ch // block, y - top, col, row % batch, ch % block]
        else:
            inner = x[row, ch, y - top, col]
        inside = tirx.all(row < n, pixel < pixels, y >= top, y < h + top, col >= 0, col < w)
        padded = tirx.if_then_else(tirx.all(row < n, pixel < pixels), pad[ch], tirx.const(0, "int8"))
        return tirx.if_then_else(inside, _looked_up(inner, table, ch), padded)

    return te.compute(kernel_buffer_shapes(core, hw)["data"], value, name="row_bands")


def _row_band_output_te(
    y: te.Tensor, *table: te.Tensor, out_shape, core: ConvShape, hw, block: int | None
) -> te.Tensor:
    """A row-banded conv's kernel output (C, N/b, P/bo, rows, bands, b, bo) as (N, C, H, W)
    `out_shape`, or with `block`, as the layout's (1, N/b, C/block, H, W, b, block) blocks;
    through its merged table, if it has one."""
    n, channels, out_h, out_w = out_shape
    pixels, lanes, batch = core.out_channels, hw.block_out, hw.batch

    def at(ch, row, yy, xx):
        pixel = xx % pixels
        value = y[ch, row // batch, pixel // lanes, yy, xx // pixels, row % batch, pixel % lanes]
        return _looked_up(value, table, ch)

    if block is None:
        return te.compute(out_shape, lambda row, ch, yy, xx: at(ch, row, yy, xx), name="row_band_output")

    def blocked(_, row_block, channel_block, yy, xx, b, lane):
        ch, row = channel_block * block + lane, row_block * batch + b
        inside = tirx.all(ch < channels, row < n)
        return tirx.if_then_else(inside, at(ch, row, yy, xx), tirx.const(0, "int8"))

    shape = (1, math.ceil(n / batch), math.ceil(channels / block), out_h, out_w, batch, block)
    return te.compute(shape, blocked, name="row_band_output")


def _padded_te(x: te.Tensor, pad: te.Tensor, padding, *table: te.Tensor) -> te.Tensor:
    """(N, C, H, W) int8 padded by (top, left, bottom, right) with `pad[c]` in channel c; its
    values through a merged table, if given."""
    n, c, h, w = (int(d) for d in x.shape)
    top, left, bottom, right = (int(v) for v in padding)

    def value(b, ch, y, xx):
        inside = tirx.all(y >= top, y < h + top, xx >= left, xx < w + left)
        return tirx.if_then_else(inside, _looked_up(x[b, ch, y - top, xx - left], table, ch), pad[ch])

    return te.compute((n, c, h + top + bottom, w + left + right), value, name="pad")


def _looked_up(value: tirx.PrimExpr, table: tuple[te.Tensor, ...], channel) -> tirx.PrimExpr:
    """A host conv's int8 result through its merged table (one row per channel or one for all),
    or as it is without one."""
    if not table:
        return value
    (table,) = table
    index = value.astype("int32") + 128
    return table[index] if len(table.shape) == 1 else table[channel, index]


def _add_te(inputs, p: dict) -> te.Tensor:
    a, b = inputs
    shape = _broadcast_shape(a, b)

    def element(*index):
        value = _channel_values(index, shape, p, ("multiplier_a", "multiplier_b", "shift"))
        total = _read(a, index) * value["multiplier_a"] + _read(b, index) * value["multiplier_b"]
        return rescale_expr(total, 1, value["shift"], p["lo"], p["hi"])

    return te.compute(shape, element, name="int_add")


def _broadcast_shape(*tensors: te.Tensor) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*(tuple(int(d) for d in t.shape) for t in tensors)))


def _read(tensor: te.Tensor, index) -> tirx.PrimExpr:
    """tensor's element at an output index under numpy broadcasting, as int64."""
    offset = len(index) - len(tensor.shape)
    return tensor(*(0 if int(size) == 1 else index[offset + d] for d, size in enumerate(tensor.shape))).astype("int64")


def _channel_values(index, shape: tuple[int, ...], p: dict, keys) -> dict:
    """The parameters at an output element: an integer, or a per-channel constant (a te.Tensor)
    read at the element's channel (axis 1; c * bi + i of the blocked layout)."""
    values = {key: tirx.const(int(p[key]), "int64") for key in keys if not isinstance(p[key], te.Tensor)}
    if len(values) < len(keys):  # per-channel values exist only for 4-D (and blocked 7-D) tensors
        channel = index[2] * shape[6] + index[6] if len(shape) == 7 else index[1]
        values.update({key: p[key][channel].astype("int64") for key in keys if key not in values})
    return values


def _concat_te(parts, p: dict) -> te.Tensor:
    from tvm import topi

    rescaled = [_rescaled_te(x, m, p["shift"]) for x, m in zip(parts, p["multipliers"])]
    return topi.concatenate(rescaled, axis=p["axis"])


def _rescaled_te(x: te.Tensor, multiplier: int, shift: int) -> te.Tensor:
    return te.compute(x.shape, lambda *i: rescale_expr(x(*i).astype("int64"), multiplier, shift, INT8_MIN, INT8_MAX))


def _multiply_te(inputs, p: dict) -> te.Tensor:
    a, b = inputs
    shape = _broadcast_shape(a, b)

    def element(*index):
        value = _channel_values(index, shape, p, ("multiplier", "shift"))
        return rescale_expr(_read(a, index) * _read(b, index), value["multiplier"], value["shift"], INT8_MIN, INT8_MAX)

    return te.compute(shape, element, name="int_multiply")


def _mean_te(inputs, p: dict) -> te.Tensor:
    from tvm import topi

    total = topi.sum(topi.cast(inputs[0], "int64"), axis=list(p["axes"]), keepdims=p["keepdims"])
    shape = tuple(int(d) for d in total.shape)

    def element(*index):
        value = _channel_values(index, shape, p, ("multiplier", "shift"))
        return rescale_expr(total(*index), value["multiplier"], value["shift"], INT8_MIN, INT8_MAX)

    return te.compute(shape, element, name="int_mean")


def _avg_pool_te(x: te.Tensor, multiplier: te.Tensor, p: dict) -> te.Tensor:
    """codesign.reference.avg_pool2d in TE, on NCHW or blocked (1, N/b, C/bi, H, W, b, bi) data."""
    from tvm import topi

    (kh, kw), (sh, sw), (top, left, bottom, right) = p["kernel"], p["strides"], p["padding"]
    blocked = len(x.shape) == 7
    row_axis = 3 if blocked else 2
    before, after = [0] * len(x.shape), [0] * len(x.shape)
    before[row_axis : row_axis + 2], after[row_axis : row_axis + 2] = (top, left), (bottom, right)
    padded = topi.nn.pad(topi.cast(x, "int64"), before, after)
    shape = [int(d) for d in x.shape]
    shape[row_axis : row_axis + 2] = (int(d) for d in multiplier.shape[1:])
    r, c = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="c")

    def window_sum(*index):
        tap = list(index)
        tap[row_axis : row_axis + 2] = (index[row_axis] * sh + r, index[row_axis + 1] * sw + c)
        return te.sum(padded[tuple(tap)], axis=[r, c])

    total = te.compute(shape, window_sum)

    def element(*index):
        channel = (index[2] * shape[6] + index[6] if blocked else index[1]) if int(multiplier.shape[0]) > 1 else 0
        m = multiplier[channel, index[row_axis], index[row_axis + 1]]
        return rescale_expr(total(*index), m, p["shift"], INT8_MIN, INT8_MAX)

    return te.compute(shape, element, name="int_avg_pool")


RESCALING_TE = {"add": _add_te, "multiply": _multiply_te, "mean": _mean_te}
# Each op's parameters that may be per channel.
RESCALING_OPS = {
    "add": ("multiplier_a", "multiplier_b", "shift"),
    "multiply": ("multiplier", "shift"),
    "mean": ("multiplier", "shift"),
}


def blocked_split(x: relax.Expr, attrs, block: int) -> relax.Expr:
    """relax.split of NCHW channels (`attrs`) on the blocked layout: the same parts, along its
    axis 2 of channel blocks (packed_layout.splits_whole_blocks)."""
    points = split_points(attrs)
    sections = points if isinstance(points, int) else [point // block for point in points]
    return relax.op.split(x, sections, axis=2)


def _unpacked_te(weight: te.Tensor, shape: tuple[int, ...]) -> te.Tensor:
    """A weight constant as int8 values of `shape`: an int4 image (uint8) unpacked, int8 as is."""
    return unpack_int4_te(weight, shape) if weight.dtype == "uint8" else weight


def _zero_padded_channels_te(x: te.Tensor, channels: int) -> te.Tensor:
    """(N, C, H, W) -> (N, channels, H, W), the added channels zero."""
    n, c, h, w = (int(d) for d in x.shape)
    return te.compute(
        (n, channels, h, w),
        lambda b, ch, y, xx: tirx.if_then_else(ch < c, x[b, tirx.min(ch, c - 1), y, xx], tirx.const(0, x.dtype)),
        name="zero_padded_channels",
    )


def _im2col_te(x: te.Tensor, p: dict, out_shape: tuple[int, ...]) -> te.Tensor:
    """A narrow-input conv's input unfolded (schedules.narrow_inputs; codesign.reference.im2col)."""
    return te.compute(out_shape, _im2col_tap(x, p), name="im2col")


def _blocked_im2col_te(x: te.Tensor, p: dict, out_shape: tuple[int, ...], hw) -> te.Tensor:
    """The unfolded input written in the blocks its conv reads (what pack_activation_te would
    make of _im2col_te's result, without the NCHW pass: packed_layout.writes_blocks)."""
    n, c, h, w = out_shape
    block, tap = hw.input_block, _im2col_tap(x, p)

    def blocked(_g, no, co, y, xx, b, i):
        row, chan = no * hw.batch + b, co * block + i
        return tirx.if_then_else(tirx.all(row < n, chan < c), tap(row, chan, y, xx), tirx.const(0, "int8"))

    shape = (1, -(-n // hw.batch), -(-c // block), h, w, hw.batch, block)
    return te.compute(shape, blocked, name="im2col_blocked")


def _im2col_tap(x: te.Tensor, p: dict):
    """(row, unfolded channel, y, x) -> the int8 (a wide layer's int16) value im2col puts there."""
    (kh, kw), (sh, sw), (dh, dw) = p["kernel"], p["strides"], p["dilation"]
    top, left = p["padding"][:2]
    h, w = (int(d) for d in x.shape[2:])

    def tap(b, ch, y, xx):
        c, i, j = ch // (kh * kw), ch % (kh * kw) // kw, ch % kw
        row, col = y * sh + i * dh - top, xx * sw + j * dw - left
        inside = tirx.all(row >= 0, row < h, col >= 0, col < w)
        safe_row, safe_col = tirx.max(tirx.min(row, h - 1), 0), tirx.max(tirx.min(col, w - 1), 0)
        return tirx.if_then_else(inside, x[b, c, safe_row, safe_col], tirx.const(0, x.dtype))

    return tap


def _host_conv2d_te(x: te.Tensor, weight: te.Tensor, *channel: te.Tensor, node: QNode, pad: te.Tensor, input_table=()):
    """Grouped / depthwise / dilated conv in integers on the host; its input through a merged
    table (`input_table`: none or one) as it pads it."""
    p = node.params
    o, cg, kh, kw = (int(d) for d in weight.shape)
    (sh, sw), (dh, dw) = p["strides"], p["dilation"]
    og = o // p["groups"]
    xpad = _padded_te(x, pad, p["padding"], *input_table)
    rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        node.shape,
        lambda b, oc, y, xx: te.sum(
            xpad[b, (oc // og) * cg + rc, y * sh + ry * dh, xx * sw + rx * dw].astype("int32")
            * weight[oc, rc, ry, rx].astype("int32"),
            axis=[rc, ry, rx],
        ),
        name="acc",
    )
    names = channel_param_names(p.get("activation"))

    def requantized(b, oc, y, xx):
        values = {name: param[oc] for name, param in zip(names, channel)}
        value = requantize_expr(acc[b, oc, y, xx], values, p["lo"], p["hi"], p.get("activation"))
        return _looked_up(value, channel[len(names) :], oc)

    return te.compute(node.shape, requantized, name="host_conv2d")
