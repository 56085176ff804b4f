"""The calibration method as a recorded choice: a compression file, a search space and a design
carry it, `compile` and the tuner's profiles calibrate with it, and an explicit one overrides it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codesign.compression import CompressionConfig, compression_from_dict
from codesign.errors import UsageError
from codesign.hardware import load_hardware
from codesign.pipeline import compile_model
from codesign.tuner.executors import EvaluatorSpec
from codesign.tuner.space import load_space

MNIST = Path(__file__).resolve().parent.parent / "codesign" / "data" / "mnist-8.onnx"
TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


def activation_scales(result) -> dict[str, float]:
    return {name: node.scale for name, node in result.qgraph.nodes.items() if isinstance(node.scale, float)}


def test_a_compression_file_records_its_calibration_method_and_names_a_wrong_one():
    config = CompressionConfig(calibration_method="mean_max")
    assert config.to_dict()["calibration_method"] == "mean_max"
    assert compression_from_dict(config.to_dict()) == config
    assert "calibration_method" not in CompressionConfig().to_dict()  # older files stay as they were
    with pytest.raises(UsageError, match=r"choices.json: calibration_method = \"meanmax\" \(expected one of max"):
        compression_from_dict({"calibration_method": "meanmax"}, "choices.json")


def test_a_space_gives_every_profile_its_calibration_method(tmp_path):
    text = TINY_SPACE.read_text().replace("[compression]\n", '[compression]\ncalibration_method = "mean_max"\n')
    path = tmp_path / "space.toml"
    path.write_text(text)
    space = load_space(path)
    config = space.sample(np.random.default_rng(0))
    assert space.compression(config, ["conv2d_0"]).calibration_method == "mean_max"
    assert load_space(TINY_SPACE).compression(config, ["conv2d_0"]).calibration_method is None
    path.write_text(text.replace('"mean_max"', '"minmax"'))
    with pytest.raises(UsageError, match=r"'compression.calibration_method' = 'minmax' \(expected one of max"):
        load_space(path)


@pytest.fixture(scope="module")
def compiled(mnist_calibration):
    hw = load_hardware("vta_default")

    def compile_with(**options):
        return compile_model(MNIST, hw, calibration=mnist_calibration, warn=lambda m: None, **options)

    return compile_with


def test_compile_calibrates_with_the_designs_method_unless_told_otherwise(compiled):
    by_option = compiled(calibration_method="mean_max")
    by_design = compiled(compression=CompressionConfig(calibration_method="mean_max"))
    default = compiled()
    assert by_design.calibration["method"] == by_option.calibration["method"] == "mean_max"
    assert by_option.compression.calibration_method == "mean_max"  # recorded with the module's choices
    assert activation_scales(by_design) == activation_scales(by_option)
    assert default.calibration["method"] == "max"
    assert activation_scales(default) != activation_scales(by_design)
    overridden = compiled(compression=CompressionConfig(calibration_method="mean_max"), calibration_method="max")
    assert overridden.calibration["method"] == "max"
    assert activation_scales(overridden) == activation_scales(default)


def test_the_tuners_profiles_calibrate_with_the_spaces_method(tmp_path, mnist_test_set, compiled):
    space_path = tmp_path / "space.toml"
    space_path.write_text(
        TINY_SPACE.read_text().replace("[compression]\n", '[compression]\ncalibration_method = "mean_max"\n')
    )
    images, labels = mnist_test_set
    data = tmp_path / "eval.npz"
    np.savez(data, Input3=images[:200, 0], labels=labels[:200])  # calibration: the first 200, as compiled's
    evaluator = EvaluatorSpec(str(MNIST), str(space_path), str(data), eval_samples=20, calibration_samples=200).build()
    try:
        config = {**evaluator.space.sample(np.random.default_rng(0)), "comp.all.weight_bits": 8, "comp.all.prune": 0.0}
        result = evaluator.builder.build(evaluator.space.compression(config, evaluator.layers), True)
    finally:
        evaluator.close()
    assert result.calibration["method"] == "mean_max"
    assert activation_scales(result) == activation_scales(compiled(calibration_method="mean_max"))
