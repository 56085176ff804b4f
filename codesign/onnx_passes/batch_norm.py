"""A `BatchNormalization` that no convolution precedes becomes `Mul` and `Add` by per-channel constants.

After a Conv the quantizer folds a batch norm into the conv's weights. Keras models also put one
after the activation (Conv -> ReLU -> BatchNorm, as openWakeWord's speech embedding does): the
Relax frontend imports it as batch_norm, which runs in float between a dequantize and a quantize.
As a per-channel affine x * scale + shift (scale = gamma / sqrt(var + eps), shift = beta - mean *
scale) it joins the elementwise chain after it, tabulated with a row per channel.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codesign.onnx_passes.graph_edit import add_initializers, constant_arrays, fresh_name, names_in_use, static_shapes

FOLDED_BY = {"Conv", "ConvTranspose"}  # producers whose weights take a batch norm (codesign.graph)


def batch_norms_to_affine(model: onnx.ModelProto) -> list[str]:
    """In place; returns a note when any batch norm was rewritten."""
    graph = model.graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    norms = [node for node in graph.node if node.op_type == "BatchNormalization" and len(node.output) == 1]
    norms = [node for node in norms if producers.get(node.input[0]) not in FOLDED_BY]
    if not norms:  # the common case (a batch norm after each conv): no shape inference
        return []
    constants = constant_arrays(graph)
    shapes = static_shapes(model)
    taken = names_in_use(graph)
    replacements, initializers = {}, []
    for node in norms:
        params = [constants.get(name) for name in node.input[1:5]]
        rank = len(shapes.get(node.input[0]) or ())
        if any(p is None for p in params) or rank < 2:
            continue
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        epsilon = next((attr.f for attr in node.attribute if attr.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        channel_shape = (-1,) + (1,) * (rank - 2)
        names = [fresh_name(node.name or node.output[0], part, taken) for part in ("scale", "shift", "scaled")]
        for name, values in zip(names, (scale, beta - mean * scale)):
            initializers.append(numpy_helper.from_array(values.reshape(channel_shape).astype(np.float32), name))
        multiply = helper.make_node("Mul", [node.input[0], names[0]], [names[2]], name=f"{names[2]}_mul")
        add = helper.make_node("Add", [names[2], names[1]], [node.output[0]], name=node.name)
        replacements[node.output[0]] = [multiply, add]
    if not replacements:
        return []
    nodes = [new for node in graph.node for new in replacements.get(node.output[0] if node.output else "", [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    add_initializers(model, initializers)
    first = next(iter(replacements.values()))[1].name or next(iter(replacements))
    return [f"{len(replacements)} BatchNormalization after no conv -> Mul + Add per channel (first: '{first}')"]
