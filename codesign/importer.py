"""Stage 1, import: an ONNX file -> a float Relax module with static shapes (ImportedModel).

Binds the user's input shapes (and freezes inputs given a value), runs the ONNX passes of
`codesign.onnx_passes` (dequantize onnxruntime-quantized ops, fold shape subgraphs and
constant `If`s, inline both branches of the other `If`s, turn Max / Min with a constant into
Clip, batch norms after no conv into Mul + Add and Sum into Adds, make auto_pad explicit, unroll LSTM/GRU,
turn 1-D convs and ConvTranspose into 2-D convs), then imports through
`tvm.relax.frontend.onnx` and folds constants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import math
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map

from codesign.errors import ModelError, UsageError
from codesign.onnx_file import load_onnx
from codesign.onnx_passes.batch_norm import batch_norms_to_affine
from codesign.onnx_passes.branches import select_branches
from codesign.onnx_passes.clip import bounds_to_clip
from codesign.onnx_passes.conv import rewrite_convs
from codesign.onnx_passes.fold import fold_constants
from codesign.onnx_passes.precision import widen_half_precision
from codesign.onnx_passes.quantized import dequantize_model
from codesign.onnx_passes.rnn import expand_recurrent
from codesign.onnx_passes.variadic import sums_to_adds
from codesign.tvm_output import quiet_tvm


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
    frozen_inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # --input-value constants
    notes: list[str] = dataclasses.field(default_factory=list)  # what the ONNX passes rewrote, for the user


def onnx_dtype(elem_type: int) -> str:
    """numpy dtype name of an ONNX element type; names the type when numpy has none."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError) as err:
        raise ModelError(f"element type {elem_type} is not an ONNX tensor type") from err


SUPPORTED_INPUT_DTYPES = ("float32", "int64", "int32", "int8", "uint8", "bool")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    """Static dims as ints; dynamic ones (a name, no value, or a value <= 0 as Paddle writes) as str."""
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?"))
    return dims


def _check_names(option: str, given: dict, model: onnx.ModelProto, source: str) -> None:
    names = [vi.name for vi in _graph_inputs(model)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"{option} names {', '.join(unknown)}, but {source} has inputs: {', '.join(names)}")


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], source: str) -> list[TensorSpec]:
    """Fix every graph input's shape in place; dynamic dims must be bound by the user."""
    _check_names("--input-shape", shapes, model, source)
    specs = []
    for vi in _graph_inputs(model):
        tensor_type = vi.type.tensor_type
        dtype = onnx_dtype(tensor_type.elem_type)
        if dtype not in SUPPORTED_INPUT_DTYPES:
            type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise ModelError(
                f"{source}: input '{vi.name}' has element type {type_name} ({dtype}); supported: "
                + ", ".join(SUPPORTED_INPUT_DTYPES)
            )
        dims = _dims(vi)
        if vi.name in shapes:
            shape = shapes[vi.name]
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise UsageError(
                    f"--input-shape {vi.name}={','.join(map(str, shape))} does not match the model's "
                    f"shape [{', '.join(map(str, dims))}]"
                )
        elif all(isinstance(d, int) for d in dims):
            shape = tuple(dims)
        else:
            raise UsageError(
                f"{source}: input '{vi.name}' has dynamic shape [{', '.join(map(str, dims))}]; bind it with "
                f"--input-shape {vi.name}=" + ",".join(str(d) if isinstance(d, int) else "N" for d in dims)
            )
        _set_shape(vi, shape)
        specs.append(TensorSpec(vi.name, tuple(shape), dtype))
    return specs


def _set_shape(vi: onnx.ValueInfoProto, shape) -> None:
    del vi.type.tensor_type.shape.dim[:]
    for size in shape:
        vi.type.tensor_type.shape.dim.add().dim_value = size


def freeze_inputs(
    model: onnx.ModelProto, values: dict[str, list[str]], shapes: dict[str, tuple[int, ...]], source: str
) -> dict[str, np.ndarray]:
    """Turn the named inputs into constants (so `If`s on them fold away); returns the frozen arrays."""
    _check_names("--input-value", values, model, source)
    frozen = {}
    for vi in _graph_inputs(model):
        if vi.name not in values:
            continue
        array = _typed_value(vi, values[vi.name], shapes.get(vi.name))
        model.graph.input.remove(vi)
        model.graph.initializer.append(onnx.numpy_helper.from_array(array, vi.name))
        frozen[vi.name] = array
    return frozen


def _typed_value(vi: onnx.ValueInfoProto, items: list[str], bound_shape) -> np.ndarray:
    dtype = np.dtype(onnx_dtype(vi.type.tensor_type.elem_type))
    option = f"--input-value {vi.name}={','.join(items)}"
    try:
        if dtype.kind in "iu":
            parsed = [int(item) for item in items]
        elif dtype.kind == "b":
            parsed = [{"0": False, "1": True, "false": False, "true": True}[item.lower()] for item in items]
        else:
            parsed = [float(item) for item in items]
        array = np.array(parsed, dtype=dtype)
    except (ValueError, KeyError, OverflowError) as err:
        raise UsageError(f"{option}: input '{vi.name}' is {dtype.name}; the value does not fit it") from err
    if dtype.kind in "iu" and not np.array_equal(array.astype(np.int64), np.array(parsed, dtype=np.int64)):
        raise UsageError(f"{option}: input '{vi.name}' is {dtype.name}; the value does not fit it")
    dims = _dims(vi)
    shape = bound_shape or tuple(d if isinstance(d, int) else -1 for d in dims)
    if len(dims) == 1 and shape == (-1,):
        shape = (array.size,)
    if -1 in shape or len(shape) != len(dims) or math.prod(shape) != array.size:
        raise UsageError(
            f"{option}: input '{vi.name}' has shape [{', '.join(map(str, dims))}]; "
            f"{array.size} value(s) do not fill it (bind its shape with --input-shape)"
        )
    return array.reshape(shape)


def make_padding_explicit(model: onnx.ModelProto) -> None:
    """auto_pad=SAME_UPPER/SAME_LOWER -> explicit pads, so every conv carries its own padding.
    Reads the shapes `fold_constants` inferred (inferring again costs a copy of the weights)."""
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in list(model.graph.value_info) + list(model.graph.input)
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


def import_onnx(
    path: str | Path,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    input_values: dict[str, list[str]] | None = None,
    emulate_dynamic_quantization: bool = False,
) -> ImportedModel:
    """The model in Relax, its input shapes bound. `emulate_dynamic_quantization` imports an
    onnxruntime-quantized model with its dynamic uint8 rounding (a reference to check the import
    against onnxruntime) instead of the float model codesign quantizes."""
    model, sha256 = load_onnx(path)
    source = str(path)
    shapes = dict(input_shapes or {})
    widening_notes = widen_half_precision(model)
    frozen = freeze_inputs(model, input_values or {}, shapes, source)
    inputs = bind_input_shapes(model, {k: v for k, v in shapes.items() if k not in frozen}, source)
    model, notes = prepare_static_graph(model, source, emulate_dynamic_quantization)
    notes = widening_notes + notes
    mod = _from_onnx(model, inputs, source)
    output_names = [o.name for o in model.graph.output]
    outputs = _output_specs(mod, output_names, source)
    return ImportedModel(mod, inputs, outputs, source, sha256, frozen, notes)


def prepare_static_graph(
    model: onnx.ModelProto, source: str, emulate_dynamic_quantization: bool = False
) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX passes before the Relax frontend (input shapes already bound); returns notes for the user."""
    try:
        notes = dequantize_model(model, emulate_dynamic_quantization)
        model = fold_constants(model, source)
        notes += select_branches(model)
        notes += bounds_to_clip(model) + batch_norms_to_affine(model) + sums_to_adds(model)
        make_padding_explicit(model)
        rewritten = expand_recurrent(model) + rewrite_convs(model)
        if rewritten:
            model = fold_constants(model, source, always=True)
    except ModelError as err:
        if str(err).startswith(source):
            raise
        raise ModelError(f"{source}: {err}") from err
    check_supported_ops(model, source)
    return model, notes


def check_supported_ops(model: onnx.ModelProto, source: str) -> None:
    """One line naming every op type the Relax frontend cannot import (count, first node)."""
    supported = _get_convert_map()
    unsupported: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in supported and node.op_type != "If":
            unsupported.setdefault(node.op_type, []).append(node.name or node.output[0])
        if node.op_type == "If":
            unsupported.setdefault("If (condition not constant)", []).append(node.name or node.output[0])
    if unsupported:
        listed = "; ".join(f"{op} x{len(names)} (first: '{names[0]}')" for op, names in unsupported.items())
        hint = (
            " (freeze the inputs it depends on with --input-value)"
            if any(op.startswith("If") for op in unsupported)
            else ""
        )
        raise ModelError(f"{source}: unsupported ONNX ops: {listed}{hint}")


def _from_onnx(model: onnx.ModelProto, inputs: list[TensorSpec], source: str) -> tvm.IRModule:
    """The Relax frontend; an exception names the ONNX node it was converting."""
    from codesign.relax_fold import fold_constants  # it reads this module's static_shape

    current: list[onnx.NodeProto] = []
    parse = ONNXGraphImporter._parse_value_proto

    def tracking_parse(self, value_proto):
        if isinstance(value_proto, onnx.NodeProto):
            current[:] = [value_proto]
        return parse(self, value_proto)

    ONNXGraphImporter._parse_value_proto = tracking_parse
    # The frontend checks the model again and only warns (warnings are off here): load_onnx has
    # checked it; serializing it for the check cost ResNet-18 0.17 s.
    check_model, onnx.checker.check_model = onnx.checker.check_model, lambda *args, **kwargs: None
    try:
        # The frontend also prints ("Error converting operator ...") and warns on stdout.
        with quiet_tvm(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # "X in initializer but not in graph input": folded models do that
            mod = from_onnx(model, shape_dict={t.name: list(t.shape) for t in inputs}, keep_params_in_input=False)
            return fold_constants(mod)
    except Exception as err:
        where = f" at node '{current[0].name or current[0].output[0]}' ({current[0].op_type})" if current else ""
        message = f"{source}: cannot import into TVM{where}: {_first_line(err)}"
        # Release the frontend's half-built BlockBuilder now, so its C++ destructor warning is not
        # printed later on the user's terminal.
        with quiet_tvm():
            traceback.clear_frames(err.__traceback__)
            gc.collect()
        raise ModelError(message) from err
    finally:
        ONNXGraphImporter._parse_value_proto = parse
        onnx.checker.check_model = check_model


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
