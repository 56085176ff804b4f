"""Structured channel pruning: pruned output channels leave the float Graph before quantization.

`prune_graph` turns a CompressionConfig's prune ratios into a smaller graph, so quantization,
lowering, the module, the simulator and the tuner all see the real, narrower layers.

Channel groups. A pruned conv / matmul loses output channels in every tensor that carries them,
up to the GEMM layers that read them (its consumers), traced forward through the ops that keep
channels apart:

- elementwise ops (clamps, activations, an op with a constant, whose per-channel constants are
  sliced), batch norm and PReLU (their vectors sliced), pools, a mean that keeps the channel axis;
- a depthwise conv (one input channel per group, as many outputs): its filters and bias are
  sliced and its groups shrink, so a MobileNet block's expansion conv prunes through it;
- a residual add of two tensors, or a squeeze-and-excitation gate multiplying the features by
  per-channel values: both sides must lose the same channels, so the layers feeding it (traced
  back through the same ops; the gate's excitation conv) form one group with one channel set,
  chosen on their summed scores; they must be given the same ratio;
- a concat along the channels: its output loses each input's pruned channels at that input's offset;
- a reshape of (N, C, H, W) features to (N, C*H*W) (Flatten): each pruned channel's H*W features go;
- a consumer: a conv (groups = 1) loses the matching weight input channels, a matmul the
  matching weight rows.

Channels are followed as labels: every tensor of a group gets, per channel, the id of the
source channel it carries (-1: not prunable), so concat offsets and flattened features need no
special case; a tensor keeps the channels whose label is -1 or kept.

Whatever is not safe to shrink is not pruned, with a printed note naming the layer and why (the
compile goes on, and the tuner's "prune every layer" knobs keep working): a layer whose channels
reach a model output; a grouped conv, pruned or as a consumer (its channels are tied to its
groups), and a depthwise conv pruned on its own (its channels are its producer's); a matmul of
two activations; an add meeting a tensor that no prunable GEMM produces; layers meeting at an
add with different ratios; any other op in the channels' way.

Methods (CompressionConfig.prune_method):
- "reconstruct" (default), after He et al., "Channel Pruning for Accelerating Very Deep Neural
  Networks" (ICCV 2017), with LASSO replaced by a measured criterion: a channel's score is its
  contribution to the consumers' pre-activation outputs on the calibration samples,
  sum ||X_c W_c||^2 over its consumers' input columns c; the lowest-scoring channels go. Each
  consumer's weights over the kept inputs (and a bias correction, which absorbs the mean of
  what was removed) are then refit by least squares so that on its pruned input X' it gives
  its unpruned pre-activation output X W, with a small ridge towards the original weights (a
  flattened matmul input has only one row per sample). X is the unpruned float graph's, from
  one run over the calibration samples (calibration.float_runs). X' is what the pruned graph
  gives the consumer once every consumer before it is refit: one numpy pass over the pruned
  graph refits each consumer just before it runs (`refit_on_pruned_inputs`), so a layer
  corrects the error of the pruning upstream, as He et al. do. The pass holds every sample's
  live activations at once, so it takes an even subset of the samples where they would pass
  REFIT_BYTES (PP-OCRv4 det at 640x640: 27 samples). A graph numpy cannot run
  (codesign.float_numpy) is refit on X instead of X'. PP-OCR's direction classifier, every conv
  at 25 %: top-1 73.0 % refit on X, 97.5 % on X' (scripts/bench_pruning.py).
- "magnitude": the channels of smallest L1 weight norm go, consumers keep their weights.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

import numpy as np
from tvm import relax

from codesign import float_numpy, progress
from codesign.calibration import float_runs
from codesign.compression import CompressionConfig
from codesign.graph import Graph, Node, constant_value
from codesign.importer import ImportedModel

UNARY_OPS = (
    "clamp",
    "relax.nn.relu",
    "relax.sigmoid",
    "relax.tanh",
    "relax.exp",
    "relax.erf",
    "relax.abs",
    "relax.negative",
    "relax.sqrt",
    "relax.nn.silu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.leakyrelu",
    "relax.nn.softplus",
)
POOL_OPS = ("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d")
BROADCAST_OPS = (
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
    "relax.power",
)
VECTOR_OPS = ("relax.nn.batch_norm", "relax.nn.prelu")  # per-channel 1-D constants along attrs.axis
RECONSTRUCTION_ROWS = 8192  # least-squares rows per consumer, spread over the samples
REFIT_BYTES = 1 << 30  # the in-order refit's live activations, all samples together, at most (about)
RIDGE = 1e-2  # towards the original weights, relative to the mean diagonal of X^T X
OUTPUT = "<output>"


class Unshrinkable(Exception):
    """Why a layer's channels cannot be removed."""


@dataclasses.dataclass
class ChannelGroup:
    """GEMM layers whose output channels are removed together, and every tensor carrying them."""

    sources: list[str]
    channels: int
    axes: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> its channel axis
    roles: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> source/pure/join/concat/flatten
    consumers: list[str] = dataclasses.field(default_factory=list)
    derived: set[str] = dataclasses.field(default_factory=set)  # behind a concat or flatten: other channels too
    followers: set[str] = dataclasses.field(default_factory=set)  # sources behind a gate: they take the group's ratio
    first_label: int = 0  # the label of its first channel (see channel_labels)


def prune_graph(
    graph: Graph,
    config: CompressionConfig,
    imported: ImportedModel,
    samples: list[dict[str, np.ndarray]],
    warn=lambda message: print(message, file=sys.stderr),
) -> Graph:
    """A copy of the graph without the pruned channels (see the module docstring)."""
    groups = channel_groups(graph, config, warn)
    if not groups:
        return graph
    pruned = copy.copy(graph)
    pruned.nodes = {name: _copied(node) for name, node in graph.nodes.items()}
    labels = channel_labels(pruned, groups)
    consumers = sorted({name for group in groups for name in group.consumers}, key=list(graph.nodes).index)
    activations = consumer_inputs(graph, imported, samples, consumers) if config.prune_method == "reconstruct" else {}
    kept = set()
    for group in groups:
        scores = channel_scores(pruned, group, labels, activations, config.prune_method)
        count = config.kept_channels(group.sources[0], group.channels)
        kept.update(group.first_label + np.sort(np.argsort(-scores, kind="stable")[:count]))
    kept_labels = np.array(sorted(kept), dtype=np.int64)
    in_order = bool(activations) and float_numpy.supports(pruned)
    kept_channels = {}  # consumer -> (its kept inputs, its kept outputs or None)
    for name in consumers:
        keep = _keeps(labels[pruned.nodes[name].inputs[0]], kept_labels)
        kept_channels[name] = (keep, _keeps(labels[name], kept_labels) if name in labels else None)
        _narrow_consumer(pruned.nodes[name], keep, {} if in_order else activations)
    for name, node_labels in labels.items():
        axis = next(group.axes[name] for group in groups if name in group.axes)
        _narrow_node(pruned.nodes[name], axis, _keeps(node_labels, kept_labels))
    if in_order:
        subset = refit_samples(pruned, samples)
        if len(subset) < len(samples):
            activations = consumer_inputs(graph, imported, subset, consumers)
        refit_on_pruned_inputs(graph, pruned, subset, consumers, activations, kept_channels)
    return pruned


def _copied(node: Node) -> Node:
    node = copy.copy(node)
    node.layer = copy.copy(node.layer)
    node.arg_slots = list(node.arg_slots)
    return node


def _keeps(labels: np.ndarray, kept_labels: np.ndarray) -> np.ndarray:
    return (labels < 0) | np.isin(labels, kept_labels)


# ---- channel groups -------------------------------------------------------------------------


def channel_groups(graph: Graph, config: CompressionConfig, warn) -> list[ChannelGroup]:
    """The groups of the layers to prune; a layer that cannot shrink is noted and left whole."""
    users = graph.consumers()
    groups: list[ChannelGroup] = []
    position = {name: index for index, name in enumerate(graph.nodes)}
    for name, ratio in sorted(config.prune.items(), key=lambda item: position.get(item[0], -1)):
        if ratio == 0 or any(name in group.sources and name not in group.followers for group in groups):
            continue
        follows = next((group for group in groups if name in group.axes), None)
        if follows is not None:  # a depthwise conv or a gate's excitation keeps the features' channels
            if ratio != config.prune.get(follows.sources[0], 0.0):
                warn(f"note: {name} keeps the channels of {follows.sources[0]}; its own prune ratio is not used")
            continue
        try:
            group = trace_group(graph, users, name)
            leaders = sorted(set(group.sources) - group.followers, key=position.__getitem__)
            ratios = {s: config.prune.get(s, 0.0) for s in leaders}
            if len(set(ratios.values())) > 1:
                shared = ", ".join(f"{source} {ratio}" for source, ratio in ratios.items())
                raise Unshrinkable(f"the layers meeting at a residual add must have the same prune ratio ({shared})")
        except Unshrinkable as reason:
            warn(f"note: not pruning {name}: {reason}")
            continue
        if config.kept_channels(name, group.channels) < group.channels:
            groups.append(group)
    first = 0
    for group in groups:
        group.first_label, first = first, first + group.channels
    return groups


def prunable_layers(graph: Graph) -> list[str]:
    """The GEMM layers whose own prune ratio can act: those leading a channel group when every
    layer is pruned (not a depthwise conv or gate excitation following another's channels, nor a
    layer that cannot shrink)."""
    layers = [node.name for node in graph.gemm_nodes()]
    groups = channel_groups(graph, CompressionConfig(prune=dict.fromkeys(layers, 0.5)), lambda message: None)
    leaders = {name for group in groups for name in group.sources if name not in group.followers}
    return [name for name in layers if name in leaders]


def trace_group(graph: Graph, users: dict[str, list[str]], start: str) -> ChannelGroup:
    """The channel group of layer `start`: its channels followed forward to their consumers, and
    back from every residual add to the other layers feeding it."""
    group = ChannelGroup([], _source_channels(graph.nodes[start]))
    pending = [start]
    while pending:
        source = pending.pop()
        if source in group.sources:
            continue
        _source_channels(graph.nodes[source])  # prunable (an add's two sides have the same channels)
        group.sources.append(source)
        group.axes[source], group.roles[source] = _source_axis(graph.nodes[source]), "source"
        _trace_forward(graph, users, group, source, pending)
    return group


def _source_channels(node: Node) -> int:
    layer = node.layer
    if layer.weight is None:
        raise Unshrinkable(f"'{node.name}' multiplies two activations (no weights to prune)")
    if layer.kind == "conv2d" and layer.groups != 1:
        if layer.groups == layer.out_channels:
            raise Unshrinkable(f"'{node.name}' is a depthwise convolution (prune the layer feeding it)")
        raise Unshrinkable(f"'{node.name}' is a grouped convolution")
    return layer.out_channels


def _source_axis(node: Node) -> int:
    return 1 if node.layer.kind == "conv2d" else len(node.shape) - 1


def _trace_forward(graph: Graph, users, group: ChannelGroup, source: str, pending: list[str]) -> None:
    frontier = [source]
    while frontier:
        producer = frontier.pop()
        for user in users[producer]:
            if user == OUTPUT:
                raise Unshrinkable(f"its channels reach the model output ('{producer}')")
            if user in group.axes or user in group.consumers:
                continue
            axis = group.axes[producer]  # the ops followed keep the channel axis where it is
            role = channel_role(graph, graph.nodes[user], producer, axis)
            if role == "consumer":
                group.consumers.append(user)
                continue
            if role == "join":
                if producer in group.derived:
                    raise Unshrinkable(f"'{user}' adds a concatenated or flattened tensor")
                for other in set(graph.nodes[user].inputs) - {producer}:
                    sources = _sources_behind(graph, other, axis)
                    if math.prod(graph.nodes[other].shape) < math.prod(graph.nodes[user].shape):
                        group.followers.update(sources)  # a gate's per-channel values
                    pending.extend(sources)
            if role in ("concat", "flatten") or producer in group.derived:
                group.derived.add(user)
            group.axes[user], group.roles[user] = axis, role
            frontier.append(user)


def _sources_behind(graph: Graph, name: str, axis: int) -> list[str]:
    """The GEMM layers whose channels reach `name` through channel-keeping ops and adds."""
    node = graph.nodes[name]
    if node.op == "gemm" and _is_depthwise(graph, node, axis):
        return _sources_behind(graph, node.inputs[0], axis)
    if node.op == "gemm":
        return [name]
    if node.op == "input":
        raise Unshrinkable(f"a residual add meets the model input '{name}'")
    role = channel_role(graph, node, node.inputs[0], axis) if node.inputs else "none"
    if role == "pure":
        return _sources_behind(graph, node.inputs[0], axis)
    if role == "join":
        return [s for i in node.inputs for s in _sources_behind(graph, i, axis)]
    raise Unshrinkable(f"a residual add meets '{name}' ({node.op}), which no prunable layer produces")


def channel_role(graph: Graph, node: Node, producer: str, axis: int) -> str:
    """How `node` treats the channels (on `axis`) of its input `producer`: 'consumer' | 'pure' |
    'join' | 'concat' | 'flatten'; Unshrinkable if it mixes them."""
    in_shape = graph.nodes[producer].shape
    if node.op == "gemm" and _is_depthwise(graph, node, axis):
        return "pure"
    if node.op == "gemm":
        return _consumer_role(node, producer, axis, in_shape)
    if node.op == "TupleGetItem" and graph.nodes[producer].op == "relax.nn.batch_norm" and node.call.index == 0:
        return "pure"
    same_shape = node.shape == in_shape and len(node.inputs) == 1
    if node.op in UNARY_OPS and same_shape:
        return "pure"
    if node.op in VECTOR_OPS and node.inputs == [producer] and _normalized(node.call.attrs.axis, in_shape) == axis:
        if all(_vector_fits(value, in_shape[axis]) for value in _constants(node)):
            return "pure"
    if node.op in POOL_OPS and node.call.attrs.layout == "NCHW" and axis == 1:
        return "pure"
    if node.op == "relax.mean" and _mean_keeps(node, in_shape, axis):
        return "pure"
    if _joins(graph, node, axis):
        return "join"
    if node.op in BROADCAST_OPS and same_shape:
        if all(_broadcast_fits(value, axis, in_shape) for value in _constants(node)):
            return "pure"
    if node.op == "relax.concat" and _normalized(node.call.attrs.axis, in_shape) == axis:
        return "concat"
    if node.op == "relax.reshape" and node.shape == (*in_shape[:axis], math.prod(in_shape[axis:])):
        return "flatten"
    raise Unshrinkable(f"'{node.name}' ({node.op.removeprefix('relax.')}) does not keep its input's channels apart")


def _is_depthwise(graph: Graph, node: Node, axis: int) -> bool:
    """A conv filtering each input channel alone into one output channel."""
    layer = node.layer
    if layer.kind != "conv2d" or axis != 1:
        return False
    return layer.groups == graph.nodes[node.inputs[0]].shape[1] == layer.out_channels > 1


def _joins(graph: Graph, node: Node, axis: int) -> bool:
    """Does the op combine two activations channel by channel: an add or a multiply of equal
    shapes, or a multiply by per-channel values (a squeeze-and-excitation gate)?"""
    if node.op not in ("relax.add", "relax.multiply") or len(node.inputs) != 2:
        return False
    shapes = [graph.nodes[i].shape for i in node.inputs]
    if all(shape == node.shape for shape in shapes):
        return True
    if node.op != "relax.multiply" or node.shape not in shapes:
        return False
    gate = min(shapes, key=math.prod)
    return (
        len(gate) == len(node.shape)
        and gate[axis] == node.shape[axis]
        and all(size == 1 for i, size in enumerate(gate) if i not in (0, axis))
    )


def _consumer_role(node: Node, producer: str, axis: int, in_shape) -> str:
    layer = node.layer
    if layer.weight is None or node.inputs[0] != producer:
        raise Unshrinkable(f"its consumer '{node.name}' multiplies two activations")
    if layer.kind == "conv2d" and layer.groups != 1:
        raise Unshrinkable(f"its consumer '{node.name}' is a grouped (or depthwise) convolution")
    if axis != (1 if layer.kind == "conv2d" else len(in_shape) - 1):
        raise Unshrinkable(f"its consumer '{node.name}' reads its channels on another axis")
    return "consumer"


def _normalized(axis, shape) -> int:
    return int(axis) % len(shape)


def _mean_keeps(node: Node, in_shape, axis: int) -> bool:
    axes = [_normalized(a, in_shape) for a in node.call.attrs.axis] if node.call.attrs.axis is not None else []
    return bool(axes) and axis not in axes and (bool(node.call.attrs.keepdims) or min(axes) > axis)


def _constants(node: Node) -> list[np.ndarray]:
    return [value for index in range(len(node.arg_slots)) if (value := constant_value(node, index)) is not None]


def _vector_fits(value: np.ndarray, channels: int) -> bool:
    return value.ndim == 1 and value.shape[0] in (1, channels)


def _aligned_axis(value: np.ndarray, axis: int, ndim: int) -> int | None:
    """The axis of a broadcast constant that lines up with the tensor's channel axis (None: none)."""
    aligned = axis - (ndim - value.ndim)
    return aligned if aligned >= 0 else None


def _broadcast_fits(value: np.ndarray, axis: int, shape) -> bool:
    """A constant that broadcasts against the tensor, with one value or one per channel on its axis."""
    aligned = _aligned_axis(value, axis, len(shape))
    return value.ndim <= len(shape) and (aligned is None or value.shape[aligned] in (1, shape[axis]))


# ---- channel labels -------------------------------------------------------------------------


def channel_labels(graph: Graph, groups: list[ChannelGroup]) -> dict[str, np.ndarray]:
    """Per tensor of any group, the source channel each of its channels carries (-1: none)."""
    labels: dict[str, np.ndarray] = {}
    roles = {name: (group, role) for group in groups for name, role in group.roles.items()}
    for name, node in graph.nodes.items():
        if name not in roles:
            continue
        group, role = roles[name]
        axis = group.axes[name]
        if role == "source":
            labels[name] = group.first_label + np.arange(group.channels)
        elif role == "concat":
            labels[name] = np.concatenate([_labels_of(graph, labels, i, axis) for i in node.inputs])
        elif role == "flatten":
            in_shape = graph.nodes[node.inputs[0]].shape
            labels[name] = np.repeat(labels[node.inputs[0]], math.prod(in_shape[axis + 1 :]))
        else:  # pure or join: the input's channels (both sides of a join carry the same)
            labels[name] = next(labels[i] for i in node.inputs if i in labels)
    return labels


def _labels_of(graph: Graph, labels: dict, name: str, axis: int) -> np.ndarray:
    return labels[name] if name in labels else np.full(graph.nodes[name].shape[axis], -1)


# ---- narrowing ------------------------------------------------------------------------------


def _narrow_node(node: Node, axis: int, keep: np.ndarray) -> None:
    """A tensor of a group without its pruned channels: shape, constants, a pruned layer's outputs."""
    if node.op == "gemm":
        layer = node.layer
        layer.weight = layer.weight[keep] if layer.kind == "conv2d" else layer.weight[:, keep]
        layer.bias = layer.bias[keep] if layer.bias is not None else None
        if layer.kind == "conv2d" and layer.groups > 1:  # depthwise: one group per kept channel
            layer.groups = int(keep.sum())
    elif node.op in VECTOR_OPS:
        node.arg_slots = [_sliced_vector(slot, keep) for slot in node.arg_slots]
    elif node.op in BROADCAST_OPS:
        ndim = len(node.shape)
        node.arg_slots = [_sliced_broadcast(slot, axis, ndim, keep) for slot in node.arg_slots]
    if node.shape is not None:
        node.shape = (*node.shape[:axis], int(keep.sum()), *node.shape[axis + 1 :])
    if node.op == "relax.reshape":
        node.arg_slots[1] = ("expr", relax.ShapeExpr(list(node.shape)))


def _slot_array(slot) -> np.ndarray | None:
    """The constant tensor of an argument slot (see graph._arg_slot), if it holds one."""
    kind, value = slot
    if kind == "expr" and hasattr(value, "value") and hasattr(value.value, "numpy"):
        return value.value.numpy()
    return None


def _sliced_vector(slot, keep: np.ndarray):
    array = _slot_array(slot)
    if array is None or array.ndim != 1 or array.shape[0] != keep.size:
        return slot
    return ("expr", relax.const(array[keep]))


def _sliced_broadcast(slot, axis: int, ndim: int, keep: np.ndarray):
    array = _slot_array(slot)
    aligned = _aligned_axis(array, axis, ndim) if array is not None else None
    if aligned is None or array.shape[aligned] != keep.size:
        return slot
    return ("expr", relax.const(np.compress(keep, array, axis=aligned)))


def refit_samples(graph: Graph, samples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The samples the in-order refit runs together: all, or as many as keep the graph's live
    activations within about REFIT_BYTES, spread evenly over them."""
    count = min(len(samples), max(1, REFIT_BYTES // max(_live_bytes_per_sample(graph), 1)))
    return [samples[i] for i in np.unique(np.linspace(0, len(samples) - 1, count).round().astype(int))]


def _live_bytes_per_sample(graph: Graph) -> int:
    """The most float32 bytes one sample's tensors hold at once when the graph runs in order."""
    nodes = list(graph.nodes.values())
    last_use = {producer: index for index, node in enumerate(nodes) for producer in node.inputs}
    live, peak = {}, 0
    for index, node in enumerate(nodes):
        live[node.name] = 4 * math.prod(node.shape) if node.shape else 0
        peak = max(peak, sum(live.values()))
        for producer in set(node.inputs):
            if last_use[producer] == index:
                live.pop(producer, None)
    return peak


def refit_on_pruned_inputs(
    graph: Graph,
    pruned: Graph,
    samples: list[dict[str, np.ndarray]],
    consumers: list[str],
    activations: dict[str, np.ndarray],
    kept_channels: dict[str, tuple],
) -> None:
    """Refit each consumer, in graph order, so that on the inputs the pruned graph gives it (its
    pruned and refitted upstream layers included) it reproduces the unpruned layer's output on
    the unpruned inputs (`activations`), as He et al. do: one numpy pass over the pruned graph,
    each consumer refitted just before it runs. Rows are taken at the positions
    `consumer_inputs` took them (the same generator per consumer)."""
    per_sample = _rows_per_sample(samples)
    last_use = {producer: index for index, node in enumerate(pruned.nodes.values()) for producer in node.inputs}
    values = {name: np.stack([sample[name] for sample in samples]) for name in pruned.inputs}
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for index, node in enumerate(pruned.nodes.values()):
            if node.op == "input":
                continue
            if node.name in activations:
                x = values[node.inputs[0]]
                rng = _rows_generator(consumers, node.name)
                rows = np.concatenate([_input_rows(node.layer, one, per_sample, rng) for one in x]).astype(np.float64)
                unpruned = graph.nodes[node.name].layer
                _refit(node.layer, unpruned, rows, activations[node.name], *kept_channels[node.name])
            values[node.name] = float_numpy.run_node(node, [values[i] for i in node.inputs])
            for producer in set(node.inputs):
                if last_use[producer] == index and producer not in pruned.outputs:
                    del values[producer]


def _refit(layer, unpruned, rows: np.ndarray, unpruned_rows: np.ndarray, inputs_kept, outputs_kept) -> None:
    """`layer`'s weights and bias fitted so its output on `rows` matches the unpruned layer's on
    `unpruned_rows`, ridge-regularised towards the unpruned weights of its kept inputs."""
    weight = weight_matrix(unpruned)
    bias = unpruned.bias if unpruned.bias is not None else np.zeros(weight.shape[1], np.float32)
    if outputs_kept is not None:
        weight, bias = weight[:, outputs_kept], bias[outputs_kept]
    fitted, bias_change = least_squares(rows, unpruned_rows @ weight, weight[_columns(unpruned, inputs_kept)])
    _set_weights(layer, fitted)
    layer.bias = (bias + bias_change).astype(np.float32)


def _narrow_consumer(node: Node, keep: np.ndarray, activations: dict[str, np.ndarray]) -> None:
    """A consumer without the pruned input channels: its weights refit by least squares when
    reconstructing (`activations` holds its input rows), else only sliced."""
    layer = node.layer
    columns = _columns(layer, keep)
    if node.name in activations:
        x = activations[node.name]
        _refit(layer, copy.copy(layer), x[:, columns], x, keep, None)
    else:
        _set_weights(layer, weight_matrix(layer)[columns])


def _set_weights(layer, matrix: np.ndarray) -> None:
    """A GEMM layer's weights from a (input columns, outputs) matrix: weight_matrix's inverse."""
    if layer.kind == "conv2d":
        kernel_h, kernel_w = layer.weight.shape[2:]
        matrix = matrix.T.reshape(matrix.shape[1], -1, kernel_h, kernel_w)
    layer.weight = np.ascontiguousarray(matrix, dtype=np.float32)


def least_squares(rows: np.ndarray, target: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias change) whose output on `rows` best matches `target`, ridge-regularised
    towards the weights `start`."""
    design = np.hstack([rows, np.ones((len(rows), 1))])
    start = np.vstack([start, np.zeros((1, start.shape[1]))])
    gram = design.T @ design
    ridge = RIDGE * np.trace(gram) / len(gram)
    solution = np.linalg.solve(gram + ridge * np.eye(len(gram)), design.T @ target + ridge * start)
    return solution[:-1], solution[-1]


# ---- channel selection ----------------------------------------------------------------------


def channel_scores(graph: Graph, group: ChannelGroup, labels, activations, method: str) -> np.ndarray:
    """Per channel of the group, how much it matters: its summed contribution to the consumers'
    outputs (reconstruct), or its sources' L1 weight norm (magnitude)."""
    if method == "magnitude":
        return sum(_l1_norms(graph.nodes[source].layer) for source in group.sources)
    scores = np.zeros(group.channels)
    for name in group.consumers:
        node = graph.nodes[name]
        weight, x = weight_matrix(node.layer), activations[name]
        columns = _columns(node.layer, labels[node.inputs[0]])
        for channel in range(group.channels):
            mine = columns == group.first_label + channel
            scores[channel] += np.square(x[:, mine] @ weight[mine]).sum()
    return scores


def _l1_norms(layer) -> np.ndarray:
    return np.abs(layer.weight).sum(axis=(1, 2, 3) if layer.kind == "conv2d" else 0)


def weight_matrix(layer) -> np.ndarray:
    """A GEMM layer's weights as (input columns, outputs): a conv's columns are (channel, row, column)."""
    if layer.kind == "conv2d":
        return layer.weight.reshape(layer.weight.shape[0], -1).T.astype(np.float64)
    return layer.weight.astype(np.float64)


def _columns(layer, per_input_channel: np.ndarray) -> np.ndarray:
    """A per-input-channel array spread over the layer's input columns."""
    if layer.kind == "conv2d":
        return np.repeat(per_input_channel, layer.weight.shape[2] * layer.weight.shape[3])
    return per_input_channel


def consumer_inputs(
    graph: Graph, imported: ImportedModel, samples: list[dict[str, np.ndarray]], consumers: list[str]
) -> dict[str, np.ndarray]:
    """Rows of each consumer's input (a conv's: patches at random output positions) over the
    samples, from one float run of the unpruned graph."""
    taps = sorted({graph.nodes[name].inputs[0] for name in consumers}, key=list(graph.nodes).index)
    per_sample = _rows_per_sample(samples)
    generators = {name: _rows_generator(consumers, name) for name in consumers}
    rows: dict[str, list[np.ndarray]] = {name: [] for name in consumers}
    skip = len(graph.outputs)
    progress.stage("prune", len(samples))
    for outputs in float_runs(graph, imported, samples, taps):
        values = dict(zip(taps, outputs[skip:]))
        for name in consumers:
            node = graph.nodes[name]
            rows[name].append(_input_rows(node.layer, values[node.inputs[0]], per_sample, generators[name]))
        progress.advance()
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in rows.items()}


def _rows_per_sample(samples: list) -> int:
    return max(1, math.ceil(RECONSTRUCTION_ROWS / len(samples)))


def _rows_generator(consumers: list[str], name: str) -> np.random.Generator:
    """The random positions a consumer's rows are taken at: the same for the unpruned and the
    pruned graph's inputs."""
    return np.random.default_rng(consumers.index(name))


def _input_rows(layer, x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` random rows of what the layer multiplies by its weight matrix."""
    if layer.kind != "conv2d":
        flat = x.reshape(-1, x.shape[-1])
        return flat[rng.choice(len(flat), size=min(count, len(flat)), replace=False)]
    top, left, bottom, right = layer.padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    kernel_h, kernel_w = layer.weight.shape[2:]
    (stride_h, stride_w), (dilation_h, dilation_w) = layer.strides, layer.dilation
    out_h = (padded.shape[2] - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (padded.shape[3] - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    positions = x.shape[0] * out_h * out_w
    batch, row, col = np.unravel_index(
        rng.choice(positions, size=min(count, positions), replace=False), (x.shape[0], out_h, out_w)
    )
    rows = row[:, None] * stride_h + np.arange(kernel_h) * dilation_h
    cols = col[:, None] * stride_w + np.arange(kernel_w) * dilation_w
    channels = np.arange(x.shape[1])
    patches = padded[
        batch[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
    ]
    return patches.reshape(len(batch), -1)
