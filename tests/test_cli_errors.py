"""The CLI's error contract: one `codesign: error:` line naming the problem, exit 2 (usage) or 1 (other),
no traceback unless `--debug`, and a failed compile leaves nothing behind in the output's parent."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import codesign
from codesign.cli import main

DATA = Path(codesign.__file__).resolve().parent / "data"
MNIST = DATA / "mnist-8.onnx"
IMAGES = DATA / "t10k-images-idx3-ubyte.gz"
PRESETS = Path(codesign.__file__).resolve().parent.parent / "hw_targets"


# ---- helpers ----------------------------------------------------------------------------------


def mnist_images(count: int) -> np.ndarray:
    images = np.frombuffer(gzip.open(IMAGES).read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return images[:count].astype(np.float32)


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `codesign ARGS` in-process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_subprocess(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "codesign.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def error_line(code: int, out: str, err: str, expected_code: int, *needles: str) -> str:
    """Assert the one-line error contract and that the line names every needle; returns the line."""
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{err}"
    line = lines[0]
    assert line.startswith("codesign: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert code == expected_code, f"exit code {code}, expected {expected_code} ({line})"
    return line


def leftovers(parent: Path, name: str) -> list[Path]:
    """Staging / retired directories write_module may have left next to OUT."""
    return sorted(parent.glob(f".{name}.tmp-*")) + sorted(parent.glob(f".{name}.old-*"))


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created by a failing compile"
    assert leftovers(out.parent, out.name) == []


def snapshot(directory: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None) for p in sorted(directory.rglob("*"))
    }


def save_model(nodes, inputs, outputs, initializers, path: Path) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def hw_variant(tmp_path: Path, filename: str, old: str, new: str) -> Path:
    """vta_default.toml with one line's text replaced."""
    text = (PRESETS / "vta_default.toml").read_text()
    assert old in text
    path = tmp_path / filename
    path.write_text(text.replace(old, new, 1))
    return path


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "calib.npy"
    np.save(path, mnist_images(16))
    return path


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, calibration) -> Path:
    """mnist-8 compiled for vta_default."""
    out = tmp_path_factory.mktemp("compiled") / "mnist_vta"
    result = codesign.compile_model(MNIST, codesign.load_hardware("vta_default"), calibration=calibration)
    codesign.write_module(result, out)
    return out


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, mnist_images(1))
    return path


# ---- model errors -----------------------------------------------------------------------------


def test_missing_onnx_file(capsys, tmp_path):
    model, out = tmp_path / "absent.onnx", tmp_path / "out"
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out)
    error_line(*result, 1, "absent.onnx", "no such ONNX file")
    assert_nothing_written(out)


def test_corrupt_onnx_file(capsys, tmp_path):
    model, out = tmp_path / "corrupt.onnx", tmp_path / "out"
    model.write_bytes(np.random.default_rng(0).bytes(512))
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out)
    error_line(*result, 1, "corrupt.onnx", "not a valid ONNX model")
    assert_nothing_written(out)


def test_unsupported_onnx_ops_listed_in_one_line(capsys, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("LpNormalization", ["r"], ["h0"], name="first_norm", axis=0),
        helper.make_node("LpNormalization", ["h0"], ["h1"], name="second_norm", axis=0),
        helper.make_node("Reshape", ["h1", "square"], ["m"]),
        helper.make_node("Det", ["m"], ["d"], name="det"),
        helper.make_node("Add", ["h1", "d"], ["y"]),
    ]
    square = helper.make_tensor("square", TensorProto.INT64, [2], [2, 2])
    model = save_model(nodes, [x], [y], [square], tmp_path / "unsupported.onnx")
    out = tmp_path / "out"
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out)
    error_line(*result, 1, "unsupported.onnx", "LpNormalization x2 (first: 'first_norm')", "Det x1 (first: 'det')")
    assert_nothing_written(out)


def test_statically_quantized_integers_named(capsys, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1, 2, 2])
    initializers = [
        helper.make_tensor("w", TensorProto.UINT8, [1, 1, 3, 3], np.ones(9, np.uint8)),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("zero", TensorProto.UINT8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("ConvInteger", ["q", "w"], ["y"]),
    ]
    model = save_model(nodes, [x], [y], initializers, tmp_path / "convint.onnx")
    out = tmp_path / "out"
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out)
    error_line(*result, 1, "convint.onnx", "'q'")
    assert_nothing_written(out)


def test_dynamic_input_left_unbound(capsys, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = save_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], [], tmp_path / "dynamic.onnx")
    out = tmp_path / "out"
    result = cli(capsys, "compile", model, "--hw", "vta_default", "-o", out)
    error_line(*result, 2, "dynamic.onnx", "'x'", "dynamic", "--input-shape")
    assert_nothing_written(out)


def test_dynamic_input_bound_as_advised(capsys, tmp_path):
    """Following the error's advice (--input-shape x=2,4) compiles a module that runs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = save_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], [], tmp_path / "dynamic.onnx")
    calibration, sample = tmp_path / "calib.npy", tmp_path / "x.npy"
    np.save(calibration, np.random.default_rng(1).normal(size=(8, 2, 4)).astype(np.float32))
    value = np.array([[-1.5, 0.0, 2.25, -0.5], [3.0, -4.0, 0.5, 1.0]], np.float32)
    np.save(sample, value)
    out, result = tmp_path / "out", tmp_path / "y.npy"
    args = ["compile", model, "--hw", "vta_default", "-o", out, "--calibration", calibration]
    code, _, err = cli(capsys, *args, "--input-shape", "x=2,4")
    assert code == 0, err
    assert cli(capsys, "run", out, "--input", sample, "--output", result)[0] == 0
    assert np.array_equal(np.load(result), np.maximum(value, 0))


@pytest.mark.parametrize("value", ["Input3=1,x,28,28", "Input3", "Input3=", "Input3=1,0,28,28", "=1,1,28,28"])
def test_malformed_input_shape(capsys, tmp_path, value):
    out = tmp_path / "out"
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--input-shape", value)
    error_line(*result, 2, "--input-shape", value)
    assert_nothing_written(out)


def test_input_shape_for_unknown_input(capsys, tmp_path, calibration):
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", "vta_default", "-o", out, "--calibration", calibration]
    result = cli(capsys, *args, "--input-shape", "Nope=1,1,28,28")
    error_line(*result, 2, "--input-shape", "Nope", "Input3")
    assert_nothing_written(out)


# ---- run-time input errors --------------------------------------------------------------------


def test_run_wrong_input_shape(capsys, tmp_path, module_dir):
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, mnist_images(1).reshape(1, 28, 28))
    result = cli(capsys, "run", module_dir, "--input", x, "--output", y)
    error_line(*result, 1, "Input3", "[1, 28, 28]", "[1, 1, 28, 28]")
    assert not y.exists()


def test_run_wrong_input_dtype(capsys, tmp_path, module_dir):
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, mnist_images(1).astype(np.float64))
    result = cli(capsys, "run", module_dir, "--input", x, "--output", y)
    error_line(*result, 1, "Input3", "float64", "float32")
    assert not y.exists()


def test_run_output_that_cannot_be_written_keeps_the_old_file_whole(capsys, tmp_path, module_dir, monkeypatch):
    """A write that fails part way (a full disk) names the file, leaves the previous output as it
    was and no partial file beside it."""
    from codesign import files

    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, mnist_images(1))
    np.save(y, np.arange(3))
    real_fdopen = files.os.fdopen

    def full_disk(descriptor, *args, **kwargs):
        out = real_fdopen(descriptor, *args, **kwargs)
        out.write(b"\x93NUMPY")
        out.close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", full_disk)
    error_line(*cli(capsys, "run", module_dir, "--input", x, "--output", y), 1, "y.npy", "No space left")
    assert np.array_equal(np.load(y), np.arange(3))
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["x.npy", "y.npy"]


# ---- hardware description errors ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["compile", "hw"])
def test_hw_field_out_of_range(capsys, tmp_path, command):
    hw = hw_variant(tmp_path, "bad_block.toml", "block_in = 16", "block_in = 12")
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", hw, "-o", out] if command == "compile" else ["hw", hw]
    result = cli(capsys, *args)
    error_line(*result, 1, "bad_block.toml", "gemm.block_in", "12", "a power of two from 1 to 256")
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["compile", "hw"])
def test_hw_toml_syntax_error(capsys, tmp_path, command):
    hw = tmp_path / "broken.toml"
    hw.write_text('name = "broken"\n\n[gemm\nbatch = 1\n')
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", hw, "-o", out] if command == "compile" else ["hw", hw]
    result = cli(capsys, *args)
    error_line(*result, 1, "broken.toml", "not valid TOML", "line 3")
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["compile", "hw"])
def test_hw_contradictory_fields(capsys, tmp_path, command):
    hw = hw_variant(tmp_path, "contradiction.toml", "has_multiplier = true", "has_multiplier = false")
    assert "multiplier_bits = 8" in hw.read_text()
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", hw, "-o", out] if command == "compile" else ["hw", hw]
    result = cli(capsys, *args)
    error_line(*result, 1, "contradiction.toml", "alu.multiplier_bits", "alu.has_multiplier")
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["compile", "hw"])
def test_hw_unknown_field(capsys, tmp_path, command):
    hw = hw_variant(tmp_path, "unknown.toml", "block_out = 16", "block_out = 16\nfrobnicate = 3")
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", hw, "-o", out] if command == "compile" else ["hw", hw]
    result = cli(capsys, *args)
    error_line(*result, 1, "unknown.toml", "gemm.frobnicate")
    assert_nothing_written(out)


@pytest.mark.parametrize("command", ["compile", "hw"])
def test_hw_unknown_preset(capsys, tmp_path, command):
    out = tmp_path / "out"
    args = ["compile", MNIST, "--hw", "no_such_core", "-o", out] if command == "compile" else ["hw", "no_such_core"]
    result = cli(capsys, *args)
    error_line(*result, 1, "no_such_core", "no such hardware file or preset", "vta_default")
    assert_nothing_written(out)


def test_scratchpad_too_small(tmp_path, calibration):
    # One 1x16 int8 element of input scratchpad is a valid description, but a 5x5 conv window is not one.
    hw = hw_variant(tmp_path, "tiny_input.toml", "input = 32768", "input = 16")
    assert codesign.load_hardware(hw).inp_buffer_bytes == 16
    out = tmp_path / "out"
    # In a subprocess: also catches anything TVM writes straight to file descriptor 2.
    proc = cli_subprocess("compile", MNIST, "--hw", hw, "-o", out, "--calibration", calibration)
    error_line(proc.returncode, proc.stdout, proc.stderr, 1, "scratchpad too small", "conv2d_0")
    assert_nothing_written(out)


# ---- output directory errors -------------------------------------------------------------------


def test_output_parent_is_a_file(capsys, tmp_path, calibration):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("keep me\n")
    out = blocker / "out"
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--calibration", calibration)
    error_line(*result, 1, str(out))
    assert blocker.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_dir"]


def test_output_directory_not_a_module(capsys, tmp_path, calibration):
    out = tmp_path / "results"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("precious\n")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = snapshot(out)
    result = cli(capsys, "compile", MNIST, "--hw", "vta_default", "-o", out, "--calibration", calibration)
    error_line(*result, 1, str(out), "not a codesign module")
    assert snapshot(out) == before
    assert leftovers(tmp_path, out.name) == []


# ---- module / hardware mismatch ---------------------------------------------------------------


def test_run_module_built_for_other_hardware(capsys, tmp_path, module_dir, image):
    y = tmp_path / "y.npy"
    result = cli(capsys, "run", module_dir, "--hw", "edge_1x8x8", "--input", image, "--output", y)
    error_line(*result, 1, "vta_default", "edge_1x8x8")
    assert not y.exists()


# ---- usage errors ---------------------------------------------------------------------------------


def test_missing_required_hw_option(capsys, tmp_path):
    out = tmp_path / "out"
    result = cli(capsys, "compile", MNIST, "-o", out)
    error_line(*result, 2, "--hw")
    assert_nothing_written(out)


def test_unknown_command(capsys):
    result = cli(capsys, "frobnicate")
    error_line(*result, 2, "frobnicate")


# ---- --debug ----------------------------------------------------------------------------------------


def test_debug_shows_traceback(tmp_path):
    model, out = tmp_path / "absent.onnx", tmp_path / "out"
    proc = cli_subprocess("--debug", "compile", model, "--hw", "vta_default", "-o", out)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "ModelError" in proc.stderr
    assert "absent.onnx" in proc.stderr
    assert_nothing_written(out)
    # The same command without --debug keeps to one line (the contrast the flag exists for).
    proc = cli_subprocess("compile", model, "--hw", "vta_default", "-o", out)
    error_line(proc.returncode, proc.stdout, proc.stderr, 1, "absent.onnx")
