"""CPU schedules for the float conv2d and matmul kernels the host runs when calibrating.

Relax's LegalizeOps turns conv2d and matmul into naive loop nests, which LLVM compiles to scalar
code: ResNet-18 then takes about 4 s a sample. Register-blocked, vectorised and parallel, the
same kernels ran 6-20x faster (ResNet-18's convs, a dilated conv, matmuls), with the same
arithmetic per output: each output sums its products in the same order, so results equal the
naive kernels'.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, s_tir, tirx

VECTOR_LANES = 16  # the widest vector along the output's last axis
REGISTER_ROWS = 4  # output rows (channels, or matrix rows) computed together
MIN_SCHEDULED_MACS = 1 << 17  # below this, starting the thread pool costs more than it saves


def schedule_float_module(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` legalized, its conv2d and matmul kernels scheduled for the CPU; other kernels are
    left to the default pipeline."""
    mod = relax.transform.LegalizeOps()(mod)
    for global_var, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            scheduled = schedule_reduction_kernel(func)
            if scheduled is not None:
                mod[global_var] = scheduled
    return mod


def schedule_reduction_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The scheduled kernel, or None when `func` is not a single conv2d or matmul reduction, or
    is too small to gain."""
    sch = s_tir.Schedule(func)
    blocks = [block for block in sch.get_child_blocks(sch.get_sblock("root")) if _is_reduction(sch, block)]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    if math.prod(int(sch.get(loop).extent) for loop in sch.get_loops(block)) < MIN_SCHEDULED_MACS:
        return None
    kinds = "".join(_iter_kind(var) for var in sch.get(block).iter_vars)
    if kinds == "SSSSRRR":  # conv2d NCHW: n, channel, y, x, then the reduction
        rows, cols, reduction = 1, 3, 4
    elif kinds.endswith("SSR") and set(kinds[:-1]) == {"S"}:  # [batch...], i, j, k
        rows, cols, reduction = len(kinds) - 3, len(kinds) - 2, len(kinds) - 1
    else:
        return None
    try:
        _block_registers(sch, block, rows, cols, reduction)
    except (s_tir.ScheduleError, tvm.error.InternalError):
        return None  # a shape the schedule cannot take (basic-pitch's 10,961 outputs): the naive kernel works
    return sch.mod["main"]


def _block_registers(sch: s_tir.Schedule, block, rows: int, cols: int, reduction: int) -> None:
    """Outputs in blocks of REGISTER_ROWS x lanes held in registers, the lanes vectorised, the
    outer loops parallel."""
    loops = sch.get_loops(block)
    extents = [int(sch.get(loop).extent) for loop in loops]
    row_outer, row_inner = sch.split(loops[rows], [None, _largest_divisor(extents[rows], REGISTER_ROWS)])
    col_outer, col_inner = sch.split(loops[cols], [None, _largest_divisor(extents[cols], VECTOR_LANES)])
    before_rows = list(loops[:rows])
    between = [loop for i, loop in enumerate(loops[rows + 1 : reduction]) if rows + 1 + i != cols]
    sch.reorder(*before_rows, row_outer, *between, col_outer, *loops[reduction:], row_inner, col_inner)
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, col_outer)
    sch.parallel(sch.fuse(*before_rows, row_outer) if before_rows else row_outer)
    sch.vectorize(col_inner)
    sch.unroll(row_inner)
    init = sch.decompose_reduction(block, loops[reduction])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(accumulator)[-1])


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(_iter_kind(var) == "R" for var in sch.get(block).iter_vars)


def _iter_kind(var) -> str:
    return {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}.get(int(var.iter_type), "?")


def _largest_divisor(extent: int, cap: int) -> int:
    return max(d for d in range(1, min(extent, cap) + 1) if extent % d == 0)
