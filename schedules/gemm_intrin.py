"""The GEMM tensor intrinsic of a VTA-style core, built from the core shape.

One intrinsic call is one GEMM micro-op: acc[b, o] += sum_i inp[b, i] * wgt[o, i] over a
batch x block_in x block_out block, with operands in the input/weight/accumulator scratchpads.
On the host the implementation is integer loops vectorized over the outputs, so results are exact.
"""

from __future__ import annotations

import contextlib
import inspect
import sys

from tvm import s_tir
from tvm.script import tirx as T

INP_SCOPE = "local.inp_buffer"
WGT_SCOPE = "local.wgt_buffer"
ACC_SCOPE = "local.acc_buffer"
# Marker left in each micro-op body; survives lowering so tools can count GEMM micro-ops.
GEMM_MARKER = "codesign_gemm_uop"


def gemm_intrin_name(batch: int, block_in: int, block_out: int, input_dtype: str = "int8") -> str:
    wide = "" if input_dtype == "int8" else f"_{input_dtype}"
    return f"codesign_gemm_{batch}x{block_in}x{block_out}{wide}"


def register_gemm_intrin(batch: int, block_in: int, block_out: int, input_dtype: str = "int8") -> str:
    """Register (once) and return the intrinsic's name.

    With batch 1 the description has no batch loop (a unit loop does not tensorize), so the
    schedule tensorizes at the block_out loop; otherwise at the batch loop. A wide layer's
    micro-op reads int16 inputs (`CoreGeometry.for_layer`: the core takes them in two passes
    over their bytes; the sum is the same integers).
    """
    name = gemm_intrin_name(batch, block_in, block_out, input_dtype)
    if s_tir.TensorIntrin.get(name, allow_missing=True) is not None:  # a miss raising costs 0.35 s (tvm_import)
        return name
    with _stack_without_source():
        if batch == 1:
            desc, impl = _unbatched(block_in, block_out, input_dtype)
        else:
            desc, impl = _batched(batch, block_in, block_out, input_dtype)
    s_tir.TensorIntrin.register(name, desc, impl)
    return name


@contextlib.contextmanager
def _stack_without_source():
    """`inspect.stack()` as frames only while TVMScript parses the intrinsic: its parser reads the
    frames' local names, but `inspect.stack()` also finds every frame's module and source line,
    about 0.4 s a function under a CLI's call stack (a second of every compile and simulate)."""
    original = inspect.stack

    def frames(context: int = 1) -> list[inspect.FrameInfo]:
        frame, infos = sys._getframe(1), []
        while frame is not None:
            code = frame.f_code
            infos.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
            frame = frame.f_back
        return infos

    inspect.stack = frames
    try:
        yield
    finally:
        inspect.stack = original


def _unbatched(bi: int, bo: int, input_dtype: str = "int8"):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle):
        A = T.match_buffer(a, (bi,), input_dtype, offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (bo,), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:bo], A[0:bi], W[0:bo, 0:bi])
            T.writes(C[0:bo])
            for o, i in T.grid(bo, bi):
                with T.sblock("update"):
                    vo, vi = T.axis.remap("SR", [o, i])
                    C[vo] = C[vo] + T.Cast("int32", A[vi]) * T.Cast("int32", W[vo, vi])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle):
        A = T.match_buffer(a, (bi,), input_dtype, offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (bo,), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:bo], A[0:bi], W[0:bo, 0:bi])
            T.writes(C[0:bo])
            T.attr(0, GEMM_MARKER, 1)
            # One broadcast input lane times a weight column per step: vectorizes over outputs.
            for i in T.unroll(bi):
                for o in T.vectorized(bo):
                    C[o] = C[o] + T.Cast("int32", A[i]) * T.Cast("int32", W[o, i])

    return desc, impl


def _batched(bb: int, bi: int, bo: int, input_dtype: str = "int8"):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, w: T.handle, c: T.handle):
        A = T.match_buffer(a, (bb, bi), input_dtype, offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (bb, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:bb, 0:bo], A[0:bb, 0:bi], W[0:bo, 0:bi])
            T.writes(C[0:bb, 0:bo])
            for b, o, i in T.grid(bb, bo, bi):
                with T.sblock("update"):
                    vb, vo, vi = T.axis.remap("SSR", [b, o, i])
                    C[vb, vo] = C[vb, vo] + T.Cast("int32", A[vb, vi]) * T.Cast("int32", W[vo, vi])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, w: T.handle, c: T.handle):
        A = T.match_buffer(a, (bb, bi), input_dtype, offset_factor=1, scope=INP_SCOPE)
        W = T.match_buffer(w, (bo, bi), "int8", offset_factor=1, scope=WGT_SCOPE)
        C = T.match_buffer(c, (bb, bo), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:bb, 0:bo], A[0:bb, 0:bi], W[0:bo, 0:bi])
            T.writes(C[0:bb, 0:bo])
            T.attr(0, GEMM_MARKER, 1)
            for b in T.serial(bb):
                for i in T.unroll(bi):
                    for o in T.vectorized(bo):
                        C[b, o] = C[b, o] + T.Cast("int32", A[b, i]) * T.Cast("int32", W[o, i])

    return desc, impl
