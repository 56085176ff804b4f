"""Packed conv2d on a VTA-style GEMM core: compute, tensorize schedule, scratchpad footprint.

Layouts (VTA's): activations NCHW{batch}n{block_in}c with a leading group axis
(G, N/b, C/bi, H, W, b, bi); weights OIHW{block_out}o{block_in}i (G, O/bo, I/bi, KH, KW, bo, bi).
An int4 layer on a precision-scalable core (2 x block_in lanes) reads activations blocked as
every other layer's, and its input load gathers two blocks per element (`input_gather`).
The kernel pads on load into `local.inp_buffer`, stages weights in `local.wgt_buffer`,
accumulates in `local.acc_buffer` through the GEMM intrinsic, and requantizes each output
tile in the accumulator before storing it:

    out = clamp(((acc + bias) * multiplier + round) >> shift, clamp_lo, clamp_hi)

with round = (1 << shift) >> 1, all in 64-bit integers (bias, multiplier, shift per output
channel). A fused activation (HardSwish, LeakyReLU: codesign.plan.AluActivation) replaces
acc + bias by its fixed-point result before the rescaling. `codesign.reference` implements the
same formulas in numpy.

int4 weights reach the kernel as the module stores them, two per byte (`pack_int4_numpy`: the
blocked weight in C order, element 2k in the low nibble of byte k and element 2k + 1 in its high
nibble, each in two's complement; an odd count leaves the last high nibble 0). The kernel's
weight load sign-extends each nibble into the int8 lanes of `local.wgt_buffer`, as the
accelerator's load unit widens int4 for the GEMM, so the GEMM itself is the int8 one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from codesign.schedules.gemm_intrin import ACC_SCOPE, GEMM_MARKER, INP_SCOPE, WGT_SCOPE, register_gemm_intrin
from codesign.schedules.layer import ConvShape
from codesign.schedules.tiling import TileFootprint, Tiling, overflows

SCRATCHPAD_SCOPES = (INP_SCOPE, WGT_SCOPE, ACC_SCOPE)
INT4_BITS, INT4_MIN, INT4_MAX = 4, -8, 7
# The unpacked weights are named as the int8 weight argument is, so the weight load the
# schedule caches is "weight_local.wgt_buffer" either way (schedules.schedule_walk).
UNPACK_INT4 = "weight"


def kernel_buffer_shapes(shape: ConvShape, hw) -> dict[str, tuple]:
    """Shapes of the kernel's arguments in packed layout (the data in `hw.input_block`-wide
    channel blocks, which the input load gathers into the core's block_in lanes)."""
    pk = shape.blocks(hw)
    g, b, bi, bo = shape.groups, hw.batch, hw.block_in, hw.block_out
    data_blocks = -(-shape.in_channels // hw.input_block)
    return {
        "data": (g, pk.n_blocks, data_blocks, shape.in_h, shape.in_w, b, hw.input_block),
        "weight": (g, pk.co_blocks, pk.ci_blocks, shape.kernel_h, shape.kernel_w, bo, bi),
        "channel_params": (g, pk.co_blocks, bo),
        "out": (g, pk.n_blocks, pk.co_blocks, shape.out_h, shape.out_w, b, bo),
    }


def requantize_expr(acc, channel: dict, clamp_lo: int, clamp_hi: int, activation=None, dtype: str = "int8"):
    """One accumulator requantized to int8 (a wide layer's int16: `dtype`) by the formula above
    with its output channel's parameters (`channel`: bias, multiplier, shift and the
    activation's), after the activation the ALU computes on acc + bias, if any
    (codesign.plan.AluActivation)."""
    value = acc.astype("int64") + channel["bias"].astype("int64")
    if activation is not None:
        value = activation_expr(value, channel, activation)
    return rescale_expr(value, channel["multiplier"], channel["shift"], clamp_lo, clamp_hi, dtype)


def activation_expr(value, channel: dict, activation):
    """codesign.plan.AluActivation on an int64 accumulator with its bias."""
    offset = channel["offset"].astype("int64")
    if activation.kind == "hardswish":
        gate_input = value + channel["gate_bias"].astype("int64")
        gate = rescale_expr(
            gate_input, channel["gate_multiplier"], channel["gate_shift"], 0, activation.one, dtype="int64"
        )
        return value * gate + offset
    shifted = tirx.shift_left(value, tirx.const(activation.fraction_bits, "int64"))
    return tirx.max(shifted, value * tirx.const(activation.slope, "int64")) + offset


def rescale_expr(value, multiplier, shift, clamp_lo: int, clamp_hi: int, dtype: str = "int8"):
    """An int64 value -> int8: clamp((value * multiplier + round) >> shift), round = (1 << shift) >> 1.
    The one TIR of codesign's requantization (host integer ops use it too); `multiplier` and
    `shift` are expressions or Python integers. An activation's gate keeps its int64 (`dtype`)."""
    shift64, multiplier64 = _int64(shift), _int64(multiplier)
    rounding = tirx.shift_right(tirx.shift_left(tirx.const(1, "int64"), shift64), tirx.const(1, "int64"))
    scaled = tirx.shift_right(value * multiplier64 + rounding, shift64)
    clamped = tirx.max(tirx.min(scaled, tirx.const(clamp_hi, "int64")), tirx.const(clamp_lo, "int64"))
    return clamped.astype(dtype)


def _int64(value):
    return tirx.const(int(value), "int64") if isinstance(value, (int, np.integer)) else value.astype("int64")


def channel_param_names(activation=None) -> tuple[str, ...]:
    """The kernel's per-output-channel arguments, in order."""
    return ("bias", "multiplier", "shift", *(activation.channel_params if activation else ()))


def packed_conv2d_func(
    shape: ConvShape, hw, clamp_lo: int, clamp_hi: int, weight_bits: int | None = None, activation=None
) -> tirx.PrimFunc:
    """The unscheduled kernel: (data, weight, bias, multiplier, shift, activation's per-channel
    parameters) -> int8 output; with `weight_bits` = 4 the weight argument is the packed int4
    image (see the module docstring). A wide layer's core (`CoreGeometry.for_layer`) reads and
    writes int16 activations."""
    shapes = kernel_buffer_shapes(shape, hw)
    input_dtype, output_dtype = f"int{hw.input_bits}", f"int{hw.output_bits}"
    data = te.placeholder(shapes["data"], input_dtype, name="data")
    if weight_bits == INT4_BITS:
        image_bytes = hw.weight_bytes(math.prod(shapes["weight"]))  # the size the module's constant must have
        weight_arg = te.placeholder((image_bytes,), "uint8", name="weight_int4")
        weight = unpack_int4_te(weight_arg, shapes["weight"])
    else:
        weight_arg = weight = te.placeholder(shapes["weight"], "int8", name="weight")
    names = channel_param_names(activation)
    channel = {name: te.placeholder(shapes["channel_params"], "int32", name=name) for name in names}
    pt, pl = shape.pad_top, shape.pad_left
    ci_blocks = shape.blocks(hw).ci_blocks
    padded_shape = (
        *shapes["data"][:2],
        ci_blocks,
        shape.in_h + pt + shape.pad_bottom,
        shape.in_w + pl + shape.pad_right,
        hw.batch,
        hw.block_in,
    )
    gather, block, data_blocks = hw.input_gather, hw.input_block, shapes["data"][2]

    def padded(g, n, c, y, x, b, i):
        inside = tirx.all(y >= pt, y < shape.in_h + pt, x >= pl, x < shape.in_w + pl)
        if gather == 1:
            return tirx.if_then_else(inside, data[g, n, c, y - pt, x - pl, b, i], tirx.const(0, input_dtype))
        source = c * gather + i // block  # the layout's block holding lane i (past the last: zeros)
        inside = tirx.all(inside, source < data_blocks)
        return tirx.if_then_else(inside, data[g, n, source, y - pt, x - pl, b, i % block], tirx.const(0, input_dtype))

    data_pad = te.compute(padded_shape, padded, name="data_pad")
    rc = te.reduce_axis((0, ci_blocks), name="ci_o")
    rkh = te.reduce_axis((0, shape.kernel_h), name="kh")
    rkw = te.reduce_axis((0, shape.kernel_w), name="kw")
    ri = te.reduce_axis((0, hw.block_in), name="ci_i")
    sh, sw, dh, dw = shape.stride_h, shape.stride_w, shape.dilation_h, shape.dilation_w
    conv = te.compute(
        shapes["out"],
        lambda g, n, co, y, x, b, o: te.sum(
            data_pad[g, n, rc, y * sh + rkh * dh, x * sw + rkw * dw, b, ri].astype("int32")
            * weight[g, co, rc, rkh, rkw, o, ri].astype("int32"),
            axis=[rc, rkh, rkw, ri],
        ),
        name="conv",
    )

    def requantized(g, n, co, y, x, b, o):
        values = {name: param[g, co, o] for name, param in channel.items()}
        return requantize_expr(conv[g, n, co, y, x, b, o], values, clamp_lo, clamp_hi, activation, output_dtype)

    out = te.compute(shapes["out"], requantized, name="requant")
    return te.create_prim_func([data, weight_arg, *channel.values(), out])


def schedule_packed_conv2d(func: tirx.PrimFunc, tiling: Tiling, hw, host_threads: int | None = None) -> tirx.PrimFunc:
    """Tile, stage through the scratchpads, requantize in the accumulator, tensorize.

    Loops: output tiles (g, n, co, y, x), then input-channel tiles with the input and weight
    loads, then the tile's batch and output-channel blocks, rows, input-channel blocks, kernel
    window and columns, each step one GEMM micro-op. On the host, output tiles are independent and so are
    the output-channel blocks inside a tile: whichever gives every thread work runs in parallel.
    """
    intrin = register_gemm_intrin(hw.batch, hw.block_in, hw.block_out, f"int{hw.input_bits}")
    sch = s_tir.Schedule(func)
    conv = sch.get_sblock("conv")
    g, n, co, y, x, b, o, rc, kh, kw, ri = sch.get_loops(conv)
    n_o, n_i = sch.split(n, [None, tiling.n_tile])
    co_o, co_i = sch.split(co, [None, tiling.co_tile])
    y_o, y_i = sch.split(y, [None, tiling.h_tile])
    x_o, x_i = sch.split(x, [None, tiling.w_tile])
    rc_o, rc_i = sch.split(rc, [None, tiling.ci_tile])
    # VTA's order inside a tile: the first two non-unit loops become the micro-op kernel's
    # affine loops, the rest its micro-op list.
    sch.reorder(g, n_o, co_o, y_o, x_o, rc_o, n_i, co_i, y_i, rc_i, kh, kw, x_i, b, o, ri)
    sch.set_scope(conv, 0, ACC_SCOPE)
    sch.reverse_compute_at(sch.get_sblock("requant"), x_o)
    data_pad = sch.get_sblock("data_pad")
    sch.compute_at(data_pad, rc_o)
    sch.set_scope(data_pad, 0, INP_SCOPE)
    unpack = [block for block in sch.get_producers(conv) if sch.get(block).name_hint == UNPACK_INT4]
    weight_load = sch.cache_read(conv, 1, WGT_SCOPE)
    for block in unpack:  # int4 weights: the load itself sign-extends the nibbles
        sch.compute_inline(block)
    sch.compute_at(weight_load, rc_o)
    threads = host_threads or os.cpu_count() or 1
    if threads > 1 and tiling.co_tile >= threads:
        sch.parallel(co_i)
    elif threads > 1:
        sch.parallel(sch.fuse(g, n_o, co_o, y_o, x_o))
    sch.decompose_reduction(conv, rc_o)
    sch.tensorize(b if hw.batch > 1 else o, intrin)
    return sch.mod["main"]


@functools.cache
def _compaction():
    return tvm.transform.Sequential(
        [
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.CompactBufferAllocation(),
        ]
    )


def measured_footprint(scheduled: tirx.PrimFunc, hw) -> dict[str, int]:
    """Bytes each scratchpad scope occupies in the scheduled TIR, at the hardware's bit widths."""
    compacted = _compaction()(tvm.IRModule({"main": scheduled}))["main"]
    bits = {INP_SCOPE: hw.input_bits, WGT_SCOPE: hw.weight_bits, ACC_SCOPE: hw.acc_bits}
    used = dict.fromkeys(SCRATCHPAD_SCOPES, 0)

    def on_block(block):
        for buf in block.alloc_buffers:
            scope = buf.scope()
            if scope in used:
                used[scope] += int(np.prod([int(d) for d in buf.shape])) * bits[scope] // 8

    tvm_ffi.structural_walk(compacted.body, [(s_tir.SBlock, on_block)], order="post")
    return used


def check_footprint(used: dict[str, int], footprint: TileFootprint, hw, virtual_threads: int = 1) -> list[str]:
    """Scratchpads the measured bytes (times the virtual threads) do not fit, one phrase each."""
    measured = dataclasses.replace(
        footprint, inp_bytes=used[INP_SCOPE], wgt_bytes=used[WGT_SCOPE], acc_bytes=used[ACC_SCOPE]
    )
    return overflows(measured, hw, virtual_threads)


# ---- host-side layout transforms (run on the CPU, like VTA's packing) -----------------------


def pack_activation_te(x: te.Tensor, hw) -> te.Tensor:
    """(G, N, C, H, W) int8 (a wide layer's int16) -> (G, N/b, C/bi, H, W, b, bi),
    bi = hw.input_block, zero-filling N and C up to blocks."""
    g, n, c, h, w = (int(d) for d in x.shape)
    block = hw.input_block
    nb, cb = -(-n // hw.batch), -(-c // block)

    def packed(gi, no, co, y, xx, b, i):
        row, chan = no * hw.batch + b, co * block + i
        return tirx.if_then_else(tirx.all(row < n, chan < c), x[gi, row, chan, y, xx], tirx.const(0, x.dtype))

    return te.compute((g, nb, cb, h, w, hw.batch, block), packed, name="pack_activation")


def pack_matmul_weight_te(wt: te.Tensor, hw) -> te.Tensor:
    """A run-time (G, K, N) int8 matmul operand -> (G, N/bo, K/bi, 1, 1, bo, bi)."""
    g, k, n = (int(d) for d in wt.shape)
    nb, kb = -(-n // hw.block_out), -(-k // hw.block_in)

    def packed(gi, no, ko, _y, _x, o, i):
        col, red = no * hw.block_out + o, ko * hw.block_in + i
        return tirx.if_then_else(tirx.all(col < n, red < k), wt[gi, red, col], tirx.const(0, "int8"))

    return te.compute((g, nb, kb, 1, 1, hw.block_out, hw.block_in), packed, name="pack_weight")


def unpack_output_te(y: te.Tensor, batch: int, channels: int) -> te.Tensor:
    """(G, N/b, C/bo, H, W, b, bo) -> (G, N, C, H, W), dropping the block padding."""
    g, _, _, h, w, b, bo = (int(d) for d in y.shape)
    return te.compute(
        (g, batch, channels, h, w),
        lambda gi, n, c, yy, xx: y[gi, n // b, c // bo, yy, xx, n % b, c % bo],
        name="unpack_output",
    )


def pack_weight_numpy(weight: np.ndarray, hw) -> np.ndarray:
    """(G, O, I, KH, KW) int8 -> (G, O/bo, I/bi, KH, KW, bo, bi), zero-filling O and I."""
    g, o, i, kh, kw = weight.shape
    ob, ib = -(-o // hw.block_out), -(-i // hw.block_in)
    full = np.zeros((g, ob * hw.block_out, ib * hw.block_in, kh, kw), dtype=np.int8)
    full[:, :o, :i] = weight
    return np.ascontiguousarray(
        full.reshape(g, ob, hw.block_out, ib, hw.block_in, kh, kw).transpose(0, 1, 3, 5, 6, 2, 4)
    )


def weight_image(blocked: np.ndarray, weight_bits: int | None) -> np.ndarray:
    """A layer's blocked int8 weights as the module stores them: int4 ones two per byte."""
    return pack_int4_numpy(blocked) if weight_bits == INT4_BITS else blocked


def pack_int4_numpy(values: np.ndarray) -> np.ndarray:
    """int8 values in -8..7 (any shape, read in C order) -> uint8, two per byte: element 2k in
    the low nibble of byte k, 2k + 1 in the high one (two's complement), a last odd one's high
    nibble 0."""
    if values.size and (values.min() < INT4_MIN or values.max() > INT4_MAX):
        raise ValueError(f"int4 weights must lie in {INT4_MIN}..{INT4_MAX}, got {values.min()}..{values.max()}")
    nibbles = np.zeros(values.size + values.size % 2, dtype=np.uint8)
    nibbles[: values.size] = values.reshape(-1).astype(np.uint8) & 0xF
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack_int4_te(packed: te.Tensor, shape: tuple[int, ...]) -> te.Tensor:
    """A packed int4 image (`pack_int4_numpy`) -> int8 values of `shape`, each nibble sign-extended."""
    strides = [math.prod(shape[axis + 1 :]) for axis in range(len(shape))]

    def element(*indices):
        index = sum(i * stride for i, stride in zip(indices, strides))
        byte = packed[tirx.floordiv(index, 2)].astype("int32")
        nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(index, 2) * 4), 0xF)
        return (tirx.bitwise_xor(nibble, 8) - 8).astype("int8")  # two's complement: 8..15 -> -8..-1

    return te.compute(shape, element, name=UNPACK_INT4)


def pack_channel_params_numpy(values: np.ndarray, hw, fill: int = 0) -> np.ndarray:
    """(G, O) int32 per-channel values -> (G, O/bo, bo)."""
    g, o = values.shape
    ob = -(-o // hw.block_out)
    full = np.full((g, ob * hw.block_out), fill, dtype=np.int32)
    full[:, :o] = values
    return full.reshape(g, ob, hw.block_out)


def count_gemm_uops(scheduled: tirx.PrimFunc) -> int:
    """GEMM micro-ops the scheduled kernel executes: marked intrinsic bodies times loop trips."""
    extents: list[int] = []
    total = 0

    def on_for(loop, visitor):
        extents.append(int(loop.extent))
        visitor.default_visit(loop)
        extents.pop()

    def on_attr(attr, visitor):
        nonlocal total
        if attr.attr_key == GEMM_MARKER:
            total += int(np.prod(extents, dtype=np.int64))
        visitor.default_visit(attr)

    tvm_ffi.structural_visit(scheduled.body, [(tirx.For, on_for), (tirx.AttrStmt, on_attr)])
    return total
