"""`Max` / `Min` of a float tensor and a one-value constant become `Clip`.

tf2onnx writes `tf.maximum(x, -0.4)` (a clipped LeakyReLU) and `tf.minimum(x, 6)` as `Max` /
`Min` against a constant. The Relax frontend converts a variadic `Max` into broadcast_to, stack
and max over the stack, three host ops that read no activation; as `Clip` the bound folds into the
layer before it, or into the lookup table or ALU program of its activation (openWakeWord's
speech embedding: 19 such blocks, modelled latency on `vta_default` 20.9 -> 7.3 ms).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codesign.onnx_passes.graph_edit import add_initializers, constant_arrays, default_opset

BOUND_INPUT = {"Max": 1, "Min": 2}  # Clip's input (min, max) the constant becomes


def bounds_to_clip(model: onnx.ModelProto) -> list[str]:
    """In place; returns one note naming how many nodes became Clip (none: no note)."""
    graph = model.graph
    candidates = [node for node in graph.node if node.op_type in BOUND_INPUT and len(node.input) == 2]
    if not candidates:
        return []
    constants = constant_arrays(graph)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    values = {info.name: info.type.tensor_type for info in [*inferred.input, *inferred.value_info]}
    opset = default_opset(model)
    rewritten, initializers = [], []
    for node in candidates:
        operands = _tensor_and_bound(node, constants, values)
        if operands is None:
            continue
        tensor, bound = operands
        bound_name = f"{node.output[0]}_clip_bound"
        inputs = [tensor, "", ""]
        inputs[BOUND_INPUT[node.op_type]] = bound_name
        if opset < 11:  # Clip's bounds were attributes then
            limit = "min" if node.op_type == "Max" else "max"
            clip = helper.make_node("Clip", [tensor], list(node.output), name=node.name, **{limit: float(bound)})
        else:
            initializers.append(numpy_helper.from_array(np.asarray(bound, dtype=np.float32), bound_name))
            clip = helper.make_node("Clip", inputs, list(node.output), name=node.name)
        node.CopyFrom(clip)
        rewritten.append(node.name or node.output[0])
    add_initializers(model, initializers)
    if not rewritten:
        return []
    return [f"{len(rewritten)} Max / Min with a constant -> Clip (first: '{rewritten[0]}')"]


def _tensor_and_bound(node, constants, values) -> tuple[str, float] | None:
    """(the tensor input, the constant's value) when one input is a float32 tensor of known rank
    and the other a finite one-value constant that broadcasting does not widen it by; else None."""
    for tensor, other in (node.input, node.input[::-1]):
        bound, value = constants.get(other), values.get(tensor)
        if bound is None or bound.size != 1 or not np.isfinite(bound).all() or tensor in constants:
            continue
        if value is None or value.elem_type != onnx.TensorProto.FLOAT or not value.HasField("shape"):
            continue
        if bound.ndim <= len(value.shape.dim):
            return tensor, float(bound.reshape(()))
    return None
