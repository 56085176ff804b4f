"""Stage 2, graph: the imported Relax function as a dataflow graph of layers (Graph).

GEMM layers (conv2d with constant weights, matmul/dense) become `GemmLayer` nodes carrying
float numpy parameters, with BatchNorm, bias add, positive scalar scaling and ReLU/Clip folded
in. Every other op stays a `HostOp` that keeps its original Relax call for re-emission.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from codesign.errors import ModelError
from codesign.importer import ImportedModel, static_shape

FLOAT_MIN, FLOAT_MAX = float("-inf"), float("inf")


def channel_axis(shape: tuple[int, ...]) -> int | None:
    """The axis of a tensor's channels, where activations may get one scale per channel: axis 1
    of NCHW feature maps. (A matmul's reduction axis would fold the same way; measured on
    PP-OCRv4's recogniser it gained nothing, so 2-D and 3-D tensors keep one scale.)"""
    return 1 if len(shape) == 4 else None


def channel_shaped(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Per-channel values reshaped to broadcast against a tensor of `shape`."""
    target = [1] * len(shape)
    target[channel_axis(shape)] = -1
    return values.reshape(target)


@dataclasses.dataclass
class GemmLayer:
    """conv2d (weight OIHW) or matmul (weight K x N, or None when both operands are tensors)."""

    kind: str  # "conv2d" | "matmul"
    weight: np.ndarray | None
    bias: np.ndarray | None = None
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)
    clamp: tuple[float, float] = (FLOAT_MIN, FLOAT_MAX)  # folded ReLU / Clip, in real values
    out_scale: float = 1.0  # positive scalar multiply folded after a run-time matmul

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0] if self.kind == "conv2d" else self.weight.shape[1]


@dataclasses.dataclass
class Node:
    name: str
    inputs: list[str]  # producer node names
    shape: tuple[int, ...] | None  # None for tuple-valued ops
    dtype: str
    op: str  # "input", "gemm", or a Relax op name ("relax.nn.max_pool2d", "TupleGetItem", ...)
    layer: GemmLayer | None = None
    bounds: tuple[float, float] | None = None  # op "clamp": ReLU, Clip, maximum/minimum by a scalar
    call: relax.Expr | None = None  # original Relax value of a host op
    arg_slots: list = dataclasses.field(default_factory=list)  # see _arg_slot


@dataclasses.dataclass
class Graph:
    nodes: dict[str, Node]  # topological order
    inputs: list[str]
    outputs: list[str]

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.nodes.values():
            for producer in node.inputs:
                users[producer].append(node.name)
        for name in self.outputs:
            users[name].append("<output>")
        return users

    def gemm_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == "gemm"]


# ---- extraction -----------------------------------------------------------------------------


def extract_graph(imported: ImportedModel) -> Graph:
    func = imported.mod["main"]
    nodes: dict[str, Node] = {}
    alias: dict[str, str] = {}
    tuples: dict[str, relax.Tuple] = {}
    for param, spec in zip(func.params, imported.inputs, strict=True):
        # Named as the ONNX model names it: Relax spells 'x.1' as 'x_1'.
        nodes[spec.name] = Node(spec.name, [], static_shape(param.ty), str(param.ty.dtype), "input")
        if param.name != spec.name:
            alias[param.name] = spec.name
    for block in func.body.blocks:
        for binding in block.bindings:
            if not isinstance(binding, relax.VarBinding):
                raise ModelError(f"{imported.source}: unsupported Relax binding {type(binding).__name__}")
            name, value = binding.var.name, binding.value
            if isinstance(value, relax.Var):
                alias[name] = alias.get(value.name, value.name)
                continue
            if isinstance(value, relax.Tuple) and all(isinstance(f, relax.Var) for f in value.fields):
                tuples[name] = value  # the model's outputs, gathered by the frontend
                continue
            nodes[name] = _host_node(name, value, binding.var.ty, alias, imported.source)
    body = func.body.body
    if isinstance(body, relax.Var) and body.name in tuples:
        body = tuples[body.name]
    outputs = _output_names(body, alias, imported.source)
    graph = Graph(nodes, [spec.name for spec in imported.inputs], outputs)
    for node in list(graph.nodes.values()):
        _lift_gemm(node, graph)
    simplify(graph)
    _rename_layers(graph)
    return graph


def _output_names(body, alias, source) -> list[str]:
    fields = body.fields if isinstance(body, relax.Tuple) else [body]
    if not all(isinstance(f, relax.Var) for f in fields):
        raise ModelError(f"{source}: model outputs must be tensors")
    return [alias.get(f.name, f.name) for f in fields]


def _host_node(name, value, ty, alias, source) -> Node:
    if isinstance(value, relax.TupleGetItem):
        producer = alias.get(value.tuple_value.name, value.tuple_value.name)
        return Node(name, [producer], static_shape(ty), _dtype(ty), "TupleGetItem", call=value)
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        raise ModelError(f"{source}: unsupported Relax expression {type(value).__name__} for '{name}'")
    inputs: list[str] = []
    slots = [_arg_slot(arg, inputs, alias) for arg in value.args]
    if isinstance(ty, relax.TensorType) and static_shape(ty) is None:
        raise ModelError(f"{source}: op {value.op.name} ('{name}') has a dynamic output shape")
    node = Node(name, inputs, static_shape(ty), _dtype(ty), value.op.name, call=value, arg_slots=slots)
    bounds = _clamp_bounds(node)
    if bounds is not None:
        node.op, node.bounds, node.call, node.arg_slots = "clamp", bounds, None, []
        node.inputs = node.inputs[:1]
    return node


def _clamp_bounds(node: Node) -> tuple[float, float] | None:
    """Real-valued bounds when the op clamps its one tensor input to constants."""
    if node.op == "relax.nn.relu":
        return (0.0, FLOAT_MAX)
    if node.op == "relax.clip" and len(node.inputs) == 1:
        return (_scalar_arg(node, 1), _scalar_arg(node, 2))
    if node.op != "relax.call_tir" or len(node.inputs) != 1:
        return None
    # The ONNX frontend lowers Clip with tensor bounds to call_tir(maximum|minimum, (x, bound)).
    callee = node.arg_slots[0][1]
    kind, fields = node.arg_slots[1]
    callee_name = getattr(callee, "name_hint", "").rstrip("0123456789")
    if callee_name not in ("maximum", "minimum") or kind != "tuple" or len(fields) != 2:
        return None
    if fields[0] != ("node", 0) or fields[1][0] != "expr":
        return None
    bound = getattr(fields[1][1], "value", None)
    if bound is None or not hasattr(bound, "numpy") or bound.numpy().size != 1:
        return None
    value = float(bound.numpy().reshape(()))
    return (value, FLOAT_MAX) if callee_name == "maximum" else (FLOAT_MIN, value)


def _arg_slot(arg, inputs: list[str], alias):
    """('node', i) for the i-th tensor input, ('tuple', [slots]) or ('expr', expr) kept verbatim."""
    if isinstance(arg, relax.Var):
        inputs.append(alias.get(arg.name, arg.name))
        return ("node", len(inputs) - 1)
    if isinstance(arg, relax.Tuple):
        return ("tuple", [_arg_slot(field, inputs, alias) for field in arg.fields])
    return ("expr", arg)


def _dtype(ty) -> str:
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else "tuple"


def constant_value(node: Node, slot_index: int) -> np.ndarray | None:
    if slot_index >= len(node.arg_slots):
        return None
    kind, value = node.arg_slots[slot_index]
    if kind == "expr" and hasattr(value, "value") and hasattr(value.value, "numpy"):
        return value.value.numpy()
    return None


def _lift_gemm(node: Node, graph: Graph) -> None:
    """relax conv2d / matmul with supported layouts -> a GemmLayer node."""
    if node.op == "relax.nn.conv2d":
        attrs = node.call.attrs
        weight = constant_value(node, 1)
        if weight is None or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or len(node.inputs) != 1:
            return
        node.layer = GemmLayer(
            "conv2d",
            weight.astype(np.float32),
            strides=tuple(int(s) for s in attrs.strides),
            padding=tuple(int(p) for p in attrs.padding),
            groups=int(attrs.groups),
            dilation=tuple(int(d) for d in attrs.dilation),
        )
    elif node.op == "relax.matmul":
        weight = constant_value(node, 1)
        if weight is not None and weight.ndim == 2 and len(node.inputs) == 1:
            node.layer = GemmLayer("matmul", weight.astype(np.float32))
        elif weight is None and len(node.inputs) == 2:
            a_shape, b_shape = (graph.nodes[i].shape for i in node.inputs)
            if a_shape and b_shape and len(a_shape) >= 2 and (len(b_shape) == 2 or a_shape[:-2] == b_shape[:-2]):
                node.layer = GemmLayer("matmul", None)
    if node.layer is not None:
        node.op, node.call, node.arg_slots = "gemm", None, []


# ---- folding into GEMM layers ---------------------------------------------------------------


# Ops that only move elements: an elementwise clamp commutes with them.
RESHAPING_OPS = ("relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.flatten")


def simplify(graph: Graph) -> None:
    changed = True
    while changed:
        changed = False
        users = graph.consumers()
        for node in list(graph.nodes.values()):
            if node.name not in graph.nodes or len(node.inputs) == 0:
                continue
            if _fold_clamp_behind_reshape(node, graph, users):
                changed = True
                break
            producer = graph.nodes[node.inputs[0]]
            if producer.op != "gemm" or users[producer.name] != [node.name]:
                continue
            if _fold_into(producer, node, graph):
                _replace(graph, node.name, producer.name)
                changed = True
                break
    remove_dead(graph)


def _fold_clamp_behind_reshape(clamp: Node, graph: Graph, users) -> bool:
    """gemm -> reshape -> clamp (a Conv1d exported as conv2d between unsqueeze and squeeze,
    then its ReLU) becomes gemm with the clamp folded -> reshape: without it the GEMM's int8
    output would spend its range on values the clamp discards."""
    if clamp.op != "clamp":
        return False
    reshape = graph.nodes[clamp.inputs[0]]
    if reshape.op not in RESHAPING_OPS or users[reshape.name] != [clamp.name] or not reshape.inputs:
        return False
    gemm = graph.nodes[reshape.inputs[0]]
    if gemm.op != "gemm" or users[gemm.name] != [reshape.name]:
        return False
    gemm.layer.clamp = (max(gemm.layer.clamp[0], clamp.bounds[0]), min(gemm.layer.clamp[1], clamp.bounds[1]))
    _replace(graph, clamp.name, reshape.name)
    return True


def _fold_into(gemm: Node, node: Node, graph: Graph) -> bool:
    """Fold a batch norm, a constant add / subtract, a positive scalar multiply / divide, or a
    clamp into the GEMM's weights, bias and clamp. A scaling commutes with a folded clamp (its
    bounds scale with it), so HardSigmoid (clip(alpha * x + beta, 0, 1)) and ReLU6 followed by
    a scaling fold whole: the accelerator's requantization computes them at no extra cost."""
    layer = gemm.layer
    untouched = layer.clamp == (FLOAT_MIN, FLOAT_MAX)
    if node.op == "relax.nn.batch_norm" and layer.kind == "conv2d" and untouched:
        return _fold_batch_norm(gemm, node, graph)
    # An offset after a folded clamp stays out: a clamp from a nonzero low bound would cost the
    # layer its per-channel output scales (quantize._channel_requantizable).
    if node.op in ("relax.add", "relax.subtract") and len(node.inputs) == 1 and untouched:
        offset = _constant_operand(node, commutes=node.op == "relax.add")
        return offset is not None and _fold_bias(layer, offset if node.op == "relax.add" else -offset, gemm.shape)
    if node.op in ("relax.multiply", "relax.divide") and len(node.inputs) == 1:
        factor = _constant_operand(node, commutes=node.op == "relax.multiply")
        if factor is None or factor.size != 1 or float(factor.reshape(())) <= 0:
            return False
        scale = float(factor.reshape(()))
        _scale_layer(layer, scale if node.op == "relax.multiply" else 1.0 / scale)
        return True
    if node.op == "clamp":
        layer.clamp = (max(layer.clamp[0], node.bounds[0]), min(layer.clamp[1], node.bounds[1]))
        return True
    return False


def _constant_operand(node: Node, commutes: bool) -> np.ndarray | None:
    """The constant of a binary op on one tensor: its second operand (or either, if the op commutes)."""
    if node.arg_slots[0] == ("node", 0):
        return constant_value(node, 1)
    return constant_value(node, 0) if commutes else None


def _scale_layer(layer: GemmLayer, scale: float) -> None:
    """The layer's output times a positive scale: weights (or a run-time matmul's output scale),
    bias and clamp bounds."""
    if layer.weight is None:
        layer.out_scale *= scale
    else:
        layer.weight = layer.weight * np.float32(scale)
    if layer.bias is not None:
        layer.bias = (layer.bias * np.float32(scale)).astype(np.float32)
    layer.clamp = (layer.clamp[0] * scale, layer.clamp[1] * scale)


def _scalar_arg(node: Node, index: int) -> float:
    """A scalar argument given as a constant tensor or a PrimValue."""
    constant = constant_value(node, index)
    if constant is not None:
        return float(constant.reshape(()))
    value = node.arg_slots[index][1].value
    return float(getattr(value, "value", value))


def _fold_bias(layer: GemmLayer, bias: np.ndarray, out_shape) -> bool:
    channels = layer.out_channels if layer.weight is not None else out_shape[-1]
    axis_shape = [1] * len(out_shape)
    channel_axis = 1 if layer.kind == "conv2d" else len(out_shape) - 1
    axis_shape[channel_axis] = channels
    if bias.size == 1 and bias.ndim <= len(out_shape):  # a scalar broadcasts to every channel
        bias = np.full(axis_shape, bias.reshape(()), dtype=np.float32)
    squeezed = bias.reshape(-1) if bias.size == channels else None
    if squeezed is None or bias.ndim > len(out_shape):
        return False
    # The constant must broadcast along the channel axis only.
    if list(bias.shape) != axis_shape[len(out_shape) - bias.ndim :]:
        return False
    layer.bias = squeezed.astype(np.float32) + (layer.bias if layer.bias is not None else 0)
    return True


def _fold_batch_norm(gemm: Node, bn: Node, graph: Graph) -> bool:
    params = [constant_value(bn, i) for i in (1, 2, 3, 4)]
    users = graph.consumers()[bn.name]
    getters = [graph.nodes[u] for u in users if u != "<output>"]
    if any(p is None for p in params) or len(getters) != len(users):
        return False
    if any(g.op != "TupleGetItem" or g.call.index != 0 for g in getters):
        return False
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    attrs = bn.call.attrs
    if not attrs.scale:
        gamma = np.ones_like(gamma)
    if not attrs.center:
        beta = np.zeros_like(beta)
    factor = gamma / np.sqrt(var + float(attrs.epsilon))
    layer = gemm.layer
    layer.weight = (layer.weight * factor[:, None, None, None]).astype(np.float32)
    bias = layer.bias if layer.bias is not None else np.zeros_like(mean)
    layer.bias = ((bias - mean) * factor + beta).astype(np.float32)
    for getter in getters:
        _replace(graph, getter.name, gemm.name)
    return True


def _replace(graph: Graph, old: str, new: str) -> None:
    """Every use of node `old` becomes a use of `new`; `old` is removed."""
    del graph.nodes[old]
    for node in graph.nodes.values():
        node.inputs = [new if i == old else i for i in node.inputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]


def remove_dead(graph) -> None:
    """Drop the nodes no output depends on (of a Graph, or of a QuantizedGraph)."""
    live = set(graph.outputs)
    for node in reversed(list(graph.nodes.values())):
        if node.name in live:
            live.update(node.inputs)
    graph.nodes = {name: node for name, node in graph.nodes.items() if name in live or node.op == "input"}


def _rename_layers(graph: Graph) -> None:
    """Readable, stable layer names: conv2d_0, matmul_1, max_pool2d_0, ..."""
    counts: dict[str, int] = {}
    renames = {}
    for node in graph.nodes.values():
        if node.op == "input":
            continue
        base = node.layer.kind if node.op == "gemm" else node.op.rsplit(".", 1)[-1]
        renames[node.name] = f"{base}_{counts.get(base, 0)}"
        counts[base] = counts.get(base, 0) + 1
    graph.nodes = {renames.get(n, n): node for n, node in graph.nodes.items()}
    for node in graph.nodes.values():
        node.name = renames.get(node.name, node.name)
        node.inputs = [renames.get(i, i) for i in node.inputs]
    graph.outputs = [renames.get(o, o) for o in graph.outputs]


def split_points(attrs) -> int | list[int]:
    """relax.split's sections as np.split takes them: a count of equal parts, or the indices."""
    sections = attrs.indices_or_sections
    return int(sections) if isinstance(sections, int | tvm.tirx.IntImm) else [int(i) for i in sections]
