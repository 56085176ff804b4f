"""Quantization arithmetic: fixed-point multipliers, power-of-two scales, per-channel weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.quantize import (
    QuantConfig,
    activation_scale,
    clamp_range,
    fixed_point,
    quantize_weight,
    weight_scales,
)


@settings(max_examples=200, deadline=None)
@given(real=st.floats(1e-6, 64.0), bits=st.integers(4, 31))
def test_fixed_point_multiplier_has_the_promised_precision(real, bits):
    multiplier, shift = fixed_point(np.array([real]), bits, shift_only=False)
    m, s = int(multiplier[0]), int(shift[0])
    assert s >= 0
    if real < 1:
        assert 2 ** (bits - 1) <= m < 2**bits
    approx = m / 2.0**s
    assert abs(approx - real) <= real * 2.0 ** (1 - bits)


@settings(max_examples=100, deadline=None)
@given(exponent=st.integers(-30, 6))
def test_shift_only_factors_are_exact_powers_of_two(exponent):
    multiplier, shift = fixed_point(np.array([2.0**exponent]), 0, shift_only=True)
    assert multiplier[0] * 2.0 ** -int(shift[0]) == 2.0**exponent
    assert multiplier[0] & (multiplier[0] - 1) == 0


def test_shift_only_configuration_gives_power_of_two_scales():
    config = QuantConfig(shift_only=True)
    assert np.log2(activation_scale(3.7, config)) % 1 == 0
    weight = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    scales = weight_scales(weight, 0, config)
    assert np.all(np.log2(scales) % 1 == 0)


@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_weights_use_the_full_range_and_bound_the_error(bits):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((6, 4, 3, 3)) * np.array([0.01, 0.1, 1, 10, 100, 0.5])[:, None, None, None]
    config = QuantConfig(weight_bits=bits)
    scales = weight_scales(weight, 0, config)
    quantized = quantize_weight(weight, scales, 0, bits)
    qmax = 2 ** (bits - 1) - 1
    assert np.abs(quantized).max(axis=(1, 2, 3)).tolist() == [qmax] * 6
    error = np.abs(quantized * scales[:, None, None, None] - weight)
    assert np.all(error <= scales[:, None, None, None] / 2 + 1e-12)


def test_clamp_range_folds_relu6_into_int8_bounds():
    assert clamp_range((0.0, 6.0), 6.0 / 127) == (0, 127)
    assert clamp_range((0.0, 6.0), 0.1) == (0, 60)
    assert clamp_range((float("-inf"), float("inf")), 0.1) == (-128, 127)
