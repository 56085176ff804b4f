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
    exact_requantization_scales,
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


@settings(max_examples=200, deadline=None)
@given(
    w_scale=st.floats(1e-6, 1.0),
    scale_factor=st.floats(1e-4, 10.0),
    out_scale=st.floats(1e-4, 10.0),
    bits=st.sampled_from([8, 12, 16]),
)
def test_raised_weight_scales_make_the_requantization_exact(w_scale, scale_factor, out_scale, bits):
    raised = exact_requantization_scales(np.array([w_scale]), scale_factor, out_scale, bits)[0]
    assert w_scale <= raised * (1 + 1e-12) and raised <= w_scale * (1 + 2.0 ** (1 - bits))
    factor = raised * scale_factor / out_scale
    multiplier, shift = fixed_point(np.array([factor]), bits, shift_only=False)
    assert int(multiplier[0]) < 2**bits or shift[0] == 0
    assert abs(int(multiplier[0]) / 2.0 ** int(shift[0]) - factor) <= factor * 1e-12


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


@pytest.mark.parametrize("hw_name", ["vta_default", "edge_1x8x8"])
@pytest.mark.parametrize("groups", [1, 16])
def test_a_dead_channel_with_a_bias_outputs_its_bias(tmp_path, hw_name, groups):
    """A conv channel whose weights are all zero (re-parameterised blocks leave some) outputs its
    bias everywhere: its bias must not be clipped to int32 at a vanishing accumulator scale.
    Dense and depthwise, on the core and on the host, with a multiplier and shift-only (edge_1x8x8);
    checked against onnxruntime."""
    import onnx
    import onnxruntime as ort
    import tvm
    from onnx import TensorProto, helper, numpy_helper
    from tvm import relax

    from codesign.hardware import load_hardware
    from codesign.pipeline import compile_model
    from codesign.reference import run_reference

    rng = np.random.default_rng(12)
    weight = rng.standard_normal((16, 16 // groups, 3, 3)).astype(np.float32) * 0.3
    weight[[3, 11]] = 0.0
    bias = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=groups, pads=[1, 1, 1, 1])
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])
    graph = helper.make_graph([conv], "dead_channel", [x_info], [y_info], inits)
    path = tmp_path / "dead.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    samples = rng.standard_normal((8, 1, 16, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calibration.npy", samples)
    result = compile_model(path, load_hardware(hw_name), calibration=tmp_path / "calibration.npy", warn=print)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    ours = relax.VirtualMachine(result.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.array_equal(ours, run_reference(result.qgraph, {"x": x})[0])
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert np.abs(ours - expected)[:, [3, 11]].max() <= 0.01 * np.abs(expected).max()
    assert np.abs(ours - expected).max() <= 0.05 * np.abs(expected).max()
