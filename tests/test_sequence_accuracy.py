"""Sequence labels for the tuner's accuracy (a text recogniser's): greedy CTC decoding of the
model's first output, scored by character accuracy against the labels, with onnxruntime as the
float reference and a textbook edit distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from codesign.errors import UsageError
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.reference import run_reference
from codesign.tuner.accuracy import AccuracyMeasurer, ctc_greedy
from codesign.tuner.eval_data import load_eval_data
from codesign.tuner.evaluator import Evaluator
from codesign.tuner.space import load_space

SPACE = Path(__file__).parent / "spaces" / "tiny.toml"
STEPS, FEATURES, HIDDEN, CLASSES = 24, 32, 48, 6


def loop_decode(scores: np.ndarray) -> list[int]:
    """CTC's greedy decoding as the textbook states it: best path, merge repeats, drop blanks."""
    decoded, previous = [], None
    for step in scores:
        best = int(np.argmax(step))
        if best != previous and best != 0:
            decoded.append(best)
        previous = best
    return decoded


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein's distance by the textbook dynamic programme."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def character_accuracy(predictions: list[list[int]], labels: list[list[int]]) -> float:
    return 100 * np.mean([1 - edit_distance(p, t) / max(len(p), len(t), 1) for p, t in zip(predictions, labels)])


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    one_hot = np.eye(4)[[0, 2, 2, 0, 2, 3, 3, 1, 0, 0]][None]  # (1, steps, classes)
    assert ctc_greedy(one_hot) == (2, 2, 3, 1)
    rng = np.random.default_rng(0)
    for _ in range(200):
        scores = rng.normal(size=(int(rng.integers(1, 30)), int(rng.integers(2, 5))))
        assert list(ctc_greedy(scores)) == loop_decode(scores)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory) -> tuple[Path, np.ndarray, list[list[int]]]:
    """A two-matmul sequence model (x: 1 x steps x features -> 1 x steps x classes), 48 inputs and
    onnxruntime's decoding of each."""
    folder = tmp_path_factory.mktemp("recogniser")
    rng = np.random.default_rng(1)
    weights = {
        "w1": rng.normal(0, 0.3, (FEATURES, HIDDEN)),
        "b1": rng.normal(0, 0.1, HIDDEN),
        "w2": rng.normal(0, 0.3, (HIDDEN, CLASSES)),
        "b2": np.array([1.0] + [0.0] * (CLASSES - 1)),  # blanks between the classes, as a recogniser's
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["s"]),
        helper.make_node("Add", ["s", "b2"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "recogniser",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, STEPS, CLASSES])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = folder / "recogniser.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    inputs = rng.normal(size=(48, 1, STEPS, FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(model))
    decoded = [loop_decode(session.run(None, {"x": x})[0][0]) for x in inputs]
    assert len({tuple(d) for d in decoded}) > 40 and all(decoded)  # varied, non-empty sequences
    return model, inputs, decoded


def padded(sequences: list[list[int]]) -> np.ndarray:
    labels = np.full((len(sequences), max(map(len, sequences))), -1, dtype=np.int64)
    for row, sequence in enumerate(sequences):
        labels[row, : len(sequence)] = sequence
    return labels


def test_sequence_accuracy_is_character_accuracy(recogniser, tmp_path):
    model, inputs, decoded = recogniser
    labels = [list(d) for d in decoded]
    labels[12] = [*labels[12], 1]  # one class too many
    labels[20] = labels[20][1:]  # one too few
    labels[33] = [CLASSES - 1 if c == 1 else 1 for c in labels[33]]  # some substituted
    data, calibration = tmp_path / "eval.npz", tmp_path / "calibration.npz"
    np.savez(data, x=inputs, labels=padded(labels))
    np.savez(calibration, x=inputs[:16])
    evaluator = Evaluator(model, load_space(SPACE), data, calibration_samples=16)
    try:
        assert evaluator.float_accuracy() == pytest.approx(character_accuracy(decoded, labels))
        assert 95 < evaluator.float_accuracy() < 100
    finally:
        evaluator.close()
    # the int8 module scored against the numpy integer reference's outputs, decoded by the loop
    result = compile_model(model, load_hardware("vta_default"), calibration=calibration, calibration_samples=16)
    int8 = [loop_decode(run_reference(result.qgraph, {"x": x})[0][0]) for x in inputs]
    measurer = AccuracyMeasurer(result.imported, load_eval_data(data, result.imported.inputs), data)
    assert measurer.measure(result.executable) == pytest.approx(character_accuracy(int8, labels))
    assert int8 != decoded  # int8 misreads some characters: the measure sees the module's own outputs


@pytest.mark.parametrize(
    "row, problem",
    [
        ([3, 0, 2, -1], "labels[0, 1] = 0"),  # CTC's blank is not a label
        ([3, 2, -1, 4], "labels[0, 3] = 4"),  # a class after the padding began
        ([3, CLASSES, -1, -1], f"labels[0, 1] = {CLASSES}"),  # no such class
    ],
)
def test_bad_sequence_labels_are_one_line_naming_the_entry(recogniser, tmp_path, row, problem):
    model, inputs, decoded = recogniser
    labels = padded([row, *decoded[1:]])
    if labels.shape[1] > len(row):
        labels[0, len(row) :] = -1
    data = tmp_path / "eval.npz"
    np.savez(data, x=inputs, labels=labels)
    with pytest.raises(UsageError) as error:
        Evaluator(model, load_space(SPACE), data, calibration_samples=16)
    assert str(data) in str(error.value) and problem in str(error.value)
    assert "\n" not in str(error.value)


def test_fractional_sequence_labels_name_the_entry(recogniser, tmp_path):
    model, inputs, decoded = recogniser
    labels = padded(decoded).astype(np.float64)
    labels[3, 1] = 2.5
    data = tmp_path / "eval.npz"
    np.savez(data, x=inputs, labels=labels)
    with pytest.raises(UsageError, match=r"labels\[3, 1\] = 2.5; labels must be whole class indices"):
        Evaluator(model, load_space(SPACE), data, calibration_samples=16)
