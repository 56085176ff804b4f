"""Half-precision models (float16, bfloat16) widened to float32 before anything else reads them.

codesign quantizes every GEMM to int8 and runs the rest on the host in float32, so a model's
16-bit float arithmetic carries nothing the program keeps; widening it lets the frontend, the
calibration and the host ops work in one float type. Inputs and outputs declared in 16 bits
become float32 ones (a printed note says so).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

HALF_TYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}


def widen_half_precision(model: onnx.ModelProto) -> list[str]:
    """Rewrite float16/bfloat16 tensors, casts and declared types to float32, in place; returns
    a note when the model had any."""
    widened = _widen_graph(model.graph)
    if not widened:
        return []
    kinds = ", ".join(sorted(widened))
    return [f"the model computes in {kinds}; codesign widens it to float32 (inputs and outputs included)"]


def _widen_graph(graph: onnx.GraphProto) -> set[str]:
    widened: set[str] = set()
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type in HALF_TYPES:
            widened.add(HALF_TYPES[tensor.data_type])
            graph.initializer[index].CopyFrom(_widened_tensor(tensor))
    for value in (*graph.input, *graph.output, *graph.value_info):
        tensor_type = value.type.tensor_type
        if tensor_type.elem_type in HALF_TYPES:
            widened.add(HALF_TYPES[tensor_type.elem_type])
            tensor_type.elem_type = TensorProto.FLOAT
    for node in graph.node:
        widened |= _widen_node(node)
    return widened


def _widen_node(node: onnx.NodeProto) -> set[str]:
    widened: set[str] = set()
    for attribute in node.attribute:
        if attribute.name == "to" and node.op_type == "Cast" and attribute.i in HALF_TYPES:
            widened.add(HALF_TYPES[attribute.i])
            attribute.i = TensorProto.FLOAT
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in HALF_TYPES:
            widened.add(HALF_TYPES[attribute.t.data_type])
            attribute.t.CopyFrom(_widened_tensor(attribute.t))
        elif attribute.type == onnx.AttributeProto.GRAPH:
            widened |= _widen_graph(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for subgraph in attribute.graphs:
                widened |= _widen_graph(subgraph)
    return widened


def _widened_tensor(tensor: TensorProto) -> TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    return numpy_helper.from_array(values, tensor.name)
