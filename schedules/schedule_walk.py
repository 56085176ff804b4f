"""Read a scheduled packed-conv2d kernel (schedules.packed_conv2d) into ScheduleFacts.

Everything the instruction stream needs about the schedule, read from the TIR: how many output
tiles and reduction steps the loops run, the windows the input and weight loads fill (from the
load blocks' iteration domains, padding included; a dilated conv's input window spans its
dilated kernel), and the loop nests of the micro-op kernels. It is an independent cross-check
of `schedules.tile_geometry`, which derives the same facts from the tiling (and the simulator
builds the instruction stream from): lowering checks every kernel it schedules against it.
"""

from __future__ import annotations

import dataclasses
import math

import tvm_ffi
from tvm import s_tir, sym, tirx

from codesign.schedules.packed_conv2d import count_gemm_uops
from codesign.schedules.tile_geometry import TileGeometry, non_unit

INPUT_LOAD, WEIGHT_LOAD, RESET, GEMM, REQUANT = (
    "data_pad",
    "weight_local.wgt_buffer",
    "conv_init",
    "conv_update_o",
    "requant",
)


@dataclasses.dataclass(frozen=True)
class ScheduleFacts(TileGeometry):
    """The tile geometry as the TIR runs it, and the GEMM micro-ops the whole kernel executes."""

    gemm_uops: int


@dataclasses.dataclass
class _BlockSite:
    loops: list  # enclosing tirx.For, outer to inner
    realize: object


def _block_sites(func: tirx.PrimFunc) -> dict[str, _BlockSite]:
    sites: dict[str, _BlockSite] = {}
    stack: list = []

    def on_for(loop, visitor):
        stack.append(loop)
        visitor.default_visit(loop)
        stack.pop()

    def on_realize(realize, visitor):
        sites.setdefault(realize.block.name_hint, _BlockSite(list(stack), realize))
        visitor.default_visit(realize)

    tvm_ffi.structural_visit(func.body, [(tirx.For, on_for), (s_tir.SBlockRealize, on_realize)])
    missing = {INPUT_LOAD, WEIGHT_LOAD, RESET, GEMM, REQUANT} - set(sites)
    if missing:
        raise ValueError(f"not a packed conv2d schedule: no block {', '.join(sorted(missing))}")
    return sites


def _common_prefix(*stacks) -> list:
    prefix = []
    for loops in zip(*stacks):
        if not all(loop.same_as(loops[0]) for loop in loops):
            break
        prefix.append(loops[0])
    return prefix


def _extents(loops) -> tuple[int, ...]:
    return tuple(int(loop.extent) for loop in loops)


def _window(site: _BlockSite, outer: list) -> list[int]:
    """Extent of each block iterator over the loops inside `outer` (outer loop vars fixed)."""
    analyzer = sym.Analyzer()
    inner = {loop.loop_var: sym.IntervalSet(0, int(loop.extent) - 1) for loop in site.loops[len(outer) :]}
    extents = []
    for value in site.realize.iter_values:
        interval = analyzer.int_set(value, inner)
        extents.append(int(analyzer.simplify(interval.max_value - interval.min_value + 1)))
    return extents


def walk_schedule(func: tirx.PrimFunc) -> ScheduleFacts:
    sites = _block_sites(func)
    tile_loops = _common_prefix(sites[RESET].loops, sites[INPUT_LOAD].loops, sites[REQUANT].loops)
    step_loops = _common_prefix(sites[INPUT_LOAD].loops, sites[GEMM].loops)[len(tile_loops) :]
    outer = tile_loops + step_loops
    inp = _window(sites[INPUT_LOAD], outer)  # (g, n, c, y, x, b, i)
    wgt = _window(sites[WEIGHT_LOAD], outer)  # (g, co, ci, kh, kw, o, i)
    out = _window(sites[REQUANT], tile_loops)  # (g, n, co, y, x, b, o)
    return ScheduleFacts(
        tiles=math.prod(_extents(tile_loops)),
        steps=math.prod(_extents(step_loops)),
        inp_window=(inp[1], inp[2], inp[3], inp[4]),
        wgt_window=(wgt[1], wgt[2], wgt[3], wgt[4]),
        out_window=(out[1], out[2], out[3], out[4]),
        gemm_loops=non_unit(_extents(sites[GEMM].loops[len(outer) :])),
        # The reset's innermost two loops are the batch and block_out lanes of one micro-op.
        reset_loops=non_unit(_extents(sites[RESET].loops[len(tile_loops) : -2])),
        gemm_uops=count_gemm_uops(func),
    )
