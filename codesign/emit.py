"""Re-emitting graph nodes as Relax, shared by the float (calibration) and integer builders."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from codesign.graph import Node


def module_without_main(mod: tvm.IRModule) -> tvm.IRModule:
    """The imported module's helper functions (PrimFuncs that host ops call), without main."""
    return tvm.IRModule({gv: func for gv, func in mod.functions.items() if gv.name_hint != "main"})


def emit_host_call(bb: relax.BlockBuilder, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """The node's original Relax op applied to new tensor arguments."""
    if node.op == "TupleGetItem":
        return bb.emit(relax.TupleGetItem(args[0], node.call.index))
    call = node.call
    new_args = [_fill_slot(slot, args) for slot in node.arg_slots]
    return bb.emit(relax.Call(call.op, new_args, call.attrs, call.ty_args))


def _fill_slot(slot, args):
    kind, value = slot
    if kind == "node":
        return args[value]
    if kind == "tuple":
        return relax.Tuple([_fill_slot(s, args) for s in value])
    return value


def emit_float_clamp(bb: relax.BlockBuilder, x: relax.Expr, bounds: tuple[float, float]) -> relax.Expr:
    low, high = bounds
    if np.isfinite(low):
        x = bb.emit(relax.op.maximum(x, relax.const(low, "float32")))
    if np.isfinite(high):
        x = bb.emit(relax.op.minimum(x, relax.const(high, "float32")))
    return x


def emit_float_gemm(bb: relax.BlockBuilder, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """A GemmLayer in float: the op, folded scale and bias, then the folded clamp."""
    layer = node.layer
    if layer.kind == "conv2d":
        y = bb.emit(
            relax.op.nn.conv2d(
                args[0],
                relax.const(layer.weight),
                strides=layer.strides,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=layer.groups,
            )
        )
        bias_shape = (1, -1, 1, 1)
    else:
        operand = relax.const(layer.weight) if layer.weight is not None else args[1]
        y = bb.emit(relax.op.matmul(args[0], operand))
        bias_shape = (-1,)
    if layer.out_scale != 1.0:
        y = bb.emit(relax.op.multiply(y, relax.const(layer.out_scale, "float32")))
    if layer.bias is not None:
        y = bb.emit(relax.op.add(y, relax.const(layer.bias.reshape(bias_shape))))
    return emit_float_clamp(bb, y, layer.clamp)


def emit_float_node(bb: relax.BlockBuilder, node: Node, args: list[relax.Expr]) -> relax.Expr:
    """Any graph node in float: GEMM layers, clamps and host ops alike."""
    if node.op == "gemm":
        return emit_float_gemm(bb, node, args)
    if node.op == "clamp":
        return emit_float_clamp(bb, args[0], node.bounds)
    return emit_host_call(bb, node, args)
