"""Where a layer's tiles lie: how many output tiles and input-channel steps a tiling makes, and
the part of each tile's input window that lies inside the input (what its loads transfer; the
DMA inserts the padding).

The one source of these facts for the tile rule's DRAM traffic, the cost model's features and
the instruction stream (so for the counters too); `schedules.schedule_walk` reads the same
facts from the scheduled TIR as an independent cross-check (lowering checks every kernel).
Functions take one Tiling or an object whose tile fields are numpy arrays (one entry per tiling).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from codesign.schedules.layer import ConvShape
from codesign.schedules.tiling import Tiling, gemm_loop_nest, reset_loop_nest


@dataclasses.dataclass(frozen=True)
class TileCounts:
    channel_tiles: int  # groups x batch tiles x output-channel tiles
    row_tiles: int
    col_tiles: int
    steps: int  # input-channel steps of each output tile

    @property
    def tiles(self) -> int:
        return self.channel_tiles * self.row_tiles * self.col_tiles


def tile_counts(shape: ConvShape, tiling, hw) -> TileCounts:
    packed = shape.blocks(hw)
    return TileCounts(
        channel_tiles=shape.groups * (packed.n_blocks // tiling.n_tile) * (packed.co_blocks // tiling.co_tile),
        row_tiles=shape.out_h // tiling.h_tile,
        col_tiles=shape.out_w // tiling.w_tile,
        steps=packed.ci_blocks // tiling.ci_tile,
    )


def _valid_span(start, length, size):
    """How many of the positions start .. start + length - 1 lie inside 0 .. size - 1."""
    return np.clip(np.minimum(start + length, size) - np.maximum(start, 0), 0, None)


def _spans_inside(tile, stride: int, window, size: int, pad: int, count):
    """Along one axis, per tiling (last axis: its tiles in order, zero past `count`): the input
    positions each tile's window reads that lie inside the input."""
    tile, window, count = (np.expand_dims(a, -1) for a in (tile, window, count))
    j = np.arange(int(np.max(count)))
    spans = _valid_span(j * tile * stride - pad, window, size)
    return np.where(j < count, spans, 0)


def input_rows_inside(shape: ConvShape, tiling, hw):
    rows = shape.input_rows(tiling.h_tile)
    row_tiles = tile_counts(shape, tiling, hw).row_tiles
    return _spans_inside(tiling.h_tile, shape.stride_h, rows, shape.in_h, shape.pad_top, row_tiles)


def input_cols_inside(shape: ConvShape, tiling, hw):
    cols = shape.input_cols(tiling.w_tile)
    col_tiles = tile_counts(shape, tiling, hw).col_tiles
    return _spans_inside(tiling.w_tile, shape.stride_w, cols, shape.in_w, shape.pad_left, col_tiles)


def input_windows_inside(shape: ConvShape, tiling: Tiling, hw) -> list[tuple[int, int]]:
    """(rows, columns) inside the input of each output tile's window, in the schedule's tile
    order (channel tiles outermost, columns innermost)."""
    rows, cols = input_rows_inside(shape, tiling, hw), input_cols_inside(shape, tiling, hw)
    grid = [(int(r), int(c)) for r in rows for c in cols]
    return grid * tile_counts(shape, tiling, hw).channel_tiles


@dataclasses.dataclass(frozen=True)
class TileGeometry:
    """One tiling of a layer as the instruction stream sees it."""

    tiles: int  # output tiles (all tile loops)
    steps: int  # input-channel steps per output tile
    inp_window: tuple[int, int, int, int]  # batch blocks, channel blocks, padded rows, padded columns
    wgt_window: tuple[int, int, int, int]  # output blocks, input blocks, kernel rows, kernel columns
    out_window: tuple[int, int, int, int]  # batch blocks, output blocks, rows, columns
    gemm_loops: tuple[int, ...]  # micro-op kernel loop extents, outer to inner, unit loops left out
    reset_loops: tuple[int, ...]

    def tiling(self, virtual_threads: int = 1) -> Tiling:
        n, co, h, w = self.out_window
        return Tiling(n, co, self.inp_window[1], h, w, virtual_threads)

    def same_tiles(self, other: TileGeometry) -> bool:
        """The same geometry, whatever else `other` holds (a subclass adds its own facts)."""
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(TileGeometry))


def non_unit(extents) -> tuple[int, ...]:
    """Loop extents without the unit loops, which change neither the trip count nor the micro-ops."""
    return tuple(int(e) for e in extents if e > 1)


def tile_geometry(shape: ConvShape, tiling: Tiling, hw) -> TileGeometry:
    counts = tile_counts(shape, tiling, hw)
    return TileGeometry(
        tiles=counts.tiles,
        steps=counts.steps,
        inp_window=(tiling.n_tile, tiling.ci_tile, shape.input_rows(tiling.h_tile), shape.input_cols(tiling.w_tile)),
        wgt_window=(tiling.co_tile, tiling.ci_tile, shape.kernel_h, shape.kernel_w),
        out_window=(tiling.n_tile, tiling.co_tile, tiling.h_tile, tiling.w_tile),
        gemm_loops=non_unit(gemm_loop_nest(shape, tiling)),
        reset_loops=non_unit(reset_loop_nest(tiling)),
    )
