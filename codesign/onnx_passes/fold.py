"""Shape inference and constant folding of everything that depends only on shapes and constants.

Exporters (Paddle2ONNX, tf2onnx, ultralytics, torch with dynamic axes) compute reshape targets,
pads and anchor grids from `Shape` at run time. Once the input shapes are bound, all of that
is constant. onnxslim folds it (and inlines `If` nodes whose condition became constant, which
onnxsim does not do: it fails on models with `If` subgraphs). Measured on the corpus models
(PP-OCR det/rec/cls, magika, YOLOX, silero-vad), onnxslim folds every shape subgraph in
0.1-1 s per model.

A graph of plain ops (PLAIN_OPS: convs, batch norms, activations, pools, adds, matmuls) with
nothing to fold (no node whose inputs are all constants), as clean PyTorch exports of CNNs are,
skips onnxslim: importing and running it cost 2.5 s of a ResNet-18's first `simulate`, for the
same program.
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx

from codesign.errors import ModelError


def fold_constants(model: onnx.ModelProto, source: str, always: bool = False) -> onnx.ModelProto:
    """The model with every constant subgraph folded and constant-condition `If`s inlined.
    `always`: run onnxslim even when nothing is left to fold, for its fusions (as after
    codesign's own rewrites)."""
    if not always and not needs_onnxslim(model.graph):
        sort_by_depth(model.graph)
        # Only explicit SAME padding reads inferred shapes after this (a plain graph has nothing
        # codesign rewrites); inferring serializes the whole model, weights included.
        return _with_inferred_shapes(model) if _has_same_padding(model.graph) else model
    _clear_shapes(model)
    import onnxslim  # half a second to import (sympy): only commands that import a model pay it

    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            folded = onnxslim.slim(model)
    except Exception as err:
        raise ModelError(f"{source}: cannot fold the model's constant subgraphs ({_reason(err)})") from err
    if folded is None:
        raise ModelError(f"{source}: cannot fold the model's constant subgraphs")
    return onnx.shape_inference.infer_shapes(folded)


def _with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    _clear_shapes(model)
    return onnx.shape_inference.infer_shapes(model)


def _clear_shapes(model: onnx.ModelProto) -> None:
    """Stale shapes of graph outputs and intermediates (often dynamic) would block inference."""
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]


# Ops whose output depends on shapes or that hold subgraphs: onnxslim resolves them once shapes are bound.
SHAPE_OPS = frozenset({"Shape", "Size", "If", "Loop", "Scan", "ConstantOfShape", "Range"})
# Ops the Relax frontend takes with constant operands (weights reshaped by a stored shape, as in
# mnist-8), folded after import by codesign.relax_fold.
FRONTEND_FOLDED_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Flatten"})


# Ops of clean exports that onnxslim has nothing to do for beyond what codesign's graph does
# (BatchNormalization and bias adds fold into the GEMM layers). Any other op (Pad, Mul, Slice,
# ConvTranspose, LSTM, ...) sends the graph through onnxslim: its fusions (pad into conv, scale
# into conv, slices merged) and what codesign's own rewrites need (a BatchNormalization behind a
# ConvTranspose fused before it becomes conv + depth-to-space).
PLAIN_OPS = frozenset(
    {"Conv", "BatchNormalization", "Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh"}
    | {"MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Gemm", "MatMul", "Softmax", "Concat", "Transpose"}
    | {"Flatten", "Reshape", "Constant", "Identity", "Dropout"}
)


def needs_onnxslim(graph: onnx.GraphProto) -> bool:
    """Whether onnxslim has work: an op outside PLAIN_OPS, a 1-D conv (codesign rewrites it), or
    constants to fold."""
    weights = {init.name: len(init.dims) for init in graph.initializer}
    one_d_conv = any(node.op_type == "Conv" and weights.get(node.input[1]) == 3 for node in graph.node)
    return one_d_conv or any(node.op_type not in PLAIN_OPS for node in graph.node) or has_constant_work(graph)


def has_constant_work(graph: onnx.GraphProto) -> bool:
    """Whether a node needs folding before the Relax frontend: a shape op, or a node whose inputs
    are all constants (initializers, `Constant` outputs, or outputs of such nodes), unless it is a
    FRONTEND_FOLDED_OPS node reading stored constants only."""
    stored = {init.name for init in graph.initializer} | {""}  # "": an omitted optional input
    constants = set(stored)
    for node in graph.node:
        if node.op_type in SHAPE_OPS:
            return True
        if node.op_type == "Constant":
            stored.update(node.output)
            constants.update(node.output)
        elif all(name in constants for name in node.input):
            if node.op_type not in FRONTEND_FOLDED_OPS or not all(name in stored for name in node.input):
                return True
            constants.update(node.output)
    return False


def _has_same_padding(graph: onnx.GraphProto) -> bool:
    return any(
        attribute.name == "auto_pad" and attribute.s.decode() in ("SAME_UPPER", "SAME_LOWER")
        for node in graph.node
        for attribute in node.attribute
    )


def sort_by_depth(graph: onnx.GraphProto) -> None:
    """Order the nodes as onnxslim's topological sort does (by depth: one more than the deepest
    producer of an input; file order among equals), a BatchNormalization behind a Conv at the
    Conv's depth, as onnxslim fuses the two. Layers are numbered in node order (conv2d_0, ...):
    so their names do not depend on whether a graph had anything to fold."""
    producers = {output: node for node in graph.node for output in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    depth: dict[int, int] = {}
    for node in graph.node:
        inputs = [producers[name] for name in node.input if name in producers]
        depth[id(node)] = max((depth[id(producer)] for producer in inputs), default=-1) + 1
        source = producers.get(node.input[0]) if node.input else None
        if node.op_type == "BatchNormalization" and source is not None and source.op_type == "Conv":
            depth[id(node)] -= readers[node.input[0]] == 1
    ordered = sorted(graph.node, key=lambda node: depth[id(node)])
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _reason(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines or [type(err).__name__])[0][:200]
