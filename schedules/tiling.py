"""The tile-size rule: the tiling that fits the scratchpads with the least DRAM traffic.

Loop nest (outer to inner): groups, batch tiles, output-channel tiles, row tiles, column
tiles, input-channel tiles; input and weight tiles are loaded at the input-channel tile level,
the accumulator tile lives across it and is requantized and stored once per output tile.
"""

from __future__ import annotations

import dataclasses
import itertools

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


def fits(footprint: TileFootprint, hw, virtual_threads: int = 1) -> bool:
    return (
        footprint.inp_bytes * virtual_threads <= hw.inp_buffer_bytes
        and footprint.wgt_bytes * virtual_threads <= hw.wgt_buffer_bytes
        and footprint.acc_bytes * virtual_threads <= hw.acc_buffer_bytes
        and footprint.uop_bytes * virtual_threads <= hw.uop_buffer_bytes
    )


def dram_traffic_bytes(shape: ConvShape, tiling: Tiling, hw) -> int:
    """Bytes moved between DRAM and the scratchpads for the whole layer under this tiling."""
    packed = shape.blocks(hw)
    fp = tile_footprint(shape, tiling, hw)
    tiles = _output_tiles(shape, tiling, hw) * (packed.ci_blocks // tiling.ci_tile)  # with their input steps
    out_bytes = shape.groups * packed.n_blocks * packed.co_blocks * shape.out_h * shape.out_w * hw.out_elem_bytes
    return tiles * (fp.inp_bytes + fp.wgt_bytes) + out_bytes


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_tilings(shape: ConvShape, hw):
    packed = shape.blocks(hw)
    for n, co, ci, h, w in itertools.product(
        divisors(packed.n_blocks),
        divisors(packed.co_blocks),
        divisors(packed.ci_blocks),
        divisors(shape.out_h),
        divisors(shape.out_w),
    ):
        yield Tiling(n, co, ci, h, w)


def choose_tiling(shape: ConvShape, hw, virtual_threads: int | None = None) -> Tiling:
    """Least DRAM traffic among tilings that fit; ties go to bigger tiles (fewer instructions).

    Without a given thread count, double buffering (2 virtual threads) is preferred when some
    tiling fits with it and the layer has at least two output tiles to alternate between.
    """
    if virtual_threads is None:
        double = _best_tiling(shape, hw, 2)
        if double is not None and _output_tiles(shape, double, hw) >= 2:
            return double
        virtual_threads = 1
    best = _best_tiling(shape, hw, virtual_threads)
    if best is None:
        raise TilingError(_smallest_tile_report(shape, hw, virtual_threads))
    return best


def _output_tiles(shape: ConvShape, tiling: Tiling, hw) -> int:
    packed = shape.blocks(hw)
    return (
        shape.groups
        * (packed.n_blocks // tiling.n_tile)
        * (packed.co_blocks // tiling.co_tile)
        * (shape.out_h // tiling.h_tile)
        * (shape.out_w // tiling.w_tile)
    )


def _best_tiling(shape: ConvShape, hw, virtual_threads: int) -> Tiling | None:
    best, best_key = None, None
    for tiling in candidate_tilings(shape, hw):
        if not fits(tile_footprint(shape, tiling, hw), hw, virtual_threads):
            continue
        tile_volume = tiling.n_tile * tiling.co_tile * tiling.ci_tile * tiling.h_tile * tiling.w_tile
        key = (dram_traffic_bytes(shape, tiling, hw), -tile_volume, -tiling.w_tile)
        if best_key is None or key < best_key:
            best, best_key = tiling, key
    return None if best is None else dataclasses.replace(best, virtual_threads=virtual_threads)


def _smallest_tile_report(shape: ConvShape, hw, virtual_threads: int) -> str:
    need = tile_footprint(shape, Tiling(1, 1, 1, 1, 1), hw)
    lacking = [
        f"{name} buffer needs {need_bytes * vt} bytes, has {have}"
        for name, need_bytes, have, vt in (
            ("input", need.inp_bytes, hw.inp_buffer_bytes, virtual_threads),
            ("weight", need.wgt_bytes, hw.wgt_buffer_bytes, virtual_threads),
            ("accumulator", need.acc_bytes, hw.acc_buffer_bytes, virtual_threads),
            ("micro-op", need.uop_bytes, hw.uop_buffer_bytes, 1),
        )
        if need_bytes * vt > have
    ]
    return f"scratchpad too small for one tile of {shape.describe()}: " + "; ".join(lacking)
