"""Unrolling of ONNX LSTM and GRU nodes into primitive ops that TVM's Relax frontend imports.

The frontend cannot import LSTM or GRU, so each node becomes an unrolled graph over its (static)
sequence length. The shape of that graph is chosen for the accelerator, which runs every MatMul
whose right operand is a 2-D initializer as a GEMM:

- the input projection of all time steps is one MatMul per direction, [T*B, I] x W^T [I, G*H];
- the recurrent projection is one MatMul per step, H_{t-1} [B, H] x R^T [H, G*H] (GRU with
  `linear_before_reset = 0` needs two: the reset gate multiplies H_{t-1} before its projection);
- gates and state updates are elementwise ops on the host.

Semantics follow the ONNX spec where it is explicit and onnxruntime where it is not: activation
alphas and betas are consumed only by the activations that take them (HardSigmoid defaults 0.2, 0.5),
`clip` bounds the gate pre-activations (not the cell state fed to h), and `input_forget` sets
f = 1 - i.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from codesign.errors import ModelError
from codesign.onnx_passes.graph_edit import (
    add_initializers,
    constant_tensors,
    default_opset,
    fresh_name,
    label,
    names_in_use,
    remove_unused_constants,
    static_shapes,
)

_GATES = {"LSTM": 4, "GRU": 3}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
# Lower-case activation name -> (ONNX op, default alpha, default beta); alpha/beta None: op takes neither.
_ACTIVATIONS = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hardsigmoid": ("HardSigmoid", 0.2, 0.5),
}
_DIRECTIONS = {"forward": ("forward",), "reverse": ("reverse",), "bidirectional": ("forward", "reverse")}


@dataclass(frozen=True)
class _Activation:
    op_type: str
    attributes: dict


@dataclass
class _Recurrent:
    """One LSTM or GRU node with its attributes resolved and its weights as arrays."""

    node: onnx.NodeProto
    label: str  # names the node in errors and prefixes every tensor made for it
    steps: int
    batch: int
    hidden: int
    layout: int
    directions: tuple[str, ...]
    weights: np.ndarray  # W [directions, G*H, I]
    recurrence: np.ndarray  # R [directions, G*H, H]
    bias: np.ndarray | None  # B [directions, 2*G*H]
    peepholes: np.ndarray | None  # P [directions, 3*H]
    activations: list[tuple[_Activation, ...]]  # per direction: (f, g, h) for LSTM, (f, g) for GRU
    clip: float | None
    linear_before_reset: bool
    input_forget: bool

    def input(self, index: int) -> str:
        return self.node.input[index] if len(self.node.input) > index else ""

    def output(self, index: int) -> str:
        return self.node.output[index] if len(self.node.output) > index else ""

    @property
    def kind(self) -> str:
        return self.node.op_type


def expand_recurrent(model: onnx.ModelProto) -> list[str]:
    """Rewrite every LSTM and GRU node (ONNX domain) in place into primitive ONNX ops, unrolled over
    the (static) sequence length. Returns the names of the nodes rewritten.

    An unnamed node is reported (and its new tensors prefixed) as `<op>_<first output>`. Raises ModelError
    naming the node when X's shape is not static, W/R/B/P or sequence_lens are not constants, sequence_lens
    differ from T, or an activation is not Sigmoid, Tanh, Relu or HardSigmoid."""
    graph = model.graph
    if not any(_is_recurrent(node) for node in graph.node):
        return []
    shapes = static_shapes(model)
    constants = constant_tensors(graph)
    taken = names_in_use(graph)
    opset = default_opset(model)
    rewritten, consumed, new_nodes = [], set(), []
    for node in graph.node:
        if not _is_recurrent(node):
            new_nodes.append(node)
            continue
        recurrent = _parse(node, label(node, taken), shapes, constants)
        builder = _Builder(recurrent.label, taken, opset, recurrent.weights.dtype)
        _expand(recurrent, builder)
        new_nodes.extend(builder.nodes)
        add_initializers(model, builder.initializers)
        rewritten.append(recurrent.label)
        consumed.update(name for name in node.input if name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_unused_constants(graph, consumed)
    return rewritten


def _is_recurrent(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in _GATES


# --- reading the model -----------------------------------------------------------------------


def _parse(
    node: onnx.NodeProto, label: str, shapes: dict[str, list[int | None]], constants: dict[str, onnx.TensorProto]
) -> _Recurrent:
    attributes = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    layout = int(attributes.get("layout", 0))
    x_shape = shapes.get(node.input[0])
    if x_shape is None or len(x_shape) != 3 or None in x_shape:
        raise ModelError(
            f"{node.op_type} node '{label}': the shape of its input X is not static ({x_shape}); "
            "bind the model's input shapes first"
        )
    steps, batch = (x_shape[1], x_shape[0]) if layout else (x_shape[0], x_shape[1])
    direction = _text(attributes.get("direction", "forward"))
    if direction not in _DIRECTIONS:
        raise ModelError(f"{node.op_type} node '{label}': unknown direction '{direction}'")
    directions = _DIRECTIONS[direction]

    def constant(index: int, role: str, required: bool = True) -> np.ndarray | None:
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            if required:
                raise ModelError(f"{node.op_type} node '{label}': input {role} is missing")
            return None
        if name not in constants:
            raise ModelError(f"{node.op_type} node '{label}': input {role} ('{name}') must be a constant")
        return numpy_helper.to_array(constants[name])

    recurrence = constant(2, "R")
    _check_sequence_lens(node, label, constant(4, "sequence_lens", required=False), steps)
    return _Recurrent(
        node=node,
        label=label,
        steps=steps,
        batch=batch,
        hidden=int(recurrence.shape[-1]),
        layout=layout,
        directions=directions,
        weights=constant(1, "W"),
        recurrence=recurrence,
        bias=constant(3, "B", required=False),
        peepholes=constant(7, "P", required=False) if node.op_type == "LSTM" else None,
        activations=_activations(node, label, attributes, len(directions)),
        clip=float(attributes["clip"]) if "clip" in attributes else None,
        linear_before_reset=bool(attributes.get("linear_before_reset", 0)),
        input_forget=bool(attributes.get("input_forget", 0)),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _check_sequence_lens(node: onnx.NodeProto, label: str, lengths: np.ndarray | None, steps: int) -> None:
    if lengths is not None and not np.all(lengths == steps):
        raise ModelError(
            f"{node.op_type} node '{label}': sequence_lens {lengths.tolist()} differ from the sequence length "
            f"{steps}; only full-length sequences can be unrolled"
        )


def _activations(node: onnx.NodeProto, label: str, attributes: dict, directions: int) -> list[tuple[_Activation, ...]]:
    per_direction = len(_DEFAULT_ACTIVATIONS[node.op_type])
    names = [_text(name) for name in attributes.get("activations", [])]
    names = names or list(_DEFAULT_ACTIVATIONS[node.op_type]) * directions
    if len(names) != per_direction * directions:
        raise ModelError(
            f"{node.op_type} node '{label}': expected {per_direction * directions} activations "
            f"({per_direction} per direction), got {names}"
        )
    # Like onnxruntime, alphas and betas are consumed in order by the activations that take them.
    alphas = list(attributes.get("activation_alpha", []))
    betas = list(attributes.get("activation_beta", []))
    resolved = []
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise ModelError(
                f"{node.op_type} node '{label}': activation '{name}' is not supported "
                "(supported: Sigmoid, Tanh, Relu, HardSigmoid)"
            )
        op_type, alpha, beta = _ACTIVATIONS[name.lower()]
        if alpha is None:
            resolved.append(_Activation(op_type, {}))
            continue
        alpha = alphas.pop(0) if alphas else alpha
        beta = betas.pop(0) if betas else beta
        resolved.append(_Activation(op_type, {"alpha": float(alpha), "beta": float(beta)}))
    return [tuple(resolved[d * per_direction : (d + 1) * per_direction]) for d in range(directions)]


# --- building the expansion --------------------------------------------------------------------


class _Builder:
    """Collects the nodes and initializers that replace one recurrent node, all named under its label."""

    def __init__(self, prefix: str, taken: set[str], opset: int, dtype: np.dtype):
        self.prefix, self.taken, self.opset, self.dtype = prefix, taken, opset, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[str, str] = {}

    def fresh(self, label: str) -> str:
        return fresh_name(self.prefix, label, self.taken)

    def constant(self, label: str, value: np.ndarray) -> str:
        """An initializer, made once per label (labels of shared constants say their value)."""
        if label not in self._constants:
            name = self.fresh(label)
            self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
            self._constants[label] = name
        return self._constants[label]

    def float_constant(self, label: str, value: np.ndarray) -> str:
        return self.constant(label, np.asarray(value, dtype=self.dtype))

    def op(self, op_type: str, inputs: list[str], label: str, output: str = "", **attributes) -> str:
        output = output or self.fresh(label)
        self.nodes.append(
            onnx.helper.make_node(op_type, inputs, [output], self.fresh(label + "_" + op_type), **attributes)
        )
        return output

    def gather(self, data: str, index: int, axis: int, label: str) -> str:
        """`data` without `axis`, at `index` (a scalar index drops the axis in every opset)."""
        return self.op("Gather", [data, self.constant(f"index{index}", np.array(index, np.int64))], label, axis=axis)

    def reshape(self, data: str, shape: tuple[int, ...], label: str, output: str = "") -> str:
        target = self.constant("shape_" + "x".join(map(str, shape)), np.array(shape, np.int64))
        return self.op("Reshape", [data, target], label, output)

    def split(self, data: str, sizes: list[int], labels: list[str]) -> list[str]:
        """`data` split along its last axis (Split's sizes became an input at opset 13)."""
        outputs = [self.fresh(label) for label in labels]
        node_name = self.fresh(labels[0] + "_Split")
        if self.opset >= 13:
            sizes_name = self.constant("sizes_" + "_".join(map(str, sizes)), np.array(sizes, np.int64))
            node = onnx.helper.make_node("Split", [data, sizes_name], outputs, node_name, axis=-1)
        else:
            node = onnx.helper.make_node("Split", [data], outputs, node_name, axis=-1, split=sizes)
        self.nodes.append(node)
        return outputs

    def clip(self, data: str, bound: float | None, label: str) -> str:
        """`data` bounded to [-bound, bound] (Clip's bounds became inputs at opset 11)."""
        if bound is None:
            return data
        if self.opset >= 11:
            low = self.float_constant(f"clip_low{bound}", np.array(-bound))
            high = self.float_constant(f"clip_high{bound}", np.array(bound))
            return self.op("Clip", [data, low, high], label)
        return self.op("Clip", [data], label, min=-bound, max=bound)

    def activate(self, data: str, activation: _Activation, label: str) -> str:
        return self.op(activation.op_type, [data], label, **activation.attributes)


def _expand(recurrent: _Recurrent, builder: _Builder) -> None:
    steps, batch = recurrent.steps, recurrent.batch
    input_size = recurrent.weights.shape[-1]
    flat_x = builder.reshape(recurrent.node.input[0], (steps * batch, input_size), "x_rows")
    outputs, finals, cells = {}, [], []
    for index, direction in enumerate(recurrent.directions):
        projected = _input_projection(recurrent, builder, flat_x, index, direction)
        hidden = _initial_state(recurrent, builder, 5, index, direction)
        cell = _initial_state(recurrent, builder, 6, index, direction) if recurrent.kind == "LSTM" else None
        order = range(steps) if direction == "forward" else reversed(range(steps))
        for step in order:
            gates_x = builder.gather(projected, step, recurrent.layout, f"{direction}/t{step}/gates_x")
            scope = f"{direction}/t{step}"
            if recurrent.kind == "LSTM":
                hidden, cell = _lstm_step(recurrent, builder, index, scope, gates_x, hidden, cell)
            else:
                hidden = _gru_step(recurrent, builder, index, scope, gates_x, hidden)
            outputs[step, index] = hidden
        finals.append(hidden)
        cells.append(cell)
    _emit_outputs(recurrent, builder, outputs, finals, cells)


def _input_projection(recurrent: _Recurrent, builder: _Builder, flat_x: str, index: int, direction: str) -> str:
    """X of every step times W^T (plus the biases that do not depend on the reset gate): one GEMM."""
    gates = _GATES[recurrent.kind]
    hidden = recurrent.hidden
    weights_t = builder.float_constant(f"{direction}/W_t", recurrent.weights[index].T)
    projected = builder.op("MatMul", [flat_x, weights_t], f"{direction}/x_proj")
    if recurrent.bias is not None:
        input_bias, recurrent_bias = np.split(recurrent.bias[index], 2)
        bias = input_bias + recurrent_bias
        if recurrent.kind == "GRU" and recurrent.linear_before_reset:
            bias[2 * hidden :] = input_bias[2 * hidden :]  # Rbh is applied inside r * (...)
        projected = builder.op(
            "Add", [projected, builder.float_constant(f"{direction}/bias", bias)], f"{direction}/x_bias"
        )
    time_major = (recurrent.steps, recurrent.batch, gates * hidden)
    shape = (recurrent.batch, recurrent.steps, gates * hidden) if recurrent.layout else time_major
    return builder.reshape(projected, shape, f"{direction}/x_gates")


def _initial_state(recurrent: _Recurrent, builder: _Builder, input_index: int, index: int, direction: str) -> str:
    """initial_h / initial_c of one direction as [B, H], zeros when the input is absent."""
    name = recurrent.input(input_index)
    role = "h0" if input_index == 5 else "c0"
    if not name:
        return builder.float_constant("zeros", np.zeros((recurrent.batch, recurrent.hidden)))
    return builder.gather(name, index, recurrent.layout, f"{direction}/{role}")


def _lstm_step(
    recurrent: _Recurrent, builder: _Builder, index: int, scope: str, gates_x: str, hidden: str, cell: str
) -> tuple[str, str]:
    size = recurrent.hidden
    f_act, g_act, h_act = recurrent.activations[index]
    direction = recurrent.directions[index]
    r_t = builder.float_constant(f"{direction}/R_t", recurrent.recurrence[index].T)
    gates_h = builder.op("MatMul", [hidden, r_t], f"{scope}/gates_h")
    gates = builder.op("Add", [gates_x, gates_h], f"{scope}/gates")
    i, o, f, c = builder.split(gates, [size] * 4, [f"{scope}/{gate}_in" for gate in "iofc"])
    i = _activated_gate(recurrent, builder, index, i, cell, 0, f_act, f"{scope}/i")
    if recurrent.input_forget:
        one = builder.float_constant("one", np.array(1.0))
        f = builder.op("Sub", [one, i], f"{scope}/f")
    else:
        f = _activated_gate(recurrent, builder, index, f, cell, 2, f_act, f"{scope}/f")
    c = builder.activate(builder.clip(c, recurrent.clip, f"{scope}/c_clip"), g_act, f"{scope}/c")
    kept = builder.op("Mul", [f, cell], f"{scope}/kept")
    written = builder.op("Mul", [i, c], f"{scope}/written")
    cell = builder.op("Add", [kept, written], f"{scope}/C")
    o = _activated_gate(recurrent, builder, index, o, cell, 1, f_act, f"{scope}/o")
    hidden = builder.op("Mul", [o, builder.activate(cell, h_act, f"{scope}/h_C")], f"{scope}/H")
    return hidden, cell


def _activated_gate(
    recurrent: _Recurrent,
    builder: _Builder,
    index: int,
    pre_activation: str,
    cell: str,
    peephole: int,
    activation: _Activation,
    label: str,
) -> str:
    """f(pre_activation + P[peephole] * cell), clipped first if the node clips; P order is i, o, f."""
    if recurrent.peepholes is not None:
        size = recurrent.hidden
        weights = recurrent.peepholes[index][peephole * size : (peephole + 1) * size]
        direction = recurrent.directions[index]
        name = builder.float_constant(f"{direction}/P_{'iof'[peephole]}", weights)
        peeped = builder.op("Mul", [cell, name], f"{label}_peep")
        pre_activation = builder.op("Add", [pre_activation, peeped], f"{label}_peeped")
    return builder.activate(builder.clip(pre_activation, recurrent.clip, f"{label}_clip"), activation, label)


def _gru_step(recurrent: _Recurrent, builder: _Builder, index: int, scope: str, gates_x: str, hidden: str) -> str:
    size = recurrent.hidden
    f_act, g_act = recurrent.activations[index]
    direction = recurrent.directions[index]
    recurrence_t = recurrent.recurrence[index].T  # [H, 3H], columns z, r, h
    x_zr, x_h = builder.split(gates_x, [2 * size, size], [f"{scope}/x_zr", f"{scope}/x_h"])
    if recurrent.linear_before_reset:
        r_t = builder.float_constant(f"{direction}/R_t", recurrence_t)
        gates_h = builder.op("MatMul", [hidden, r_t], f"{scope}/gates_h")
        h_zr, h_h = builder.split(gates_h, [2 * size, size], [f"{scope}/h_zr", f"{scope}/h_h"])
        if recurrent.bias is not None:
            rb_h = builder.float_constant(f"{direction}/Rb_h", recurrent.bias[index][5 * size :])
            h_h = builder.op("Add", [h_h, rb_h], f"{scope}/h_h_bias")
    else:
        r_zr = builder.float_constant(f"{direction}/R_zr_t", recurrence_t[:, : 2 * size])
        h_zr = builder.op("MatMul", [hidden, r_zr], f"{scope}/h_zr")
    zr = builder.op("Add", [x_zr, h_zr], f"{scope}/zr_in")
    zr = builder.activate(builder.clip(zr, recurrent.clip, f"{scope}/zr_clip"), f_act, f"{scope}/zr")
    z, r = builder.split(zr, [size, size], [f"{scope}/z", f"{scope}/r"])
    if recurrent.linear_before_reset:
        reset = builder.op("Mul", [r, h_h], f"{scope}/reset")
    else:
        r_h = builder.float_constant(f"{direction}/R_h_t", recurrence_t[:, 2 * size :])
        reset_hidden = builder.op("Mul", [r, hidden], f"{scope}/reset_H")
        reset = builder.op("MatMul", [reset_hidden, r_h], f"{scope}/reset")
    candidate = builder.op("Add", [x_h, reset], f"{scope}/h_in")
    candidate = builder.activate(builder.clip(candidate, recurrent.clip, f"{scope}/h_clip"), g_act, f"{scope}/h")
    # H = (1 - z) * h + z * H_prev, written with one op fewer
    delta = builder.op("Sub", [hidden, candidate], f"{scope}/delta")
    return builder.op("Add", [candidate, builder.op("Mul", [z, delta], f"{scope}/z_delta")], f"{scope}/H")


def _emit_outputs(
    recurrent: _Recurrent, builder: _Builder, outputs: dict, finals: list[str], cells: list[str | None]
) -> None:
    """Y, Y_h and Y_c under their original names. Per-step [B, H] states are concatenated along the
    rows (layout 0) or columns (layout 1) in (step, direction) order, so one Reshape gives the layout."""
    steps, batch, size = recurrent.steps, recurrent.batch, recurrent.hidden
    directions = len(recurrent.directions)
    layout = recurrent.layout
    if recurrent.output(0):
        ordered = [outputs[step, index] for step in range(steps) for index in range(directions)]
        shape = (batch, steps, directions, size) if layout else (steps, directions, batch, size)
        _concat_reshape(builder, ordered, layout, shape, recurrent.output(0))
    for position, states in ((1, finals), (2, cells)):
        if recurrent.output(position):
            shape = (batch, directions, size) if layout else (directions, batch, size)
            _concat_reshape(builder, states, layout, shape, recurrent.output(position))


def _concat_reshape(builder: _Builder, parts: list[str], axis: int, shape: tuple[int, ...], output: str) -> None:
    joined = parts[0] if len(parts) == 1 else builder.op("Concat", parts, f"{output}_parts", axis=axis)
    builder.reshape(joined, shape, f"{output}_reshape", output=output)


# --- updating the graph ------------------------------------------------------------------------
