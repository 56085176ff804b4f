"""`--calibration-method auto`: each method calibrates on 3/4 of the calibration samples, is
scored on every fourth one, and the best is used on all of them. Checked against onnxruntime: the
recorded held-out scores are what a module calibrated on those samples gives, and the choice
beats max on new inputs where one calibration sample holds an outlier."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from codesign.calibration_choice import AUTO_CANDIDATES, AUTO_MARGIN, preferred_method
from codesign.errors import UsageError
from codesign.hardware import load_hardware
from codesign.metrics import cosine
from codesign.pipeline import compile_model

SHAPE = (1, 16, 8, 8)
SAMPLES = 12  # 9 calibrate each candidate, 3 (every fourth) are held out


def conv_model(path) -> None:
    """Conv -> Relu -> Conv -> Relu: the first conv's output range is what calibration sets."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.25, (16, 16, 3, 3)).astype(np.float32) for _ in range(2)]
    biases = [rng.normal(0, 0.1, 16).astype(np.float32) for _ in range(2)]
    nodes, inits, current = [], [], "x"
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(weight, f"w{index}"), numpy_helper.from_array(bias, f"b{index}")]
        nodes.append(helper.make_node("Conv", [current, f"w{index}", f"b{index}"], [f"c{index}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, list(SHAPE))],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def normal_inputs(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, *SHAPE[1:])).astype(np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto")
    path = folder / "two_convs.onnx"
    conv_model(path)
    samples = normal_inputs(SAMPLES, 1)
    samples[0, 3, 4, 4] = 400.0  # one outlier in a calibrating sample: max widens every range after it
    calibration = folder / "calibration.npy"
    np.save(calibration, samples)
    return path, calibration, samples


def compiled(path, calibration, method, notes=None):
    return compile_model(
        path, load_hardware("vta_default"), calibration=calibration, calibration_method=method,
        warn=(notes.append if notes is not None else lambda message: None),
    )  # fmt: skip


def run(result, inputs: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(x[None])).numpy()[0] for x in inputs])


def float_reference(path, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"x": x[None]})[0][0] for x in inputs])


@pytest.fixture(scope="module")
def auto_result(model):
    path, calibration, _ = model
    notes = []
    return compiled(path, calibration, "auto", notes), notes


def test_auto_scores_every_method_on_the_held_out_quarter_as_onnxruntime_does(model, auto_result, tmp_path):
    path, _, samples = model
    result, notes = auto_result
    auto = result.calibration["auto"]
    assert auto["held_out_samples"] == 3
    assert set(auto["held_out_cosine"]) == set(AUTO_CANDIDATES)
    held_out = samples[[3, 7, 11]]  # every fourth sample
    fit = np.delete(samples, [3, 7, 11], axis=0)
    np.save(tmp_path / "fit.npy", fit)
    reference = float_reference(path, held_out)
    for method in ("max", result.calibration["method"]):
        on_fit = compiled(path, tmp_path / "fit.npy", method)
        measured = cosine(run(on_fit, held_out), reference)
        assert auto["held_out_cosine"][method] == pytest.approx(measured, abs=1e-5)
    assert any(note.startswith("note: calibration method auto: ") for note in notes)


def test_auto_avoids_the_outliers_range_and_beats_max_on_new_inputs(model, auto_result):
    path, calibration, _ = model
    result, _ = auto_result
    chosen = result.calibration["method"]
    scores = result.calibration["auto"]["held_out_cosine"]
    assert chosen != "max"
    assert scores[chosen] == max(scores.values()) > scores["max"]
    new_inputs = normal_inputs(8, 2)
    reference = float_reference(path, new_inputs)
    with_max = cosine(run(compiled(path, calibration, "max"), new_inputs), reference)
    with_auto = cosine(run(result, new_inputs), reference)
    assert with_auto > with_max + 0.01, (with_auto, with_max)


def test_the_chosen_method_then_calibrates_on_every_sample(model, auto_result):
    path, calibration, _ = model
    result, _ = auto_result
    explicit = compiled(path, calibration, result.calibration["method"])
    inputs = normal_inputs(4, 3)
    assert np.array_equal(run(result, inputs), run(explicit, inputs))
    assert result.compression.calibration_method == "auto"  # the user's choice, recorded as made


def test_max_is_kept_unless_another_method_beats_it_by_the_margin():
    assert preferred_method({"max": 0.9900, "mean_max": 0.9900 + AUTO_MARGIN / 2, "mse": 0.9800}) == "max"
    assert preferred_method({"max": 0.9900, "mean_max": 0.9900 + 2 * AUTO_MARGIN, "mse": 0.9950}) == "mse"
    assert preferred_method({"max": -1.0, "percentile": 0.5}) == "percentile"  # an overflowing max ranks last


def test_too_few_samples_fall_back_to_max_with_a_note(model, tmp_path):
    path, _, samples = model
    np.save(tmp_path / "three.npy", samples[:3])
    notes = []
    result = compiled(path, tmp_path / "three.npy", "auto", notes)
    assert result.calibration["method"] == "max"
    assert "auto" not in result.calibration
    assert any("auto needs at least 4 calibration samples" in note for note in notes)


def test_an_unknown_method_names_auto_among_the_allowed(model):
    path, calibration, _ = model
    with pytest.raises(UsageError, match=r"unknown calibration method 'automatic' \(allowed: .*mse, mean_max, auto\)"):
        compiled(path, calibration, "automatic")


def test_compile_records_the_choice_in_the_manifest(model, tmp_path):
    path, calibration, _ = model
    out = tmp_path / "module"
    command = [sys.executable, "-m", "codesign.cli", "compile", str(path), "--hw", "vta_default", "-o", str(out)]
    completed = subprocess.run(
        [*command, "--calibration", str(calibration), "--calibration-method", "auto"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "calibration method auto: " in completed.stderr
    calibration_record = json.loads((out / "manifest.json").read_text())["quantization"]["calibration"]
    assert calibration_record["method"] in AUTO_CANDIDATES
    assert calibration_record["method"] != "max"
    assert set(calibration_record["auto"]["held_out_cosine"]) == set(AUTO_CANDIDATES)
