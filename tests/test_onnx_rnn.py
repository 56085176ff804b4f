"""LSTM and GRU unrolling: the expanded models compute what onnxruntime computes for the originals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from codesign.errors import ModelError
from codesign.onnx_passes.rnn import expand_recurrent

STEPS, BATCH = 5, 2
GATES = {"LSTM": 4, "GRU": 3}
OUTPUTS = {"LSTM": ("Y", "Y_h", "Y_c"), "GRU": ("Y", "Y_h")}


def recurrent_model(
    kind: str = "LSTM",
    opset: int = 17,
    direction: str = "forward",
    layout: int = 0,
    input_size: int = 3,
    hidden: int = 4,
    bias: bool = True,
    sequence_lens: str | None = None,
    initial_h: str | None = None,
    initial_c: str | None = None,
    peepholes: bool = False,
    outputs: tuple[str, ...] | None = None,
    name: str = "rnn",
    seed: int = 0,
    **attributes,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One LSTM/GRU node with random weights. initial_h/initial_c/sequence_lens: None, "constant" or
    "input" (a graph input). `outputs` lists output names, "" where an output is not produced."""
    rng = np.random.default_rng(seed)
    directions = 2 if direction == "bidirectional" else 1
    gates = GATES[kind]

    def random(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def batch_major(shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[1], shape[0], *shape[2:]) if layout else shape

    x_shape = batch_major((STEPS, BATCH, input_size))
    feeds = {"X": random(*x_shape, scale=1.0)}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    initializers = [
        numpy_helper.from_array(random(directions, gates * hidden, input_size), "W"),
        numpy_helper.from_array(random(directions, gates * hidden, hidden), "R"),
    ]
    state_shape = batch_major((directions, BATCH, hidden))
    optional = {
        "B": ("constant" if bias else None, random(directions, 2 * gates * hidden)),
        "sequence_lens": (sequence_lens, np.full(BATCH, STEPS, np.int32)),
        "initial_h": (initial_h, random(*state_shape)),
        "initial_c": (initial_c, random(*state_shape)),
        "P": ("constant" if peepholes else None, random(directions, 3 * hidden)),
    }
    for input_name, (source, value) in optional.items():
        if source == "constant":
            initializers.append(numpy_helper.from_array(value, input_name))
        elif source == "input":
            elem_type = helper.np_dtype_to_tensor_dtype(value.dtype)
            graph_inputs.append(helper.make_tensor_value_info(input_name, elem_type, value.shape))
            feeds[input_name] = value
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if kind == "LSTM" else [])
    node_inputs = [item if item in ("X", "W", "R") or optional[item][0] else "" for item in order]
    while not node_inputs[-1]:
        node_inputs.pop()
    outputs = OUTPUTS[kind] if outputs is None else outputs
    if layout:
        attributes["layout"] = layout
    node = helper.make_node(
        kind, node_inputs, list(outputs), name, hidden_size=hidden, direction=direction, **attributes
    )
    graph_outputs = [helper.make_tensor_value_info(output, TensorProto.FLOAT, None) for output in outputs if output]
    graph = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, initializers)
    return make_model(graph, opset), feeds


def make_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    """The model, its graph outputs typed by shape inference (the checker wants their shapes)."""
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    if model.ir_version < 4:  # IR 3 lists initializers among the graph inputs
        model.graph.input.extend(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims) for tensor in graph.initializer
        )
    inferred = {info.name: info for info in onnx.shape_inference.infer_shapes(model).graph.output}
    for output in model.graph.output:
        output.CopyFrom(inferred[output.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs. It has no batch-major layout, so a layout-1 node runs as its layout-0
    twin on transposed X and initial states, and its outputs are transposed back."""
    node = next((node for node in model.graph.node if node.op_type in GATES), None)
    layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0) if node else 0
    if not layout:
        return run(model, feeds)
    time_major = onnx.ModelProto()
    time_major.CopyFrom(model)
    node = next(node for node in time_major.graph.node if node.op_type in GATES)
    kept = [attr for attr in node.attribute if attr.name != "layout"]
    del node.attribute[:]
    node.attribute.extend(kept)
    swapped = {node.input[0], *node.input[5:7]} - {""}
    for info in [*time_major.graph.input, *time_major.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if info.name in swapped:
            dims[0].dim_value, dims[1].dim_value = dims[1].dim_value, dims[0].dim_value
        elif info.name in node.output:
            info.type.tensor_type.ClearField("shape")
    for tensor in time_major.graph.initializer:
        if tensor.name in swapped:
            tensor.CopyFrom(numpy_helper.from_array(np.swapaxes(numpy_helper.to_array(tensor), 0, 1), tensor.name))
    outputs = run(
        time_major, {name: np.swapaxes(value, 0, 1) if name in swapped else value for name, value in feeds.items()}
    )
    y = node.output[0]
    return {
        name: value.transpose(2, 0, 1, 3) if name == y else np.swapaxes(value, 0, 1) for name, value in outputs.items()
    }


def expanded(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    expand_recurrent(copy)
    onnx.checker.check_model(copy, full_check=True)
    return copy


def assert_expansion_matches(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    unrolled = expanded(model)
    assert not [node for node in unrolled.graph.node if node.op_type in GATES]
    expected, actual = reference(model, feeds), run(unrolled, feeds)
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        np.testing.assert_allclose(actual[name], value, rtol=0, atol=1e-5, err_msg=name)


DIRECTIONS = ("forward", "reverse", "bidirectional")
OPSET_LAYOUTS = ((11, 0), (17, 0), (17, 1))  # layout exists from opset 14


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(("opset", "layout"), OPSET_LAYOUTS)
def test_defaults_match_onnxruntime(kind, direction, opset, layout):
    model, feeds = recurrent_model(kind, opset, direction, layout, input_size=5, hidden=6)
    assert_expansion_matches(model, feeds)


LSTM_OPTIONS = {
    "no_bias": {"bias": False},
    "sequence_lens": {"sequence_lens": "constant"},
    "initial_states_constant": {"initial_h": "constant", "initial_c": "constant"},
    "initial_states_inputs": {"initial_h": "input", "initial_c": "input"},
    "initial_h_only": {"initial_h": "input"},
    "initial_c_only": {"initial_c": "constant"},
    "peepholes": {"peepholes": True, "initial_c": "input"},
    "input_forget": {"input_forget": 1, "peepholes": True},
    "clip": {"clip": 0.4, "peepholes": True},
    "activations": {
        "activations": ["HardSigmoid", "Relu", "Tanh"],
        "activation_alpha": [0.3],
        "activation_beta": [0.6],
    },
    "activations_defaults": {"activations": ["Sigmoid", "Tanh", "HardSigmoid"]},
    "only_Y": {"outputs": ("Y",)},
    "only_Y_h": {"outputs": ("", "Y_h")},
    "only_Y_c": {"outputs": ("", "", "Y_c")},
    "Y_and_Y_c": {"outputs": ("Y", "", "Y_c")},
}
GRU_OPTIONS = {
    "no_bias": {"bias": False},
    "sequence_lens": {"sequence_lens": "constant"},
    "initial_h_constant": {"initial_h": "constant"},
    "initial_h_input": {"initial_h": "input"},
    "linear_before_reset": {"linear_before_reset": 1},
    "linear_before_reset_no_bias": {"linear_before_reset": 1, "bias": False, "initial_h": "input"},
    "clip": {"clip": 0.4},
    "clip_linear_before_reset": {"clip": 0.4, "linear_before_reset": 1},
    "activations": {"activations": ["HardSigmoid", "Relu"], "activation_alpha": [0.3], "activation_beta": [0.6]},
    "activations_lbr": {"activations": ["Relu", "HardSigmoid"], "linear_before_reset": 1},
    "only_Y": {"outputs": ("Y",)},
    "only_Y_h": {"outputs": ("", "Y_h")},
}
OPTION_CASES = [("LSTM", name, options) for name, options in LSTM_OPTIONS.items()]
OPTION_CASES += [("GRU", name, options) for name, options in GRU_OPTIONS.items()]


@pytest.mark.parametrize(("kind", "name", "options"), OPTION_CASES, ids=[f"{k}-{n}" for k, n, _ in OPTION_CASES])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize(("opset", "layout"), ((11, 0), (17, 1)))
def test_options_match_onnxruntime(kind, name, options, direction, opset, layout):
    options = dict(options)
    if direction == "bidirectional" and "activations" in options:
        options["activations"] = options["activations"] * 2  # one list per direction
    model, feeds = recurrent_model(kind, opset, direction, layout, **options)
    assert_expansion_matches(model, feeds)


@pytest.mark.parametrize("opset", (7, 9, 12, 13, 18, 21))
@pytest.mark.parametrize("kind", GATES)
def test_opsets_match_onnxruntime(kind, opset):
    """Clip (attributes before 11) and Split (attribute before 13) in every form."""
    model, feeds = recurrent_model(kind, opset, "bidirectional", clip=0.5, initial_h="input", input_size=8, hidden=8)
    assert_expansion_matches(model, feeds)


def test_ir3_initializers_are_graph_inputs():
    model, _ = recurrent_model("LSTM", 7)
    unrolled = expanded(model)
    inputs = {info.name for info in unrolled.graph.input}
    assert {tensor.name for tensor in unrolled.graph.initializer} <= inputs
    assert not inputs & {"W", "R", "B"}


@pytest.mark.parametrize(
    ("kind", "options", "per_step"),
    (("LSTM", {}, 1), ("GRU", {"linear_before_reset": 1}, 1), ("GRU", {}, 2)),
    ids=("LSTM", "GRU-linear_before_reset", "GRU-reset_before_linear"),
)
@pytest.mark.parametrize(("direction", "layout"), (("forward", 0), ("reverse", 1), ("bidirectional", 0)))
def test_one_input_gemm_per_direction_and_recurrent_gemms_per_step(kind, options, per_step, direction, layout):
    input_size, hidden = 7, 5
    model, _ = recurrent_model(kind, 17, direction, layout, input_size=input_size, hidden=hidden, **options)
    unrolled = onnx.shape_inference.infer_shapes(expanded(model))
    shapes = {
        info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim]
        for info in [*unrolled.graph.value_info, *unrolled.graph.input]
    }
    initializers = {tensor.name: tensor for tensor in unrolled.graph.initializer}
    shapes.update((name, list(tensor.dims)) for name, tensor in initializers.items())
    matmuls = [node for node in unrolled.graph.node if node.op_type == "MatMul"]
    assert all(len(initializers[node.input[1]].dims) == 2 for node in matmuls)
    input_gemms = [node for node in matmuls if shapes[node.input[0]] == [STEPS * BATCH, input_size]]
    directions = 2 if direction == "bidirectional" else 1
    assert len(input_gemms) == directions
    assert all(list(initializers[node.input[1]].dims) == [input_size, GATES[kind] * hidden] for node in input_gemms)
    recurrent_gemms = [node for node in matmuls if node not in input_gemms]
    assert len(recurrent_gemms) == per_step * STEPS * directions
    assert all(shapes[node.input[0]] == [BATCH, hidden] for node in recurrent_gemms)


def test_returns_rewritten_names_and_drops_unused_weights():
    model, _ = recurrent_model("GRU", name="encoder")
    assert expand_recurrent(model) == ["encoder"]
    names = {tensor.name for tensor in model.graph.initializer}
    assert not names & {"W", "R", "B"}
    assert all(node.name.startswith("encoder/") for node in model.graph.node)
    assert expand_recurrent(model) == []


def test_keeps_weights_used_elsewhere():
    model, feeds = recurrent_model("LSTM")
    model.graph.node.append(helper.make_node("Identity", ["R"], ["R_copy"]))
    model.graph.output.append(helper.make_tensor_value_info("R_copy", TensorProto.FLOAT, (1, 16, 4)))
    unrolled = expanded(model)
    names = {tensor.name for tensor in unrolled.graph.initializer}
    assert "R" in names
    assert not names & {"W", "B"}
    assert_expansion_matches(model, feeds)


def test_stacked_and_unnamed_nodes_feed_downstream_ops():
    """Two unnamed LSTMs in a row: the first's Y is reshaped into the second, Y_h goes on to a Tanh."""
    rng = np.random.default_rng(1)
    input_size, hidden = 3, 4

    def weights(prefix: str, directions: int, inputs: int) -> list[onnx.TensorProto]:
        shapes = {"W": (directions, 4 * hidden, inputs), "R": (directions, 4 * hidden, hidden)}
        shapes["B"] = (directions, 8 * hidden)
        return [
            numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), prefix + key)
            for key, shape in shapes.items()
        ]

    initializers = [*weights("a_", 1, input_size), *weights("b_", 2, hidden)]
    initializers.append(numpy_helper.from_array(np.array([STEPS, BATCH, hidden], np.int64), "shape"))
    nodes = [
        helper.make_node("LSTM", ["X", "a_W", "a_R", "a_B"], ["Y1", "Y1_h"], hidden_size=hidden),
        helper.make_node("Reshape", ["Y1", "shape"], ["Y1_rows"]),
        helper.make_node("Tanh", ["Y1_h"], ["Y1_h_tanh"]),
        helper.make_node(
            "LSTM", ["Y1_rows", "b_W", "b_R", "b_B"], ["Y2", "", "Y2_c"], hidden_size=hidden, direction="bidirectional"
        ),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, (STEPS, BATCH, input_size))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y1_h_tanh", "Y2", "Y2_c")]
    model = make_model(helper.make_graph(nodes, "stacked", [x], outputs, initializers), 17)
    assert_expansion_matches(model, {"X": rng.standard_normal((STEPS, BATCH, input_size)).astype(np.float32)})
    names = expand_recurrent(model)
    assert len(names) == 2 and len(set(names)) == 2


def test_constant_node_weights_are_accepted():
    model, feeds = recurrent_model("GRU", bias=False)
    for tensor in list(model.graph.initializer):
        model.graph.node.insert(0, helper.make_node("Constant", [], [tensor.name], value=tensor))
    del model.graph.initializer[:]
    unrolled = expanded(model)
    assert not [node for node in unrolled.graph.node if node.op_type == "Constant"]
    assert_expansion_matches(model, feeds)


@pytest.mark.parametrize(
    ("options", "message"),
    (
        ({"sequence_lens": "input"}, "sequence_lens .* must be a constant"),
        ({"activations": ["Sigmoid", "Softsign", "Tanh"]}, "activation 'Softsign' is not supported"),
        ({"activations": ["Sigmoid", "Tanh"]}, "expected 3 activations"),
        ({"activations": ["Sigmoid", "Tanh", "Tanh"], "direction": "bidirectional"}, "expected 6 activations"),
    ),
    ids=("sequence_lens_input", "unsupported_activation", "activation_count", "activations_per_direction"),
)
def test_unsupported_nodes_raise_naming_the_node(options, message):
    model, _ = recurrent_model("LSTM", name="lstm_17", **options)
    with pytest.raises(ModelError, match=f"node 'lstm_17'.*{message}"):
        expand_recurrent(model)


def test_short_sequence_lens_raise():
    model, _ = recurrent_model("GRU", name="gru_3", sequence_lens="constant")
    lengths = next(tensor for tensor in model.graph.initializer if tensor.name == "sequence_lens")
    lengths.CopyFrom(numpy_helper.from_array(np.array([STEPS, STEPS - 2], np.int32), "sequence_lens"))
    with pytest.raises(ModelError, match=r"node 'gru_3'.*sequence_lens"):
        expand_recurrent(model)


def test_non_constant_weights_raise():
    model, _ = recurrent_model("LSTM", name="lstm_w")
    weights = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(weights.dims)))
    del model.graph.initializer[0]
    with pytest.raises(ModelError, match=r"node 'lstm_w'.*W"):
        expand_recurrent(model)


def test_dynamic_shapes_raise():
    model, _ = recurrent_model("LSTM", name="lstm_dyn")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "time"
    with pytest.raises(ModelError, match=r"node 'lstm_dyn'.*not static"):
        expand_recurrent(model)
