"""Calibration: run the float graph on sample inputs and record each tensor's range (its absmax).

Methods (CALIBRATION_METHODS): "max" takes max |x|; "percentile" the p-th percentile of |x|;
"entropy" TensorRT's KL-divergence threshold; "mse" the threshold with the least expected
squared error (rounding inside, clipping outside), chosen for each tensor from its own
distribution: max |x| for a tensor without a tail, a clipped one for a long-tailed tensor. The
last three read a histogram of |x| that is filled in the same single float run (AbsHistogram)
and never exceed max |x|. "mean_max" takes the mean over the samples of each one's max |x| (as
NNCF's mean_min_max and moving-average observers do): unlike max it does not widen a range to
the rarest sample of a larger set. A tensor whose op bounds it (saturates) or a feature map
pooled to one value per channel (a squeeze-excite vector, whose top channel is signal, not a
tail) keeps max |x| under it.

Calibration inputs come from a .npy (single-input models) or .npz (arrays named after the
inputs) file. An array is one sample when it has the input's shape, else a stack of samples
along a new leading axis, or along the batch axis when the input's batch is 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from codesign import cache, float_numpy, progress
from codesign.emit import emit_float_node, module_without_main
from codesign.errors import ModelError, UsageError
from codesign.files import check_real_numbers, open_numpy_file, read_array
from codesign.graph import Graph, Node, channel_axis
from codesign.importer import ImportedModel, TensorSpec
from codesign.schedules.host_float import schedule_float_module
from codesign.target import target
from codesign.tvm_build import build_executable
from codesign.tvm_output import quiet_tvm

CALIBRATION_METHODS = ("max", "percentile", "entropy", "mse", "mean_max")
# What a user may ask for: a method, or "auto", the one measured best on held-out calibration
# samples (codesign.calibration_choice).
AUTO_METHOD = "auto"
CLIPPING_METHODS = ("percentile", "entropy", "mse")  # thresholds read from a histogram of |x|
CALIBRATION_CHOICES = (*CALIBRATION_METHODS, AUTO_METHOD)
DEFAULT_CALIBRATION_METHOD = "max"  # measured on the real corpus against the others: README, "--calibration-method"
SATURATING_OPS = ("relax.sigmoid", "relax.tanh", "relax.erf", "relax.nn.softmax")
HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128  # levels of |x| in TensorRT's entropy calibration, and its fewest candidate bins
KL_SMOOTHING = 1e-4  # the count Q gets in a bin where P holds only clipped outliers


def build_float_module(graph: Graph, imported: ImportedModel, taps: list[str]) -> tvm.IRModule:
    """The float model as Relax, returning the graph outputs followed by the tapped tensors."""
    bb = relax.BlockBuilder(module_without_main(imported.mod))
    params = [relax.Var(spec.name, relax.TensorType(spec.shape, spec.dtype)) for spec in imported.inputs]
    with bb.function("main", params):
        with bb.dataflow():
            values = {spec.name: param for spec, param in zip(imported.inputs, params)}
            for node in graph.nodes.values():
                if node.op == "input":
                    continue
                values[node.name] = emit_float_node(bb, node, [values[i] for i in node.inputs])
            result = bb.emit_output(relax.Tuple([values[n] for n in graph.outputs + taps]))
        bb.emit_func_output(result)
    return bb.get()


def float_runs(graph: Graph, imported: ImportedModel, samples: list[dict[str, np.ndarray]], taps: list[str]):
    """Per sample, the graph's outputs followed by the tapped tensors, in float: run in numpy when
    every node is one `codesign.float_numpy` runs (no build), else by a TVM build of the graph."""
    if not float_numpy.supports(graph):
        mod = build_float_module(graph, imported, taps)
        yield from run_float(mod, samples, [spec.name for spec in imported.inputs])
        return
    names = graph.outputs + taps
    for chunk in float_numpy.sample_chunks(graph, samples):
        values = float_numpy.run_graph(graph, chunk)
        for index in range(len(chunk)):
            yield [values[name][index] for name in names]


def run_float(mod: tvm.IRModule, samples: list[dict[str, np.ndarray]], input_names: list[str]):
    """Per sample, the outputs of a float module built by build_float_module (TVM)."""
    with quiet_tvm():
        executable = build_executable(schedule_float_module(mod), target())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for sample in samples:
        yield module_outputs(vm, input_names, sample)


def module_outputs(vm: relax.VirtualMachine, input_names: list[str], sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A built module's outputs on one sample, as numpy arrays (one output or a tuple)."""
    outputs = vm["main"](*[tvm.runtime.tensor(sample[name]) for name in input_names])
    return [o.numpy() for o in (outputs if isinstance(outputs, (tvm.ir.Array, list, tuple)) else [outputs])]


@dataclasses.dataclass
class TensorRanges:
    """Calibrated ranges: `absmax` of every tensor, and `channel_absmax` (per channel, along
    graph.channel_axis) of every float tensor that has channels, except maps pooled to 1 x 1
    (`one_value_per_channel`), clipped to the tensor's own threshold."""

    absmax: dict[str, float]
    channel_absmax: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        """Exact: JSON writes a float as the shortest text that reads back to the same float."""
        channels = {name: values.tolist() for name, values in self.channel_absmax.items()}
        return json.dumps({"absmax": self.absmax, "channel_absmax": channels}).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> TensorRanges:
        doc = json.loads(payload)
        channels = {name: np.asarray(values, dtype=np.float64) for name, values in doc["channel_absmax"].items()}
        return cls(doc["absmax"], channels)


def cached_tensor_ranges(
    graph: Graph,
    imported: ImportedModel,
    samples: list[dict[str, np.ndarray]],
    method: str,
    graph_changes: dict,
    percentile: float = 99.99,
) -> TensorRanges:
    """tensor_ranges, read from the cache when the same model, bound inputs, graph changes (e.g.
    pruning: `graph_changes`), samples and method were calibrated before."""
    return cached_ranges_by_method(graph, imported, samples, (method,), graph_changes, percentile)[method]


def cached_ranges_by_method(
    graph: Graph,
    imported: ImportedModel,
    samples: list[dict[str, np.ndarray]],
    methods: tuple[str, ...],
    graph_changes: dict,
    percentile: float = 99.99,
) -> dict[str, TensorRanges]:
    """cached_tensor_ranges of several methods; those not cached come from one float run."""
    keys = {method: _ranges_key(imported, samples, method, graph_changes, percentile) for method in methods}
    ranges = {}
    for method, key in keys.items():
        payload = cache.load(key)
        if payload is not None:
            ranges[method] = TensorRanges.from_json(payload)
    missing = tuple(method for method in methods if method not in ranges)
    if missing:
        computed = ranges_by_method(graph, imported, samples, missing, percentile)
        for method in missing:
            cache.store(keys[method], computed[method].to_json())
        ranges.update(computed)
    return ranges


def _ranges_key(imported: ImportedModel, samples, method: str, graph_changes: dict, percentile: float) -> str:
    return cache.entry_key(
        "ranges",
        {
            "model": imported.sha256,
            "inputs": [(spec.name, list(spec.shape), spec.dtype) for spec in imported.inputs],
            "frozen": {name: array_digest(value) for name, value in imported.frozen_inputs.items()},
            "graph_changes": graph_changes,
            "samples": samples_digest(samples),
            "method": method,
            "percentile": percentile,
        },
    )


def array_digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    header = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(header + array.tobytes()).hexdigest()


def samples_digest(samples: list[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            digest.update(name.encode() + array_digest(sample[name]).encode())
    return digest.hexdigest()


def tensor_ranges(
    graph: Graph,
    imported: ImportedModel,
    samples: list[dict[str, np.ndarray]],
    method: str = DEFAULT_CALIBRATION_METHOD,
    percentile: float = 99.99,
) -> TensorRanges:
    """The calibrated ranges of every tensor-valued node, in one float run over the samples.

    "max" is max |x|; "percentile", "entropy" and "mse" clip float tensors to a threshold read
    from a histogram of |x|; "mean_max" averages the samples' max |x| (integer tensors, such as
    shape computations, keep max |x| under every method).
    """
    return ranges_by_method(graph, imported, samples, (method,), percentile)[method]


def ranges_by_method(
    graph: Graph,
    imported: ImportedModel,
    samples: list[dict[str, np.ndarray]],
    methods: tuple[str, ...],
    percentile: float = 99.99,
) -> dict[str, TensorRanges]:
    """tensor_ranges for each of `methods`, from the same single float run."""
    for method in methods:
        check_method(method, percentile)
    taps = [n.name for n in graph.nodes.values() if n.shape is not None]
    floats = [n for n in taps if graph.nodes[n].dtype.startswith("float")]
    clipping = any(method in CLIPPING_METHODS for method in methods)
    histograms = {name: AbsHistogram() for name in floats} if clipping else {}
    sample_maxima = {name: [] for name in floats if takes_mean_max(graph.nodes[name])} if "mean_max" in methods else {}
    absmax = dict.fromkeys(taps, 0.0)
    axes = {n: channel_axis(graph.nodes[n].shape) for n in floats}
    channel_absmax = {n: 0.0 for n in floats if axes[n] is not None and not one_value_per_channel(graph.nodes[n])}
    skip = len(graph.outputs)
    progress.stage("calibrate", len(samples))
    for outputs in float_runs(graph, imported, samples, taps):
        for name, value in zip(taps, outputs[skip:]):
            magnitude = np.abs(value)
            if name in channel_absmax:  # the tensor's max from its channels': one pass over it
                others = tuple(a for a in range(value.ndim) if a != axes[name])
                channels = magnitude.max(axis=others, initial=0.0)
                channel_absmax[name] = np.maximum(channel_absmax[name], channels)
                absmax[name] = max(absmax[name], float(channels.max(initial=0.0)))
            else:
                absmax[name] = max(absmax[name], float(magnitude.max(initial=0.0)))
            if name in histograms:
                histograms[name].add(value)
            if name in sample_maxima:
                sample_maxima[name].append(float(magnitude.max(initial=0.0)))
        progress.advance()
    return {
        method: _method_ranges(method, absmax, channel_absmax, histograms, sample_maxima, percentile)
        for method in methods
    }


def _method_ranges(method, absmax, channel_absmax, histograms, sample_maxima, percentile) -> TensorRanges:
    absmax = dict(absmax)
    if method in CLIPPING_METHODS:
        for name, histogram in histograms.items():
            absmax[name] = histogram.threshold(method, percentile)
    if method == "mean_max":
        for name, maxima in sample_maxima.items():
            absmax[name] = float(np.mean(maxima))
    channels = {
        name: np.minimum(np.asarray(ranges, dtype=np.float64), absmax[name]) for name, ranges in channel_absmax.items()
    }
    return TensorRanges(absmax, channels)


def takes_mean_max(node: Node) -> bool:
    """Whether "mean_max" averages this float tensor's sample maxima (else it keeps max |x|)."""
    return not (saturates(node) or one_value_per_channel(node))


def one_value_per_channel(node: Node) -> bool:
    """A feature map pooled to 1 x 1: each sample's max is one channel's whole value. Such a map
    gets no channel ranges either: each sample shows each channel once, so a few samples leave a
    rarely active channel a range far below what new inputs bring (PP-OCRv4 det's squeeze-excite
    convs: cosine 0.70 against the float graph on new pages after 8 calibration pages, a
    channel's range 0.21 where its values reach several units)."""
    shape = node.shape
    return len(shape) == 4 and shape[2] * shape[3] == 1


def saturates(node: Node) -> bool:
    """Whether the op bounds its output (a clamp to finite bounds, folded into a GEMM or not;
    SATURATING_OPS): its values at the bound are saturation, which a range below it would clip."""
    if node.op in SATURATING_OPS:
        return True
    bounds = node.layer.clamp if node.op == "gemm" else node.bounds if node.op == "clamp" else None
    return bounds is not None and all(math.isfinite(bound) for bound in bounds)


def check_method_choice(method: str) -> None:
    if method not in CALIBRATION_CHOICES:
        raise UsageError(f"unknown calibration method '{method}' (allowed: {', '.join(CALIBRATION_CHOICES)})")


def check_method(method: str, percentile: float) -> None:
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method '{method}' (allowed: {', '.join(CALIBRATION_METHODS)})")
    if not 0 < percentile <= 100:
        raise UsageError(f"calibration percentile must be in (0, 100], got {percentile}")


class AbsHistogram:
    """A histogram of |x| with HISTOGRAM_BINS bins over [0, HISTOGRAM_BINS * width), filled in one pass.

    The width is a power of two, chosen so that the range is the smallest power of two above the
    largest |x| seen. When a larger value arrives the width doubles (as often as needed) and bins
    merge pairwise. Bin edges nest, and dividing by a power of two is exact, so the result equals
    the histogram of all values at the final width, whatever the order they came in.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS):
        self.counts = np.zeros(bins, dtype=np.int64)
        self.width = 0.0  # no non-zero value seen yet: every count is in bin 0
        self.zeros = 0  # exact zeros, counted in bin 0
        self.largest = 0.0

    def add(self, values: np.ndarray) -> None:
        magnitudes = np.abs(values).ravel()
        magnitudes = magnitudes[np.isfinite(magnitudes)]  # an overflowed exp must not break the bins
        largest = float(magnitudes.max(initial=0.0))
        self.zeros += magnitudes.size - np.count_nonzero(magnitudes)
        if largest > self.largest:
            self.grow_to(largest)
            self.largest = largest
        if self.width == 0:
            self.counts[0] += magnitudes.size
            return
        self.counts += np.bincount((magnitudes / self.width).astype(np.int64), minlength=self.counts.size)

    def grow_to(self, largest: float) -> None:
        """Widen the bins until `largest` falls inside the range."""
        bins = self.counts.size
        width = math.ldexp(1.0, math.frexp(largest)[1]) / bins  # largest < 2**exponent = bins * width
        if width <= self.width:
            return
        factor = min(int(width / self.width), bins) if self.width else 1
        merged = np.add.reduceat(self.counts, np.arange(0, bins, factor))
        self.counts = np.concatenate([merged, np.zeros(bins - merged.size, dtype=np.int64)])
        self.width = width

    def percentile(self, q: float) -> float:
        """The q-th percentile of |x|, at most max |x|, and positive unless every x is 0."""
        return min(histogram_percentile(self.counts, self.width, q), self.largest)

    def threshold(self, method: str, percentile: float) -> float:
        if method == "percentile":
            return self.percentile(percentile)
        return self.entropy_threshold() if method == "entropy" else self.mse_threshold()

    def mse_threshold(self, levels: int = 127) -> float:
        """The threshold T minimising the expected squared error of symmetric int8 quantization with
        step T / levels: x**2 for a value rounded to 0, step**2 / 12 for the other values inside,
        (|x| - T)**2 per clipped value, |x| taken at its bin's centre. Exact zeros stay exact whatever
        T, so they do not count. At most max |x|."""
        counts = self.counts.astype(np.float64)
        counts[0] -= self.zeros
        if self.width == 0 or counts.sum() == 0:
            return self.largest
        return min(self.width * mse_bins(counts, levels), self.largest)

    def entropy_threshold(self) -> float:
        """Exact zeros (ReLU outputs) are exact in int8 whatever the threshold, so the KL search leaves
        them out (NVIDIA's pytorch-quantization copies bin 1 into bin 0 instead). At most max |x|."""
        nonzero = self.counts.copy()
        nonzero[0] -= self.zeros
        return min(self.width * entropy_bins(nonzero), self.largest)


def histogram_percentile(counts: np.ndarray, width: float, q: float) -> float:
    """np.percentile's linear interpolation between order statistics, each taken at its bin's centre
    (so within half a bin width of the exact percentile)."""
    rank = q / 100 * (counts.sum() - 1)
    below, above = np.searchsorted(np.cumsum(counts), [math.floor(rank), math.ceil(rank)], side="right")
    low, high = (below + 0.5) * width, (above + 0.5) * width
    return float(low + (rank - math.floor(rank)) * (high - low))


def mse_bins(counts: np.ndarray, levels: int) -> int:
    """The bin count T (threshold T * width) of least expected squared error; see mse_threshold."""
    centres = np.arange(counts.size) + 0.5
    sums = [counts, counts * centres**2]
    below = [np.concatenate([[0.0], np.cumsum(v)]) for v in sums]  # over the first i bins
    above = [np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]]) for v in (*sums, counts * centres)]
    candidates = np.arange(1, counts.size + 1, dtype=np.float64)
    steps = candidates / levels
    clipped = above[1] - 2 * candidates * above[2] + candidates**2 * above[0]
    # Values under half a step round to 0 (error x**2); the others get uniform rounding error.
    small = np.minimum(np.ceil(steps / 2 - 0.5).astype(np.int64), candidates.astype(np.int64))
    inside = counts.sum() - above[0]
    rounding = below[1][small] + (inside - below[0][small]) * steps**2 / 12
    return int(candidates[np.argmin(clipped + rounding)])


def entropy_bins(counts: np.ndarray, levels: int = ENTROPY_LEVELS) -> int:
    """TensorRT's entropy threshold (Migacz, GTC 2017), in bins: of the candidates keeping the first
    `levels` or more bins, the one whose quantization loses the least information, KL(P || Q)
    (the largest among equals)."""
    candidates = np.arange(levels, counts.size + 1)
    divergences = np.array([clipping_divergence(counts, kept, levels) for kept in candidates])
    return int(candidates[::-1][np.argmin(divergences[::-1])])


def clipping_divergence(counts: np.ndarray, kept: int, levels: int) -> float:
    """KL(P || Q) for a threshold after `kept` bins. P: those bins, the outliers folded into the
    last one. Q: the same bins without outliers, summed over `levels` equal-width levels, each
    level's sum spread evenly over its non-empty bins; where P holds outliers that Q lost, Q gets
    a count of KL_SMOOTHING (the usual smoothing), so that clipping a few outliers costs little."""
    inside = counts[:kept].astype(np.float64)
    if inside.sum() == 0:
        return math.inf
    reference = inside.copy()
    reference[-1] += counts[kept:].sum()
    level = np.arange(kept) * levels // kept
    filled = inside > 0
    level_sums = np.bincount(level, weights=inside, minlength=levels)
    level_filled = np.bincount(level, weights=filled, minlength=levels)
    quantized = np.where(filled, level_sums[level] / np.maximum(level_filled[level], 1), 0.0)
    held = reference > 0
    quantized[held] = np.maximum(quantized[held], KL_SMOOTHING)
    p, q = reference[held] / reference.sum(), quantized[held] / quantized.sum()
    return float(np.sum(p * np.log(p / q)))


def float_outputs(graph: Graph, imported: ImportedModel, samples: list[dict[str, np.ndarray]]):
    yield from float_runs(graph, imported, samples, [])


# ---- calibration data -----------------------------------------------------------------------


def load_samples(path: str | Path, inputs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration samples of a .npy/.npz file, checked: numeric, real and finite values, and no
    float input that is zero in every sample (its range, and so its scale, would be 0)."""
    path = Path(path)
    loaded = open_numpy_file(path, "calibration", ".npy/.npz", ModelError)
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise UsageError(f"{path}: a .npy file feeds one input, the model has {len(inputs)}; use .npz")
        arrays = {inputs[0].name: loaded}
    else:
        missing = [t.name for t in inputs if t.name not in loaded.files]
        if missing:
            raise UsageError(f"{path}: no array named {', '.join(missing)} (has: {', '.join(loaded.files)})")
        arrays = {t.name: read_array(loaded, t.name, path, ModelError, t.dtype) for t in inputs}
    stacks = {t.name: as_samples(arrays[t.name], t, path) for t in inputs}
    count = min(len(s) for s in stacks.values())
    count = count if limit is None else min(count, limit)
    check_not_degenerate({name: stack[:count] for name, stack in stacks.items()}, inputs, path)
    return [{name: stack[i] for name, stack in stacks.items()} for i in range(count)]


def as_samples(array: np.ndarray, spec: TensorSpec, path: Path) -> np.ndarray:
    """A stack of samples for one input: one sample, stacked on a new axis, or on the batch axis.
    Its values must be real numbers, finite (also once converted to the input's dtype)."""
    shape = tuple(spec.shape)
    check_real_numbers(array, spec.name, path, ModelError, spec.dtype)
    if array.shape == shape:
        stack = array[None]
    elif array.shape[1:] == shape:
        stack = array
    elif shape and shape[0] == 1 and array.shape[1:] == shape[1:]:
        stack = array[:, None]
    else:
        raise UsageError(
            f"{path}: array '{spec.name}' has shape {list(array.shape)}; expected {list(shape)} or a stack of those"
        )
    check_finite(stack, spec, path, "")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = stack.astype(spec.dtype, copy=False)
    if converted is not stack:
        check_finite(converted, spec, path, f" once converted to {spec.dtype}")
    return converted


def check_finite(stack: np.ndarray, spec: TensorSpec, path: Path, when: str) -> None:
    """Refuse NaN or infinite values, naming the first sample (0-based) that holds one."""
    if stack.dtype.kind != "f" or stack.size == 0:
        return
    finite = np.isfinite(stack.reshape(len(stack), -1)).all(axis=1)
    if finite.all():
        return
    sample = int(np.argmin(finite))
    values = stack[sample]
    what = "NaN" if np.isnan(values).any() else "infinite"
    raise ModelError(
        f"{path}: input '{spec.name}', sample {sample} of {len(stack)} holds {what} values{when}; "
        "calibration data must be finite"
    )


def check_not_degenerate(stacks: dict[str, np.ndarray], inputs: list[TensorSpec], path: Path) -> None:
    """Refuse calibration data whose float inputs are all zero in every sample: the data then carries
    no signal, every activation range comes from the model's constants alone, and the input's zero
    range gives it no usable scale.

    One all-zero float input among others that carry data is allowed: a recurrent model's initial
    state (silero-vad's 'state'), an additive attention mask. Integer inputs (token or segment ids)
    are not scaled by their range and never count.
    """
    floats = [spec for spec in inputs if np.dtype(spec.dtype).kind == "f" and stacks[spec.name].size]
    if floats and not any(np.any(stacks[spec.name]) for spec in floats):
        names = ", ".join(f"'{spec.name}'" for spec in floats)
        count = len(stacks[floats[0].name])
        inputs_text = f"input {names} is" if len(floats) == 1 else f"inputs {names} are"
        raise ModelError(
            f"{path}: {inputs_text} zero in all {count} calibration samples, which gives no range to quantize "
            "with; calibrate on representative inputs"
        )


def random_samples(inputs: list[TensorSpec], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in inputs} for _ in range(count)]
