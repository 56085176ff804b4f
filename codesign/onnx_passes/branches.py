"""`If` nodes whose condition depends on the data: both branches computed, `Where` picks the output.

The Relax frontend imports no `If`. Those whose condition is constant once inputs are bound or
frozen are inlined when constants are folded (`codesign.onnx_passes.fold`); what is left decides
on the data, as openWakeWord's "hey jarvis" model does (a verifier network runs when the first
score passes 0.5). Such an `If` becomes its two branches, inlined with fresh names, and one
`Where` per output on the condition. This is exact for branches of pure ops whose outputs have
the same static shape and type in both (checked by ONNX shape inference; otherwise the `If` stays
and the import names it). The module then computes both branches on every call, and the
simulator prices both: the figures are those of the branch that costs more, plus the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codesign.onnx_passes.graph_edit import default_opset, fresh_name, label, names_in_use

WHERE_OPSET = 9  # Where appears in opset 9


@dataclasses.dataclass
class _Inlined:
    """One `If` as its inlined branches and the `Where`s selecting their outputs."""

    label: str
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    pairs: list[tuple[str, str]]  # (then output, else output) per If output


def select_branches(model: onnx.ModelProto) -> list[str]:
    """In place; returns one note per `If` replaced."""
    graph = model.graph
    if default_opset(model) < WHERE_OPSET or not any(node.op_type == "If" for node in graph.node):
        return []
    taken = names_in_use(graph)
    inlined = {}
    for index, node in enumerate(graph.node):
        if node.op_type == "If":
            candidate = _inline(node, label(node, taken), taken)
            if candidate is not None:
                inlined[index] = candidate
    accepted = {index: inlined[index] for index in _same_types(model, inlined)}
    if accepted:
        _replace(model, accepted)
    return [
        f"If '{item.label}' decides on the data: both branches are computed and Where selects the outputs "
        "(the simulation counts both)"
        for item in accepted.values()
    ]


def _replace(model: onnx.ModelProto, inlined: dict[int, _Inlined]) -> None:
    """In place: the nodes at these indices by their inlined branches and Wheres."""
    nodes = []
    for index, node in enumerate(model.graph.node):
        nodes.extend(inlined[index].nodes if index in inlined else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(tensor for item in inlined.values() for tensor in item.initializers)


def _inline(node: onnx.NodeProto, name: str, taken: set[str]) -> _Inlined | None:
    """Both branches with fresh names, then a Where per output; None if a branch holds subgraphs."""
    branches = {attr.name: attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH}
    if set(branches) != {"then_branch", "else_branch"}:
        return None
    nodes, initializers, outputs = [], [], []
    for key in ("then_branch", "else_branch"):
        renamed = _renamed(branches[key], f"{name}/{key.split('_')[0]}", taken)
        if renamed is None or len(renamed[2]) != len(node.output):
            return None
        nodes += renamed[0]
        initializers += renamed[1]
        outputs.append(renamed[2])
    shape = fresh_name(name, "scalar_shape", taken)
    condition = fresh_name(name, "condition", taken)
    initializers.append(numpy_helper.from_array(np.zeros(0, dtype=np.int64), shape))
    nodes.append(helper.make_node("Reshape", [node.input[0], shape], [condition], name=f"{name}/condition"))
    pairs = list(zip(*outputs))
    for index, (output, (then_value, else_value)) in enumerate(zip(node.output, pairs)):
        if output:
            select = helper.make_node(
                "Where", [condition, then_value, else_value], [output], name=f"{name}/where_{index}"
            )
            nodes.append(select)
    return _Inlined(name, nodes, initializers, [pair for out, pair in zip(node.output, pairs) if out])


def _renamed(branch: onnx.GraphProto, prefix: str, taken: set[str]):
    """(nodes, initializers, output names) of a branch, its own names made fresh in the outer
    graph (names it reads from outside are kept); None if a node holds a subgraph."""
    own = [tensor.name for tensor in branch.initializer] + [out for node in branch.node for out in node.output if out]
    fresh = {name: fresh_name(prefix, name, taken) for name in own}
    nodes = []
    for node in branch.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            return None
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [fresh.get(name, name) for name in node.input]
        copy.output[:] = [fresh.get(name, name) for name in node.output]
        copy.name = f"{prefix}/{node.name or node.op_type}"
        nodes.append(copy)
    initializers = []
    for tensor in branch.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = fresh[tensor.name]
        initializers.append(copy)
    return nodes, initializers, [fresh.get(output.name, output.name) for output in branch.output]


def _same_types(model: onnx.ModelProto, candidates: dict[int, _Inlined]) -> list[int]:
    """The candidates (by node index) whose two branches give every output the same static shape
    and element type (shape inference over the model with all of them inlined)."""
    if not candidates:
        return []
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    _replace(trial, candidates)
    try:
        inferred = onnx.shape_inference.infer_shapes(trial).graph
    except onnx.shape_inference.InferenceError:
        return []
    types = {info.name: _static_type(info.type) for info in [*inferred.input, *inferred.value_info]}
    types.update({tensor.name: (tensor.data_type, tuple(tensor.dims)) for tensor in inferred.initializer})
    return [
        index
        for index, item in candidates.items()
        if all(types.get(a) is not None and types.get(a) == types.get(b) for a, b in item.pairs)
    ]


def _static_type(value_type: onnx.TypeProto) -> tuple[int, tuple[int, ...]] | None:
    tensor = value_type.tensor_type
    if not value_type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    dims = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim)
    return None if any(dim <= 0 for dim in dims) else (tensor.elem_type, dims)
