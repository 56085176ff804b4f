"""The float graph run in numpy: calibration's executor for graphs made of common ops.

Calibration needs every tensor of the float graph over the calibration samples. Built with TVM,
the float module costs a ResNet-18 about 1.9 s of LLVM before its first sample, more than the
samples themselves take, and PP-OCR's classifier 10 s of its 22 s compile. A graph whose nodes
are all GEMM layers, clamps and the ops of NUMPY_OPS (the CNN classics: adds, pools, means,
reshapes, concatenations, softmax, nearest upsampling, ...) runs here instead, with no build:
convolutions as im2col matrix products (BLAS), all samples of a chunk at once. Any other op
sends the whole graph to TVM (`codesign.calibration.run_float`).

Arithmetic is float32 as in TVM's kernels, but BLAS sums a product in another order, and TVM's
tanh is a polynomial good to about 2e-5: tensors agree with TVM's to that (tests/test_float_numpy.py
checks every tensor against the TVM build), not bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from codesign.graph import Graph, Node, split_points

CHUNK_BYTES = 256 << 20  # activations of the samples run together, at most (about)
MAX_CHUNK_SAMPLES = 16

BINARY_OPS = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
    "relax.maximum": np.maximum,
    "relax.minimum": np.minimum,
}
UNARY_OPS = {
    "relax.nn.relu": lambda x: np.maximum(x, np.float32(0)),
    "relax.sigmoid": lambda x: (1 / (1 + np.exp(-x))).astype(x.dtype),
    "relax.tanh": np.tanh,
    "relax.exp": np.exp,
    "relax.sqrt": np.sqrt,
}
RESHAPES = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims")
POOLS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
OTHER_OPS = (
    "relax.permute_dims",
    "relax.mean",
    "relax.sum",
    "relax.concat",
    "relax.power",
    "relax.nn.softmax",
    "relax.nn.prelu",
)
DATA_OPS = ("relax.strided_slice", "relax.take", "relax.image.resize2d")
NUMPY_OPS = frozenset([*BINARY_OPS, *UNARY_OPS, *RESHAPES, *POOLS, *OTHER_OPS, *DATA_OPS])


def supports(graph: Graph) -> bool:
    """Whether every node of `graph` runs here (with the attributes it has)."""
    return all(supports_node(node) for node in graph.nodes.values())


def supports_node(node: Node) -> bool:
    """Whether this node runs here (with the attributes it has)."""
    if node.op in ("input", "gemm", "clamp"):
        return node.dtype == "float32" or node.op == "input"
    if node.op == "relax.nn.batch_norm":  # a tuple: the output, then the moving mean and variance
        return not node.call.attrs.training
    if node.op in ("relax.split", "TupleGetItem"):
        return True
    if node.op == "relax.take":  # constant, non-negative indices (every mode agrees on those)
        if node.dtype != "float32" or node.arg_slots[1][0] != "expr":
            return False
        indices = _operand(node.arg_slots[1], [], 1)
        return isinstance(indices, np.ndarray) and bool(np.all(indices >= 0))
    if node.op not in NUMPY_OPS or node.dtype != "float32" or node.shape is None:
        return False
    attrs = node.call.attrs
    if node.op.startswith("relax.nn.") and node.op.endswith("pool2d"):
        layout_ok = attrs.layout == "NCHW" and getattr(attrs, "out_layout", "NCHW") == "NCHW"
        if node.op == "relax.nn.adaptive_avg_pool2d":
            return layout_ok and tuple(node.shape[2:]) == (1, 1)
        if node.op == "relax.nn.avg_pool2d":
            return layout_ok and not attrs.ceil_mode and all(int(d) == 1 for d in attrs.dilation)
        return layout_ok
    if node.op == "relax.strided_slice":
        return all(step > 0 for step in _slice_ints(node.arg_slots[4]))
    if node.op == "relax.image.resize2d":
        return _nearest_upsampling(node) is not None
    return True


def _nearest_upsampling(node: Node) -> tuple[int, int] | None:
    """(row factor, column factor) of a resize2d that repeats each pixel a power of two times
    (nearest neighbour, asymmetric coordinates, floor rounding: the ONNX export of an integer
    upsample), or None for any other resize."""
    attrs = node.call.attrs
    if (attrs.layout, attrs.method) != ("NCHW", "nearest_neighbor") or attrs.rounding_method != "floor":
        return None
    if attrs.coordinate_transformation_mode != "asymmetric" or node.call.args[0].ty.shape is None:
        return None
    in_h, in_w = (int(node.call.args[0].ty.shape[axis]) for axis in (2, 3))
    out_h, out_w = node.shape[2:]
    factors = (out_h // in_h, out_w // in_w)
    powers_of_two = all(f >= 1 and f & (f - 1) == 0 for f in factors)
    return factors if powers_of_two and (in_h * factors[0], in_w * factors[1]) == (out_h, out_w) else None


def sample_chunks(graph: Graph, samples: list[dict[str, np.ndarray]]) -> Iterator[list[dict[str, np.ndarray]]]:
    """The samples in chunks whose activations take about CHUNK_BYTES at most."""
    sample_bytes = sum(4 * math.prod(node.shape) for node in graph.nodes.values() if node.shape)
    size = max(1, min(MAX_CHUNK_SAMPLES, CHUNK_BYTES // max(sample_bytes, 1)))
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def run_graph(graph: Graph, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every tensor of the graph for a chunk of samples, each with the samples on a new leading axis."""
    values = {name: np.stack([sample[name] for sample in samples]) for name in graph.inputs}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # inf and NaN as TVM gives them
        for node in graph.nodes.values():
            if node.op != "input":
                values[node.name] = run_node(node, [values[i] for i in node.inputs])
    return values


def run_node(node: Node, args: list[np.ndarray]) -> np.ndarray:
    if node.op == "TupleGetItem":
        return args[0][node.call.index]
    count = args[0].shape[0] if args else 1
    if node.op == "gemm":
        return _gemm(node, args)
    if node.op == "clamp":
        return _clamp(args[0], node.bounds)
    operands = [_operand(slot, args, count) for slot in node.arg_slots]
    if node.op in BINARY_OPS:
        left, right = (_with_rank(operand, len(node.shape)) for operand in operands[:2])
        return BINARY_OPS[node.op](left, right).astype(np.float32, copy=False)
    if node.op in UNARY_OPS:
        return UNARY_OPS[node.op](operands[0])
    if node.op in RESHAPES:
        return operands[0].reshape((count, *node.shape))
    attrs = node.call.attrs
    if node.op == "relax.permute_dims":
        rank = operands[0].ndim - 1
        axes = [int(a) % rank for a in attrs.axes] if attrs.axes is not None else list(range(rank))[::-1]
        return operands[0].transpose([0] + [a + 1 for a in axes])
    if node.op in ("relax.mean", "relax.sum"):
        return _reduce(node, operands[0])
    if node.op == "relax.concat":
        return np.concatenate(operands[0], axis=_shifted_axis(int(attrs.axis), operands[0][0].ndim))
    if node.op == "relax.power":
        base, exponent = (_with_rank(operand, len(node.shape)) for operand in operands[:2])
        return np.power(base, exponent).astype(np.float32, copy=False)
    if node.op == "relax.nn.prelu":
        return _prelu(node, operands[0])
    if node.op == "relax.nn.softmax":
        axis = _shifted_axis(int(attrs.axis), operands[0].ndim)
        exps = np.exp(operands[0] - operands[0].max(axis=axis, keepdims=True))
        return exps / exps.sum(axis=axis, keepdims=True)
    if node.op == "relax.strided_slice":
        return _strided_slice(node, operands[0])
    if node.op == "relax.image.resize2d":
        rows, cols = _nearest_upsampling(node)
        return operands[0].repeat(rows, axis=3).repeat(cols, axis=4)
    if node.op == "relax.nn.batch_norm":
        return (_batch_norm(node, operands), operands[3], operands[4])
    if node.op == "relax.take":
        indices = operands[1][0]  # a constant broadcast over the samples
        return np.take(operands[0], indices, axis=_shifted_axis(int(attrs.axis), operands[0].ndim))
    if node.op == "relax.split":
        return _split(node, operands[0])
    if node.op == "relax.nn.adaptive_avg_pool2d":
        return operands[0].mean(axis=(3, 4), keepdims=True, dtype=np.float32)
    return _pool(node, operands[0])


def _prelu(node: Node, x: np.ndarray) -> np.ndarray:
    """x where x >= 0, else x times the slope of its channel along attrs.axis (one slope: all)."""
    slope = node.arg_slots[1][1].value.numpy().astype(np.float32)
    shape = [1] * x.ndim
    if slope.size > 1:
        shape[_shifted_axis(int(node.call.attrs.axis), x.ndim)] = slope.size
    return np.where(x >= 0, x, x * slope.reshape(shape))


def _operand(slot, args: list[np.ndarray], count: int):
    """A node's tensor argument, or a constant one broadcast over the samples (a view)."""
    kind, value = slot
    if kind == "node":
        return args[value]
    if kind == "tuple":
        return [_operand(field, args, count) for field in value]
    data = getattr(value, "value", None)  # a relax.Constant's tensor
    if not hasattr(data, "numpy"):
        return value  # a shape or other attribute-like argument, unused here
    constant = data.numpy()
    return np.broadcast_to(constant, (count, *constant.shape))


def _with_rank(x: np.ndarray, rank: int) -> np.ndarray:
    """A sample stack with unit axes inserted after the sample axis up to `rank` tensor axes, as
    broadcasting aligns the tensors' own shapes (from the right)."""
    missing = rank - (x.ndim - 1)
    return x.reshape((x.shape[0],) + (1,) * missing + x.shape[1:]) if missing > 0 else x


def _batch_norm(node: Node, operands: list[np.ndarray]) -> np.ndarray:
    """Inference batch norm: (x - mean) / sqrt(var + epsilon) * gamma + beta along the node's axis."""
    x, gamma, beta, mean, var = operands[:5]
    attrs = node.call.attrs
    axis = _shifted_axis(int(attrs.axis), x.ndim)
    shape = [1] * x.ndim
    shape[axis] = -1

    def along_axis(values):
        return values[0].reshape(shape)  # a constant broadcast over the samples: the first is it

    y = (x - along_axis(mean)) / np.sqrt(along_axis(var) + np.float32(attrs.epsilon))
    if attrs.scale:
        y = y * along_axis(gamma)
    if attrs.center:
        y = y + along_axis(beta)
    return y.astype(np.float32, copy=False)


def _split(node: Node, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """relax.split: into equal sections (an int) or at the given indices, along the node's axis."""
    attrs = node.call.attrs
    return tuple(np.split(x, split_points(attrs), axis=_shifted_axis(int(attrs.axis), x.ndim)))


def _slice_ints(slot) -> list[int]:
    """A strided_slice argument (a tuple of integer PrimValues) as ints."""
    return [int(field.value) for _, field in slot[1]]


def _strided_slice(node: Node, x: np.ndarray) -> np.ndarray:
    """Relax's strided_slice with positive steps, on a batch of samples."""
    return strided_slice(node, x, samples_axis=True)


def strided_slice(node: Node, x: np.ndarray, samples_axis: bool = False) -> np.ndarray:
    """Relax's strided_slice with positive steps: numpy's slicing rules (negative bounds count
    from the end, bounds beyond the axis clip to it); `samples_axis`: x has a leading axis of
    samples before the node's axes."""
    axes, begins, ends, steps = (_slice_ints(slot) for slot in node.arg_slots[1:5])
    index = [slice(None)] * x.ndim
    for axis, begin, end, step in zip(axes, begins, ends, steps, strict=True):
        index[_shifted_axis(axis, x.ndim) if samples_axis else axis % x.ndim] = slice(begin, end, step)
    return x[tuple(index)]


def is_static_slice(node: Node) -> bool:
    """A strided_slice with constant bounds and positive steps (what `strided_slice` runs)."""
    return node.op == "relax.strided_slice" and supports_node(node)


def _shifted_axis(axis: int, ndim_with_samples: int) -> int:
    return axis % (ndim_with_samples - 1) + 1


def _clamp(x: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    if np.isfinite(low):
        x = np.maximum(x, np.float32(low))
    if np.isfinite(high):
        x = np.minimum(x, np.float32(high))
    return x


def _gemm(node: Node, args: list[np.ndarray]) -> np.ndarray:
    return _clamp(gemm_before_clamp(node.layer, args), node.layer.clamp)


def gemm_before_clamp(layer, args: list[np.ndarray]) -> np.ndarray:
    """A GEMM layer's output before its folded ReLU / Clip (sample stacks in and out)."""
    if layer.kind == "conv2d":
        y = conv2d(args[0], layer.weight, layer.strides, layer.padding, layer.dilation, layer.groups)
        bias_shape = (1, 1, -1, 1, 1)
    else:
        if layer.weight is not None:
            y = np.matmul(args[0], layer.weight)
        else:
            rank = max(args[0].ndim, args[1].ndim) - 1
            y = np.matmul(_with_rank(args[0], rank), _with_rank(args[1], rank))
        bias_shape = (-1,)
    if layer.out_scale != 1.0:
        y = y * np.float32(layer.out_scale)
    if layer.bias is not None:
        y = y + layer.bias.astype(np.float32).reshape(bias_shape)
    return y


COLUMNS_BUFFER_BYTES = 8 << 20  # im2col columns made at once: a few images of a large layer


def conv2d(x, weight, strides, padding, dilation, groups) -> np.ndarray:
    """NCHW conv2d of a sample stack [S, N, C, H, W] with OIHW weights, as im2col matrix products
    (columns ordered channel, kernel row, kernel column: OIHW's order, so the weight reshapes in
    place). Images go in chunks through one reused columns buffer of at most about
    COLUMNS_BUFFER_BYTES: a large layer's columns for a whole stack would be a fresh allocation of
    tens of MB, whose first touch costs more than the products."""
    samples, batch, channels, height, width = x.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    top, left, bottom, right = padding
    images = x.reshape(samples * batch, channels, height, width)
    out_h = (height + top + bottom - (kernel_h - 1) * dilation[0] - 1) // strides[0] + 1
    out_w = (width + left + right - (kernel_w - 1) * dilation[1] - 1) // strides[1] + 1
    kernels = weight.reshape(groups, out_channels // groups, -1).astype(np.float32, copy=False)
    y = np.empty((len(images), groups, out_channels // groups, out_h * out_w), dtype=np.float32)
    image_bytes = channels * kernel_h * kernel_w * out_h * out_w * 4
    chunk = max(1, min(len(images), COLUMNS_BUFFER_BYTES // image_bytes))
    columns = np.empty((chunk, channels, kernel_h, kernel_w, out_h, out_w), dtype=np.float32)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        padded = np.pad(part, ((0, 0), (0, 0), (top, bottom), (left, right)))
        for row, col in np.ndindex(kernel_h, kernel_w):
            columns[: len(part), :, row, col] = _shifted(
                padded, row * dilation[0], col * dilation[1], out_h, out_w, strides
            )
        products = columns[: len(part)].reshape(len(part), groups, group_channels * kernel_h * kernel_w, -1)
        np.matmul(kernels, products, out=y[start : start + len(part)])
    return y.reshape(samples, batch, out_channels, out_h, out_w)


def _shifted(padded: np.ndarray, row: int, col: int, out_h: int, out_w: int, strides) -> np.ndarray:
    """The input values a kernel tap at (row, col) meets at every output position (a strided view
    of a padded [..., H, W] array)."""
    rows = slice(row, row + (out_h - 1) * strides[0] + 1, strides[0])
    cols = slice(col, col + (out_w - 1) * strides[1] + 1, strides[1])
    return padded[..., rows, cols]


def _reduce(node: Node, x: np.ndarray) -> np.ndarray:
    attrs = node.call.attrs
    rank = x.ndim - 1
    axes = tuple(int(a) % rank + 1 for a in attrs.axis) if attrs.axis is not None else tuple(range(1, rank + 1))
    reduce = np.mean if node.op == "relax.mean" else np.sum
    return reduce(x, axis=axes, keepdims=bool(attrs.keepdims), dtype=np.float32)


def _pool(node: Node, x: np.ndarray) -> np.ndarray:
    """max_pool2d / avg_pool2d (NCHW) with the output size of the node's static shape (ceil mode's
    extra rows and columns are padding that no window takes a value from)."""
    attrs = node.call.attrs
    samples, batch, channels, height, width = x.shape
    kernel_h, kernel_w = (int(v) for v in attrs.pool_size)
    strides = tuple(int(v) for v in attrs.strides)
    dilation_h, dilation_w = (int(v) for v in attrs.dilation)
    top, left, bottom, right = (int(v) for v in attrs.padding)
    out_h, out_w = node.shape[2], node.shape[3]
    bottom = max(bottom, (out_h - 1) * strides[0] + (kernel_h - 1) * dilation_h + 1 - height - top)
    right = max(right, (out_w - 1) * strides[1] + (kernel_w - 1) * dilation_w + 1 - width - left)
    maximum = node.op == "relax.nn.max_pool2d"
    images = x.reshape(samples * batch, channels, height, width)
    padded = np.pad(images, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf if maximum else 0)
    offsets = np.ndindex(kernel_h, kernel_w)
    taps = (_shifted(padded, r * dilation_h, c * dilation_w, out_h, out_w, strides) for r, c in offsets)
    y = next(taps).copy()
    for tap in taps:
        np.maximum(y, tap, out=y) if maximum else np.add(y, tap, out=y)
    if not maximum:
        y /= window_counts(attrs, height, width, (kernel_h, kernel_w), (out_h, out_w))
    return y.reshape(samples, batch, channels, out_h, out_w)


def window_counts(attrs, height: int, width: int, kernel, out_shape) -> np.ndarray | np.float32:
    """avg_pool2d's divisors: the window's size with count_include_pad, else the input cells it covers."""
    if attrs.count_include_pad:
        return np.float32(kernel[0] * kernel[1])
    top, left, bottom, right = (int(v) for v in attrs.padding)
    strides = tuple(int(v) for v in attrs.strides)
    inside = np.pad(np.ones((1, 1, height, width), dtype=np.float32), ((0, 0), (0, 0), (top, bottom), (left, right)))
    counts = sum(_shifted(inside, r, c, *out_shape, strides) for r, c in np.ndindex(*kernel))
    return counts[0, 0]
