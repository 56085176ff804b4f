"""Depthwise convs on the GEMM core as banded matrices over a row's pixels (Toeplitz blocks).

A depthwise conv has one input and one output channel per group: as block-diagonal super-groups
(schedules.narrow_groups) only one lane of block_in does a useful product. Along a row, though,
each output pixel is a dot product of the kernel row with neighbouring input pixels: for P
consecutive output pixels of one channel (P = block_in) and P consecutive padded input pixels,
the products form a P x P band (a Toeplitz block). So a channel's padded rows, cut into blocks
of P pixels, become a grouped conv's input channels:

    depthwise  C channels, H x W, kernel K x K, stride s, padding (t, l, b, r)
    core       C groups of P input and P output "channels" (the pixels of a block),
               (H + t + b) x Wb blocks, kernel K x KB, stride s, no padding

where output block ob reads input blocks s * ob .. s * ob + KB - 1, KB = ceil(((P - 1) * s + K) / P),
and the weight tile of kernel row ky and block offset kb holds w[ky, P * kb + i - s * j] at
(output pixel j, input pixel i) where that index is within the kernel row, zeros elsewhere. The
zeros add nothing, so the integers equal the depthwise conv's. The host pads the rows (with the
input's zero point where it has one) and widens them to whole blocks; columns past the output's
width are computed and dropped.

Useful lanes per weight tile: K of P per row (against 1 of P for super-groups), at KB weight
tiles per kernel row. It pays on long rows with wide kernels (the text recognisers' 5x5 convs
over 80-column maps), not on short ones; quantization places each conv by modelled cost.
"""

from __future__ import annotations

import math

import numpy as np

from codesign.schedules.layer import ConvShape


def fits_bands(shape: ConvShape) -> bool:
    """A depthwise conv (one input and one output channel per group) without dilation: what
    row bands compute."""
    return (
        shape.groups > 1 and shape.in_channels == shape.out_channels == 1 and shape.dilation_h == shape.dilation_w == 1
    )


def band_blocks(kernel_w: int, stride_w: int, pixels: int) -> int:
    """Input blocks one output block reads along the row: KB."""
    return math.ceil(((pixels - 1) * stride_w + kernel_w) / pixels)


def band_input_width(out_bands: int, kernel_w: int, stride_w: int, pixels: int) -> int:
    """Pixels of a padded, widened input row: the whole input blocks `out_bands` output blocks read."""
    return ((out_bands - 1) * stride_w + band_blocks(kernel_w, stride_w, pixels)) * pixels


def banded(shape: ConvShape, pixels: int) -> ConvShape:
    """The grouped conv the core runs for a depthwise `shape` (see the module doc)."""
    out_bands = math.ceil(shape.out_w / pixels)
    return ConvShape(
        groups=shape.groups,
        batch=shape.batch,
        in_channels=pixels,
        out_channels=pixels,
        in_h=shape.in_h + shape.pad_top + shape.pad_bottom,
        in_w=band_input_width(out_bands, shape.kernel_w, shape.stride_w, pixels) // pixels,
        kernel_h=shape.kernel_h,
        kernel_w=band_blocks(shape.kernel_w, shape.stride_w, pixels),
        stride_h=shape.stride_h,
        stride_w=shape.stride_w,
    )


def banded_weight(weight: np.ndarray, core: ConvShape) -> np.ndarray:
    """A depthwise weight (C, 1, K, K) as the core's (G, P, P, K, KB) band tiles."""
    channels, _, kernel_h, kernel_w = weight.shape
    pixels, kb = core.in_channels, core.kernel_w
    out_pixel = np.arange(pixels)[:, None, None]
    in_pixel = np.arange(pixels)[None, :, None]
    block = np.arange(kb)[None, None, :]
    tap = pixels * block + in_pixel - core.stride_w * out_pixel  # (P, P, KB): kernel column or outside
    inside = (tap >= 0) & (tap < kernel_w)
    rows = weight[:, 0][:, :, np.clip(tap, 0, kernel_w - 1)]  # (C, K, P, P, KB)
    bands = np.where(inside[None, None], rows, 0).astype(weight.dtype)
    assert bands.shape == (channels, kernel_h, pixels, pixels, kb)
    return np.ascontiguousarray(bands.transpose(0, 2, 3, 1, 4))


def is_row_banded(layer: ConvShape, core: ConvShape) -> bool:
    """Does the core run the conv `layer` as row bands `core`? (Super-groups join groups; row
    bands keep one per channel.)"""
    return fits_bands(layer) and core.groups == layer.groups
