"""The packed, tensorized GEMM kernel against an independent numpy conv, on many core shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tvm

from codesign.hardware import load_hardware
from codesign.schedules.gemm_intrin import ACC_SCOPE, INP_SCOPE, WGT_SCOPE
from codesign.schedules.layer import ConvShape
from codesign.schedules.mapper import candidate_tilings, choose_tiling, dram_traffic_bytes
from codesign.schedules.packed_conv2d import (
    count_gemm_uops,
    kernel_buffer_shapes,
    measured_footprint,
    pack_channel_params_numpy,
    pack_weight_numpy,
    packed_conv2d_func,
    schedule_packed_conv2d,
)
from codesign.schedules.tiling import Tiling, TilingError, fits, tile_footprint
from codesign.target import target

VTA = load_hardware("vta_default")


def core(batch: int, block_in: int, block_out: int, **overrides):
    return dataclasses.replace(VTA, batch=batch, block_in=block_in, block_out=block_out, **overrides)


def numpy_conv_requant(x, w, bias, mult, shift, shape: ConvShape, lo, hi):
    """x (G,N,C,H,W), w (G,O,C,KH,KW): int64 (dilated) conv, then the requantization formula."""
    xp = np.pad(
        x.astype(np.int64),
        ((0, 0), (0, 0), (0, 0), (shape.pad_top, shape.pad_bottom), (shape.pad_left, shape.pad_right)),
    )
    out = np.zeros((shape.groups, shape.batch, shape.out_channels, shape.out_h, shape.out_w), np.int64)
    dh, dw = shape.dilation_h, shape.dilation_w
    for g in range(shape.groups):
        for oy in range(shape.out_h):
            for ox in range(shape.out_w):
                y0, x0 = oy * shape.stride_h, ox * shape.stride_w
                rows = slice(y0, y0 + (shape.kernel_h - 1) * dh + 1, dh)
                cols = slice(x0, x0 + (shape.kernel_w - 1) * dw + 1, dw)
                window = xp[g, :, :, rows, cols]
                out[g, :, :, oy, ox] = np.einsum("nchw,ochw->no", window, w[g].astype(np.int64))
    b, m, s = (a.astype(np.int64)[:, None, :, None, None] for a in (bias, mult, shift))
    return np.clip(((out + b) * m + ((1 << s) >> 1)) >> s, lo, hi).astype(np.int8)


def pack_data(x, hw):
    g, n, c, h, w = x.shape
    nb, cb = -(-n // hw.batch), -(-c // hw.block_in)
    full = np.zeros((g, nb * hw.batch, cb * hw.block_in, h, w), np.int8)
    full[:, :n, :c] = x
    return full.reshape(g, nb, hw.batch, cb, hw.block_in, h, w).transpose(0, 1, 3, 5, 6, 2, 4).copy()


def unpack_out(y, shape: ConvShape):
    g, nb, cb, h, w, b, bo = y.shape
    full = y.transpose(0, 1, 5, 2, 6, 3, 4).reshape(g, nb * b, cb * bo, h, w)
    return full[:, : shape.batch, : shape.out_channels]


@dataclasses.dataclass
class LayerOperands:
    x: np.ndarray  # (G, N, C, H, W) int8
    w: np.ndarray  # (G, O, C, KH, KW) int8
    bias: np.ndarray  # (G, O) int32, as are multiplier and shift
    multiplier: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int


def random_operands(shape: ConvShape, seed: int) -> LayerOperands:
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (shape.groups, shape.batch, shape.in_channels, shape.in_h, shape.in_w)).astype(np.int8)
    w = rng.integers(
        -128, 128, (shape.groups, shape.out_channels, shape.in_channels, shape.kernel_h, shape.kernel_w)
    ).astype(np.int8)
    bias = rng.integers(-5000, 5000, (shape.groups, shape.out_channels)).astype(np.int32)
    mult = rng.integers(1, 1 << 15, (shape.groups, shape.out_channels)).astype(np.int32)
    shift = rng.integers(10, 24, (shape.groups, shape.out_channels)).astype(np.int32)
    lo, hi = int(rng.integers(-128, 0)), int(rng.integers(1, 128))
    return LayerOperands(x, w, bias, mult, shift, lo, hi)


def run_scheduled(shape: ConvShape, hw, tiling: Tiling, ops: LayerOperands):
    """The scheduled kernel compiled and run on packed operands: (G, N, O, H, W) int8 and its TIR."""
    scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, ops.lo, ops.hi), tiling, hw)
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=target())
    args = [pack_data(ops.x, hw), pack_weight_numpy(ops.w, hw)] + [
        pack_channel_params_numpy(a, hw) for a in (ops.bias, ops.multiplier, ops.shift)
    ]
    out = tvm.runtime.tensor(np.zeros(kernel_buffer_shapes(shape, hw)["out"], np.int8))
    lib(*[tvm.runtime.tensor(a) for a in args], out)
    return unpack_out(out.numpy(), shape), scheduled


def run_kernel(shape: ConvShape, hw, seed: int, tiling: Tiling | None = None):
    ops = random_operands(shape, seed)
    tiling = tiling or choose_tiling(shape, hw)
    got, scheduled = run_scheduled(shape, hw, tiling, ops)
    expected = numpy_conv_requant(ops.x, ops.w, ops.bias, ops.multiplier, ops.shift, shape, ops.lo, ops.hi)
    return got, expected, scheduled, tiling


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    hw = core(int(rng.choice([1, 2, 4])), int(rng.choice([4, 8, 16, 32])), int(rng.choice([4, 8, 16, 32])))
    kernel = int(rng.choice([1, 2, 3, 5]))
    shape = ConvShape(
        groups=int(rng.choice([1, 1, 1, 3])),
        batch=int(rng.integers(1, 4)),
        in_channels=int(rng.integers(1, 40)),
        out_channels=int(rng.integers(1, 40)),
        in_h=int(rng.integers(kernel, 12)),
        in_w=int(rng.integers(kernel, 12)),
        kernel_h=kernel,
        kernel_w=kernel,
        stride_h=int(rng.integers(1, 3)),
        stride_w=int(rng.integers(1, 3)),
        pad_top=int(rng.integers(0, kernel)),
        pad_left=int(rng.integers(0, kernel)),
        pad_bottom=int(rng.integers(0, kernel)),
        pad_right=int(rng.integers(0, kernel)),
    )
    return shape, hw


@pytest.mark.parametrize("seed", range(16))
def test_random_conv_layers_are_bit_exact(seed):
    shape, hw = random_case(seed)
    got, expected, _, _ = run_kernel(shape, hw, seed)
    assert np.array_equal(got, expected), f"{shape} on {hw.gemm_shape}"


@pytest.mark.parametrize(
    ("rows", "k", "n", "groups"), [(1, 256, 256, 1), (7, 33, 70, 1), (16, 64, 16, 4), (3, 5, 9, 2)]
)
@pytest.mark.parametrize("core_shape", [(1, 16, 16), (4, 8, 32)])
def test_dense_and_batched_matmul_layers_are_bit_exact(rows, k, n, groups, core_shape):
    shape = ConvShape.dense(rows, k, n, groups)
    got, expected, _, _ = run_kernel(shape, core(*core_shape), seed=rows * k + n)
    assert np.array_equal(got, expected)


def test_footprint_in_tir_equals_the_tile_rule_and_fits():
    for seed in range(8):
        shape, hw = random_case(100 + seed)
        tiling = choose_tiling(shape, hw)
        scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, -128, 127), tiling, hw)
        used = measured_footprint(scheduled, hw)
        predicted = tile_footprint(shape, tiling, hw)
        assert used == {INP_SCOPE: predicted.inp_bytes, WGT_SCOPE: predicted.wgt_bytes, ACC_SCOPE: predicted.acc_bytes}
        threads = tiling.virtual_threads
        assert used[INP_SCOPE] * threads <= hw.inp_buffer_bytes
        assert used[WGT_SCOPE] * threads <= hw.wgt_buffer_bytes
        assert used[ACC_SCOPE] * threads <= hw.acc_buffer_bytes


def test_every_mac_goes_through_the_gemm_intrinsic():
    for seed in range(6):
        shape, hw = random_case(200 + seed)
        scheduled = schedule_packed_conv2d(packed_conv2d_func(shape, hw, -128, 127), choose_tiling(shape, hw), hw)
        packed = shape.blocks(hw)
        expected = shape.groups * packed.n_blocks * packed.co_blocks * packed.ci_blocks
        expected *= shape.out_h * shape.out_w * shape.kernel_h * shape.kernel_w
        assert count_gemm_uops(scheduled) == expected


def test_tile_rule_respects_smaller_scratchpads_and_stays_exact():
    shape = ConvShape(1, 1, 64, 64, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    roomy = choose_tiling(shape, VTA)
    small = core(1, 16, 16, inp_buffer_bytes=2048, wgt_buffer_bytes=4096, acc_buffer_bytes=4096)
    tight = choose_tiling(shape, small)
    assert fits(tile_footprint(shape, tight, small), small)
    assert not fits(tile_footprint(shape, roomy, small), small)
    got, expected, _, _ = run_kernel(shape, small, seed=5, tiling=tight)
    assert np.array_equal(got, expected)


def test_tile_rule_prefers_less_dram_traffic():
    shape = ConvShape(1, 1, 256, 256, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1)
    chosen = choose_tiling(shape, VTA)
    assert chosen.virtual_threads == 2  # double buffering fits VTA's scratchpads here
    fitting = [t for t in candidate_tilings(shape, VTA) if fits(tile_footprint(shape, t, VTA), VTA, 2)]
    assert dram_traffic_bytes(shape, chosen, VTA) == min(dram_traffic_bytes(shape, t, VTA) for t in fitting)
    single = [t for t in candidate_tilings(shape, VTA) if fits(tile_footprint(shape, t, VTA), VTA)]
    assert min(dram_traffic_bytes(shape, t, VTA) for t in single) <= dram_traffic_bytes(shape, chosen, VTA)


def test_too_small_scratchpad_is_rejected_with_the_buffer_named():
    shape = ConvShape(1, 1, 16, 16, 8, 8, 5, 5, 1, 1, 2, 2, 2, 2)
    tiny = core(1, 16, 16, inp_buffer_bytes=256, acc_buffer_bytes=64)
    with pytest.raises(TilingError, match=r"scratchpad too small .* input buffer needs 400 bytes, has 256"):
        choose_tiling(shape, tiny)


def test_the_gemm_intrinsic_parses_the_same_without_inspect_stacks_source_lookups():
    import inspect

    import tvm_ffi

    from codesign.schedules import gemm_intrin

    original = inspect.stack
    for build, args in ((gemm_intrin._unbatched, (16, 32)), (gemm_intrin._batched, (2, 8, 16))):
        plain = build(*args)
        with gemm_intrin._stack_without_source():
            assert inspect.stack is not original
            fast = build(*args)
        assert inspect.stack is original
        assert all(tvm_ffi.structural_equal(a, b) for a, b in zip(plain, fast))
