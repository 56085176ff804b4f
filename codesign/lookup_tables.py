"""Elementwise float functions of one int8 tensor, tabulated: 256 int8 entries per function.

HardSwish, HardSigmoid, SiLU, Sigmoid, Tanh, GELU, LeakyReLU ... arrive from the frontend as
short chains of elementwise Relax ops (x * clip(x * a + b, 0, 1), x * sigmoid(x), ...). When
every op of a chain depends on a single int8 tensor x (and on scalar constants), the chain's
output is a function of x's 256 possible values, so the host runs it as one table lookup on
int8 data instead of dequantize -> float ops -> quantize. The table holds exactly what the
float path would produce after quantizing: quantize(f(q * scale_x), scale_y).

The tables are computed by running the original ops: in numpy (`codesign.float_numpy`: float32
like TVM's kernels, but libm's exp and tanh where TVM approximates) where it runs every op of a
chain, as it does for all the corpus's activations; the other chains in one compiled Relax
function (building one for all of PP-OCRv4 det's 168 chains took 3-4 s of its compile).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from codesign.emit import emit_float_node
from codesign.float_numpy import run_node, supports_node
from codesign.graph import Graph
from codesign.target import target
from codesign.tvm_build import build_executable
from codesign.tvm_output import quiet_tvm

INT8_VALUES = np.arange(-128, 128, dtype=np.int32)

# Relax ops computed element by element (the scalar constants they take broadcast).
ELEMENTWISE_OPS = {
    "clamp",
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.power",
    "relax.maximum",
    "relax.minimum",
    "relax.clip",
    "relax.sigmoid",
    "relax.tanh",
    "relax.exp",
    "relax.log",
    "relax.sqrt",
    "relax.rsqrt",
    "relax.erf",
    "relax.abs",
    "relax.negative",
    "relax.square",
    "relax.nn.relu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.silu",
    "relax.nn.leakyrelu",
    "relax.nn.prelu",
    "relax.nn.softplus",
}


def quantize_float32(values: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray = 0) -> np.ndarray:
    """The integer program's quantize: clamp(floor(x * (1 / scale) + 0.5) + zero_point) in
    float32; channel scales and zero points (arrays) apply to the rows of `values`."""
    inv_scale = (1.0 / np.asarray(scale, dtype=np.float64)).astype(np.float32)
    inv_scale = inv_scale.reshape(-1, 1) if inv_scale.ndim else inv_scale
    offset = np.asarray(zero_point, dtype=np.float32)
    offset = offset.reshape(-1, 1) if offset.ndim else offset
    scaled = np.floor(values.astype(np.float32) * inv_scale + np.float32(0.5)) + offset
    return np.clip(scaled, -128, 127).astype(np.int8)


def table_rows(*scales: float | np.ndarray) -> int:
    """1 for a table of per-tensor scales, else the channel count (one row per channel)."""
    return max(np.size(scale) for scale in scales)


def tabulate(
    graph: Graph, chains: dict[str, tuple[str, list[str]]], scales: dict[str, float | np.ndarray], zero_points=None
) -> dict:
    """{output node: int8 table} for chains {output: (root, [graph nodes root -> output])}. `scales`
    holds the int8 scale of every root and output, `zero_points` an output's zero point where it
    has one; the table is (256,) when both are per tensor, else (channels, 256) with one row per
    channel."""
    zero_points = zero_points or {}
    values = tabulated_values(graph, chains, {name: scales[root] for name, (root, _) in chains.items()}, scales)
    tables = {}
    for name, rows in values.items():
        table = quantize_float32(rows, scales[name], zero_points.get(name, 0))
        tables[name] = table[0] if len(table) == 1 else table
    return tables


def tabulated_values(graph: Graph, chains: dict, root_scales: dict, out_scales: dict) -> dict[str, np.ndarray]:
    """{output node: (rows, 256) float values of the chain at the root's 256 int8 values}: one
    row, or one per channel where the root's or the output's scales or the chain's constants are
    per channel."""
    if not chains:
        return {}
    channels = {name: chain_channels(graph, steps) for name, (_, steps) in chains.items()}
    rows = {name: max(table_rows(root_scales[name], out_scales[name]), channels[name]) for name in chains}
    inputs = {name: _root_values(root_scales[name], rows[name]) for name in chains}
    # A chain with channel constants sees its rows as the channels (axis 1) of one tensor.
    ranks = {name: len(graph.nodes[name].shape) for name in chains}
    inputs = {name: _channel_map(inputs[name], ranks[name]) if channels[name] > 1 else inputs[name] for name in chains}
    in_numpy = {name for name, (_, steps) in chains.items() if all(supports_node(graph.nodes[s]) for s in steps)}
    results = {name: _numpy_chain(graph, *chains[name], name, inputs[name]) for name in in_numpy}
    rest = {name: chain for name, chain in chains.items() if name not in in_numpy}
    results.update(_compiled_chains(graph, rest, inputs))
    values = {}
    for name in chains:
        result = _channel_rows(results[name], ranks[name]) if channels[name] > 1 else results[name]
        values[name] = result.reshape(rows[name], 256)
    return values


def chain_channels(graph: Graph, steps: list[str]) -> int:
    """The channel count when a step of the chain takes a constant with one value per channel
    (a PReLU slope, a batch norm's affine): its table then has a row per channel; else 1."""
    counts = {channel_constant_count(graph.nodes[step]) for step in steps}
    return max(counts, default=1)


def channel_constant_count(node) -> int:
    """C when one of the node's constants holds one value per channel (axis 1) of its output
    (broadcast along axis 1 only: (C, 1, 1) or (1, C, 1, 1) on N, C, H, W; (1, C, 1) on N, C, T; a
    PReLU's (C,) along axis 1); 1 when every constant holds one value; 0 when a constant is neither."""
    count, shape = 1, node.shape or ()
    for kind, value in node.arg_slots:
        if kind != "expr" or not hasattr(getattr(value, "value", None), "numpy"):
            continue
        constant = value.value.numpy()
        if constant.size == 1:
            continue
        if len(shape) < 2 or constant.ndim > len(shape):
            return 0
        if node.op == "relax.nn.prelu":
            per_channel = constant.ndim == 1 and int(node.call.attrs.axis) % len(shape) == 1
        else:
            padded = (1,) * (len(shape) - constant.ndim) + constant.shape
            per_channel = all(size == 1 for axis, size in enumerate(padded) if axis != 1)
        if not per_channel or constant.size != shape[1]:
            return 0
        count = shape[1]
    return count


def _channel_map(rows: np.ndarray, rank: int) -> np.ndarray:
    """(C, 256) values as one tensor of `rank` axes with the channels on axis 1: (1, C, 1.., 256),
    or (256, C) for rank 2."""
    if rank == 2:
        return np.ascontiguousarray(rows.T)
    return rows.reshape(1, rows.shape[0], *([1] * (rank - 3)), 256)


def _channel_rows(values: np.ndarray, rank: int) -> np.ndarray:
    """_channel_map undone: (C, 256)."""
    return values.reshape(-1, values.shape[-1]).T if rank == 2 else values.reshape(-1, 256)


def _root_values(scale: float | np.ndarray, rows: int) -> np.ndarray:
    """The 256 int8 values dequantized (rows, 256): by the row's scale where scales are per channel."""
    row_scales = np.broadcast_to(np.asarray(scale, dtype=np.float32).reshape(-1, 1), (rows, 1))
    return np.ascontiguousarray(INT8_VALUES.astype(np.float32) * row_scales)


def _numpy_chain(graph: Graph, root: str, steps: list[str], output: str, values: np.ndarray) -> np.ndarray:
    """A chain's outputs for `values` (rows, 256), with every value as one sample of float_numpy
    (or one sample holding the channel map, where the chain has channel constants)."""
    results = {root: values[None] if values.ndim == len(graph.nodes[output].shape) else values.reshape(-1, 1)}
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        for step in steps:
            node = graph.nodes[step]
            results[step] = run_node(node, [results[i] for i in node.inputs])
    return results[output].reshape(values.shape)


def _compiled_chains(graph: Graph, chains: dict[str, tuple[str, list[str]]], inputs: dict) -> dict:
    """The chains' outputs from one compiled Relax function of their original ops."""
    if not chains:
        return {}
    bb = relax.BlockBuilder()
    params = {
        name: relax.Var(f"x_{i}", relax.TensorType(inputs[name].shape, "float32")) for i, name in enumerate(chains)
    }
    with bb.function("main", list(params.values())):
        with bb.dataflow():
            outputs = []
            for name, (root, steps) in chains.items():
                values = {root: params[name]}
                for step in steps:
                    node = graph.nodes[step]
                    values[step] = emit_float_node(bb, node, [values[i] for i in node.inputs])
                outputs.append(bb.emit(relax.op.reshape(values[name], inputs[name].shape)))
            result = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(result)
    with quiet_tvm():
        vm = relax.VirtualMachine(build_executable(bb.get(), target()), tvm.cpu())
    results = vm["main"](*[tvm.runtime.tensor(inputs[name]) for name in chains])
    return {name: result.numpy() for name, result in zip(chains, results)}
