"""onnxruntime-quantized ONNX models -> the float models they approximate.

codesign quantizes float models itself (symmetric, no zero points), so a model that onnxruntime already
quantized is rewritten into float ONNX ops first, and codesign then re-quantizes it:

- Constant quantized weights become float initializers w = (q - zero_point) * scale (per tensor, per axis or
  per block).
- Statically quantized activations (QDQ pairs, QLinear* ops) become float tensors holding their real values,
  clipped to the range their scale and zero point can represent: that clip is how onnxruntime implements
  the ReLU / ReLU6 it fuses away. QLinear ops become their float ops.
- Dynamic quantization: DynamicQuantizeLinear(x) becomes (x, scale 1.0, zero point 0.0), so the model's own
  integer arithmetic (ConvInteger, MatMulInteger, Casts, scale multiplications), carried out in float,
  computes exactly the float op on x with the dequantized weights. A bias the model rounds to integers
  (Floor / Round before a Cast to int) keeps its exact float value. DynamicQuantizeLSTM becomes a float LSTM.
  With `emulate_dynamic=True` (a reference, not what codesign compiles), DynamicQuantizeLinear computes
  its scale, zero point and uint8 values in float ops as onnxruntime does, and the model's roundings
  (its biases' Floor) are kept, so the float model reproduces onnxruntime's arithmetic up to float
  rounding (not the per-step rounding inside DynamicQuantizeLSTM, which becomes a float LSTM).

Any other quantized op raises ModelError.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from codesign.errors import ModelError

MS_DOMAIN = "com.microsoft"
FLOAT = TensorProto.FLOAT
_ONNX_DOMAINS = ("", "ai.onnx", MS_DOMAIN)
# Op types of onnxruntime's and ONNX's quantized ops (a superset of what this pass handles).
_QUANTIZED_OP = re.compile(r"^Q[A-Z]|[Qq]uantiz|Integer|NBits|Bnb4|FpQ4|BFP")
_INTEGER_TYPES = frozenset(
    {
        TensorProto.UINT8,
        TensorProto.INT8,
        TensorProto.UINT16,
        TensorProto.INT16,
        TensorProto.UINT32,
        TensorProto.INT32,
        TensorProto.UINT64,
        TensorProto.INT64,
        TensorProto.UINT4,
        TensorProto.INT4,
    }
)
_QUANTIZED_RANGE = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15),
    TensorProto.INT4: (-8, 7),
}
# Ops that give the same result on quantized integers as on their real values (quantization is an
# increasing affine map), so they run unchanged on the float tensors that replace quantized ones.
_VALUE_PRESERVING = frozenset(
    {
        "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather", "GatherElements",
        "GatherND", "Split", "Concat", "Tile", "Expand", "Pad", "Resize", "DepthToSpace", "SpaceToDepth", "MaxPool",
        "GlobalMaxPool", "ReduceMax", "ReduceMin", "Max", "Min", "Clip", "Where", "TopK", "ScatterND",
        "ScatterElements", "Shape", "Size",
    }
)  # fmt: skip
# Ops that only move data (input 0): an integer tensor they produce is rebuilt in float from a float source.
_DATA_MOVEMENT = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Tile"})
# Integer semantics with no float counterpart.
_INTEGER_ONLY = frozenset({"Div", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot"})
_ROUNDING = frozenset({"Floor", "Round", "Ceil"})
# Notes list the dynamic ops in this order, the static ones in order of appearance with Q/DQ last.
_DYNAMIC_OPS = (
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLSTM",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeLinear",
)
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# QLinear op -> (float op, its inputs, the (scale, zero point) inputs of its output). An input is the index
# of a float input, or (tensor, scale, zero point, axis) of a quantized one; axis matters for per-axis scales.
_QLINEAR_SIMPLE = {
    "QLinearMatMul": ("MatMul", [(0, 1, 2, -2), (3, 4, 5, -1)], (6, 7)),
    "QLinearAdd": ("Add", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7)),
    "QLinearMul": ("Mul", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2, 1)], (3, 4)),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2, 1)], (3, 4)),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2, 1)], (3, 4)),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2, 1)], (3, 4)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2, 1)], (3, 4)),
    "QLinearReduceMean": ("ReduceMean", [(0, 1, 2, 1)], (3, 4)),
    "QLinearWhere": ("Where", [0, (1, 2, 3, 1), (4, 5, 6, 1)], (7, 8)),
}


def dequantize_model(model: onnx.ModelProto, emulate_dynamic: bool = False) -> list[str]:
    """Rewrite, in place, every quantized op into float ONNX ops. Returns one human-readable note per
    kind of rewrite done (e.g. 'dequantized 21 ConvInteger, 1 MatMulInteger and 22 DynamicQuantizeLinear
    nodes (onnxruntime dynamic quantization): codesign re-quantizes the float model'), empty if nothing
    was quantized."""
    if not is_quantized(model):
        return []
    counts = _Rewriter(model, emulate_dynamic).run()
    return _notes(counts)


def is_quantized(model: onnx.ModelProto) -> bool:
    """Does the model hold quantized ops (QDQ pairs, QLinear*, *Integer, dynamic quantization)?"""
    return any(_is_quantized(node) for node in _all_nodes(model.graph))


def is_dynamically_quantized(model: onnx.ModelProto) -> bool:
    """Does the model quantize activations at run time (onnxruntime's dynamic quantization)?"""
    return any(node.op_type in _DYNAMIC_OPS for node in _all_nodes(model.graph))


def _is_quantized(node: onnx.NodeProto) -> bool:
    return node.domain in _ONNX_DOMAINS and bool(_QUANTIZED_OP.search(node.op_type))


def _all_nodes(graph: onnx.GraphProto):
    """The graph's nodes and those of its subgraphs, recursively."""
    for node in graph.node:
        yield node
        for subgraph in _subgraphs(node):
            yield from _all_nodes(subgraph)


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs read (outer-scope names included)."""
    return {name for subgraph in _subgraphs(node) for inner in _all_nodes(subgraph) for name in inner.input}


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _attributes_except(node: onnx.NodeProto, *dropped: str) -> list[onnx.AttributeProto]:
    return [attribute for attribute in node.attribute if attribute.name not in dropped]


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _formal(parameters, index: int):
    """The schema parameter of input/output `index` (the last one is variadic)."""
    return parameters[min(index, len(parameters) - 1)]


def _along(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-tensor (size 1) or per-axis (1-D) parameter, shaped to broadcast along `axis` of an ndim array."""
    if param.size == 1:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point, axis: int, block_size: int) -> np.ndarray:
    """(q - zero_point) * scale per ONNX DequantizeLinear: per tensor, per axis or per block along axis."""
    q = q.astype(np.float32)
    scale = scale.astype(np.float32)
    zero_point = np.zeros((), np.float32) if zero_point is None else zero_point.astype(np.float32)
    if block_size and scale.size > 1:
        rows = np.arange(q.shape[axis])
        scale = np.take(np.repeat(scale, block_size, axis=axis), rows, axis=axis)
        if zero_point.size > 1:
            zero_point = np.take(np.repeat(zero_point, block_size, axis=axis), rows, axis=axis)
        return (q - zero_point) * scale
    return (q - _along(zero_point, q.ndim, axis)) * _along(scale, q.ndim, axis)


class _Rewriter:
    """One pass over the graph in topological order; the rewritten node list replaces the graph's.

    Tensors whose dtype changes from integer to float are tracked in two kinds:
    - `real`: statically quantized activations, now holding their real values (q - zero_point) * scale;
      mapped to their (scale, zero point) arrays when those are constants, for constants they meet.
    - `exact`: tensors of dynamic quantization's integer arithmetic, now holding the same values in float
      (DynamicQuantizeLinear's output is x itself with scale 1 and zero point 0).
    """

    def __init__(self, model: onnx.ModelProto, emulate_dynamic: bool = False):
        self.model = model
        self.emulate_dynamic = emulate_dynamic
        self.graph = model.graph
        self.opsets = {opset.domain or "": opset.version for opset in model.opset_import}
        self.opset = self.opsets.get("", self.opsets.get("ai.onnx", 1))
        self.initializers = {tensor.name: tensor for tensor in self.graph.initializer}
        self.constant_nodes = {
            node.output[0]: node for node in self.graph.node if node.op_type == "Constant" and not node.domain
        }
        self.arrays: dict[str, np.ndarray] = {}
        self.producer = {name: node for node in self.graph.node for name in node.output}
        self.names = self._all_names()
        self.real: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        self.exact: set[str] = set()
        self.alias: dict[str, str] = {}  # removed tensor -> the tensor now holding its value
        self.float_copies: dict[str, str] = {}  # integer tensor -> float tensor with the same values
        self.nodes: list[onnx.NodeProto] = []
        self.new_initializers: list[onnx.TensorProto] = []
        self.counts: Counter[str] = Counter()

    def _all_names(self) -> set[str]:
        graph = self.graph
        names = {value.name for value in [*graph.input, *graph.output, *graph.value_info]}
        names.update(self.initializers)
        names.update(name for node in _all_nodes(graph) for name in node.output)
        return names

    # ---- the pass ---------------------------------------------------------------------------

    def run(self) -> Counter[str]:
        for node in self.graph.node:
            for subgraph in _subgraphs(node):
                quantized = next((inner for inner in _all_nodes(subgraph) if _is_quantized(inner)), None)
                if quantized is not None:
                    raise ModelError(
                        f"quantized op {quantized.op_type} (node '{quantized.name}') inside a subgraph of "
                        f"{node.op_type} node '{node.name}' is not supported"
                    )
        for node in self.graph.node:
            handler = self._handler(node)
            if handler is None:
                self._keep(node)
            else:
                handler(node)
                self.counts[node.op_type] += 1
        self._materialize_aliases()
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        self.graph.initializer.extend(self.new_initializers)
        _remove_unused(self.graph)
        self._fix_types()
        _drop_unused_opset(self.model, MS_DOMAIN)
        return self.counts

    def _handler(self, node: onnx.NodeProto):
        if not _is_quantized(node):
            return None
        op = node.op_type
        if op in _QLINEAR_SIMPLE:
            return self._qlinear
        handler = {
            "QuantizeLinear": self._quantize_linear,
            "DequantizeLinear": self._dequantize_linear,
            "DynamicQuantizeLinear": self._dynamic_quantize_linear,
            "ConvInteger": self._conv_integer,
            "MatMulInteger": self._matmul_integer,
            "MatMulIntegerToFloat": self._matmul_integer_to_float,
            "DynamicQuantizeMatMul": self._dynamic_quantize_matmul,
            "DynamicQuantizeLSTM": self._dynamic_quantize_lstm,
            "QLinearConv": self._qlinear_conv,
            "QLinearConcat": self._qlinear_concat,
            "QGemm": self._qgemm,
        }.get(op)
        if handler is None:
            raise ModelError(f"quantized op {op} (node '{node.name}') is not supported; export the float model")
        return handler

    # ---- constants, names, emitted nodes ------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        if not name or name in self.real or name in self.exact:
            return None
        if name not in self.arrays:
            tensor = self._const_tensor(name)
            if tensor is None:
                return None
            self.arrays[name] = numpy_helper.to_array(tensor)
        return self.arrays[name]

    def _const_tensor(self, name: str) -> onnx.TensorProto | None:
        if name in self.initializers:
            return self.initializers[name]
        node = self.constant_nodes.get(name)
        if node is not None and node.attribute[0].name == "value":
            return node.attribute[0].t
        return None

    def const_type(self, name: str) -> int | None:
        tensor = self._const_tensor(name)
        return None if tensor is None else tensor.data_type

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def fresh(self, base: str) -> str:
        name, index = base, 0
        while name in self.names:
            index += 1
            name = f"{base}_{index}"
        self.names.add(name)
        return name

    def add_const(self, array: np.ndarray, name: str, exact_name: bool = False) -> str:
        name = name if exact_name else self.fresh(name)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.initializers[name] = tensor
        self.arrays[name] = array
        self.new_initializers.append(tensor)
        return name

    def emit(self, op_type: str, inputs: list[str], output: str | None = None, hint: str = "", attributes=(), **attrs):
        output = output or self.fresh(hint or op_type)
        node = helper.make_node(op_type, [self.resolve(name) for name in inputs], [output], name=output, **attrs)
        node.attribute.extend(attributes)
        self.nodes.append(node)
        return output

    # ---- values of quantized tensors ----------------------------------------------------------

    def float_integers(self, name: str) -> str:
        """A float tensor holding the integers of `name` (a rounding that only made them integers is dropped)."""
        if name in self.exact:
            return self.resolve(name)
        if name in self.real:
            raise ModelError(f"'{name}' is statically quantized: its integers are not available after dequantizing")
        if name not in self.float_copies:
            self.float_copies[name] = self._float_copy(name)
        return self.float_copies[name]

    def _float_copy(self, name: str) -> str:
        array = self.const(name)
        if array is not None:
            return self.add_const(array.astype(np.float32), f"{name}_float")
        producer = self.producer.get(name)
        if producer is not None and not producer.domain and len(producer.output) == 1:
            if producer.op_type == "Cast" and _attribute(producer, "to") in _INTEGER_TYPES:
                source = producer.input[0]
                rounding = self.producer.get(source)
                dropped = rounding is not None and rounding.op_type in _ROUNDING and not rounding.domain
                if dropped and not self.emulate_dynamic:
                    source = rounding.input[0]
                return self.emit("Cast", [source], hint=f"{name}_float", to=FLOAT)
            if producer.op_type in _DATA_MOVEMENT:
                inputs = [self.float_integers(producer.input[0]), *producer.input[1:]]
                return self.emit(producer.op_type, inputs, hint=f"{name}_float", attributes=producer.attribute)
        return self.emit("Cast", [name], hint=f"{name}_float", to=FLOAT)

    def offset(self, name: str, zero_point: str, axis: int, output: str | None = None) -> str:
        """A float tensor holding q - zero_point for the integer tensor `name`."""
        zp = self.const(zero_point)
        if not zero_point or (zp is not None and not zp.any()):
            return self.float_integers(name)
        q = self.const(name)
        if q is not None and zp is not None:
            values = q.astype(np.float32) - _along(zp.astype(np.float32), q.ndim, axis)
            return self.add_const(values, output or f"{name}_offset", exact_name=output is not None)
        zp_name = self._broadcastable(zero_point, axis, integer=True)
        return self.emit("Sub", [self.float_integers(name), zp_name], output, hint=f"{name}_offset")

    def real_value(self, name: str, scale: str, zero_point: str, axis: int = 1, block: int = 0, output=None) -> str:
        """A float tensor holding (q - zero_point) * scale, written to `output` if one has to be made."""
        if name in self.real:
            return self.resolve(name)
        q, s, zp = self.const(name), self.const(scale), self.const(zero_point)
        if q is not None and s is not None and (zp is not None or not zero_point):
            values = _dequantize(q, s, zp, axis, block)
            return self.add_const(values, output or f"{name}_dequantized", exact_name=output is not None)
        if block and s is not None and s.size > 1:
            raise ModelError(f"block-quantized tensor '{name}' is not a constant: cannot dequantize it")
        if s is not None and np.all(s == 1):
            return self.offset(name, zero_point, axis, output)
        values = self.offset(name, zero_point, axis)
        return self.emit("Mul", [values, self._broadcastable(scale, axis)], output, hint=f"{name}_dequantized")

    def _broadcastable(self, param: str, axis: int, integer: bool = False) -> str:
        """A quantization parameter as a float tensor broadcasting along `axis` of a non-constant tensor."""
        array = self.const(param)
        if array is None:
            return self.float_integers(param) if integer else self.resolve(param)
        if array.size > 1 and axis >= 0:
            raise ModelError(f"per-axis quantization parameter '{param}' of a non-constant tensor is not supported")
        shape = () if array.size == 1 else (-1, *[1] * (-axis - 1))
        return self.add_const(array.astype(np.float32).reshape(shape), f"{param}_float")

    def _params(self, scale: str, zero_point: str) -> tuple[np.ndarray, np.ndarray] | None:
        s, zp = self.const(scale), self.const(zero_point)
        if s is None or (zero_point and zp is None):
            return None
        return s.astype(np.float32), (np.zeros((), np.float32) if zp is None else zp.astype(np.float32))

    def _bounds(self, scale: str, zero_point: str, node: onnx.NodeProto) -> tuple[float, float] | None:
        """The real range a quantized output can hold, or None if its scale or zero point is not a known scalar."""
        s = self.const(scale)
        if s is None or s.size != 1:
            return None
        if zero_point:
            zp, elem_type = self.const(zero_point), self.const_type(zero_point)
            if zp is None:
                return None
        else:
            zp, elem_type = np.zeros(()), _attribute(node, "output_dtype", 0) or TensorProto.UINT8
        limits = _QUANTIZED_RANGE.get(elem_type)
        if limits is None:
            return None
        s, zp = float(s.reshape(())), float(zp.reshape(()))
        return (limits[0] - zp) * s, (limits[1] - zp) * s

    def quantized_output(self, op_type, inputs, node, scale, zero_point, attributes=(), **attrs) -> None:
        """Emit the float op for node's quantized output, clipped to the range the output's quantization holds."""
        output = node.output[0]
        bounds = self._bounds(scale, zero_point, node)
        target = self.fresh(f"{output}_float") if bounds else output
        self.emit(op_type, inputs, target, attributes=attributes, **attrs)
        if bounds:
            self.clip(target, output, bounds)
        self.real[output] = self._params(scale, zero_point)

    def clip(self, values: str, output: str, bounds: tuple[float, float]) -> None:
        low, high = bounds
        if self.opset < 11:
            self.emit("Clip", [values], output, min=low, max=high)
            return
        low_name = self.add_const(np.array(low, np.float32), f"{output}_min")
        high_name = self.add_const(np.array(high, np.float32), f"{output}_max")
        self.emit("Clip", [values, low_name, high_name], output)

    # ---- Q / DQ and dynamic quantization ------------------------------------------------------

    def _quantize_linear(self, node: onnx.NodeProto) -> None:
        x, scale, zero_point = node.input[0], node.input[1], _input(node, 2)
        output = node.output[0]
        bounds = self._bounds(scale, zero_point, node)
        if bounds:
            self.clip(self.resolve(x), output, bounds)
        else:
            self.alias[output] = self.resolve(x)
        self.real[output] = self._params(scale, zero_point)

    def _dequantize_linear(self, node: onnx.NodeProto) -> None:
        output = node.output[0]
        axis, block = _attribute(node, "axis", 1), _attribute(node, "block_size", 0)
        values = self.real_value(node.input[0], node.input[1], _input(node, 2), axis, block, output)
        if values != output:
            self.alias[output] = values

    def _dynamic_quantize_linear(self, node: onnx.NodeProto) -> None:
        y, y_scale, y_zero_point = [*node.output, "", ""][:3]
        if self.emulate_dynamic:
            self._emulated_dynamic_quantization(self.resolve(node.input[0]), y, y_scale, y_zero_point)
            return
        self.alias[y] = self.resolve(node.input[0])
        self.exact.add(y)
        if y_scale:
            self.add_const(np.array(1.0, np.float32), y_scale, exact_name=True)
        if y_zero_point:
            self.add_const(np.array(0.0, np.float32), y_zero_point, exact_name=True)

    def _emulated_dynamic_quantization(self, x: str, y: str, y_scale: str, y_zero_point: str) -> None:
        """DynamicQuantizeLinear as onnxruntime computes it, in float ops: the range widened to hold
        0, scale = range / 255 (1 for an empty range), zero point and values rounded half to even and
        saturated to [0, 255]; y and its zero point hold those integers in float."""
        zero = self.add_const(np.array(0.0, np.float32), f"{y}_zero")
        top = self.add_const(np.array(255.0, np.float32), f"{y}_top")
        low = self.emit("Min", [self.emit("ReduceMin", [x], hint=f"{y}_min", keepdims=0), zero], hint=f"{y}_low")
        high = self.emit("Max", [self.emit("ReduceMax", [x], hint=f"{y}_max", keepdims=0), zero], hint=f"{y}_high")
        span = self.emit("Sub", [high, low], hint=f"{y}_span")
        empty = self.emit("Equal", [span, zero], hint=f"{y}_empty")
        one = self.add_const(np.array(1.0, np.float32), f"{y}_one")
        step = self.emit("Div", [span, top], hint=f"{y}_step")
        scale = self.emit("Where", [empty, one, step], y_scale or None, hint=f"{y}_scale")
        offset = self.emit("Neg", [self.emit("Div", [low, scale], hint=f"{y}_low_steps")], hint=f"{y}_offset")
        clipped = self.emit("Clip", [offset, zero, top], hint=f"{y}_zp_clipped")
        zero_point = self.emit("Round", [clipped], hint=f"{y}_zp")
        steps = self.emit("Round", [self.emit("Div", [x, scale], hint=f"{y}_steps")], hint=f"{y}_rounded")
        shifted = self.emit("Add", [steps, zero_point], hint=f"{y}_shifted")
        self.alias[y] = self.emit("Clip", [shifted, zero, top], hint=f"{y}_q")
        self.exact.add(y)
        if y_zero_point:
            self.alias[y_zero_point] = zero_point
            self.exact.add(y_zero_point)

    def _conv_integer(self, node: onnx.NodeProto) -> None:
        x = self.offset(node.input[0], _input(node, 2), 1)
        w = self.offset(node.input[1], _input(node, 3), 0)
        self.emit("Conv", [x, w], node.output[0], attributes=node.attribute)
        self.exact.add(node.output[0])

    def _matmul_integer(self, node: onnx.NodeProto) -> None:
        a = self.offset(node.input[0], _input(node, 2), -2)
        b = self.offset(node.input[1], _input(node, 3), -1)
        self.emit("MatMul", [a, b], node.output[0])
        self.exact.add(node.output[0])

    def _matmul_integer_to_float(self, node: onnx.NodeProto) -> None:
        a = self.real_value(node.input[0], node.input[2], _input(node, 4), -1)
        b = self.real_value(node.input[1], node.input[3], _input(node, 5), -1)
        self._matmul_bias(a, b, _input(node, 6), node.output[0])

    def _dynamic_quantize_matmul(self, node: onnx.NodeProto) -> None:
        b = self.real_value(node.input[1], node.input[2], _input(node, 3), -1)
        self._matmul_bias(node.input[0], b, _input(node, 4), node.output[0])

    def _matmul_bias(self, a: str, b: str, bias: str, output: str) -> None:
        if not bias:
            self.emit("MatMul", [a, b], output)
            return
        product = self.emit("MatMul", [a, b], hint=f"{output}_matmul")
        self.emit("Add", [product, bias], output)

    def _dynamic_quantize_lstm(self, node: onnx.NodeProto) -> None:
        w = self._lstm_weight(node, 1, 8, 9)
        r = self._lstm_weight(node, 2, 10, 11)
        inputs = [node.input[0], w, r, *[_input(node, i) for i in range(3, 8)]]
        while not inputs[-1]:
            inputs.pop()
        lstm = helper.make_node("LSTM", [self.resolve(name) for name in inputs], list(node.output), name=node.name)
        lstm.attribute.extend(node.attribute)
        self.nodes.append(lstm)

    def _lstm_weight(self, node: onnx.NodeProto, index: int, scale_index: int, zero_point_index: int) -> str:
        """DynamicQuantizeLSTM's [dirs, in, 4*hidden] weight -> ONNX LSTM's float [dirs, 4*hidden, in]."""
        q, scale, zero_point = (self.const(_input(node, i)) for i in (index, scale_index, zero_point_index))
        if q is None or scale is None:
            raise ModelError(f"DynamicQuantizeLSTM node '{node.name}': weights and scales must be constants")
        # Scales and zero points are per direction [dirs] or per direction and gate column [dirs, 4*hidden].
        scale = scale.astype(np.float32).reshape(q.shape[0], 1, -1)
        zero_point = 0 if zero_point is None else zero_point.astype(np.float32).reshape(q.shape[0], 1, -1)
        weight = (q.astype(np.float32) - zero_point) * scale
        return self.add_const(weight.transpose(0, 2, 1), f"{node.input[index]}_dequantized")

    # ---- QOperator ops -------------------------------------------------------------------------

    def _qlinear(self, node: onnx.NodeProto) -> None:
        float_op, operands, (scale, zero_point) = _QLINEAR_SIMPLE[node.op_type]
        inputs = [
            _input(node, operand)
            if isinstance(operand, int)
            else self.real_value(node.input[operand[0]], node.input[operand[1]], _input(node, operand[2]), operand[3])
            for operand in operands
        ]
        attributes = self._float_attributes(node)
        if float_op == "ReduceMean" and self.opset >= 18:
            axes = _attribute(node, "axes")
            attributes = [attribute for attribute in attributes if attribute.name != "axes"]
            if axes is not None:
                inputs.append(self.add_const(np.array(axes, np.int64), f"{node.output[0]}_axes"))
        out_scale, out_zero_point = node.input[scale], _input(node, zero_point)
        self.quantized_output(float_op, inputs, node, out_scale, out_zero_point, attributes)

    def _float_attributes(self, node: onnx.NodeProto) -> list[onnx.AttributeProto]:
        if _attribute(node, "channels_last", 0):
            raise ModelError(f"{node.op_type} node '{node.name}': channels_last layout is not supported")
        if node.op_type == "QLinearSoftmax" and (_attribute(node, "opset", 13) >= 13) != (self.opset >= 13):
            raise ModelError(f"QLinearSoftmax node '{node.name}': its softmax opset differs from the model's")
        return _attributes_except(node, "channels_last", "opset")

    def _qlinear_conv(self, node: onnx.NodeProto) -> None:
        x = self.real_value(node.input[0], node.input[1], node.input[2])
        w = self.real_value(node.input[3], node.input[4], node.input[5], axis=0)
        inputs = [x, w]
        if _input(node, 8):
            inputs.append(self._int32_bias(node, node.input[8], node.input[1], node.input[4]))
        self.quantized_output("Conv", inputs, node, node.input[6], node.input[7], self._float_attributes(node))

    def _qlinear_concat(self, node: onnx.NodeProto) -> None:
        triples = [node.input[i : i + 3] for i in range(2, len(node.input), 3)]
        inputs = [self.real_value(tensor, scale, zero_point) for tensor, scale, zero_point in triples]
        self.quantized_output("Concat", inputs, node, node.input[0], node.input[1], node.attribute)

    def _qgemm(self, node: onnx.NodeProto) -> None:
        alpha, trans_b = _attribute(node, "alpha", 1.0), _attribute(node, "transB", 0)
        a = self.real_value(node.input[0], node.input[1], node.input[2])
        b = self.real_value(node.input[3], node.input[4], _input(node, 5), axis=0 if trans_b else 1)
        inputs = [a, b]
        if _input(node, 6):  # int32 C, added to the accumulator before scaling by alpha * a_scale * b_scale
            inputs.append(self._int32_bias(node, node.input[6], node.input[1], node.input[4], alpha))
        if _input(node, 7):
            self.quantized_output("Gemm", inputs, node, node.input[7], _input(node, 8), node.attribute)
        else:
            self.emit("Gemm", inputs, node.output[0], attributes=node.attribute)

    def _int32_bias(self, node, bias: str, x_scale: str, w_scale: str, factor: float = 1.0) -> str:
        values, scales = self.const(bias), [self.const(x_scale), self.const(w_scale)]
        if values is None or any(scale is None for scale in scales):
            raise ModelError(f"{node.op_type} node '{node.name}': bias and scales must be constants")
        scale = np.float32(factor) * scales[0].astype(np.float32).reshape(()) * scales[1].astype(np.float32)
        return self.add_const(values.astype(np.float32) * scale, f"{bias}_dequantized")

    # ---- other ops on tensors that became float -------------------------------------------------

    def _keep(self, node: onnx.NodeProto) -> None:
        reads = _subgraph_reads(node) if _subgraphs(node) else set()
        if any(name in self.real or name in self.exact for name in reads):
            raise ModelError(f"{node.op_type} node '{node.name}': a subgraph reads a quantized tensor")
        changed = [i for i, name in enumerate(node.input) if name in self.real or name in self.exact]
        if changed and node.op_type == "Cast" and not node.domain:
            self._cast(node)
            return
        if changed:
            schema = self._schema(node)
            for type_str in {_formal(schema.inputs, i).type_str for i in changed}:
                self._unify(node, schema, type_str)
        node.input[:] = [self.resolve(name) for name in node.input]
        self.nodes.append(node)

    def _cast(self, node: onnx.NodeProto) -> None:
        source, output, to = node.input[0], node.output[0], _attribute(node, "to")
        if source in self.real and to not in _INTEGER_TYPES:
            raise ModelError(f"Cast node '{node.name}' reads the integers of statically quantized '{source}'")
        if to in _INTEGER_TYPES:
            if source in self.real:
                self.real[output] = self.real[source]
            else:
                self.exact.add(output)
        elif to != FLOAT:  # e.g. to float16: still a cast, now from float
            node.input[0] = self.resolve(source)
            self.nodes.append(node)
            return
        self.alias[output] = self.resolve(source)

    def _schema(self, node: onnx.NodeProto):
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            return onnx.defs.get_schema(node.op_type, self.opsets.get(domain, 1), domain)
        except onnx.defs.SchemaError as err:
            raise ModelError(
                f"{node.op_type} node '{node.name}' reads a quantized tensor and has no ONNX schema"
            ) from err

    def _unify(self, node: onnx.NodeProto, schema, type_str: str) -> None:
        """Inputs and outputs of `node` sharing a type with a tensor that became float become float too."""
        positions = [i for i, name in enumerate(node.input) if name and _formal(schema.inputs, i).type_str == type_str]
        real = [node.input[i] for i in positions if node.input[i] in self.real]
        exact = [node.input[i] for i in positions if node.input[i] in self.exact]
        outputs = [
            name for i, name in enumerate(node.output) if name and _formal(schema.outputs, i).type_str == type_str
        ]
        where = f"{node.op_type} node '{node.name}'"
        if type_str.startswith("tensor(") or (real and exact):
            raise ModelError(f"{where} mixes quantized tensors of different kinds")
        if real and outputs and node.op_type not in _VALUE_PRESERVING:
            raise ModelError(f"{where} computes on statically quantized integers: not supported")
        if exact and node.op_type in _INTEGER_ONLY:
            raise ModelError(f"{where} uses integer arithmetic on dynamically quantized tensors: not supported")
        params = self.real[real[0]] if real else None
        for i in positions:
            name = node.input[i]
            if name not in self.real and name not in self.exact:
                node.input[i] = self._real_constant(name, params, where) if real else self.float_integers(name)
        for name in outputs:
            if real:
                self.real[name] = params
            else:
                self.exact.add(name)

    def _real_constant(self, name: str, params, where: str) -> str:
        """An integer constant next to statically quantized tensors: dequantized with their parameters."""
        array = self.const(name)
        if array is None or params is None or params[0].size != 1 or params[1].size != 1:
            raise ModelError(f"{where} combines a quantized tensor with '{name}', which cannot be dequantized")
        scale, zero_point = (param.reshape(()) for param in params)
        return self.add_const((array.astype(np.float32) - zero_point) * scale, f"{name}_dequantized")

    # ---- graph outputs, types ------------------------------------------------------------------

    def _materialize_aliases(self) -> None:
        """Identity nodes for removed tensors still read by name: graph outputs and subgraphs."""
        read = {value.name for value in self.graph.output}
        read.update(name for node in self.nodes for name in _subgraph_reads(node))
        for name in sorted(read):
            if name in self.alias:
                self.nodes.append(helper.make_node("Identity", [self.resolve(name)], [name], name=name))

    def _fix_types(self) -> None:
        changed = set(self.real) | self.exact | set(self.alias)
        produced = {name for node in self.graph.node for name in node.output}
        produced.update(tensor.name for tensor in self.graph.initializer)
        produced.update(value.name for value in self.graph.input)
        kept = [value for value in self.graph.value_info if value.name in produced and value.name not in changed]
        del self.graph.value_info[:]
        self.graph.value_info.extend(kept)
        for value in self.graph.output:
            if value.name in self.real or value.name in self.exact:
                value.type.tensor_type.elem_type = FLOAT


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes, initializers and initializer-backed inputs nothing reads."""
    read = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):
        if not node.output or any(name in read for name in node.output):
            kept.append(node)
            read.update(node.input)
            read.update(_subgraph_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    removed = {tensor.name for tensor in graph.initializer if tensor.name not in read}
    initializers = [tensor for tensor in graph.initializer if tensor.name not in removed]
    inputs = [value for value in graph.input if value.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.input[:]
    graph.input.extend(inputs)


def _drop_unused_opset(model: onnx.ModelProto, domain: str) -> None:
    if any(node.domain == domain for node in _all_nodes(model.graph)):
        return
    kept = [opset for opset in model.opset_import if opset.domain != domain]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _notes(counts: Counter[str]) -> list[str]:
    dynamic = [(op, counts[op]) for op in _DYNAMIC_OPS if counts[op]]
    static = sorted(
        ((op, count) for op, count in counts.items() if op not in _DYNAMIC_OPS),
        key=lambda item: _QDQ_OPS.index(item[0]) + 1 if item[0] in _QDQ_OPS else 0,
    )
    notes = []
    if dynamic:
        notes.append(
            f"dequantized {_listing(dynamic)} nodes (onnxruntime dynamic quantization): "
            "codesign re-quantizes the float model"
        )
    if static:
        qoperator = any(op not in _QDQ_OPS for op, _ in static)
        notes.append(
            f"dequantized {_listing(static)} nodes ({'onnxruntime QOperator' if qoperator else 'QDQ'} format): "
            "activations are float tensors clipped to their quantized ranges; codesign re-quantizes the float model"
        )
    return notes


def _listing(counts: list[tuple[str, int]]) -> str:
    items = [f"{count} {op}" for op, count in counts]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
