"""`Sum` of several tensors becomes a chain of `Add`s.

Caffe2's exports (the ONNX model zoo's ResNet-50) close each residual block with `Sum(a, b)`.
The Relax frontend converts a variadic `Sum` into broadcast_to, stack and a sum over the stack:
float host ops, with a dequantize before and a quantize after, where an `Add` is one int8 op
(ResNet-50 on `vta_default`: 16 blocks, 270 ms of the host's 300). `Add` broadcasts as `Sum`
does, and the chain adds in the same order.
"""

from __future__ import annotations

import onnx
from onnx import helper

from codesign.onnx_passes.graph_edit import label


def sums_to_adds(model: onnx.ModelProto) -> list[str]:
    """In place; returns one note naming how many `Sum` nodes became `Add`s (none: no note)."""
    graph = model.graph
    taken = {node.name for node in graph.node}
    rewritten, nodes = [], []
    for node in graph.node:
        if node.op_type != "Sum" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            nodes.append(node)
            continue
        name = label(node, taken)
        nodes += _add_chain(name, list(node.input), node.output[0])
        rewritten.append(name)
    if not rewritten:
        return []
    del graph.node[:]
    graph.node.extend(nodes)
    return [f"{len(rewritten)} Sum -> Add (first: '{rewritten[0]}')"]


def _add_chain(name: str, inputs: list[str], output: str) -> list[onnx.NodeProto]:
    """((a + b) + c) + ...: the last Add writes `output`; the first keeps the Sum's name."""
    adds, partial = [], inputs[0]
    for index, operand in enumerate(inputs[1:], start=1):
        last = index == len(inputs) - 1
        result = output if last else f"{output}_partial_sum{index}"
        node_name = name if index == 1 else f"{name}_add{index}"
        adds.append(helper.make_node("Add", [partial, operand], [result], name=node_name))
        partial = result
    return adds
