"""Calibration methods: the single-pass |x| histogram, percentile, entropy and mse thresholds, and tensor_ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TEST_MODELS

from codesign.calibration import (
    CALIBRATION_METHODS,
    HISTOGRAM_BINS,
    AbsHistogram,
    build_float_module,
    entropy_bins,
    random_samples,
    run_float,
    tensor_ranges,
)
from codesign.errors import UsageError
from codesign.graph import extract_graph
from codesign.importer import import_onnx


def batches_of_growing_range(seed: int) -> list[np.ndarray]:
    """Batches whose largest |x| grows by many powers of two, starting with an all-zero one."""
    rng = np.random.default_rng(seed)
    batches = [np.zeros(100, np.float32)]
    for scale in (1e-3, 0.01, 0.5, 3.0, 3.0, 700.0, 20.0):
        batches.append((rng.standard_normal(5000) * scale).astype(np.float32))
    batches.append(np.array([0.0, -1e-6, 1e4], np.float32))
    return batches


def filled_histogram(batches: list[np.ndarray]) -> AbsHistogram:
    histogram = AbsHistogram()
    for batch in batches:
        histogram.add(batch)
    return histogram


@pytest.mark.parametrize("seed", [0, 1])
def test_single_pass_histogram_equals_np_histogram_over_the_final_range(seed):
    batches = batches_of_growing_range(seed)
    histogram = filled_histogram(batches)
    magnitudes = np.abs(np.concatenate(batches))
    top = HISTOGRAM_BINS * histogram.width
    assert top / 2 <= magnitudes.max() < top
    expected, _ = np.histogram(magnitudes, bins=HISTOGRAM_BINS, range=(0, top))
    assert histogram.counts.tolist() == expected.tolist()
    shuffled = filled_histogram(batches[::-1])
    assert shuffled.width == histogram.width and shuffled.counts.tolist() == expected.tolist()


def batches_of_narrow_range(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(5000) * 0.5).astype(np.float32), rng.exponential(2.0, 3000).astype(np.float32)]


@pytest.mark.parametrize("q", [0.0, 1.0, 50.0, 99.0, 99.9, 99.99, 100.0])
@pytest.mark.parametrize("batches", [batches_of_growing_range, batches_of_narrow_range], ids=["growing", "narrow"])
def test_percentile_is_within_one_bin_of_np_percentile(batches, q):
    batches = batches(seed=2)
    histogram = filled_histogram(batches)
    exact = np.percentile(np.abs(np.concatenate(batches)).astype(np.float64), q)
    assert abs(histogram.percentile(q) - exact) <= histogram.width


def slow_entropy_bins(counts: np.ndarray, levels: int = 128, smoothing: float = 1e-4) -> int:
    """The KL search written out bin by bin: the threshold (in bins) minimising KL(P || Q)."""
    counts = [int(c) for c in counts]
    best_kept, best_divergence = None, math.inf
    for kept in range(levels, len(counts) + 1):
        reference = counts[:kept]
        reference[-1] += sum(counts[kept:])
        level_sum, level_filled = [0] * levels, [0] * levels
        for b in range(kept):
            level = math.floor(b * levels / kept)  # equal-width levels over [0, kept) bins
            level_sum[level] += counts[b]
            level_filled[level] += counts[b] > 0
        quantized = [0.0] * kept
        for b in range(kept):
            level = math.floor(b * levels / kept)
            if counts[b] > 0:
                quantized[b] = level_sum[level] / level_filled[level]
            elif reference[b] > 0:
                quantized[b] = smoothing  # outliers folded into an empty bin
        divergence = math.inf
        if sum(counts[:kept]) > 0:
            divergence, p_total, q_total = 0.0, sum(reference), sum(quantized)
            for b in range(kept):
                if reference[b]:
                    p, q = reference[b] / p_total, quantized[b] / q_total
                    divergence += p * math.log(p / q)
        if divergence <= best_divergence:  # ties go to the larger threshold
            best_kept, best_divergence = kept, divergence
    return best_kept


def nonzero_histogram(values: np.ndarray, histogram: AbsHistogram) -> np.ndarray:
    magnitudes = np.abs(values[values != 0])
    return np.histogram(magnitudes, bins=histogram.counts.size, range=(0, histogram.counts.size * histogram.width))[0]


@pytest.mark.parametrize(
    "values",
    [
        lambda rng: rng.standard_normal(20000),
        lambda rng: np.maximum(rng.standard_normal(20000), 0),  # ReLU: half the values are exact zeros
        lambda rng: np.concatenate([rng.standard_normal(20000), [40.0]]),  # one outlier
        lambda rng: rng.laplace(0, 1, 20000) ** 3,  # heavy tail, sparse histogram
    ],
    ids=["normal", "relu", "outlier", "heavy-tail"],
)
def test_entropy_equals_a_slow_kl_search_over_the_nonzero_values(values):
    values = values(np.random.default_rng(3)).astype(np.float32)
    histogram = AbsHistogram(bins=512)  # smaller than the default to keep the slow search quick
    histogram.add(values)
    expected = slow_entropy_bins(nonzero_histogram(values, histogram))
    assert histogram.entropy_threshold() == expected * histogram.width


def test_entropy_on_a_default_histogram_equals_the_slow_search():
    values = np.random.default_rng(4).standard_normal(50000).astype(np.float32)
    histogram = filled_histogram([values[:100], values[100:]])
    assert entropy_bins(histogram.counts) == slow_entropy_bins(nonzero_histogram(values, histogram))


def test_one_outlier_1000x_larger_gets_a_threshold_far_below_the_max():
    rng = np.random.default_rng(5)
    gaussian = rng.standard_normal(100000).astype(np.float32)
    gaussian_max = float(np.abs(gaussian).max())
    outlier = 1000 * gaussian_max
    histogram = filled_histogram([gaussian, np.array([-outlier], np.float32)])
    assert histogram.percentile(99.99) < gaussian_max
    assert histogram.entropy_threshold() <= outlier / 8


def test_thresholds_stay_positive_on_a_constant_tensor():
    histogram = filled_histogram([np.full(1000, 3.0, np.float32), np.zeros(10, np.float32)])
    assert histogram.percentile(99.99) > 0 and histogram.percentile(0.5) > 0
    assert histogram.entropy_threshold() == 3.0


def int8_squared_error(values: np.ndarray, threshold: float) -> float:
    """The squared error of quantizing `values` to int8 with scale threshold / 127, computed."""
    scale = threshold / 127
    return float(((np.clip(np.round(values / scale), -127, 127) * scale - values) ** 2).sum())


@pytest.mark.parametrize(
    "values",
    [
        lambda rng: rng.standard_normal(200000),
        lambda rng: rng.uniform(-1, 1, 200000),
        lambda rng: np.maximum(rng.standard_normal(200000), 0),
        lambda rng: rng.laplace(0, 1, 200000) ** 3,
    ],
    ids=["normal", "uniform", "relu", "heavy-tail"],
)
def test_mse_threshold_is_close_to_the_best_measured_on_the_values(values):
    values = values(np.random.default_rng(6)).astype(np.float64)
    histogram = filled_histogram([values.astype(np.float32)])
    largest = float(np.abs(values).max())
    candidates = np.linspace(largest / 200, largest, 400)
    best = min(int8_squared_error(values, t) for t in candidates)
    assert 0 < histogram.mse_threshold() <= largest
    assert int8_squared_error(values, histogram.mse_threshold()) <= 1.05 * best


def test_mse_keeps_the_max_without_a_tail_and_clips_a_long_tail():
    rng = np.random.default_rng(7)
    uniform = rng.uniform(-1, 1, 100000).astype(np.float32)
    assert filled_histogram([uniform]).mse_threshold() >= 0.99 * np.abs(uniform).max()
    laplace = rng.laplace(0, 1, 1000000).astype(np.float32)
    assert filled_histogram([laplace]).mse_threshold() < 0.8 * np.abs(laplace).max()


@pytest.fixture(scope="module")
def resnet():
    path, name, shape = TEST_MODELS["resnet"]
    imported = import_onnx(path, {name: shape})
    return extract_graph(imported), imported, random_samples(imported.inputs, 4)


def old_tensor_ranges(graph, imported, samples):
    """tensor_ranges before calibration methods existed: max |x| of every tensor; and max |x| of
    every channel (axis 1) of 4-D float tensors, the samples stacked."""
    taps = [n.name for n in graph.nodes.values() if n.shape is not None]
    mod = build_float_module(graph, imported, taps)
    values = {name: [] for name in taps}
    skip = len(graph.outputs)
    for outputs in run_float(mod, samples, [t.name for t in imported.inputs]):
        for name, value in zip(taps, outputs[skip:]):
            values[name].append(value)
    absmax = {name: float(max(np.abs(v).max(initial=0.0) for v in values[name])) for name in taps}
    channels = {}
    for name in taps:
        shape = graph.nodes[name].shape
        # Feature maps pooled to 1 x 1 get no channel ranges (one value per channel per sample).
        if graph.nodes[name].dtype == "float32" and len(shape) == 4 and shape[2] * shape[3] > 1:
            channels[name] = np.abs(np.concatenate(values[name])).max(axis=(0, 2, 3))
    return absmax, channels


def test_max_method_is_the_old_behaviour(resnet):
    """The old ranges came from the TVM float build; tensor_ranges now runs this graph in numpy
    (codesign.float_numpy), equal to float32 rounding."""
    graph, imported = resnet[:2]
    samples = resnet[2]
    absmax, channels = old_tensor_ranges(graph, imported, samples)
    for ranges in (tensor_ranges(graph, imported, samples), tensor_ranges(graph, imported, samples, method="max")):
        assert ranges.absmax.keys() == absmax.keys()
        np.testing.assert_allclose([ranges.absmax[n] for n in absmax], list(absmax.values()), rtol=1e-5)
        assert ranges.channel_absmax.keys() == channels.keys()
        for name in channels:
            np.testing.assert_allclose(ranges.channel_absmax[name], channels[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_clipping_methods_stay_within_the_max_and_above_zero(resnet, method):
    graph, imported, samples = resnet
    maxima = tensor_ranges(graph, imported, samples).absmax
    clipped = tensor_ranges(graph, imported, samples, method=method, percentile=99.0)
    ranges = clipped.absmax
    assert ranges.keys() == maxima.keys()
    assert all(0 < ranges[name] <= maxima[name] for name in maxima)
    assert any(ranges[name] < maxima[name] for name in maxima)
    assert all(np.all(clipped.channel_absmax[name] <= ranges[name]) for name in clipped.channel_absmax)


def test_mean_max_averages_each_samples_max_of_the_float_feature_maps(resnet):
    """mean_max: the mean over the samples of each one's max |x|, computed here from the TVM float
    build's values, sample by sample. Integer tensors, feature maps pooled to one value per
    channel and outputs clamped to finite bounds keep their max."""
    graph, imported, samples = resnet
    taps = [n.name for n in graph.nodes.values() if n.shape is not None]
    skip = len(graph.outputs)
    per_sample = {name: [] for name in taps}
    for outputs in run_float(build_float_module(graph, imported, taps), samples, [t.name for t in imported.inputs]):
        for name, value in zip(taps, outputs[skip:]):
            per_sample[name].append(float(np.abs(value).max(initial=0.0)))
    ranges = tensor_ranges(graph, imported, samples, method="mean_max")
    averaged = 0
    for name in taps:
        node = graph.nodes[name]
        pooled = len(node.shape) == 4 and node.shape[2] * node.shape[3] == 1
        clamped = node.op == "gemm" and np.all(np.isfinite(node.layer.clamp))
        keeps_max = not node.dtype.startswith("float") or pooled or clamped
        expected = max(per_sample[name]) if keeps_max else np.mean(per_sample[name])
        averaged += not keeps_max
        np.testing.assert_allclose(ranges.absmax[name], expected, rtol=1e-5, err_msg=name)
    assert averaged > 0 and any(ranges.absmax[n] < max(per_sample[n]) for n in taps)
    assert all(np.all(ranges.channel_absmax[n] <= ranges.absmax[n]) for n in ranges.channel_absmax)


def test_mean_max_keeps_the_max_of_a_tensor_its_op_bounds():
    """A sigmoid's, a softmax's or a Clip's output at its bound is saturation, not an outlier."""
    from codesign.calibration import saturates
    from codesign.graph import GemmLayer, Node

    weight = np.ones((2, 2, 1, 1), np.float32)
    relu6 = GemmLayer("conv2d", weight, clamp=(0.0, 6.0))
    relu = GemmLayer("conv2d", weight, clamp=(0.0, float("inf")))
    assert saturates(Node("a", [], (1, 2, 4, 4), "float32", "gemm", relu6))
    assert not saturates(Node("b", [], (1, 2, 4, 4), "float32", "gemm", relu))
    assert saturates(Node("c", [], (1, 8), "float32", "relax.sigmoid"))
    assert saturates(Node("d", [], (1, 8), "float32", "relax.nn.softmax"))
    assert saturates(Node("e", [], (1, 8), "float32", "clamp", bounds=(-1.0, 1.0)))
    assert not saturates(Node("f", [], (1, 8), "float32", "clamp", bounds=(0.0, float("inf"))))
    assert not saturates(Node("g", [], (1, 8), "float32", "relax.add"))


def test_unknown_method_is_a_usage_error_naming_the_allowed_ones(resnet):
    graph, imported, samples = resnet
    with pytest.raises(UsageError, match="minmax") as error:
        tensor_ranges(graph, imported, samples, method="minmax")
    assert all(method in str(error.value) for method in CALIBRATION_METHODS)
    with pytest.raises(UsageError, match="percentile"):
        tensor_ranges(graph, imported, samples, method="percentile", percentile=0)
