"""What a tiling is and what one tile occupies: tile extents, the scratchpad footprint, whether
it fits a description's scratchpads, and the micro-op kernels it needs.

Loop nest (outer to inner): groups, batch tiles, output-channel tiles, row tiles, column
tiles, input-channel tiles; input and weight tiles are loaded at the input-channel tile level,
the accumulator tile lives across it and is requantized and stored once per output tile.
Which tiling a layer gets is the choice of `mapper`; where its tiles lie is `tile_geometry`.
"""

from __future__ import annotations

import dataclasses
import functools
import operator

import numpy as np

from codesign.schedules.layer import ConvShape

UOP_BYTES = 4  # VTA packs a micro-op in 32 bits (the one home of this constant)


class TilingError(ValueError):
    """No tiling of a layer fits the scratchpads; the message says which buffer and by how much."""


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Tile extents: batch, output- and input-channel tiles in blocks; rows and columns in pixels."""

    n_tile: int
    co_tile: int
    ci_tile: int
    h_tile: int
    w_tile: int
    # Output tiles in flight (VTA's virtual threads): each has its own scratchpad space, so the
    # loads of one overlap the compute of the other (double buffering at 2).
    virtual_threads: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TileFootprint:
    inp_bytes: int
    wgt_bytes: int
    acc_bytes: int
    uops: int

    @property
    def uop_bytes(self) -> int:
        return self.uops * UOP_BYTES


# Micro-ops reserved for the requantization's ALU kernels (one each, at most six ops).
ALU_UOPS = 8


def kernel_uops(loop_extents):
    """Distinct micro-ops of a kernel: VTA keeps the first two non-unit loops as the GEMM/ALU
    instruction's affine loops and unrolls the rest into the micro-op list. Takes one loop nest
    (extents) or an array of them (extents on the last axis)."""
    loops = np.asarray(loop_extents)
    non_unit = loops > 1
    unrolled = np.where(non_unit & (np.cumsum(non_unit, axis=-1) > 2), loops, 1)
    uops = unrolled.prod(axis=-1)
    return int(uops) if uops.ndim == 0 else uops


def gemm_loop_nest(shape: ConvShape, tiling):
    """Extents of a tile's GEMM kernel, outer to inner (batch, out-channel, row, in-channel,
    kernel row, kernel column, column): the schedule's loop order. Array tilings broadcast."""
    return np.stack(
        np.broadcast_arrays(
            tiling.n_tile, tiling.co_tile, tiling.h_tile, tiling.ci_tile, shape.kernel_h, shape.kernel_w, tiling.w_tile
        ),
        axis=-1,
    )


def reset_loop_nest(tiling):
    return np.stack(np.broadcast_arrays(tiling.n_tile, tiling.co_tile, tiling.h_tile, tiling.w_tile), axis=-1)


def tile_footprint(shape: ConvShape, tiling: Tiling, hw) -> TileFootprint:
    """Scratchpad bytes one tile occupies (the padded, dilated input window, as the DMA loads
    it). Works on one Tiling or on an object whose tile fields are arrays."""
    in_rows, in_cols = shape.input_rows(tiling.h_tile), shape.input_cols(tiling.w_tile)
    kernel = shape.kernel_h * shape.kernel_w
    uops = kernel_uops(gemm_loop_nest(shape, tiling)) + kernel_uops(reset_loop_nest(tiling)) + ALU_UOPS
    return TileFootprint(
        inp_bytes=tiling.n_tile * tiling.ci_tile * in_rows * in_cols * hw.inp_elem_bytes,
        wgt_bytes=tiling.co_tile * tiling.ci_tile * kernel * hw.wgt_elem_bytes,
        acc_bytes=tiling.n_tile * tiling.co_tile * tiling.h_tile * tiling.w_tile * hw.acc_elem_bytes,
        uops=uops,
    )


# (name, footprint field, capacity field of the description) of every scratchpad.
SCRATCHPADS = (
    ("input", "inp_bytes", "inp_buffer_bytes"),
    ("weight", "wgt_bytes", "wgt_buffer_bytes"),
    ("accumulator", "acc_bytes", "acc_buffer_bytes"),
    ("micro-op", "uop_bytes", "uop_buffer_bytes"),
)


def _needs(footprint: TileFootprint, hw, virtual_threads):
    """(scratchpad, bytes needed, capacity): each virtual thread has its own space."""
    return [(name, getattr(footprint, need) * virtual_threads, getattr(hw, have)) for name, need, have in SCRATCHPADS]


def fits(footprint: TileFootprint, hw, virtual_threads=1):
    """Whether the tile fits every scratchpad; elementwise on arrays (footprints, capacities)."""
    return functools.reduce(operator.and_, (need <= have for _, need, have in _needs(footprint, hw, virtual_threads)))


def overflows(footprint: TileFootprint, hw, virtual_threads: int = 1) -> list[str]:
    """One phrase per scratchpad the tile does not fit: 'input buffer needs 400 bytes, has 256'."""
    threads = f" ({virtual_threads} virtual threads)" if virtual_threads > 1 else ""
    return [
        f"{name} buffer needs {need} bytes{threads}, has {have}"
        for name, need, have in _needs(footprint, hw, virtual_threads)
        if need > have
    ]
