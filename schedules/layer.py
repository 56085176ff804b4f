"""Geometry of one GEMM layer as the accelerator sees it (a grouped, padded, strided conv2d).

Dense and (batched) matmul are described as 1x1 convs: rows on the batch axis, the reduction
on input channels, and the matmul batch on `groups` (each group with its own weights).
"""

from __future__ import annotations

import dataclasses
import math


def input_window(tile, stride, kernel, dilation=1):
    """Input positions (padding included) that `tile` consecutive outputs read along one axis:
    (tile - 1) * stride + (kernel - 1) * dilation + 1. Works elementwise on numpy arrays."""
    return (tile - 1) * stride + (kernel - 1) * dilation + 1


@dataclasses.dataclass(frozen=True)
class ConvShape:
    groups: int
    batch: int
    in_channels: int
    out_channels: int
    in_h: int
    in_w: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_top: int = 0
    pad_left: int = 0
    pad_bottom: int = 0
    pad_right: int = 0
    dilation_h: int = 1
    dilation_w: int = 1

    @classmethod
    def dense(cls, rows: int, in_features: int, out_features: int, groups: int = 1) -> ConvShape:
        return cls(groups, rows, in_features, out_features, 1, 1)

    @classmethod
    def conv2d(cls, in_shape, weight_shape, groups: int, strides, padding, dilation) -> ConvShape:
        """A conv2d of an (N, C, H, W) input by an (O, C/groups, KH, KW) weight; padding (t, l, b, r)."""
        n, c, h, w = in_shape
        o, _, kh, kw = weight_shape
        return cls(groups, n, c // groups, o // groups, h, w, kh, kw, *strides, *padding, *dilation)

    def input_rows(self, h_tile):
        """Padded input rows an output tile of `h_tile` rows reads (the dilated window)."""
        return input_window(h_tile, self.stride_h, self.kernel_h, self.dilation_h)

    def input_cols(self, w_tile):
        """Padded input columns an output tile of `w_tile` columns reads (the dilated window)."""
        return input_window(w_tile, self.stride_w, self.kernel_w, self.dilation_w)

    @property
    def out_h(self) -> int:
        return (self.in_h + self.pad_top + self.pad_bottom - self.input_rows(1)) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + self.pad_left + self.pad_right - self.input_cols(1)) // self.stride_w + 1

    @property
    def macs(self) -> int:
        return (
            self.groups * self.batch * self.out_channels * self.out_h * self.out_w
            * self.in_channels * self.kernel_h * self.kernel_w
        )  # fmt: skip

    def blocks(self, hw) -> PackedShape:
        return PackedShape(
            n_blocks=math.ceil(self.batch / hw.batch),
            ci_blocks=math.ceil(self.in_channels / hw.block_in),
            co_blocks=math.ceil(self.out_channels / hw.block_out),
        )

    def describe(self) -> str:
        if self.kernel_h == self.kernel_w == 1 and self.in_h == self.in_w == 1:
            groups = f"{self.groups}x" if self.groups > 1 else ""
            return f"{groups}({self.batch}x{self.in_channels}).({self.in_channels}x{self.out_channels})"
        stride = _axis_pair("s", self.stride_h, self.stride_w)
        dilation = _axis_pair("d", self.dilation_h, self.dilation_w)
        groups = f" g{self.groups}" if self.groups > 1 else ""
        return (
            f"{self.in_channels * self.groups}x{self.in_h}x{self.in_w} -> {self.out_channels * self.groups}x"
            f"{self.out_h}x{self.out_w} k{self.kernel_h}x{self.kernel_w}{stride}{dilation}{groups}"
        )


def _axis_pair(tag: str, h: int, w: int) -> str:
    """' s2' for (2, 2), ' d2x1' for (2, 1), nothing for (1, 1)."""
    if (h, w) == (1, 1):
        return ""
    return f" {tag}{h}" if h == w else f" {tag}{h}x{w}"


@dataclasses.dataclass(frozen=True)
class PackedShape:
    """Extents in accelerator blocks: batch, input-channel and output-channel blocks."""

    n_blocks: int
    ci_blocks: int
    co_blocks: int
