"""Packed chaining: between accelerated layers, activations stay in the accelerator's blocked
layout through lookup tables, clamps, residual adds, SE gates, depthwise convs, average and max
pools, nearest upsampling and concatenations of whole blocks; the module
converts layouts only at its boundaries (model inputs and outputs, ops that need NCHW).

Each model below names the tensors the host must convert: the ONNX tensors packed for an
accelerated layer and those unpacked to NCHW. The compiled Relax program must convert exactly
those, and the plans' host bytes must count exactly their conversions. The module must equal the
numpy integer program and the module built without chaining bit for bit, and stay close to
onnxruntime.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign import lowering
from codesign.compression import CompressionConfig
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.packed_layout import Layouts, plan_layouts
from codesign.pipeline import compile_model
from codesign.reference import run_reference
from codesign.tvm_build import ACCELERATED_PREFIX

SIZE = 8


@dataclasses.dataclass
class ChainModel:
    """An ONNX model and the tensors whose layout the host converts: `packed` are read by an
    accelerated layer from NCHW, `unpacked` are written blocked and read as NCHW."""

    model: onnx.ModelProto
    packed: list[str]
    unpacked: list[str]


class Builder:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def conv(self, source, out, cin, cout, kernel=3, group=1, gains=None):
        weight = self.rng.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32)
        weight *= 1.5 / math.sqrt(cin // group * kernel * kernel)
        if gains is not None:
            weight *= gains.reshape(-1, 1, 1, 1)
        bias = self.rng.standard_normal(cout).astype(np.float32) * 0.1
        name = f"w{len(self.inits)}"
        self.inits += [numpy_helper.from_array(weight, name), numpy_helper.from_array(bias, name + "b")]
        pad = kernel // 2
        self.nodes.append(helper.make_node("Conv", [source, name, name + "b"], [out], pads=[pad] * 4, group=group))
        return out

    def op(self, op_type, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def hardswish(self, source, out):
        """Paddle's form, x * HardSigmoid(x): one lookup table, or part of the ALU program of an
        accelerated conv before it (codesign.alu_activations)."""
        gate = self.op("HardSigmoid", [source], out + "_gate", alpha=1 / 6, beta=0.5)
        return self.op("Mul", [source, gate], out)

    def model(self, x_shape, outputs, rank=4) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
        ys = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * rank) for name in outputs]
        graph = helper.make_graph(self.nodes, "chain", [x], ys, self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def conv_conv(batch) -> ChainModel:
    b = Builder(1)
    b.conv("x", "c0", 3, 20)
    relu = b.op("Relu", ["c0"], "r0")  # folds into the first conv
    b.conv(relu, "y", 20, 24)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def conv_hardswish_conv(batch) -> ChainModel:
    b = Builder(2)
    b.conv("x", "c0", 3, 20)
    b.hardswish("c0", "a0")
    b.conv("a0", "y", 20, 16)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def residual_block(batch) -> ChainModel:
    """conv -> conv, plus the skip add of both, -> conv; the first conv's output has two readers."""
    b = Builder(3)
    b.conv("x", "c0", 3, 24)
    b.conv(b.op("Relu", ["c0"], "r0"), "c1", 24, 24)
    b.op("Add", ["r0", "c1"], "s")
    b.op("Clip", ["s", "lo", "hi"], "s_clipped")
    b.inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(4), "hi")]
    b.conv("s_clipped", "y", 24, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def output_and_chain(batch) -> ChainModel:
    """A chained value that is also a model output: unpacked once for the output only."""
    b = Builder(4)
    b.conv("x", "y0", 3, 20)
    b.hardswish("y0", "a0")
    b.conv("a0", "y1", 20, 20)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y0", "y1"]), packed=["x"], unpacked=["y0", "y1"])


def global_pool(batch) -> ChainModel:
    """conv -> conv -> global average pool -> flatten: the pool's reader needs NCHW, so the
    chain ends at the pool's input."""
    b = Builder(5)
    b.conv("x", "c0", 3, 20)
    b.conv("c0", "c1", 20, 24)
    b.op("GlobalAveragePool", ["c1"], "pooled")
    b.op("Flatten", ["pooled"], "y")
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"], rank=2), packed=["x"], unpacked=["c1"])


def mobilenet_block(batch) -> ChainModel:
    """conv -> HardSwish -> depthwise conv -> HardSwish -> squeeze-excitation -> conv, channels
    spread over decades (so tables get one row per channel): blocked from end to end."""
    b = Builder(6)
    channels = 24
    b.conv("x", "c0", 3, channels, gains=np.logspace(-2, 1, channels).astype(np.float32))
    b.hardswish("c0", "a0")
    b.conv("a0", "d0", channels, channels, group=channels)
    b.hardswish("d0", "a1")
    b.op("GlobalAveragePool", ["a1"], "pooled")
    b.conv("pooled", "s0", channels, 8, kernel=1)
    b.conv(b.op("Relu", ["s0"], "s1"), "s2", 8, channels, kernel=1)
    b.op("HardSigmoid", ["s2"], "gate", alpha=1 / 6, beta=0.5)
    b.op("Mul", ["a1", "gate"], "excited")
    b.conv("excited", "y", channels, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def wide_chain(batch) -> ChainModel:
    """48 and 40 channels: three and two 16-channel blocks, which a fused int4 core (32 lanes)
    reads as two fused blocks each, the last one half past the layout's blocks (zeros)."""
    b = Builder(7)
    b.conv("x", "c0", 3, 48)
    b.conv(b.op("Relu", ["c0"], "r0"), "c1", 48, 40)
    b.hardswish("c1", "a1")
    b.conv("a1", "y", 40, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def grouped_block(batch) -> ChainModel:
    """conv -> conv of two 16-channel groups -> HardSwish -> conv -> depthwise conv -> conv, 40
    channels for the depthwise one (its last super-group half padding): on a core that runs
    depthwise convs (slow host), both grouped convs read and write the blocks the dense ones do."""
    b = Builder(8)
    b.conv("x", "c0", 3, 32)
    b.conv(b.op("Relu", ["c0"], "r0"), "g0", 32, 32, group=2)
    b.hardswish("g0", "a0")
    b.conv("a0", "c1", 32, 40, kernel=1)
    b.conv("c1", "d0", 40, 40, group=40)
    b.conv(b.op("Relu", ["d0"], "r1"), "y", 40, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def dense_block(batch) -> ChainModel:
    """DenseNet's pattern: conv -> concatenation of its input and output (32 + 16 channels: whole
    blocks) -> 2x2 average pool -> conv, blocked from end to end."""
    b = Builder(9)
    b.conv("x", "c0", 3, 32)
    b.conv(b.op("Relu", ["c0"], "r0"), "c1", 32, 16)
    b.op("Concat", ["r0", b.op("Relu", ["c1"], "r1")], "cat", axis=1)
    b.op("AveragePool", ["cat"], "pooled", kernel_shape=[2, 2], strides=[2, 2])
    b.conv("pooled", "y", 48, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def narrow_concat(batch) -> ChainModel:
    """As dense_block with 8 new channels: a part that does not fill its block would leave padding
    between the concatenation's channels, so it concatenates NCHW, and its pool with it."""
    b = Builder(10)
    b.conv("x", "c0", 3, 32)
    b.conv(b.op("Relu", ["c0"], "r0"), "c1", 32, 8)
    b.op("Concat", ["r0", b.op("Relu", ["c1"], "r1")], "cat", axis=1)
    b.op("AveragePool", ["cat"], "pooled", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    b.conv("pooled", "y", 40, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x", "pooled"], unpacked=["r0", "r1", "y"])


def pyramid_neck(batch) -> ChainModel:
    """YOLO's SPPF and neck: conv -> two chained 5x5 max pools -> concatenation of the three ->
    conv -> 3x3 stride-2 max pool -> conv -> nearest 2x upsampling -> conv, blocked throughout."""
    b = Builder(11)
    b.conv("x", "c0", 3, 16)
    b.op("Relu", ["c0"], "r0")
    b.op("MaxPool", ["r0"], "m1", kernel_shape=[5, 5], pads=[2, 2, 2, 2])
    b.op("MaxPool", ["m1"], "m2", kernel_shape=[5, 5], pads=[2, 2, 2, 2])
    b.op("Concat", ["r0", "m1", "m2"], "spp", axis=1)
    b.conv("spp", "c1", 48, 32, kernel=1)
    b.op("MaxPool", [b.op("Relu", ["c1"], "r1")], "down", kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    b.conv("down", "c2", 32, 16)
    b.inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    b.op("Resize", [b.op("Relu", ["c2"], "r2"), "", "scales"], "up", mode="nearest")
    b.conv("up", "y", 16, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


def c2f_block(batch) -> ChainModel:
    """YOLOv8's C2f: conv -> split of its 32 channels in two whole blocks -> a bottleneck (two
    convs and a residual add) on the second half -> concatenation of both halves and the
    bottleneck -> conv, blocked throughout (the split's parts are runs of blocks)."""
    b = Builder(12)
    b.conv("x", "c0", 3, 32, kernel=1)
    b.inits.append(numpy_helper.from_array(np.array([16, 16], np.int64), "halves"))
    b.nodes.append(helper.make_node("Split", [b.op("Relu", ["c0"], "r0"), "halves"], ["s0", "s1"], axis=1))
    b.conv(b.op("Relu", [b.conv("s1", "c1", 16, 16)], "r1"), "c2", 16, 16)
    b.op("Add", ["s1", b.op("Relu", ["c2"], "r2")], "bottleneck")
    b.op("Concat", ["s0", "s1", "bottleneck"], "cat", axis=1)
    b.conv("cat", "y", 48, 20, kernel=1)
    return ChainModel(b.model([batch, 3, SIZE, SIZE], ["y"]), packed=["x"], unpacked=["y"])


MODELS = [conv_conv, conv_hardswish_conv, residual_block, output_and_chain, global_pool, mobilenet_block, wide_chain]
MODELS += [dense_block, narrow_concat, pyramid_neck, c2f_block]
SLOW_HOST_VTA = load_hardware("vta_default").with_changes(name="vta_slow_host", host_ops_per_cycle=0.25)
HARDWARE = {
    "vta_default": lambda: load_hardware("vta_default"),
    "vta_slow_host": lambda: SLOW_HOST_VTA,
    "batched_4x16x16": lambda: load_hardware("batched_4x16x16"),
    "scalable": lambda: load_hardware("vta_default").with_changes(precision_scalable=True),
}
# (model, hardware, batch, weight bits): every model on VTA's core; the residual and MobileNet
# blocks also on a batched core given fewer rows than its batch blocks (padded rows through every
# chained op); int4 layers on a precision-scalable core, which read the 16-channel blocks the
# layers before them write, two per fused 32-lane element (HardwareSpec.input_gather).
CASES = (
    [(model, "vta_default", 1, 8) for model in MODELS]
    + [(model, "batched_4x16x16", 2, 8) for model in (residual_block, mobilenet_block, dense_block, pyramid_neck)]
    + [(c2f_block, "batched_4x16x16", 2, 8), (c2f_block, "scalable", 1, 4)]
    + [(model, "scalable", 1, 4) for model in (conv_hardswish_conv, residual_block, mobilenet_block, wide_chain)]
    + [(model, "vta_slow_host", 1, 8) for model in (mobilenet_block, grouped_block)]
    + [(grouped_block, "batched_4x16x16", 2, 8)]
)


# An int4 grouped conv on a precision-scalable core does not read the layout's blocks (its fused
# lanes gather two: packed_layout.groups_fill_blocks), so on the core (the default placement)
# the MobileNet block's depthwise conv would convert its neighbours; placed where it is modelled
# fastest, it runs on the host, on the blocks.
FASTEST_CASES = {("mobilenet_block", "scalable")}


def compile_chain(tmp_path, chain: ChainModel, hw, weight_bits: int = 8, placement: str = "accelerator"):
    path = tmp_path / "model.onnx"
    onnx.save(chain.model, path)
    x_shape = [d.dim_value for d in chain.model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(11)
    np.save(tmp_path / "calib.npy", rng.standard_normal((16, *x_shape)).astype(np.float32))
    compression = CompressionConfig(placement=placement)
    calibration = tmp_path / "calib.npy"
    return compile_model(
        path, hw, calibration=calibration, weight_bits=weight_bits, warn=lambda m: None, compression=compression
    )


def run_module(executable, x) -> list[np.ndarray]:
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]


def main_calls(mod) -> dict[str, tuple[str, list[str]]]:
    """Each call_tir binding of `main`: its variable -> (callee, variables it reads), a variable
    bound to a reshape of another read as that other (a grouped kernel's view of the blocks)."""
    calls, reshaped = {}, {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op.name == "relax.reshape":
                reshaped[binding.var.name] = reshaped.get(value.args[0].name, value.args[0].name)
            if isinstance(value, relax.Call) and value.op.name == "relax.call_tir":
                reads = [reshaped.get(arg.name, arg.name) for arg in value.args[1].fields if isinstance(arg, relax.Var)]
                assert binding.var.name not in calls
                calls[binding.var.name] = (value.args[0].name_hint, reads)
    return calls


def conversion_counts(mod) -> collections.Counter:
    kinds = ("pack_activation", "unpack_output")
    return collections.Counter(
        kind for callee, _ in main_calls(mod).values() for kind in kinds if callee.startswith(kind)
    )


def onnx_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in values}


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0].__name__}-{case[1]}-int{case[3]}")
def compiled(request, tmp_path_factory):
    build, hw_name, batch, bits = request.param
    chain = build(batch)
    hw = HARDWARE[hw_name]()
    folder = tmp_path_factory.mktemp(build.__name__)
    placement = "fastest" if (build.__name__, hw_name) in FASTEST_CASES else "accelerator"
    return chain, (hw, bits, placement), folder, compile_chain(folder, chain, hw, bits, placement)


def test_module_equals_reference_unchained_module_and_onnxruntime(compiled, monkeypatch):
    chain, (hw, bits, placement), folder, result = compiled
    monkeypatch.setattr(lowering, "plan_layouts", lambda qgraph, hw, boundaries=(): Layouts())
    unchained = compile_chain(folder, chain, hw, bits, placement)
    assert sum(conversion_counts(unchained.lowered.mod).values()) > sum(conversion_counts(result.lowered.mod).values())
    session = ort.InferenceSession(chain.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for seed in range(2):
        x = np.random.default_rng(100 + seed).standard_normal(result.imported.inputs[0].shape).astype(np.float32)
        ours = run_module(result.executable, x)
        expected = run_reference(result.qgraph, {"x": x})
        for got, reference, previous in zip(ours, expected, run_module(unchained.executable, x), strict=True):
            assert np.array_equal(got, reference)
            assert np.array_equal(got, previous)
        for got, floats in zip(ours, session.run(None, {"x": x}), strict=True):
            assert cosine(got, floats) > (0.98 if bits == 8 else 0.95)  # int4 weights: 16 levels per channel


def unfolded_into_blocks(result, hw) -> set[str]:
    """The model inputs whose conv is unfolded (schedules.narrow_inputs) by an im2col that writes
    the blocks the conv reads (packed_layout.writes_blocks): no packing pass for those."""
    layouts = plan_layouts(result.qgraph, hw)
    return {
        node.inputs[0].removesuffix(".quantize")
        for node in result.qgraph.nodes.values()
        if node.op == "im2col" and node.name in layouts.packed
    }


def test_module_converts_only_at_the_boundaries(compiled):
    chain, (hw, *_), _, result = compiled
    if hw.name == "vta_slow_host":  # grouped and depthwise convs chained on the core, not the host
        assert {p.placement for p in result.lowered.plans if p.op == "conv2d"} == {"accel"}
    unfolded = unfolded_into_blocks(result, hw)
    packed = [name for name in chain.packed if name not in unfolded]
    counts = conversion_counts(result.lowered.mod)
    assert counts["pack_activation"] == len(packed)
    assert counts["unpack_output"] == len(chain.unpacked)
    calls = main_calls(result.lowered.mod)
    kernels = [reads for callee, reads in calls.values() if callee.startswith(ACCELERATED_PREFIX)]
    # (a kernel may read a part of a blocked split: a TupleGetItem, no call)
    first = [calls.get(reads[0], ("",))[0] for reads in kernels]
    assert sum(callee.startswith("pack_activation") for callee in first) == len(packed)
    assert sum(callee.startswith("im2col") for callee in first) == len(unfolded)  # the unfolding writes the blocks


def test_host_bytes_count_the_modules_conversions(compiled):
    """Every tensor these models convert is a model input read by a conv (its im2col, where the
    conv is unfolded: schedules.narrow_inputs) or a conv's output, so the accelerated layers'
    plans hold all the conversions: each reads and writes its tensor once."""
    chain, (hw, *_), _, result = compiled
    shapes = onnx_shapes(chain.model)
    for node in result.qgraph.nodes.values():
        if node.op == "im2col" and node.inputs[0].removesuffix(".quantize") in chain.packed:
            shapes[node.inputs[0].removesuffix(".quantize")] = node.shape
    packed = [name for name in chain.packed if name not in unfolded_into_blocks(result, hw)]
    expected = 2 * sum(math.prod(shapes[name]) for name in packed + chain.unpacked)
    assert sum(p.host_bytes for p in result.lowered.plans if p.placement == "accel") == expected


def test_blocked_host_ops_count_padded_sizes(tmp_path):
    """The table between two convs on 20 channels reads and writes two blocks of channels
    (HardSwish stays a table on a shift-only ALU; with a multiplier the conv computes it)."""
    hw = load_hardware("vta_default").with_changes(alu_has_multiplier=False)
    result = compile_chain(tmp_path, conv_hardswish_conv(1), hw)
    (table,) = [p for p in result.lowered.plans if p.op == "lut"]
    padded_channels = math.ceil(20 / hw.block_in) * hw.block_in
    assert padded_channels > 20
    assert table.host_bytes == 2 * padded_channels * SIZE * SIZE


def test_cores_with_other_output_blocks_convert_every_layer(tmp_path):
    """block_in 16, block_out 32: a layer's output blocks are not the next one's input blocks."""
    chain = conv_hardswish_conv(1)
    result = compile_chain(tmp_path, chain, load_hardware("narrow_1x16x32"))
    layers = sum(1 for p in result.lowered.plans if p.placement == "accel")
    counts = conversion_counts(result.lowered.mod)
    assert counts["pack_activation"] == counts["unpack_output"] == layers
    x = np.random.default_rng(5).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    assert np.array_equal(run_module(result.executable, x)[0], run_reference(result.qgraph, {"x": x})[0])


def test_tables_after_host_depthwise_convs_merge_into_them(tmp_path):
    """mobilenet_block on vta_default, placed by modelled cost: the depthwise conv runs on the host, and the HardSwish
    table that alone reads it becomes part of it (one lookup per output, no pass of its own);
    the table between the core's conv and it stays a node of the program, looked up as the
    depthwise conv pads its input (one lookup per input, no pass of its own either). The module
    equals the integer program (above)."""
    result = compile_chain(tmp_path, mobilenet_block(1), HARDWARE["vta_default"](), placement="fastest")
    nodes = result.qgraph.nodes
    (depthwise,) = [n for n in nodes.values() if n.op == "conv2d" and n.placement == "host"]
    assert depthwise.params["table"].shape == (24, 256)  # per channel: the channels span decades
    assert depthwise.float_name == "multiply_3"  # the float graph's HardSwish output
    (table,) = [n for n in nodes.values() if n.op == "lut"]
    assert nodes[table.inputs[0]].placement == "accel" and table.params["fused_into"] == depthwise.name
    plans = {p.name: p for p in result.lowered.plans}
    outputs = math.ceil(24 / 16) * 16 * SIZE * SIZE  # blocked: 24 channels in two blocks of 16
    assert plans[depthwise.name].host_ops == 2 * outputs * 9 + outputs + outputs  # stride 1: inputs = outputs
    assert (plans[table.name].host_ops, plans[table.name].host_bytes) == (0, 0)
