"""Structured pruning removes channels from the graph: the module runs the smaller layers, bit
exact; least-squares reconstruction beats magnitude pruning on real MNIST; residual adds,
concatenations and per-channel constants follow the pruned channels; what cannot shrink is noted."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from conftest import MODELS, TEST_MODELS
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from codesign import float_numpy, pruning
from codesign.calibration import float_outputs
from codesign.compression import CompressionConfig
from codesign.corpus import text_directions
from codesign.demo import MNIST_MODEL
from codesign.deploy import build_manifest
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model, import_model, quantize_model
from codesign.pruning import channel_groups, prunable_layers, prune_graph
from codesign.reference import run_reference

MNIST_INPUT = {"Input3": (1, 1, 28, 28)}
HALF_OF_CONV2D_1 = {"conv2d_1": 0.5}


def quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def mnist_imported():
    return import_model(MNIST_MODEL, MNIST_INPUT)


def reference_accuracy(qgraph, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the numpy integer reference (the module equals it bit for bit)."""
    predictions = [run_reference(qgraph, {"Input3": image})[0].argmax() for image in images]
    return float(np.mean(np.array(predictions) == labels))


def test_reconstruction_beats_magnitude_pruning_on_real_mnist(mnist_imported, mnist_calibration, mnist_test_set):
    """Half of conv2d_1's channels pruned; calibrated on test images 0-199, evaluated on 200-699."""
    images, labels = mnist_test_set[0][200:700], mnist_test_set[1][200:700]
    hw = load_hardware("vta_default")
    accuracy = {}
    for method in ("magnitude", "reconstruct"):
        compression = CompressionConfig(prune=HALF_OF_CONV2D_1, prune_method=method)
        _, qgraph, _ = quantize_model(mnist_imported, hw, mnist_calibration, warn=quiet, compression=compression)
        accuracy[method] = reference_accuracy(qgraph, images, labels)
    assert accuracy["reconstruct"] >= accuracy["magnitude"] + 0.02, accuracy


def test_the_module_runs_the_smaller_layers_bit_exact(mnist_imported, mnist_calibration, mnist_test_set):
    compression = CompressionConfig(prune=HALF_OF_CONV2D_1)
    result = compile_model(
        MNIST_MODEL, load_hardware("vta_default"), MNIST_INPUT, mnist_calibration, warn=quiet,
        compression=compression, imported=mnist_imported,
    )  # fmt: skip
    layers = {layer["name"]: layer for layer in build_manifest(result)["layers"]}
    # conv2d_1: 8 of 16 output channels kept; matmul_0 reads their 8 x 4 x 4 = 128 features.
    assert layers["conv2d_1"]["shape"]["out_channels"] == 8 and layers["conv2d_1"]["shape"]["in_channels"] == 8
    assert layers["conv2d_1"]["macs"] == 8 * 8 * 5 * 5 * 14 * 14
    assert layers["matmul_0"]["shape"]["in_channels"] == 128 and layers["matmul_0"]["macs"] == 128 * 10
    assert result.qgraph.nodes["conv2d_1"].params["weight"].shape == (8, 8, 5, 5)
    assert result.qgraph.nodes["matmul_0"].params["weight"].shape == (128, 10)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for image in mnist_test_set[0][700:703]:
        expected = run_reference(result.qgraph, {"Input3": image})[0]
        assert np.array_equal(vm["main"](tvm.runtime.tensor(image)).numpy(), expected)


# ---- residual add, concat, per-channel constant: a tiny model built here ----------------------


def branching_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> conv a -> relu -> * per-channel scale -\\
       x -> conv b (1x1) ------------------------- + -> relu -> concat(., conv d(x)) -> conv e -> relu
       -> max pool -> flatten -> matmul -> output."""

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    initializers = [
        weight("wa", 4, 3, 3, 3), weight("ba", 4), weight("wb", 4, 3, 1, 1), weight("bb", 4),
        weight("wd", 2, 3, 1, 1), weight("we", 5, 6, 3, 3), weight("be", 5), weight("wf", 80, 3),
        numpy_helper.from_array(rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32), "scale"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"]),
        helper.make_node("Mul", ["a_relu", "scale"], ["a_scaled"]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b"]),
        helper.make_node("Add", ["a_scaled", "b"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["sum_relu"]),
        helper.make_node("Conv", ["x", "wd"], ["d"]),
        helper.make_node("Concat", ["sum_relu", "d"], ["joined"], axis=1),
        helper.make_node("Conv", ["joined", "we", "be"], ["e"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["e"], ["e_relu"]),
        helper.make_node("MaxPool", ["e_relu"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "wf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "branching",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def zeroed_channels(model: onnx.ModelProto, removed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model with these output channels' weights and biases zero: what removing them computes
    (each path from them to a consumer maps 0 to 0)."""
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    for initializer in zeroed.graph.initializer:
        if initializer.name in removed:
            values = numpy_helper.to_array(initializer).copy()
            values[removed[initializer.name]] = 0
            initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    return zeroed


def assert_pruning_matches_onnxruntime(model, removed: dict, samples: list, outputs: dict) -> None:
    """Magnitude pruning computes what onnxruntime computes with the removed channels zeroed;
    reconstruction, which refits the consumers to the unpruned activations, is closer to the
    whole model than magnitude pruning."""
    session = ort.InferenceSession(zeroed_channels(model, removed).SerializeToString())
    zeroed = np.concatenate([session.run(None, s)[0] for s in samples])
    np.testing.assert_allclose(outputs["magnitude"], zeroed, rtol=1e-4, atol=1e-4)
    whole = ort.InferenceSession(model.SerializeToString())
    unpruned = np.concatenate([whole.run(None, s)[0] for s in samples])
    errors = {method: np.abs(output - unpruned).mean() for method, output in outputs.items()}
    assert errors["reconstruct"] < errors["magnitude"], errors


def smallest(norms: np.ndarray, count: int) -> np.ndarray:
    return np.argsort(norms, kind="stable")[:count]


def test_residual_add_and_concat_follow_the_pruned_channels(tmp_path):
    model = branching_model(np.random.default_rng(3))
    path = tmp_path / "branching.onnx"
    onnx.save(model, path)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # conv a and conv b meet at the add: one channel set, by their summed L1 norms (2 of 4 go);
    # conv e loses 2 of 5 channels. Graph names: conv a, b, d, e = conv2d_0, 1, 2, 3.
    joint = np.abs(weights["wa"]).sum(axis=(1, 2, 3)) + np.abs(weights["wb"]).sum(axis=(1, 2, 3))
    gone_ab, gone_e = smallest(joint, 2), smallest(np.abs(weights["we"]).sum(axis=(1, 2, 3)), 2)
    removed = {"wa": gone_ab, "ba": gone_ab, "wb": gone_ab, "bb": gone_ab, "we": gone_e, "be": gone_e}
    prune = {"conv2d_0": 0.5, "conv2d_1": 0.5, "conv2d_3": 0.4}
    imported = import_model(path, warn=quiet)
    samples = [{"x": x} for x in np.random.default_rng(4).standard_normal((16, 1, 3, 8, 8)).astype(np.float32)]
    np.save(tmp_path / "calibration.npy", np.stack([s["x"] for s in samples]))
    hw = load_hardware("vta_default")
    outputs = {}
    for method in ("magnitude", "reconstruct"):
        compression = CompressionConfig(prune=prune, prune_method=method)
        graph, _, _ = quantize_model(imported, hw, tmp_path / "calibration.npy", warn=quiet, compression=compression)
        outputs[method] = np.concatenate([out[0] for out in float_outputs(graph, imported, samples)])
    shapes = {name: node.shape for name, node in graph.nodes.items()}
    assert shapes["conv2d_0"] == shapes["conv2d_1"] == shapes["add_0"] == (1, 2, 8, 8)
    assert shapes["concat_0"] == (1, 4, 8, 8) and shapes["conv2d_3"] == (1, 3, 8, 8)
    assert graph.nodes["matmul_0"].layer.weight.shape == (3 * 4 * 4, 3)
    assert_pruning_matches_onnxruntime(model, removed, samples, outputs)


# ---- what cannot shrink -----------------------------------------------------------------------


def graph_of(model: str):
    path, name, shape = TEST_MODELS[model]
    return extract_graph(import_model(path, {name: shape}, warn=quiet))


@pytest.mark.parametrize(
    ("model", "prune", "notes"),
    [
        ("mnist", {"matmul_0": 0.5}, ["not pruning matmul_0: its channels reach the model output ('matmul_0')"]),
        (
            "mobilenet",
            {"conv2d_2": 0.5},
            ["not pruning conv2d_2: 'conv2d_2' is a depthwise convolution (prune the layer feeding it)"],
        ),
        (
            "resnet",
            {"conv2d_7": 0.5, "conv2d_5": 0.5},
            [
                f"not pruning {layer}: the layers meeting at a residual add must have the same prune ratio "
                "(conv2d_4 0.0, conv2d_5 0.5, conv2d_7 0.5)"
                for layer in ("conv2d_5", "conv2d_7")
            ],
        ),
    ],
)
def test_layers_that_cannot_shrink_are_noted_and_left_whole(model, prune, notes):
    printed = []
    groups = channel_groups(graph_of(model), CompressionConfig(prune=prune), printed.append)
    assert groups == [] and printed == [f"note: {note}" for note in notes]


def test_a_residual_stage_prunes_as_one_group():
    """resnet_mini's second stage: conv2d_4 (shortcut), conv2d_5 and conv2d_7 all feed the
    residual stream, read by conv2d_6 and, through the mean and the flatten, matmul_0: 8 of its
    32 channels go everywhere."""
    path, name, shape = TEST_MODELS["resnet"]
    imported = import_model(path, {name: shape}, warn=quiet)
    graph = extract_graph(imported)
    config = CompressionConfig(
        prune=dict.fromkeys(("conv2d_4", "conv2d_5", "conv2d_7"), 0.25), prune_method="magnitude"
    )
    (group,) = channel_groups(graph, config, quiet)
    assert sorted(group.sources) == ["conv2d_4", "conv2d_5", "conv2d_7"]
    assert sorted(group.consumers) == ["conv2d_6", "matmul_0"]
    pruned = prune_graph(graph, config, imported, [], quiet).nodes  # magnitude: no samples needed
    for stream in ("conv2d_4", "conv2d_5", "add_1", "clamp_1", "conv2d_7", "add_2", "clamp_2"):
        assert pruned[stream].shape == (1, 24, 16, 16)
    assert pruned["mean_0"].shape == (1, 24, 1, 1) and pruned["reshape_0"].shape == (1, 24)
    assert pruned["conv2d_6"].layer.weight.shape == (32, 24, 3, 3) and pruned["conv2d_6"].shape == (1, 32, 16, 16)
    assert pruned["conv2d_5"].layer.weight.shape == (24, 32, 3, 3)
    assert pruned["matmul_0"].layer.weight.shape == (24, 10)
    assert graph.nodes["matmul_0"].layer.weight.shape == (32, 10)  # the graph given is left whole


# ---- a MobileNetV3 block: depthwise conv and squeeze-and-excitation gate -----------------------


def mobilenet_block(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> expand 1x1 -> SiLU (x * sigmoid(x)) -> depthwise 3x3 -> relu -> SE gate (mean -> squeeze
    -> relu -> excite -> HardSigmoid -> multiply) -> project 1x1. Graph names: expand,
    depthwise, squeeze, excite, project = conv2d_0 .. conv2d_4."""

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    initializers = [
        weight("w_expand", 24, 8, 1, 1), weight("b_expand", 24), weight("w_dw", 24, 1, 3, 3), weight("b_dw", 24),
        weight("w_squeeze", 6, 24, 1, 1), weight("b_squeeze", 6), weight("w_excite", 24, 6, 1, 1),
        weight("b_excite", 24), weight("w_project", 8, 24, 1, 1), weight("b_project", 8),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w_expand", "b_expand"], ["e"]),
        helper.make_node("Sigmoid", ["e"], ["e_sigmoid"]),
        helper.make_node("Mul", ["e", "e_sigmoid"], ["e_silu"]),
        helper.make_node("Conv", ["e_silu", "w_dw", "b_dw"], ["d"], group=24, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["d_relu"]),
        helper.make_node("GlobalAveragePool", ["d_relu"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w_squeeze", "b_squeeze"], ["s"]),
        helper.make_node("Relu", ["s"], ["s_relu"]),
        helper.make_node("Conv", ["s_relu", "w_excite", "b_excite"], ["g"]),
        helper.make_node("HardSigmoid", ["g"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["d_relu", "gate"], ["gated"]),
        helper.make_node("Conv", ["gated", "w_project", "b_project"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mobilenet_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_expansion_prunes_through_the_depthwise_conv_and_the_gate(tmp_path):
    """Half of the expansion's 24 channels go: the depthwise conv, the gate's excitation and the
    readers (squeeze, project) shrink with them; the excitation takes the expansion's ratio (its
    own, and the depthwise conv's, are noted as unused)."""
    model = mobilenet_block(np.random.default_rng(5))
    path = tmp_path / "block.onnx"
    onnx.save(model, path)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # Magnitude: one channel set for the expansion and the excitation, by their summed L1 norms
    # (the excitation's as the graph holds them: HardSigmoid's 1/6 folded in).
    joint = np.abs(weights["w_expand"]).sum(axis=(1, 2, 3)) + np.abs(weights["w_excite"]).sum(axis=(1, 2, 3)) / 6
    gone = smallest(joint, 12)
    # Removing a channel computes what zeroing it does up to the depthwise conv's output (SiLU,
    # relu and the gated multiply keep 0 at 0; the squeeze and projection read 0 from it).
    removed = {"w_expand": gone, "b_expand": gone, "w_dw": gone, "b_dw": gone}
    imported = import_model(path, warn=quiet)
    samples = [{"x": x} for x in np.random.default_rng(6).standard_normal((16, 1, 8, 8, 8)).astype(np.float32)]
    np.save(tmp_path / "calibration.npy", np.stack([s["x"] for s in samples]))
    hw = load_hardware("vta_default")
    notes, outputs, results = [], {}, {}
    prune = {"conv2d_0": 0.5, "conv2d_1": 0.25, "conv2d_3": 0.25}
    for method in ("magnitude", "reconstruct"):
        compression = CompressionConfig(prune=prune, prune_method=method)
        results[method] = compile_model(
            path, hw, None, tmp_path / "calibration.npy", warn=notes.append, compression=compression, imported=imported
        )
        outputs[method] = np.concatenate([out[0] for out in float_outputs(results[method].graph, imported, samples)])
    assert prunable_layers(extract_graph(imported)) == ["conv2d_0", "conv2d_2"]  # expansion, squeeze
    graph = results["magnitude"].graph
    assert notes[:2] == [
        "note: conv2d_1 keeps the channels of conv2d_0; its own prune ratio is not used",
        "note: conv2d_3 keeps the channels of conv2d_0; its own prune ratio is not used",
    ]
    layers = {name: graph.nodes[name].layer for name in ("conv2d_0", "conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4")}
    assert layers["conv2d_0"].weight.shape == (12, 8, 1, 1)
    assert layers["conv2d_1"].weight.shape == (12, 1, 3, 3) and layers["conv2d_1"].groups == 12
    assert layers["conv2d_2"].weight.shape == (6, 12, 1, 1) and layers["conv2d_3"].weight.shape == (12, 6, 1, 1)
    assert layers["conv2d_4"].weight.shape == (8, 12, 1, 1)
    np.testing.assert_array_equal(layers["conv2d_1"].weight, np.delete(weights["w_dw"], gone, axis=0))
    assert_pruning_matches_onnxruntime(model, removed, samples, outputs)
    # The module runs the narrower block (the depthwise conv on 12 channels), bit exact.
    result = results["reconstruct"]
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for sample in samples[:3]:
        expected = run_reference(result.qgraph, sample)[0]
        assert np.array_equal(vm["main"](tvm.runtime.tensor(sample["x"])).numpy(), expected)


def test_refitting_on_the_pruned_inputs_beats_refitting_on_the_unpruned_ones(monkeypatch):
    """PP-OCR's text-direction classifier, every conv at a quarter of its channels (depthwise
    convs and gates following their expansions), in float: refit in graph order on what the
    pruned graph gives each consumer, it reads 200 rendered lines (other than the 32 it is
    calibrated on) far better than refit on the unpruned activations (what a graph numpy cannot
    run gets). Measured: 98.0 % against 84.5 % (unpruned: 100 %)."""
    path, shape = MODELS / "real" / "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)
    imported = import_model(path, {"x": shape}, warn=quiet)
    graph = extract_graph(imported)
    images, labels = text_directions(shape, 200, seed=1)
    calibration = [{"x": image[None]} for image in text_directions(shape, 32, seed=2)[0]]
    convs = [name for name, node in graph.nodes.items() if node.op == "gemm" and node.layer.kind == "conv2d"]
    config = CompressionConfig(prune=dict.fromkeys(convs, 0.25))
    numpy_runs = float_numpy.supports
    top1 = {}
    for label, pruned_graph_runs in (("in order", True), ("on unpruned inputs", False)):
        # Only the pruned graph is made to look unsupported: the unpruned one still runs in numpy.
        monkeypatch.setattr(
            "codesign.float_numpy.supports", lambda g, runs=pruned_graph_runs: numpy_runs(g) if g is graph else runs
        )
        pruned = prune_graph(graph, config, imported, calibration, quiet)
        monkeypatch.setattr("codesign.float_numpy.supports", numpy_runs)
        outputs = np.concatenate([out[0] for out in float_outputs(pruned, imported, [{"x": i[None]} for i in images])])
        top1[label] = float(np.mean(outputs.argmax(-1) == labels))
    assert top1["in order"] >= 0.95 and top1["in order"] >= top1["on unpruned inputs"] + 0.08, top1


def test_the_in_order_refit_takes_an_even_subset_of_samples_when_their_activations_are_large(tmp_path, monkeypatch):
    """With room for three samples' live activations, the refit runs on samples 0, 8 and 15 of
    16, and still refits: closer to the unpruned block (onnxruntime) than magnitude pruning."""
    model = mobilenet_block(np.random.default_rng(5))
    path = tmp_path / "block.onnx"
    onnx.save(model, path)
    imported = import_model(path, warn=quiet)
    graph = extract_graph(imported)
    samples = [{"x": x} for x in np.random.default_rng(6).standard_normal((16, 1, 8, 8, 8)).astype(np.float32)]
    per_sample = pruning._live_bytes_per_sample(graph)
    assert per_sample >= 4 * 24 * 8 * 8 * 2  # the expansion's output and its sigmoid, alive together
    monkeypatch.setattr(pruning, "REFIT_BYTES", 3 * per_sample)
    assert [s["x"] is samples[i]["x"] for s, i in zip(pruning.refit_samples(graph, samples), (0, 8, 15))] == [True] * 3
    session = ort.InferenceSession(model.SerializeToString())
    unpruned = np.concatenate([session.run(None, s)[0] for s in samples])
    errors = {}
    for method in ("reconstruct", "magnitude"):
        pruned = prune_graph(graph, CompressionConfig(prune={"conv2d_0": 0.5}, prune_method=method), imported, samples)
        outputs = np.concatenate([out[0] for out in float_outputs(pruned, imported, samples)])
        errors[method] = float(np.abs(outputs - unpruned).mean())
    assert errors["reconstruct"] < errors["magnitude"], errors
