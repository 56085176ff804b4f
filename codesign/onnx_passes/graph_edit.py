"""Small edits of an ONNX graph shared by the passes: fresh names, constants, shapes, adding
initializers and removing the ones nothing reads any more."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def label(node: onnx.NodeProto, taken: set[str]) -> str:
    if node.name:
        return node.name
    label = f"{node.op_type}_{next((name for name in node.output if name), 'out')}"
    while label in taken:
        label += "_"
    taken.add(label)
    return label


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for info in [*inferred.input, *inferred.value_info, *inferred.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
    for initializer in inferred.initializer:
        shapes[initializer.name] = list(initializer.dims)
    return shapes


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and `Constant` node values by name (converted to arrays only when a node reads them)."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((attr for attr in node.attribute if attr.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value.t
    return constants


def names_in_use(graph: onnx.GraphProto) -> set[str]:
    names = {tensor.name for tensor in graph.initializer}
    names.update(info.name for info in [*graph.input, *graph.output, *graph.value_info])
    for node in graph.node:
        names.add(node.name)
        names.update(node.input)
        names.update(node.output)
    return names


def default_opset(model: onnx.ModelProto) -> int:
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    return versions[0] if versions else onnx.defs.onnx_opset_version()


def add_initializers(model: onnx.ModelProto, initializers: list[onnx.TensorProto]) -> None:
    model.graph.initializer.extend(initializers)
    if model.ir_version < 4:  # IR 3 requires every initializer to be listed among the graph inputs
        model.graph.input.extend(
            onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims) for tensor in initializers
        )


def remove_unused_constants(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Initializers and Constant nodes among `candidates` that nothing reads any more."""
    used = names_read(graph) | {output.name for output in graph.output}
    unused = candidates - used
    if not unused:
        return
    initializers = {tensor.name for tensor in graph.initializer}
    kept = [tensor for tensor in graph.initializer if tensor.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Under IR 3 initializers are also graph inputs; drop those entries too, never real inputs.
    inputs = [info for info in graph.input if not (info.name in unused and info.name in initializers)]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = [node for node in graph.node if not (node.op_type == "Constant" and node.output[0] in unused)]
    del graph.node[:]
    graph.node.extend(nodes)


def names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, including nodes of subgraphs (which may read outer names)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for subgraph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= names_read(subgraph)
    return names


def constant_arrays(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and `Constant` node outputs by name, as arrays."""
    return {name: numpy_helper.to_array(tensor) for name, tensor in constant_tensors(graph).items()}


def fresh_name(prefix: str, label: str, taken: set[str]) -> str:
    """`prefix/label`, or `prefix/label_N` if taken; recorded as taken."""
    name, count = f"{prefix}/{label}", 1
    while name in taken:
        count += 1
        name = f"{prefix}/{label}_{count}"
    taken.add(name)
    return name
