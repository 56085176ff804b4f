"""Real pretrained models exported by other tools (tests/models/real, provenance in its README):
each compiles unmodified, its float import equals onnxruntime, the int8 module stays close to
onnxruntime's float run on realistic inputs, and its MACs land on the accelerator."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from codesign.compression import CompressionConfig
from codesign.corpus import EVAL_FIRST_SEED, check_model, load_corpus
from codesign.graph import extract_graph
from codesign.hardware import load_hardware
from codesign.packed_layout import plan_layouts
from codesign.pipeline import compile_model, import_model
from codesign.reference import evaluate

CORPUS = load_corpus(Path(__file__).parent / "models" / "real")
# The int8 module against onnxruntime's float model, cosine per output over the evaluation
# inputs, with scripts/bench_models.py's defaults (16 calibration and 16 evaluation inputs), each
# compiled with its corpus entry's compression: at least 0.98. The VADs are fed as a streaming
# user feeds them (64 samples of context per chunk, the state of the calls before: corpus.toml).
INT8_COSINE = 0.98
# The VADs fed the whole recording call after call, the module on its own states (errors
# accumulate, as in deployment): the cosine of the speech probabilities, and the share of
# speech / non-speech decisions (probability > 0.5) equal to onnxruntime's.
STREAM_COSINE = 0.98
STREAM_DECISIONS = 0.98
# silero-vad's LSTM variant with int8 activations throughout (its entry's wide layers dropped,
# max calibration): its states fall to 0.8885 / 0.8850 on windows of digital silence, where the
# float model is about as sensitive to its input (README, "Real models"); onnxruntime's own
# static int8 from the same calibration inputs leaves them at 0.80 / 0.90.
INT8_ONLY_LSTM_STATES = 0.88
# A recogniser's top-1 per character slot, blanks included (the cosine is its score's measure),
# and the share of its upright lines it reads as onnxruntime's float model does (greedy CTC).
SEQUENCE_TOP1 = 0.9
SEQUENCE_SAME_TEXT = 0.9
ACCEL_MAC_SHARE = 0.9
# PP-OCR-style models (issue 9): the host's share of the modelled latency at most a third of the
# 72-88 % it was when their activations ran in float on the host.
HOST_SHARE_MODELS = {"ppocr_cls", "ppocrv4_det", "ppocrv6_tiny_det", "ppocrv6_tiny_rec"}
HOST_SHARE = 0.88 / 3


@pytest.mark.parametrize("model", CORPUS, ids=[m.name for m in CORPUS])
def test_real_model_compiles_and_matches_onnxruntime(model):
    check = check_model(model, load_hardware("vta_default"), calibration_samples=16, eval_samples=16)
    assert check.compiled, check.blocker
    assert min(check.float_cosine) >= 0.9999
    assert min(check.int8_cosine) >= INT8_COSINE, check.int8_cosine
    if model.classifier:
        assert check.top1_agreement >= (SEQUENCE_TOP1 if model.sequence else 1.0)
    if model.sequence:
        assert check.same_text >= SEQUENCE_SAME_TEXT, check.same_text
    assert check.accel_mac_share >= ACCEL_MAC_SHARE
    if model.stream:
        assert check.stream.cosine >= STREAM_COSINE, check.stream
    if model.stream and model.decision_threshold is not None:
        assert check.stream.decisions_agree >= STREAM_DECISIONS, check.stream
    if model.name in HOST_SHARE_MODELS:
        assert check.host_latency_share <= HOST_SHARE, check.host_latency_share


def test_ppocr_cls_pinned_on_the_core_keeps_its_zero_points(tmp_path):
    """PP-OCR cls's grouped convs pinned on vta_default's core as super-groups, with the zero
    points they pad with on the host (a host pass pads their blocked inputs; the convs stay
    chained): every MAC on the accelerator, the module equal to its integer program (up to the
    float softmax's rounding), onnxruntime's float output within the target, and less of the
    modelled latency on the host than with each conv where it is modelled fastest (the host,
    for its 3x3 and short-row depthwise convs)."""
    model = next(m for m in CORPUS if m.name == "ppocr_cls")
    hw = load_hardware("vta_default")
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **model.samples(16, first_seed=0))
    graph = extract_graph(import_model(model.path, model.input_shapes))
    grouped = tuple(n.name for n in graph.gemm_nodes() if n.layer.kind == "conv2d" and n.layer.groups > 1)
    pinned = CompressionConfig(host_convs=(), row_bands=(), zero_point_pads=grouped)  # as super-groups
    result = compile_model(model.path, hw, model.input_shapes, calibration, 16, warn=lambda _: None, compression=pinned)
    padding = [n for n in result.qgraph.gemm_nodes() if "pad_value" in n.params]
    assert padding and all(n.placement == "accel" for n in padding)
    plans = {plan.name: plan for plan in result.lowered.plans}
    layouts = plan_layouts(result.qgraph, hw)
    for node in padding:  # chained: the host's work for the layer is the pad pass on the blocks
        n, c, h, w = result.qgraph.nodes[node.inputs[0]].shape
        top, left, bottom, right = node.params["padding"]
        blocks = -(-c // hw.block_in) * hw.block_in
        assert layouts.reads_packed(node, node.inputs[0])
        assert plans[node.name].host_bytes == n * blocks * (h * w + (h + top + bottom) * (w + left + right))
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for seed in (EVAL_FIRST_SEED, EVAL_FIRST_SEED + 1):
        x = model.sample(seed)["x"]
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(ours, reference_output(result.qgraph, x), rtol=1e-5, atol=1e-7)
    on_core = check_model(model, hw, 16, 16, compression=pinned)
    fastest = check_model(model, hw, 16, 16, compression=CompressionConfig(placement="fastest"))
    assert min(on_core.int8_cosine) >= INT8_COSINE and on_core.top1_agreement == 1.0
    assert on_core.accel_mac_share == 1.0 > fastest.accel_mac_share
    assert on_core.host_latency_share < fastest.host_latency_share


def test_ppocr_cls_depthwise_convs_as_row_bands_equal_the_integer_program(tmp_path):
    """PP-OCR cls with every depthwise conv pinned on vta_default's core as row bands (3x3 and
    5x5, strides 1 and 2x1, inputs with zero points): the module equals its integer program
    (up to the float softmax's rounding)."""
    model = next(m for m in CORPUS if m.name == "ppocr_cls")
    hw = load_hardware("vta_default")
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, **model.samples(16, first_seed=0))
    graph = extract_graph(import_model(model.path, model.input_shapes))
    depthwise = tuple(
        n.name for n in graph.gemm_nodes() if n.layer.kind == "conv2d" and n.layer.groups == n.layer.weight.shape[0] > 1
    )
    strides = {tuple(graph.nodes[name].layer.strides) for name in depthwise}
    assert {(1, 1), (2, 1)} <= strides
    banded = CompressionConfig(host_convs=(), row_bands=depthwise)
    result = compile_model(model.path, hw, model.input_shapes, calibration, 16, warn=lambda _: None, compression=banded)
    plans = {plan.name: plan for plan in result.lowered.plans}
    assert all(plans[name].placement == "accel" and "row bands" in plans[name].describe() for name in depthwise)
    assert any("pad_value" in result.qgraph.nodes[name].params for name in depthwise)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    for seed in (EVAL_FIRST_SEED, EVAL_FIRST_SEED + 1):
        x = model.sample(seed)["x"]
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(ours, reference_output(result.qgraph, x), rtol=1e-5, atol=1e-7)


def reference_output(qgraph, x: np.ndarray) -> np.ndarray:
    """The integer program's output for PP-OCR cls's input `x`, its float softmax in numpy."""
    values = {"x": x}
    for node in qgraph.nodes.values():
        args = [values[i] for i in node.inputs]
        if node.op == "float" and node.source.op == "relax.nn.softmax":
            exp = np.exp(args[0] - args[0].max(axis=int(node.source.call.attrs.axis), keepdims=True))
            values[node.name] = exp / exp.sum(axis=int(node.source.call.attrs.axis), keepdims=True)
        elif node.op != "input":
            values[node.name] = evaluate(node, args)
    (output,) = qgraph.outputs
    return values[output]


@pytest.mark.parametrize(("calibration_seed", "method"), [(1000, None), (2000, None), (0, "mean_max")])
def test_lstm_vad_wide_layers_hold_on_other_calibration_sets(calibration_seed, method):
    """The target on the bench's second and third calibration sets too: wide layers' weights keep
    their own scales, so their rounding does not move with the calibration (0.9890 and 0.9873;
    0.9912 and 0.9736 with the scales raised for exact requantization). And under mean_max, whose
    ranges inputs beyond the calibration's exceed, thanks to wide layers' headroom (0.9887; 0.9742
    without it)."""
    model = next(m for m in CORPUS if m.name == "silero_vad_lstm")
    hw = load_hardware("vta_default")
    check = check_model(model, hw, 16, 16, calibration_method=method, calibration_seed=calibration_seed)
    assert min(check.int8_cosine) >= INT8_COSINE, check.int8_cosine


def test_lstm_vad_needs_its_wide_layers():
    """silero-vad's LSTM variant with int8 activations throughout stays where it was (its
    states below the target); its entry's wide layers are what lift them (the test above)."""
    model = next(m for m in CORPUS if m.name == "silero_vad_lstm")
    assert model.compression_config().wide_layers == ("*",)
    check = check_model(model, load_hardware("vta_default"), 16, 16, compression=CompressionConfig())
    assert INT8_ONLY_LSTM_STATES <= min(check.int8_cosine) < INT8_COSINE, check.int8_cosine


def test_stream_check_feeds_the_recording_in_order_on_each_runs_own_states():
    """check_stream's feeds, taken apart: the recording from its first sample, chunk after chunk
    with 64 samples of context; each call's states are that runner's outputs of the call before
    (zeros first). A runner that is onnxruntime itself agrees everywhere; one that forgets its
    state does not."""
    import onnxruntime as ort

    from codesign.corpus import check_stream

    vad = next(m for m in CORPUS if m.name == "silero_vad")
    session = ort.InferenceSession(str(vad.path), providers=["CPUExecutionProvider"])
    feeds = []

    def onnxruntime_runner(feed):
        feeds.append(feed)
        return session.run(None, vad.onnx_feed(feed, session.get_inputs()))

    same = check_stream(vad, onnxruntime_runner, session)
    audio = np.load(vad.data)["audio"] / 32768
    assert same.calls == len(feeds) == (audio.size - 576) // 512
    np.testing.assert_allclose(feeds[0]["input"][0], audio[:576], rtol=1e-6)
    np.testing.assert_allclose(feeds[-1]["input"][0], audio[512 * (same.calls - 1) : 512 * same.calls + 64], rtol=1e-6)
    assert not feeds[0]["state"].any()
    _, state = session.run(None, vad.onnx_feed(feeds[0], session.get_inputs()))
    np.testing.assert_array_equal(feeds[1]["state"], state)
    assert same.cosine == pytest.approx(1.0) and same.decisions_agree == 1.0

    def forgetful_runner(feed):
        return session.run(None, vad.onnx_feed({**feed, "state": np.zeros_like(feed["state"])}, session.get_inputs()))

    forgetful = check_stream(vad, forgetful_runner, session)
    assert forgetful.cosine < 0.98 and forgetful.decisions_agree < 0.98

    halved = []

    def halving_runner(feed):  # its states differ from onnxruntime's: they must come back to it
        halved.append(feed)
        probability, state = onnxruntime_runner(feed)
        return probability, state / 2

    check_stream(vad, halving_runner, session)
    _, state = session.run(None, vad.onnx_feed(halved[0], session.get_inputs()))
    np.testing.assert_array_equal(halved[1]["state"], state / 2)


def test_streamed_speech_inputs_carry_context_and_the_state_of_earlier_calls():
    """The VAD's sample is what a streaming user feeds it: each chunk starts with the last 64
    samples of the chunk before, and the state is the model's own after the earlier chunks."""
    import numpy as np
    import onnxruntime as ort

    from codesign.corpus import speech_calls

    vad = next(m for m in CORPUS if m.name == "silero_vad")
    calls = speech_calls((1, 576), np.random.default_rng(3), vad.data, 64, 4)
    for before, chunk in itertools.pairwise(calls):
        np.testing.assert_array_equal(chunk[0, :64], before[0, -64:])
    sample = vad.sample(5)
    earlier = speech_calls((1, 576), np.random.default_rng(5), vad.data, 64, vad.stream_calls + 1)
    np.testing.assert_array_equal(sample["input"], earlier[-1])
    session = ort.InferenceSession(str(vad.path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    for chunk in earlier[:-1]:
        _, state = session.run(None, {"input": chunk, "state": state, "sr": np.array(16000, np.int64)})
    np.testing.assert_allclose(sample["state"], state, rtol=1e-6, atol=1e-7)
    assert np.abs(state).max() > 0.01  # the earlier calls changed the state


def test_calibration_seeds_stay_apart_from_the_evaluation_inputs():
    from codesign.corpus import EVAL_FIRST_SEED

    with pytest.raises(ValueError, match="below the evaluation"):
        hw = load_hardware("vta_default")
        check_model(CORPUS[0], hw, calibration_samples=16, calibration_seed=EVAL_FIRST_SEED - 8)


def test_onnxruntime_int8_baseline_runs_on_the_same_inputs():
    """bench_models.py --onnxruntime-int8: onnxruntime's own static int8 of a model (here the
    LSTM VAD, opset 16, and PP-OCR cls, opset 10, upgraded for per-channel scales) is built from
    the calibration inputs and compared on the evaluation inputs: it tracks the float model
    without equalling it."""
    from codesign.corpus import check_onnxruntime_int8

    for name in ("silero_vad_lstm", "ppocr_cls"):
        baseline = check_onnxruntime_int8(next(m for m in CORPUS if m.name == name), 8, 4)
        assert baseline.quantized, baseline.blocker
        assert 0.5 < baseline.int8_cosine[0] < 0.9999999, baseline.int8_cosine
        assert baseline.top1_agreement == (1.0 if name == "ppocr_cls" else None)
