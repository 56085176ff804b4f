"""Input files are validated and refused in one line naming the file and the field, sample or tensor:
calibration data, hardware descriptions (TOML written by a library, vta_config.json keys, binary
files), compression files, and shapes too large for memory."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli_errors import MNIST, PRESETS, cli, error_line, hw_variant, mnist_images, save_model
from test_hardware import VTA_DEFAULT_CONFIG as VTA_CONFIG

from codesign import toml as tomllib
from codesign.calibration import load_samples
from codesign.compression import load_compression, resolve_compression
from codesign.errors import HardwareError, ModelError, UsageError
from codesign.graph import extract_graph
from codesign.hardware import hardware_from_dict, hardware_from_vta_config, load_hardware
from codesign.importer import TensorSpec, import_onnx
from codesign.pipeline import MAX_MEMORY_ENV, memory_limit

IMAGE = TensorSpec("Input3", (1, 1, 28, 28), "float32")


def images(count: int = 8) -> np.ndarray:
    return mnist_images(count) / 255.0


# ---- calibration values (item 9) --------------------------------------------------------------


@pytest.mark.parametrize(("value", "what"), [(np.inf, "infinite"), (-np.inf, "infinite"), (np.nan, "NaN")])
def test_calibration_non_finite_value_names_input_and_sample(tmp_path, value, what):
    data = images()
    data[5, 0, 3, 7] = value  # a single bad value in sample 5
    path = tmp_path / "calib.npy"
    np.save(path, data)
    with pytest.raises(ModelError) as err:
        load_samples(path, [IMAGE])
    message = str(err.value)
    assert message.startswith(f"{path}: input 'Input3', sample 5 of 8 holds {what} values")
    assert "\n" not in message


def test_calibration_all_nan(tmp_path):
    path = tmp_path / "nan.npy"
    np.save(path, np.full((4, 1, 1, 28, 28), np.nan, np.float32))
    with pytest.raises(ModelError, match="input 'Input3', sample 0 of 4 holds NaN"):
        load_samples(path, [IMAGE])


def test_calibration_overflowing_the_input_dtype(tmp_path):
    data = images().astype(np.float64)
    data[2, 0, 0, 0] = 1e300  # finite in float64, infinite as the model's float32
    path = tmp_path / "big.npy"
    np.save(path, data)
    with pytest.raises(ModelError, match="sample 2 of 8 holds infinite values once converted to float32"):
        load_samples(path, [IMAGE])


def test_calibration_all_zero_input_is_degenerate(tmp_path):
    path = tmp_path / "zeros.npy"
    np.save(path, np.zeros((6, 1, 1, 28, 28), np.float32))
    with pytest.raises(ModelError, match="input 'Input3' is zero in all 6 calibration samples"):
        load_samples(path, [IMAGE])


def test_calibration_all_zero_inputs_are_degenerate_one_zero_state_is_not(tmp_path):
    """A recurrent model's zero initial state (silero-vad's 'state') beside real audio, or segment ids
    that are all 0, are ordinary; float inputs that are all zero in every sample carry no signal."""
    specs = [
        TensorSpec("x", (1, 4), "float32"),
        TensorSpec("state", (1, 2), "float32"),
        TensorSpec("segment_ids", (1, 4), "int64"),
    ]
    rng = np.random.default_rng(0)
    path = tmp_path / "three.npz"
    zeros = {"state": np.zeros((3, 1, 2), np.float32), "segment_ids": np.zeros((3, 1, 4), np.int64)}
    np.savez(path, x=rng.standard_normal((3, 1, 4)).astype(np.float32), **zeros)
    samples = load_samples(path, specs)
    assert len(samples) == 3 and samples[0]["segment_ids"].dtype == np.int64
    np.savez(path, x=np.zeros((3, 1, 4), np.float32), **{**zeros, "segment_ids": np.ones((3, 1, 4), np.int64)})
    with pytest.raises(ModelError) as err:
        load_samples(path, specs)
    assert str(err.value) == (
        f"{path}: inputs 'x', 'state' are zero in all 3 calibration samples, which gives no range to "
        "quantize with; calibrate on representative inputs"
    )


def test_calibration_zeros_only_in_some_samples_are_fine(tmp_path):
    data = images(4)
    data[1:] = 0
    path = tmp_path / "calib.npy"
    np.save(path, data)
    assert len(load_samples(path, [IMAGE])) == 4
    # ... but not when only the all-zero samples are used.
    data = data[::-1].copy()
    np.save(path, data)
    with pytest.raises(ModelError, match="zero in all 2 calibration samples"):
        load_samples(path, [IMAGE], limit=2)


def test_calibration_complex_values(tmp_path):
    path = tmp_path / "complex.npy"
    np.save(path, images().astype(np.complex64) * (1 + 1j))
    with pytest.raises(ModelError, match=r"array 'Input3' holds complex numbers \(complex64\), not real numbers"):
        load_samples(path, [IMAGE])


def test_calibration_non_finite_in_cli_is_one_line(capsys, tmp_path):
    data = images()
    data[3] = np.inf
    path, out = tmp_path / "inf.npy", tmp_path / "out"
    np.save(path, data)
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--calibration", path)
    error_line(*result, 1, "inf.npy", "'Input3'", "sample 3", "infinite")
    assert not out.exists()


# ---- calibration files of non-numbers (item 15) ------------------------------------------------


def test_calibration_npy_of_strings(tmp_path):
    path = tmp_path / "strings.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ModelError) as err:
        load_samples(path, [IMAGE])
    assert str(err.value) == (
        f"{path}: array 'Input3' holds strings, not real numbers; input 'Input3' takes float32 values"
    )


def test_calibration_npz_with_object_array(tmp_path):
    path = tmp_path / "objects.npz"
    objects = np.empty(2, dtype=object)
    objects[:] = [images(1), "label"]
    np.savez(path, Input3=objects)
    with pytest.raises(ModelError, match=r"objects.npz: array 'Input3' holds Python objects"):
        load_samples(path, [IMAGE])


def test_calibration_npy_object_array(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "x", None], dtype=object), allow_pickle=True)
    with pytest.raises(ModelError, match=r"objects.npy: holds an array of Python objects"):
        load_samples(path, [IMAGE])


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a .npy/.npz file (No data left in file)"),
        (pickle.dumps([1.0, 2.0]), "a Python pickle, not a .npy/.npz file of numbers"),
    ],
)
def test_calibration_empty_or_pickled_file(tmp_path, content, expected):
    path = tmp_path / "calib.npy"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        load_samples(path, [IMAGE])
    assert str(err.value) == f"{path}: {expected}"


def test_calibration_strings_in_cli_is_one_line(capsys, tmp_path):
    path, out = tmp_path / "strings.npy", tmp_path / "out"
    np.save(path, np.array(["1.0", "x"]))
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--calibration", path)
    error_line(*result, 1, "strings.npy", "'Input3'", "strings")


# ---- hardware TOML written by a library (item 10) ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ['my "fast" core', "back\\slash", 'x"\n[gemm]\nbatch = 64\n# ', "tab\tand ünïcode", "'single'"],
)
def test_to_toml_quotes_any_name(tmp_path, name):
    hw = hardware_from_dict({**tomllib.loads((PRESETS / "vta_default.toml").read_text()), "name": name})
    text = hw.to_toml()
    doc = tomllib.loads(text)  # valid TOML, no injected keys
    assert doc["name"] == name
    assert doc["gemm"]["batch"] == 1
    path = tmp_path / "round_trip.toml"
    path.write_text(text, encoding="utf-8")
    assert load_hardware(path) == hw


def test_to_toml_still_round_trips_every_preset():
    for path in sorted(PRESETS.glob("*.toml")):
        hw = load_hardware(path)
        assert hardware_from_dict(tomllib.loads(hw.to_toml())) == hw


# ---- binary hardware file ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_binary_hardware_file(tmp_path, suffix):
    path = tmp_path / f"binary{suffix}"
    path.write_bytes(b"name = \x80\xff\xfe\x00 core\n")
    with pytest.raises(HardwareError) as err:
        load_hardware(path)
    assert str(err.value).startswith(f"{path}: not a ")
    assert "not UTF-8" in str(err.value)


def test_binary_hardware_file_in_cli(capsys, tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(np.random.default_rng(0).bytes(256) + b"\xff")
    error_line(*cli(capsys, "hw", path), 1, "binary.toml", "not UTF-8")


# ---- vta_config.json (item 17) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("LOG_BLOCK_IN", "x", "'LOG_BLOCK_IN' = 'x' is invalid (expected an integer log2 value from 0 to 8)"),
        ("LOG_BLOCK_IN", 99, "'LOG_BLOCK_IN' = 99 is invalid (expected an integer log2 value from 0 to 8)"),
        ("LOG_BLOCK", 12, "'LOG_BLOCK' = 12 is invalid (expected an integer log2 value from 0 to 8)"),
        ("LOG_BATCH", True, "'LOG_BATCH' = true is invalid (expected an integer log2 value from 0 to 6)"),
        ("LOG_WGT_WIDTH", 4, "'LOG_WGT_WIDTH' = 4 is invalid (expected an integer log2 value: 2 or 3)"),
        ("LOG_ACC_WIDTH", 5.0, "'LOG_ACC_WIDTH' = 5.0 is invalid (expected an integer log2 value: 5)"),
        ("LOG_UOP_BUFF_SIZE", -1, "'LOG_UOP_BUFF_SIZE' = -1 is invalid (expected an integer log2 value from 2 to 28)"),
    ],
)
def test_vta_config_keys_validated_by_their_own_names(tmp_path, key, value, expected):
    path = tmp_path / "vta_config.json"
    path.write_text(json.dumps({**VTA_CONFIG, key: value}))
    with pytest.raises(HardwareError) as err:
        load_hardware(path)
    assert str(err.value) == f"{path}: {expected}"


def test_vta_config_element_larger_than_buffer():
    config = {**VTA_CONFIG, "LOG_BLOCK": 8, "LOG_INP_BUFF_SIZE": 4}
    with pytest.raises(HardwareError) as err:
        hardware_from_vta_config(config, "cfg.json")
    assert (
        str(err.value)
        == "cfg.json: 'LOG_INP_BUFF_SIZE' = 4 (16 bytes) cannot hold one 1x256x256 GEMM element (256 bytes)"
    )


def test_vta_config_block_in_and_out():
    config = {k: v for k, v in VTA_CONFIG.items() if k != "LOG_BLOCK"} | {"LOG_BLOCK_IN": 4, "LOG_BLOCK_OUT": 5}
    hw = hardware_from_vta_config(config)
    assert (hw.name, hw.block_in, hw.block_out) == ("vta_1x16x32", 16, 32)


def test_vta_config_not_an_object():
    with pytest.raises(HardwareError, match=r"cfg\.json: expected a JSON object"):
        hardware_from_vta_config([1, 2], "cfg.json")


def test_vta_config_in_cli(capsys, tmp_path):
    path = tmp_path / "vta_config.json"
    path.write_text(json.dumps({**VTA_CONFIG, "LOG_BLOCK": 12}))
    error_line(*cli(capsys, "hw", path), 1, "vta_config.json", "'LOG_BLOCK' = 12")


# ---- compression files (item 19) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"prune": {"conv2d_1": "0.25"}}, "prune['conv2d_1'] = \"0.25\" (expected a number: 0 <= ratio < 1)"),
        ({"prune": {"conv2d_1": [0.25]}}, "prune['conv2d_1'] = [0.25] (expected a number: 0 <= ratio < 1)"),
        ({"prune": {"conv2d_1": True}}, "prune['conv2d_1'] = true (expected a number: 0 <= ratio < 1)"),
        ({"prune": [0.5]}, "prune = [0.5] (expected an object of layer name -> value)"),
        ({"weight_bits": {"conv2d_0": "4"}}, "weight_bits['conv2d_0'] = \"4\" (expected 4 or 8)"),
        ({"weight_bits": {"conv2d_0": [4]}}, "weight_bits['conv2d_0'] = [4] (expected 4 or 8)"),
        ({"weight_bits": {"conv2d_0": 8.0}}, "weight_bits['conv2d_0'] = 8.0 (expected 4 or 8)"),
        ({"weight_bits": "4"}, 'weight_bits = "4" (expected an object of layer name -> value)'),
        ({"schedule": ["auto"]}, 'schedule = ["auto"] (expected "rule" or "auto")'),
        ({"float_layers": "conv2d_0"}, 'float_layers = "conv2d_0" (expected a list of layer name patterns)'),
        ({"prune_method": "lasso"}, 'prune_method = "lasso" (expected "reconstruct" or "magnitude")'),
    ],
)
def test_compression_types_named_by_file_field_and_layer(tmp_path, doc, expected):
    path = tmp_path / "compression.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError) as err:
        load_compression(path)
    assert str(err.value) == f"{path}: {expected}"


def test_compression_all_problems_in_one_line(tmp_path):
    path = tmp_path / "compression.json"
    path.write_text(json.dumps({"weight_bits": {"a": "x"}, "prune": {"b": 2}}))
    with pytest.raises(UsageError) as err:
        load_compression(path)
    assert "weight_bits['a']" in str(err.value) and "prune['b'] = 2" in str(err.value)


@pytest.mark.parametrize(("content", "expected"), [(b"[1, 2]", "got an array"), (b"\xff\xfe{", "not UTF-8")])
def test_compression_not_an_object(tmp_path, content, expected):
    path = tmp_path / "compression.json"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=expected):
        load_compression(path)


def test_compression_in_cli(capsys, tmp_path):
    path, out = tmp_path / "bad_compression.json", tmp_path / "out"
    path.write_text(json.dumps({"prune": {"conv2d_1": "a lot"}}))
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--compression", path)
    error_line(*result, 2, "bad_compression.json", "prune['conv2d_1']", '"a lot"')
    assert not out.exists()


def test_compression_keys_are_layer_patterns_the_last_match_wins(tmp_path):
    path = tmp_path / "compression.json"
    doc = {"prune": {"conv2d_*": 0.25, "conv2d_0": 0}, "weight_bits": {"*": 4, "matmul_0": 8}}
    path.write_text(json.dumps(doc))
    graph = extract_graph(import_onnx(MNIST))
    config = resolve_compression(load_compression(path), graph)
    assert config.prune == {"conv2d_0": 0, "conv2d_1": 0.25}
    assert config.weight_bits == {"conv2d_0": 4, "conv2d_1": 4, "matmul_0": 8}
    assert resolve_compression(config, graph) == config  # explicit names resolve to themselves


def test_compression_pattern_matching_no_layer_in_cli(capsys, tmp_path):
    path, out = tmp_path / "compression.json", tmp_path / "out"
    path.write_text(json.dumps({"prune": {"conv3d_*": 0.5, "conv2d_7": 0.5}}))
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--compression", path)
    error_line(*result, 2, "layer pattern 'conv3d_*' matches no layer", "unknown layer 'conv2d_7'")
    assert not out.exists()


# ---- shapes too large for memory (item 18) ----------------------------------------------------


def dynamic_conv(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    return save_model(nodes, [x], [y], [weight], path)


def test_huge_input_shape_refused_up_front(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)
    model, out = dynamic_conv(tmp_path / "dynamic_conv.onnx"), tmp_path / "out"
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out, "--input-shape", "x=1,4,100000,100000")
    line = error_line(*result, 1, "dynamic_conv.onnx", "'conv2d_0' [1, 8, 100000, 100000] float32", "298.0 GiB")
    assert "TiB of memory" in line and MAX_MEMORY_ENV in line
    assert not out.exists()


def test_memory_limit_from_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_MEMORY_ENV, "0.0001")  # 105 KB: less than mnist-8's calibration needs
    assert memory_limit() == int(0.0001 * 2**30)
    out = tmp_path / "out"
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out)
    error_line(*result, 1, "mnist-8.onnx", "'conv2d_0' [1, 8, 28, 28] float32", "over the limit of 104.9 KiB")
    monkeypatch.setenv(MAX_MEMORY_ENV, "plenty")
    error_line(*cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out), 2, MAX_MEMORY_ENV, "'plenty'")


def test_default_memory_limit(monkeypatch):
    monkeypatch.delenv(MAX_MEMORY_ENV, raising=False)
    assert 0 < memory_limit() <= 8 * 2**30


# ---- the helpers this file shares keep working --------------------------------------------------


def test_hw_variant_still_validated(tmp_path):
    path = hw_variant(tmp_path, "v.toml", 'name = "vta_default"', 'name = "a \\"quoted\\" core"')
    assert load_hardware(path).name == 'a "quoted" core'
