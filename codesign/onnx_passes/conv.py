"""Rewrites of 1-D Conv and of ConvTranspose into 2-D Conv plus data movement, so they map onto the GEMM core.

- A 1-D Conv becomes Unsqueeze -> 2-D Conv over height 1 -> Squeeze.
- A ConvTranspose (2-D or 1-D, any group) becomes one 2-D Conv that computes every stride phase as a block of
  output channels, a depth-to-space interleave (Reshape / Transpose / Reshape) and a crop (Slice).

Phase decomposition, per spatial axis with stride s: before cropping, ConvTranspose output position s*q + r
receives the kernel taps j = r + s*m only. The (dilated) kernel is padded with zero taps to Kp = ceil(K/s)*s,
so every phase has the same Kp/s taps, and phase r is a correlation of the input with the taps j = r + s*m
in reverse order. The Conv computes only the phase rows q that the output touches (a row holds the s
positions s*q .. s*q + s-1, so a crop starting or ending inside a row keeps all of that row's phases):
`pads` and `output_padding` set the Conv's padding. Every output position gets exactly one phase, so the
bias goes into the Conv, replicated over the phases.

Output size and padding follow the ONNX spec and onnxruntime: `output_shape` overrides `pads`; auto_pad
SAME_* aims at input*stride (total padding clamped at 0, as onnxruntime and TVM do), SAME_UPPER puts the
smaller half first, everything else the larger half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from codesign.errors import ModelError
from codesign.onnx_passes.graph_edit import (
    add_initializers,
    constant_arrays,
    default_opset,
    fresh_name,
    label,
    names_in_use,
    remove_unused_constants,
    static_shapes,
)


@dataclass(frozen=True)
class _Axis:
    """One spatial axis of a ConvTranspose, as a phase-stacked Conv: what the Conv computes and what is kept."""

    kernel: int  # ConvTranspose kernel taps, before dilation
    dilation: int
    stride: int
    taps: int  # taps per phase: Kp / stride, where Kp is the dilated kernel zero-padded to a multiple of the stride
    size: int  # input size
    input_kept: tuple[int, int]  # input rows the Conv reads (a Slice drops the others)
    conv_pads: tuple[int, int]
    rows: int  # Conv output size along the axis; the interleave makes it rows * stride
    crop_start: int
    out: int

    @property
    def zero_taps(self) -> int:
        """Zero taps the phase kernels hold: Kp minus the kernel's taps (dilation's zeros included)."""
        return self.taps * self.stride - self.kernel

    @property
    def input_sliced(self) -> bool:
        return self.input_kept != (0, self.size)

    @property
    def cropped(self) -> bool:
        return self.crop_start > 0 or self.crop_start + self.out < self.rows * self.stride


def rewrite_convs(model: onnx.ModelProto) -> list[str]:
    """In place: 1-D Conv -> 2-D Conv over height 1; ConvTranspose (2-D, and 1-D) -> one 2-D Conv producing all
    stride phases as output channels, then a depth-to-space interleave and a crop. Returns one note per rewritten node.
    Nodes whose weight (or ConvTranspose bias) is not constant, and those over three spatial axes, stay as they are."""
    graph = model.graph
    constants = constant_arrays(graph)
    if not any(_rewritable(node, constants) for node in graph.node):
        return []
    shapes = static_shapes(model)
    taken = names_in_use(graph)
    opset = default_opset(model)
    notes, consumed, new_nodes = [], set(), []
    for node in graph.node:
        if not _rewritable(node, constants):
            new_nodes.append(node)
            continue
        builder = _Builder(label(node, taken), taken, opset)
        if node.op_type == "Conv":
            notes.append(_rewrite_conv1d(node, builder, constants))
        else:
            notes.append(_rewrite_conv_transpose(node, builder, constants, shapes))
        new_nodes.extend(builder.nodes)
        add_initializers(model, builder.initializers)
        consumed.update(name for name in node.input[1:] if name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_unused_constants(graph, consumed)
    return notes


def _rewritable(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "ConvTranspose"):
        return False
    weight = constants.get(node.input[1])
    if weight is None:
        return False
    if node.op_type == "Conv":
        return weight.ndim == 3
    bias = node.input[2] if len(node.input) > 2 else ""
    return weight.ndim in (3, 4) and (not bias or bias in constants)


# --- 1-D Conv --------------------------------------------------------------------------------


def _rewrite_conv1d(node: onnx.NodeProto, builder: _Builder, constants: dict[str, np.ndarray]) -> str:
    attrs = _attributes(node)
    weight = constants[node.input[1]]
    kernel, stride, dilation = weight.shape[2], attrs.get("strides", [1])[0], attrs.get("dilations", [1])[0]
    conv_attrs = {"kernel_shape": [1, kernel], "strides": [1, stride], "dilations": [1, dilation]}
    conv_attrs["group"] = attrs.get("group", 1)
    if "pads" in attrs:
        conv_attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    if "auto_pad" in attrs:  # SAME_* over height 1 with a 1-tap kernel pads nothing there: it carries over as is
        conv_attrs["auto_pad"] = attrs["auto_pad"]
    weight_2d = builder.constant("weight", weight[:, :, None, :])
    inputs = [builder.unsqueeze(node.input[0], 2, "input_2d"), weight_2d, *node.input[2:3]]
    conv_out = builder.op("Conv", inputs, "output_2d", **conv_attrs)
    builder.squeeze(conv_out, 2, node.output[0])
    return (
        f"Conv '{builder.prefix}' 1-D (kernel {kernel}, stride {stride}, dilation {dilation}) -> "
        "Unsqueeze + 2-D Conv over height 1 + Squeeze"
    )


# --- ConvTranspose ---------------------------------------------------------------------------


def _rewrite_conv_transpose(
    node: onnx.NodeProto, builder: _Builder, constants: dict[str, np.ndarray], shapes: dict[str, list]
) -> str:
    attrs = _attributes(node)
    weight = constants[node.input[1]]
    in_shape = shapes.get(node.input[0])
    if not in_shape or any(not dim for dim in in_shape) or len(in_shape) != weight.ndim:
        raise ModelError(
            f"ConvTranspose '{builder.prefix}': input '{node.input[0]}' needs a static {weight.ndim}-D shape, "
            f"not {in_shape}"
        )
    one_d = weight.ndim == 3
    if one_d:  # lift to 2-D over height 1
        weight, in_shape = weight[:, :, None, :], [*in_shape[:2], 1, in_shape[2]]
        attrs = _attributes_2d(attrs)
    axes = _plan_axes(builder.prefix, attrs, in_shape[2:], weight.shape[2:])
    group = attrs.get("group", 1)
    bias = constants[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    conv_weight, conv_bias = _phase_weights(weight, bias, group, axes)

    data = builder.unsqueeze(node.input[0], 2, "input_2d") if one_d else node.input[0]
    if any(axis.input_sliced for axis in axes):
        bounds = [(2 + index, *axis.input_kept) for index, axis in enumerate(axes) if axis.input_sliced]
        data = _slice(builder, data, bounds, "input_kept")
    conv_inputs = [data, builder.constant("weight", conv_weight)]
    if conv_bias is not None:
        conv_inputs.append(builder.constant("bias", conv_bias))
    interleave, crop = any(axis.stride > 1 for axis in axes), any(axis.cropped for axis in axes)
    output = builder.fresh("output_2d") if one_d else node.output[0]
    conv_pads = [axis.conv_pads[0] for axis in axes] + [axis.conv_pads[1] for axis in axes]
    conv_attrs = {"kernel_shape": [axis.taps for axis in axes], "pads": conv_pads, "group": group}
    data = builder.op("Conv", conv_inputs, "phases", "" if interleave or crop else output, **conv_attrs)
    if interleave:
        data = _interleave(builder, data, in_shape[0], weight.shape[1] * group, group, axes, "" if crop else output)
    if crop:
        _crop(builder, data, axes, output)
    if one_d:
        builder.squeeze(output, 2, node.output[0])
    return _transpose_note(builder.prefix, one_d, weight.shape[1] * group, group, axes)


def _attributes_2d(attrs: dict) -> dict:
    """1-D ConvTranspose attributes as 2-D ones over a height-1 axis."""
    lifted = dict(attrs)
    for name, neutral in (("strides", 1), ("dilations", 1), ("output_padding", 0)):
        if name in attrs:
            lifted[name] = [neutral, *attrs[name]]
    if "pads" in attrs:
        lifted["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    if "output_shape" in attrs:
        lifted["output_shape"] = [1, attrs["output_shape"][-1]]
    return lifted


def _plan_axes(label: str, attrs: dict, sizes: list[int], kernel: tuple[int, ...]) -> list[_Axis]:
    strides = attrs.get("strides", [1, 1])
    dilations = attrs.get("dilations", [1, 1])
    extras = attrs.get("output_padding", [0, 0])
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    full = [s * (size - 1) + extra + k for size, s, extra, k in zip(sizes, strides, extras, dilated)]
    begins, outs = _output_window(label, attrs, [size * s for size, s in zip(sizes, strides)], full)
    if any(out <= 0 for out in outs):
        raise ModelError(f"ConvTranspose '{label}': output size {outs} is not positive")
    return [_plan_axis(*args) for args in zip(sizes, kernel, dilations, strides, begins, outs)]


def _output_window(label: str, attrs: dict, same: list[int], full: list[int]) -> tuple[list[int], list[int]]:
    """Per axis: how much of the full output is cropped before the output, and the output size (ONNX spec;
    onnxruntime where the spec is silent). `same` is the SAME_* target size, `full` the uncropped size."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise ModelError(f"ConvTranspose '{label}': unknown auto_pad {auto_pad}")
    if "output_shape" in attrs:
        if len(attrs["output_shape"]) not in (2, 4):
            raise ModelError(f"ConvTranspose '{label}': output_shape {attrs['output_shape']} has the wrong length")
        outs = list(attrs["output_shape"][-2:])
    elif auto_pad.startswith("SAME"):
        outs = [min(target, total) for target, total in zip(same, full)]  # onnxruntime and TVM never pad negatively
    else:
        pads = attrs.get("pads", [0, 0, 0, 0]) if auto_pad == "NOTSET" else [0, 0, 0, 0]
        return list(pads[:2]), [total - begin - end for total, begin, end in zip(full, pads[:2], pads[2:])]
    totals = [total - out for total, out in zip(full, outs)]
    # A negative total (output_shape past the full output) appends zeros at the end, as onnxruntime does.
    begins = [0 if total < 0 else total // 2 if auto_pad == "SAME_UPPER" else total - total // 2 for total in totals]
    return begins, outs


def _plan_axis(size: int, kernel: int, dilation: int, stride: int, pad_begin: int, out: int) -> _Axis:
    taps = -(-((kernel - 1) * dilation + 1) // stride)
    # The Conv computes only the phase rows q (pre-crop positions s*q + r) that the kept range
    # [pad_begin, pad_begin + out) touches: through its padding, or, for pads as large as the kernel, by
    # reading fewer input rows. Phase row q reads input rows q - taps + 1 .. q.
    first_row, last_row = pad_begin // stride, (pad_begin + out - 1) // stride
    start = min(max(first_row - taps + 1, 0), size - 1)
    end = min(max(last_row + 1, start + 1), size)
    before, after = max(taps - 1 - first_row + start, 0), max(last_row - end + 1, 0)
    rows = end - start + before + after - taps + 1
    crop_start = pad_begin - stride * (start - before + taps - 1)
    return _Axis(kernel, dilation, stride, taps, size, (start, end), (before, after), rows, crop_start, out)


def _phase_weights(
    weight: np.ndarray, bias: np.ndarray | None, group: int, axes: list[_Axis]
) -> tuple[np.ndarray, np.ndarray | None]:
    """ConvTranspose weight [C, O/g, kH, kW] -> Conv weight [g * sH * sW * O/g, C/g, Kp_h/sH, Kp_w/sW]."""
    channels, group_out, height, width = weight.shape
    (th, sh), (tw, sw) = ((axis.taps, axis.stride) for axis in axes)
    dh, dw = (axis.dilation for axis in axes)
    padded = np.zeros((channels, group_out, th * sh, tw * sw), weight.dtype)
    padded[:, :, : (height - 1) * dh + 1 : dh, : (width - 1) * dw + 1 : dw] = weight
    # Tap j = m*s + r: split each kernel axis into (m, r), reverse m (correlation order).
    phased = padded.reshape(group, channels // group, group_out, th, sh, tw, sw)[:, :, :, ::-1, :, ::-1, :]
    conv_weight = phased.transpose(0, 4, 6, 2, 1, 3, 5).reshape(-1, channels // group, th, tw)
    if bias is None:
        return np.ascontiguousarray(conv_weight), None
    conv_bias = np.broadcast_to(bias.reshape(group, 1, 1, group_out), (group, sh, sw, group_out))
    return np.ascontiguousarray(conv_weight), conv_bias.reshape(-1).copy()


def _interleave(
    builder: _Builder, phases: str, batch: int, channels: int, group: int, axes: list[_Axis], output: str
) -> str:
    """Depth-to-space: channels ordered (group, phase h, phase w, channel) -> [N, O, rows_h * sH, rows_w * sW]."""
    (rh, sh), (rw, sw) = ((axis.rows, axis.stride) for axis in axes)
    if group == 1:
        split, order = [batch, sh, sw, channels, rh, rw], [0, 3, 4, 1, 5, 2]
    else:
        split, order = [batch, group, sh, sw, channels // group, rh, rw], [0, 1, 4, 5, 2, 6, 3]
    grouped = builder.reshape(phases, split, "phases_split")
    moved = builder.op("Transpose", [grouped], "phases_moved", perm=order)
    return builder.reshape(moved, [batch, channels, rh * sh, rw * sw], "interleaved", output)


def _crop(builder: _Builder, data: str, axes: list[_Axis], output: str) -> str:
    bounds = [
        (2 + index, axis.crop_start, axis.crop_start + axis.out) for index, axis in enumerate(axes) if axis.cropped
    ]
    return _slice(builder, data, bounds, "cropped", output)


def _slice(builder: _Builder, data: str, bounds: list[tuple[int, int, int]], label: str, output: str = "") -> str:
    """`data` cut to [start, end) along each (axis, start, end) of `bounds`."""
    axes, starts, ends = (list(column) for column in zip(*bounds))
    return builder.slice(data, starts, ends, axes, label, output)


def _transpose_note(label: str, one_d: bool, out_channels: int, group: int, axes: list[_Axis]) -> str:
    axes = axes[1:] if one_d else axes

    def per_axis(values) -> str:
        return "x".join(map(str, values))

    dilation = f", dilation {per_axis(a.dilation for a in axes)}" if any(a.dilation > 1 for a in axes) else ""
    phases = int(np.prod([axis.stride for axis in axes]))
    crop = " + crop" if any(axis.cropped for axis in axes) else ""
    return (
        f"ConvTranspose '{label}' {'1-D' if one_d else '2-D'} (kernel {per_axis(a.kernel for a in axes)}, "
        f"stride {per_axis(a.stride for a in axes)}{dilation}, group {group}) -> Conv with {phases} phases x "
        f"{out_channels} = {phases * out_channels} output channels, kernel {per_axis(a.taps for a in axes)}, "
        f"stride 1 + depth-to-space{crop}; zero taps added to the kernel: {per_axis(a.zero_taps for a in axes)}"
    )


# --- building nodes --------------------------------------------------------------------------


class _Builder:
    """Collects the nodes and initializers that replace one node, all named under its label."""

    def __init__(self, prefix: str, taken: set[str], opset: int):
        self.prefix, self.taken, self.opset = prefix, taken, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def fresh(self, label: str) -> str:
        return fresh_name(self.prefix, label, self.taken)

    def constant(self, label: str, value: np.ndarray) -> str:
        name = self.fresh(label)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], label: str, output: str = "", **attributes) -> str:
        output = output or self.fresh(label)
        self.nodes.append(helper.make_node(op_type, inputs, [output], self.fresh(f"{label}_{op_type}"), **attributes))
        return output

    def reshape(self, data: str, shape: list[int], label: str, output: str = "") -> str:
        if self.opset < 5:
            return self.op("Reshape", [data], label, output, shape=shape)
        return self.op("Reshape", [data, self.constant(f"{label}_shape", np.array(shape, np.int64))], label, output)

    def unsqueeze(self, data: str, axis: int, label: str) -> str:
        if self.opset < 13:
            return self.op("Unsqueeze", [data], label, axes=[axis])
        return self.op("Unsqueeze", [data, self.constant(f"{label}_axes", np.array([axis], np.int64))], label)

    def squeeze(self, data: str, axis: int, output: str) -> str:
        if self.opset < 13:
            return self.op("Squeeze", [data], "output", output, axes=[axis])
        return self.op("Squeeze", [data, self.constant("squeeze_axes", np.array([axis], np.int64))], "output", output)

    def slice(
        self, data: str, starts: list[int], ends: list[int], axes: list[int], label: str, output: str = ""
    ) -> str:
        if self.opset < 10:
            return self.op("Slice", [data], label, output, starts=starts, ends=ends, axes=axes)
        parts = {"starts": starts, "ends": ends, "axes": axes}
        bounds = [self.constant(f"{label}_{part}", np.array(values, np.int64)) for part, values in parts.items()]
        return self.op("Slice", [data, *bounds], label, output)


# --- reading and cleaning the model ----------------------------------------------------------


def _attributes(node: onnx.NodeProto) -> dict:
    values = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}
