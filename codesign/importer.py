"""Stage 1, import: an ONNX file -> a float Relax module with static shapes (ImportedModel).

Binds the user's input shapes, makes implicit conv/pool padding (auto_pad) explicit, imports
through `tvm.relax.frontend.onnx` (which folds the Shape -> Gather -> Concat -> Reshape
computations once shapes are static) and folds constants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from codesign.errors import ModelError, UsageError


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclasses.dataclass
class ImportedModel:
    mod: tvm.IRModule
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: str
    sha256: str


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['x=1,3,224,224', ...] -> {'x': (1, 3, 224, 224)}."""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise UsageError(f"--input-shape '{spec}': expected NAME=D1,D2,... with positive integers")
        shapes[name] = shape
    return shapes


def load_onnx(path: str | Path) -> tuple[onnx.ModelProto, str]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ModelError(f"{path}: no such ONNX file") from err
    except OSError as err:
        raise ModelError(f"{path}: cannot read ONNX file ({err.strerror})") from err
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({reason})") from err
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model, hashlib.sha256(data).hexdigest()


ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], source: str) -> list[TensorSpec]:
    """Fix every graph input's shape in place; dynamic dims must be bound by the user."""
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    names = [vi.name for vi in graph_inputs]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names {', '.join(unknown)}, but {source} has inputs: {', '.join(names)}")
    specs = []
    for vi in graph_inputs:
        tensor_type = vi.type.tensor_type
        dtype = ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise ModelError(f"{source}: input '{vi.name}' has an unsupported element type {tensor_type.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
        if vi.name in shapes:
            shape = shapes[vi.name]
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise UsageError(
                    f"--input-shape {vi.name}={','.join(map(str, shape))} does not match the model's "
                    f"shape [{', '.join(map(str, dims))}]"
                )
        elif all(isinstance(d, int) and d > 0 for d in dims):
            shape = tuple(dims)
        else:
            raise UsageError(
                f"{source}: input '{vi.name}' has dynamic shape [{', '.join(map(str, dims))}]; bind it with "
                f"--input-shape {vi.name}=" + ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in dims)
            )
        for dim, size in zip(tensor_type.shape.dim, shape):
            dim.Clear()
            dim.dim_value = size
        specs.append(TensorSpec(vi.name, tuple(shape), dtype))
    return specs


def make_padding_explicit(model: onnx.ModelProto) -> None:
    """auto_pad=SAME_UPPER/SAME_LOWER -> explicit pads, so every conv carries its own padding."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
    }
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            continue
        attrs = {a.name: a for a in node.attribute}
        mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        in_shape = shapes.get(node.input[0])
        if not in_shape or 0 in in_shape:
            continue
        spatial = in_shape[2:]
        if "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"].ints)
        elif node.input[1] in weights:
            kernel = weights[node.input[1]][2:]
        else:
            continue
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * len(spatial)
        dilations = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(spatial)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else large)
            ends.append(large if mode == "SAME_UPPER" else small)
        node.attribute.remove(attrs["auto_pad"])
        if "pads" in attrs:
            node.attribute.remove(attrs["pads"])
        node.attribute.append(onnx.helper.make_attribute("pads", begins + ends))


def import_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    model, sha256 = load_onnx(path)
    source = str(path)
    inputs = bind_input_shapes(model, input_shapes or {}, source)
    make_padding_explicit(model)
    try:
        mod = from_onnx(model, shape_dict={t.name: list(t.shape) for t in inputs}, keep_params_in_input=False)
    except Exception as err:
        raise ModelError(f"{source}: cannot import into TVM ({_first_line(err)})") from err
    mod = relax.transform.FoldConstant()(mod)
    output_names = [o.name for o in model.graph.output]
    return ImportedModel(mod, inputs, _output_specs(mod, output_names, source), source, sha256)


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if "not supported" in line or "Error" in line]
    return (useful or lines or [type(err).__name__])[-1][:300]


def _output_specs(mod: tvm.IRModule, names: list[str], source: str) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for index, sinfo in enumerate(fields):
        shape = static_shape(sinfo)
        if shape is None:
            raise ModelError(f"{source}: output {index} has no static shape after binding input shapes")
        name = names[index] if index < len(names) else f"output_{index}"
        specs.append(TensorSpec(name, shape, str(sinfo.dtype)))
    return specs


def static_shape(sinfo) -> tuple[int, ...] | None:
    if not isinstance(sinfo, relax.TensorType) or sinfo.shape is None:
        return None
    dims = getattr(sinfo.shape, "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)
