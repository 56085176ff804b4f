"""The deployable module: layout and manifest, loading with plain TVM, `codesign run`, input and
hardware validation on load/run, and the atomic replacement of an existing module directory."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm

import codesign
from codesign.cli import main
from codesign.errors import DeployError

DATA = Path(codesign.__file__).resolve().parent / "data"
MNIST = DATA / "mnist-8.onnx"
IMAGES = DATA / "t10k-images-idx3-ubyte.gz"
PRESETS = Path(codesign.__file__).resolve().parent.parent / "hw_targets"

INPUT = {"name": "Input3", "shape": [1, 1, 28, 28], "dtype": "float32"}
OUTPUT = {"name": "Plus214_Output_0", "shape": [1, 10], "dtype": "float32"}
SCRATCHPAD_CAPACITY = {
    "local.inp_buffer": "inp_buffer_bytes",
    "local.wgt_buffer": "wgt_buffer_bytes",
    "local.acc_buffer": "acc_buffer_bytes",
}


def mnist_images(start: int, count: int) -> np.ndarray:
    images = np.frombuffer(gzip.open(IMAGES).read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return images[start : start + count].astype(np.float32)


def leftovers(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.tmp-*")) + sorted(parent.glob(f".{name}.old-*"))


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def codesign_command() -> list[str]:
    script = shutil.which("codesign")
    return [script] if script else [sys.executable, "-m", "codesign.cli"]


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vta_default():
    return codesign.load_hardware("vta_default")


@pytest.fixture(scope="module")
def edge():
    return codesign.load_hardware("edge_1x8x8")


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "calib.npy"
    np.save(path, mnist_images(100, 16))
    return path


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, vta_default, calibration) -> Path:
    """mnist-8 compiled for vta_default (shared; tests must not modify it)."""
    out = tmp_path_factory.mktemp("compiled") / "mnist_vta"
    result = codesign.compile_model(MNIST, vta_default, calibration=calibration)
    assert codesign.write_module(result, out) == out
    return out


@pytest.fixture(scope="module")
def edge_result(edge, calibration):
    """mnist-8 compiled for edge_1x8x8, not yet written."""
    return codesign.compile_model(MNIST, edge, calibration=calibration)


@pytest.fixture(scope="module")
def module(module_dir):
    return codesign.load(module_dir)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real MNIST test image (not one of the calibration images)."""
    return mnist_images(0, 1)


@pytest.fixture
def image_file(tmp_path, image) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, image)
    return path


@pytest.fixture
def module_copy(tmp_path, module_dir) -> Path:
    """A private copy of the compiled module that a test may overwrite."""
    out = tmp_path / "model_out"
    shutil.copytree(module_dir, out)
    return out


# ---- layout and manifest ------------------------------------------------------------------------


def test_module_files(module_dir, vta_default):
    assert sorted(p.name for p in module_dir.iterdir()) == ["hardware.toml", "manifest.json", "module.so"]
    assert (module_dir / "module.so").stat().st_size > 0
    assert leftovers(module_dir.parent, module_dir.name) == []
    saved = codesign.load_hardware(module_dir / "hardware.toml")
    assert saved.fingerprint() == vta_default.fingerprint()
    assert saved.name == "vta_default"


def test_manifest_header(module_dir, vta_default):
    manifest = read_manifest(module_dir)
    assert manifest["format"] == "codesign-module"
    # 3: "files" (issue 10); 4: precision-scalable core, layer_shape; 5: weight_bytes, pruned layers real
    assert manifest["format_version"] == 5
    assert manifest["codesign_version"] == codesign.__version__
    assert manifest["tvm_version"] == tvm.__version__
    assert manifest["library"] == "module.so"
    assert manifest["model"]["source"] == "mnist-8.onnx"
    assert manifest["model"]["sha256"] == hashlib.sha256(MNIST.read_bytes()).hexdigest()
    assert manifest["hardware"]["name"] == "vta_default"
    assert manifest["hardware"]["sha256"] == vta_default.fingerprint()
    assert manifest["hardware"]["file"] == "hardware.toml"
    assert manifest["hardware"]["spec"] == vta_default.to_dict()
    assert manifest["inputs"] == [INPUT]
    assert manifest["outputs"] == [OUTPUT]


def test_manifest_layers(module_dir, vta_default):
    layers = read_manifest(module_dir)["layers"]
    names = [layer["name"] for layer in layers]
    assert len(names) == len(set(names))
    assert all(layer["placement"] in ("accel", "host") for layer in layers)
    placement = {layer["name"]: layer["placement"] for layer in layers}
    # mnist-8's two convolutions and its final MatMul all fit vta_default's GEMM core.
    assert [layer["op"] for layer in layers if layer["placement"] == "accel"] == ["conv2d", "conv2d", "matmul"]
    assert placement["conv2d_0"] == placement["conv2d_1"] == placement["matmul_0"] == "accel"
    for layer in layers:
        if layer["placement"] != "accel":
            assert layer["tiling"] is None
            continue
        tiling = layer["tiling"]
        assert set(tiling) == {"n_tile", "co_tile", "ci_tile", "h_tile", "w_tile", "virtual_threads"}
        assert all(isinstance(v, int) and v >= 1 for v in tiling.values())
        assert tiling["virtual_threads"] in (1, 2)
        shape = layer["shape"]
        out_h = (shape["in_h"] + shape["pad_top"] + shape["pad_bottom"] - shape["kernel_h"]) // shape["stride_h"] + 1
        out_w = (shape["in_w"] + shape["pad_left"] + shape["pad_right"] - shape["kernel_w"]) // shape["stride_w"] + 1
        assert out_h % tiling["h_tile"] == 0
        assert out_w % tiling["w_tile"] == 0
        used = layer["scratchpad_bytes"]
        assert set(used) == set(SCRATCHPAD_CAPACITY)
        for scope, capacity_field in SCRATCHPAD_CAPACITY.items():
            assert 0 < used[scope] * tiling["virtual_threads"] <= getattr(vta_default, capacity_field), layer["name"]


def test_manifest_quantization(module_dir):
    manifest = read_manifest(module_dir)
    quant = manifest["quantization"]
    assert quant["calibration"]["samples"] == 16
    gemm_layers = {layer["name"]: layer for layer in manifest["layers"] if layer["op"] in ("conv2d", "matmul")}
    assert set(quant["layers"]) == set(gemm_layers)
    expected_channels = {"conv2d_0": 8, "conv2d_1": 16, "matmul_0": 10}
    # conv2d_0's output reaches conv2d_1 (through a max pool), a conv that mixes its channels: one
    # scale per channel (quantize's balanced ranges); every other tensor one scale.
    expected_scales = {
        "conv2d_0": {"input_scale": 1, "output_scale": 8},
        "conv2d_1": {"input_scale": 8, "output_scale": 1},
        "matmul_0": {"input_scale": 1, "output_scale": 1},
    }
    for name, entry in quant["layers"].items():
        channels = gemm_layers[name]["shape"]["out_channels"]
        assert channels == expected_channels[name]
        assert entry["placement"] == gemm_layers[name]["placement"]
        assert len(entry["multiplier"]) == channels
        assert len(entry["shift"]) == channels
        assert all(isinstance(v, int) for v in entry["multiplier"] + entry["shift"])
        for key in ("input_scale", "output_scale"):
            scales = np.atleast_1d(entry[key])
            assert len(scales) == expected_scales[name][key] and (scales > 0).all(), (name, key)


# ---- loading and running ------------------------------------------------------------------------


def test_plain_tvm_gives_identical_output(tmp_path, module_dir, module, image, image_file):
    expected = module.run(image)
    assert len(expected) == 1
    assert expected[0].shape == (1, 10)
    assert expected[0].dtype == np.float32
    result = tmp_path / "plain.npy"
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import tvm
        from tvm import relax

        module_so, x_file, y_file = sys.argv[1:]
        lib = tvm.runtime.load_module(module_so)
        vm = relax.VirtualMachine(lib, tvm.cpu())
        y = vm["main"](tvm.runtime.tensor(np.load(x_file)))
        np.save(y_file, y.numpy())
        loaded = [m for m in sys.modules if m.split(".")[0] in ("codesign", "schedules")]
        assert not loaded, loaded
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(module_dir / "module.so"), str(image_file), str(result)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(result), expected[0])


def test_module_output_is_deterministic_and_per_image(module, image):
    first = module.run(image)[0]
    assert np.array_equal(module(image)[0], first)
    assert np.array_equal(module.run(Input3=image)[0], first)
    other = module.run(mnist_images(1, 1))[0]
    assert not np.array_equal(other, first)


def test_cli_run_matches_python(tmp_path, module_dir, module, image, image_file):
    expected = module.run(image)[0]
    y = tmp_path / "y.npy"
    proc = subprocess.run(
        [*codesign_command(), "run", str(module_dir), "--input", str(image_file), "--output", str(y)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert np.array_equal(np.load(y), expected)


def test_cli_run_named_input(capsys, tmp_path, module_dir, module, image, image_file):
    expected = module.run(image)[0]
    y = tmp_path / "named.npy"
    assert main(["run", str(module_dir), "--input", f"Input3={image_file}", "--output", str(y)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "Plus214_Output_0" in captured.out
    assert np.array_equal(np.load(y), expected)


def test_cli_run_on_a_stack_of_samples(capsys, tmp_path, module_dir, module):
    images = mnist_images(20, 3)[:, None]  # three samples of shape [1, 1, 28, 28]
    stack = tmp_path / "stack.npy"
    np.save(stack, images)
    y = tmp_path / "stacked.npy"
    assert main(["run", str(module_dir), "--input", str(stack), "--output", str(y)]) == 0
    assert "(3 samples)" in capsys.readouterr().out
    expected = np.stack([module.run(image)[0] for image in images])
    assert np.array_equal(np.load(y), expected)


def test_cli_run_names_the_shape_a_bad_stack_should_have(capsys, tmp_path, module_dir):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, mnist_images(0, 2)[:, None, :, :, :14])
    assert main(["run", str(module_dir), "--input", str(wrong), "--output", str(tmp_path / "w.npy")]) == 1
    assert "expected [1, 1, 28, 28]" in capsys.readouterr().err
    assert not (tmp_path / "w.npy").exists()


def test_load_checks_hardware(module_dir, module, image, vta_default, edge):
    with pytest.raises(DeployError) as info:
        codesign.load(module_dir, hw=edge)
    assert "vta_default" in str(info.value)
    assert "edge_1x8x8" in str(info.value)
    checked = codesign.load(module_dir, hw=vta_default)
    assert checked.hardware.fingerprint() == vta_default.fingerprint()
    assert np.array_equal(checked.run(image)[0], module.run(image)[0])


@pytest.mark.parametrize(
    ("call", "needles"),
    [
        pytest.param(lambda m, x: m.run(x.reshape(1, 28, 28)), ["Input3", "[1, 28, 28]", "[1, 1, 28, 28]"], id="shape"),
        pytest.param(lambda m, x: m.run(x[:, :, :, :27]), ["Input3", "[1, 1, 28, 27]"], id="shape-last-dim"),
        pytest.param(lambda m, x: m.run(x.astype(np.float64)), ["Input3", "float64", "float32"], id="dtype"),
        pytest.param(lambda m, x: m.run(x.astype(np.uint8)), ["Input3", "uint8", "float32"], id="dtype-int"),
        pytest.param(lambda m, x: m.run(x, x), ["expected 1 input", "got 2"], id="too-many"),
        pytest.param(lambda m, x: m.run(), ["expected 1 input", "got 0"], id="none"),
        pytest.param(lambda m, x: m.run(Image=x), ["Image", "Input3"], id="unknown-name"),
        pytest.param(lambda m, x: m.run(Input3=x, extra=x), ["extra"], id="extra-name"),
        pytest.param(lambda m, x: m.run(x, Input3=x), ["position", "name"], id="mixed"),
    ],
)
def test_run_validates_inputs(module, image, call, needles):
    with pytest.raises(DeployError) as info:
        call(module, image)
    for needle in needles:
        assert needle in str(info.value)


def test_load_rejects_non_module(tmp_path):
    with pytest.raises(DeployError, match="no such compiled module directory"):
        codesign.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeployError, match=r"no manifest\.json"):
        codesign.load(tmp_path / "empty")


# ---- replacing a module directory ---------------------------------------------------------------


def test_recompile_replaces_existing_module(module_copy, edge, edge_result, image):
    assert read_manifest(module_copy)["hardware"]["name"] == "vta_default"
    assert codesign.write_module(edge_result, module_copy) == module_copy
    manifest = read_manifest(module_copy)
    assert manifest["hardware"]["name"] == "edge_1x8x8"
    assert manifest["hardware"]["sha256"] == edge.fingerprint()
    assert codesign.load_hardware(module_copy / "hardware.toml").fingerprint() == edge.fingerprint()
    assert sorted(p.name for p in module_copy.iterdir()) == ["hardware.toml", "manifest.json", "module.so"]
    assert sorted(p.name for p in module_copy.parent.iterdir()) == [module_copy.name]
    replaced = codesign.load(module_copy, hw=edge)
    outputs = replaced.run(image)
    assert outputs[0].shape == (1, 10)
    assert outputs[0].dtype == np.float32


def test_failed_compile_keeps_old_module(capsys, module_copy, calibration, image, module):
    before = {p.name: p.read_bytes() for p in module_copy.iterdir()}
    hw = module_copy.parent / "tiny_input.toml"
    hw.write_text((PRESETS / "vta_default.toml").read_text().replace("input = 32768", "input = 16", 1))
    assert codesign.load_hardware(hw).inp_buffer_bytes == 16
    code = main(["compile", str(MNIST), "--hw", str(hw), "-o", str(module_copy), "--calibration", str(calibration)])
    assert code == 1
    assert "scratchpad too small" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in module_copy.iterdir()} == before
    assert leftovers(module_copy.parent, module_copy.name) == []
    assert np.array_equal(codesign.load(module_copy).run(image)[0], module.run(image)[0])


def test_failed_write_keeps_old_module(module_copy, edge_result, vta_default, image, module):
    """A failure while writing the new module (after staging started) leaves OUT as it was."""

    class FailingExecutable:
        def export_library(self, path, **options):
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")

    before = {p.name: p.read_bytes() for p in module_copy.iterdir()}
    with pytest.raises(DeployError, match="model_out: cannot write the module \\(No space left"):
        codesign.write_module(dataclasses.replace(edge_result, executable=FailingExecutable()), module_copy)
    assert {p.name: p.read_bytes() for p in module_copy.iterdir()} == before
    assert leftovers(module_copy.parent, module_copy.name) == []
    assert np.array_equal(codesign.load(module_copy, hw=vta_default).run(image)[0], module.run(image)[0])


def test_cli_run_stacks_every_input_or_none(capsys, tmp_path):
    """A two-input model: both inputs stacked run sample by sample; a stack beside a single
    sample is a usage error naming the single one, and nothing is written."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, "w")
    nodes = [helper.make_node("MatMul", ["a", "w"], ["p"]), helper.make_node("Add", ["p", "b"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("a", "b")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "two_inputs", inputs, [output], [weight])
    model = tmp_path / "two_inputs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    out = tmp_path / "module"
    assert main(["compile", str(model), "--hw", "vta_default", "-o", str(out), "--quiet"]) == 0
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3, 1, 4)).astype(np.float32) for _ in range(2))
    np.savez(tmp_path / "stacks.npz", a=a, b=b)
    y = tmp_path / "y.npy"
    assert main(["run", str(out), "--input", str(tmp_path / "stacks.npz"), "--output", str(y)]) == 0
    module = codesign.load(out)
    assert np.array_equal(np.load(y), np.stack([module.run(a=a[i], b=b[i])[0] for i in range(3)]))
    capsys.readouterr()
    np.savez(tmp_path / "mixed.npz", a=a, b=b[0])
    mixed = tmp_path / "mixed.npy"
    assert main(["run", str(out), "--input", str(tmp_path / "mixed.npz"), "--output", str(mixed)]) == 2
    assert "stacks of samples and single samples (b)" in capsys.readouterr().err
    assert not mixed.exists()
    np.savez(tmp_path / "uneven.npz", a=a, b=b[:2])
    assert main(["run", str(out), "--input", str(tmp_path / "uneven.npz"), "--output", str(mixed)]) == 2
    assert "different numbers of samples: a 3, b 2" in capsys.readouterr().err
    assert not mixed.exists()
