"""A compiled module's safety (issue 10): compile replaces only a module, a model's external
weights come from beside it, a manifest is validated against its format version and keeps its
paths inside the module, every file's sha256 is checked on load, staging directories go on
SIGTERM and after a killed compile, output-path OS errors are one line, and `run`/`simulate`
name what they read and wrote."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli_errors import (  # noqa: F401 (calibration: a fixture)
    MNIST,
    assert_nothing_written,
    calibration,
    cli,
    cli_subprocess,
    error_line,
    leftovers,
    snapshot,
)

import codesign
import codesign.pipeline
from codesign import deploy
from codesign.errors import ModelError
from codesign.onnx_file import load_onnx, model_sha256

IMAGES = Path(codesign.__file__).resolve().parent / "data" / "t10k-images-idx3-ubyte.gz"


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(calibration):  # noqa: F811
    """mnist-8 compiled for vta_default (the one compile of this file)."""
    return codesign.compile_model(MNIST, codesign.load_hardware("vta_default"), calibration=calibration)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, compiled) -> Path:
    """B: the compiled module (shared; tests change copies of it)."""
    out = tmp_path_factory.mktemp("compiled") / "mnist_vta"
    codesign.write_module(compiled, out)
    return out


@pytest.fixture
def module_copy(tmp_path, module_dir) -> Path:
    copy = tmp_path / "B"
    shutil.copytree(module_dir, copy)
    return copy


@pytest.fixture
def fast_compile(monkeypatch, compiled):
    """`codesign compile` returns the fixture's compile (the CLI's writing is what is tested)."""
    monkeypatch.setattr(codesign.pipeline, "compile_model", lambda *args, **kwargs: compiled)
    return compiled


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    pixels = np.frombuffer(gzip.open(IMAGES).read(), np.uint8, offset=16)[: 28 * 28]
    np.save(path, pixels.reshape(1, 1, 28, 28).astype(np.float32))
    return path


def compile_args(out: Path, *extra) -> list:
    return ["compile", MNIST, "--hw", "vta_default", "-o", out, *extra]


def edit_manifest(module: Path, change) -> None:
    """Change the manifest in place (a change returning a list replaces it by that list)."""
    path = module / "manifest.json"
    manifest = json.loads(path.read_text())
    changed = change(manifest)
    path.write_text(json.dumps(changed if isinstance(changed, list) else manifest))


# ---- item 1: compile replaces only a codesign module ------------------------------------------


def test_compile_refuses_a_directory_whose_manifest_is_not_a_module(capsys, tmp_path, fast_compile):
    out = tmp_path / "p"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "notes.txt").write_text("keep\n")
    before = snapshot(out)
    error_line(*cli(capsys, *compile_args(out)), 1, str(out), "not a codesign module", "manifest.json")
    assert snapshot(out) == before
    assert leftovers(tmp_path, "p") == []


def test_compile_refuses_a_module_directory_holding_other_files(capsys, module_copy, fast_compile):
    (module_copy / "notes.txt").write_text("keep\n")
    before = snapshot(module_copy)
    error_line(*cli(capsys, *compile_args(module_copy)), 1, "not a codesign module", "notes.txt")
    assert snapshot(module_copy) == before


def test_compile_replaces_a_module_of_an_older_format(capsys, module_copy, fast_compile):
    def version_2(manifest):
        manifest["format_version"] = 2
        del manifest["files"]

    edit_manifest(module_copy, version_2)
    code, _, err = cli(capsys, *compile_args(module_copy))
    assert code == 0, err
    assert json.loads((module_copy / "manifest.json").read_text())["format_version"] == deploy.FORMAT_VERSION
    assert leftovers(module_copy.parent, module_copy.name) == []


# ---- item 2: external-data weights are read beside the model, and hashed -------------------------


def external_data_model(folder: Path) -> tuple[Path, np.ndarray]:
    """y = x @ w with w saved as external data in weights.bin beside the model."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [numpy_helper.from_array(weight, "w")]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").exists()
    return path, weight


def test_external_data_is_read_beside_the_model_not_in_the_working_directory(tmp_path, monkeypatch):
    path, weight = external_data_model(tmp_path / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes(np.full(16, 7, np.float32).tobytes())  # a decoy of the same name
    monkeypatch.chdir(elsewhere)
    model, sha256 = load_onnx(Path("..") / "models" / "model.onnx")
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), weight)
    # The hash covers the weights: other bytes in weights.bin are another model.
    (tmp_path / "models" / "weights.bin").write_bytes((weight + 1).tobytes())
    assert load_onnx(path)[1] != sha256


def test_a_remembered_model_digest_follows_the_model_and_its_weights(tmp_path, monkeypatch):
    """model_sha256 reads its digest from the cache while the files keep their size and time;
    a changed model file or external weight file is hashed again."""
    monkeypatch.setenv(codesign.cache.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(codesign.cache.NO_CACHE_ENV, raising=False)
    path, weight = external_data_model(tmp_path / "models")
    first = model_sha256(path)
    assert first == load_onnx(path)[1] and model_sha256(path) == first
    weights_file = tmp_path / "models" / "weights.bin"
    weights_file.write_bytes((weight + 1).tobytes())
    os.utime(weights_file, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new time on any file system
    changed = model_sha256(path)
    assert changed != first and changed == load_onnx(path)[1]
    model = onnx.load(str(path))
    model.graph.node[0].name = "renamed"
    onnx.save(model, str(path))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    assert model_sha256(path) == load_onnx(path)[1] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_external_data_missing_or_outside_the_model_directory(tmp_path):
    path, _ = external_data_model(tmp_path / "models")
    (tmp_path / "models" / "weights.bin").unlink()
    with pytest.raises(ModelError, match=r"'w' keeps its data in 'weights\.bin', but there is no such file"):
        load_onnx(path)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(np.zeros(16, np.float32).tobytes())
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="outside the model's directory"):
        load_onnx(path)


# ---- items 3, 8, 12: the manifest's paths stay in the module; every file's sha256 is checked ------


def test_manifest_records_the_sha256_of_every_file(module_dir):
    manifest = json.loads((module_dir / "manifest.json").read_text())
    files = {p.name for p in module_dir.iterdir()} - {"manifest.json"}
    assert manifest["files"] == {name: hashlib.sha256((module_dir / name).read_bytes()).hexdigest() for name in files}
    assert manifest["library"] in files and manifest["hardware"]["file"] in files


def outside(module: Path, field: str, name: str):
    """Point `field` at `name`, listed in 'files' with a matching hash (so only the path is wrong)."""

    def change(manifest):
        target = (module / name).resolve() if not Path(name).is_absolute() else Path(name)
        manifest["files"][name] = hashlib.sha256(target.read_bytes()).hexdigest()
        if field == "library":
            manifest["library"] = name
        else:
            manifest["hardware"]["file"] = name

    return change


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("library", "../../../../../../../../../../{tmp}/module.so"),
        ("library", "{tmp}/module.so"),
        ("hardware.file", "../../../../../../../../../../etc/passwd"),
        ("hardware.file", "/etc/passwd"),
    ],
)
@pytest.mark.parametrize("command", ["run", "simulate"])
def test_manifest_paths_outside_the_module_are_refused(capsys, tmp_path, module_copy, image, field, name, command):
    shutil.copy(module_copy / "module.so", tmp_path / "module.so")
    name = name.format(tmp=str(tmp_path).lstrip("/") if name.startswith("..") else tmp_path)
    edit_manifest(module_copy, outside(module_copy, field, name))
    args = ["run", module_copy, "--input", image, "--output", tmp_path / "y.npy"]
    result = cli(capsys, *(args if command == "run" else ["simulate", module_copy]))
    error_line(*result, 1, "manifest.json", f"'{field}'", "outside the module directory")
    assert not (tmp_path / "y.npy").exists()


def test_a_symbolic_link_out_of_the_module_is_refused(capsys, tmp_path, module_copy, image):
    shutil.move(module_copy / "module.so", tmp_path / "elsewhere.so")
    (module_copy / "module.so").symlink_to(tmp_path / "elsewhere.so")  # same bytes, same sha256
    result = cli(capsys, "run", module_copy, "--input", image, "--output", tmp_path / "y.npy")
    error_line(*result, 1, "module.so", "outside the module directory")


def test_edited_hardware_file_is_refused_by_simulate_and_run(capsys, tmp_path, module_copy, image):
    hardware = module_copy / "hardware.toml"
    hardware.write_text(hardware.read_text().replace("block_in = 16", "block_in = 8"))
    error_line(*cli(capsys, "simulate", module_copy), 1, "hardware.toml", "sha256", "recompile")
    result = cli(capsys, "run", module_copy, "--input", image, "--output", tmp_path / "y.npy")
    error_line(*result, 1, "hardware.toml", "sha256")


def test_changed_library_is_refused_by_run(capsys, tmp_path, module_copy, image):
    library = bytearray((module_copy / "module.so").read_bytes())
    library[len(library) // 2] ^= 0xFF
    (module_copy / "module.so").write_bytes(bytes(library))
    result = cli(capsys, "run", module_copy, "--input", image, "--output", tmp_path / "y.npy")
    error_line(*result, 1, "module.so", "sha256", "recompile")
    assert not (tmp_path / "y.npy").exists()


def test_truncated_library_is_one_line_not_sigbus(tmp_path, module_copy, image):
    library = module_copy / "module.so"
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 3])
    # In a subprocess: loading it used to kill the process with SIGBUS.
    proc = cli_subprocess("run", module_copy, "--input", image, "--output", tmp_path / "y.npy")
    error_line(proc.returncode, proc.stdout, proc.stderr, 1, "module.so", "truncated")


def test_truncated_library_with_a_recomputed_hash_is_one_line_not_sigbus(tmp_path, module_copy, image):
    """Hand-edited past the hash check: the ELF structure is still checked before loading."""
    library = module_copy / "module.so"
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    edit_manifest(
        module_copy, lambda m: m["files"].update({"module.so": hashlib.sha256(library.read_bytes()).hexdigest()})
    )
    proc = cli_subprocess("run", module_copy, "--input", image, "--output", tmp_path / "y.npy")
    error_line(proc.returncode, proc.stdout, proc.stderr, 1, "module.so", "not a loadable shared library")
    assert not (tmp_path / "y.npy").exists()


def test_elf_check_accepts_the_compiled_library_and_names_what_is_cut(tmp_path, module_dir):
    whole = (module_dir / "module.so").read_bytes()
    assert deploy.elf_truncation(module_dir / "module.so") is None
    cut = tmp_path / "cut.so"
    for size, needle in [(10, "no 64-bit ELF header"), (len(whole) - 1, "past its")]:
        cut.write_bytes(whole[:size])
        assert needle in deploy.elf_truncation(cut)


def test_an_intact_module_still_loads_runs_and_simulates(capsys, tmp_path, module_dir, image):
    code, _, err = cli(capsys, "run", module_dir, "--input", image, "--output", tmp_path / "y.npy")
    assert code == 0, err
    code, out, err = cli(capsys, "simulate", module_dir, "--model", "analytic")
    assert code == 0, err
    assert "conv2d_0" in out


# ---- item 14: manifests validated against a schema with a format version -------------------------


def set_tiling(index: int, key: str, value):
    def change(manifest):
        manifest["layers"][index]["tiling"][key] = value

    return change


ACCEL_CONV = 2  # layers[2] is conv2d_0 on the accelerator (28x28 output; layers[1] unfolds its input)

MANIFEST_DAMAGE = [
    pytest.param(lambda m: m.pop("inputs") and None, "'inputs' is missing", id="no-inputs"),
    pytest.param(lambda m: m["hardware"]["spec"].update(frob=1), "'hardware.spec.frob'", id="extra-spec-key"),
    pytest.param(lambda m: m["hardware"].update(extra=1), "'hardware.extra'", id="extra-hardware-key"),
    pytest.param(lambda m: m["inputs"][0].update(dtype="float99"), "'inputs[0].dtype' = \"float99\"", id="float99"),
    pytest.param(lambda m: [m], "expected a JSON object, got an array", id="json-list"),
    pytest.param(lambda m: m.pop("format_version"), "'format_version' is missing", id="no-version"),
    pytest.param(lambda m: m.update(format_version=99), "'format_version' = 99 is not supported", id="version-99"),
    pytest.param(lambda m: m.update(layers={}), "'layers' must be an array", id="layers-object"),
    pytest.param(lambda m: m["outputs"][0].update(shape=["1", 10]), "'outputs[0].shape[0]'", id="shape-string"),
    pytest.param(lambda m: m["hardware"]["spec"].update(block_in=12), "'hardware.spec.block_in' = 12", id="spec"),
    pytest.param(lambda m: m["files"].pop("module.so"), "'library' = \"module.so\" is not listed", id="no-hash"),
    pytest.param(
        set_tiling(ACCEL_CONV, "h_tile", 5), f"'layers[{ACCEL_CONV}].tiling.h_tile' = 5 does not divide", id="h5"
    ),
    pytest.param(set_tiling(ACCEL_CONV, "h_tile", 0), f"'layers[{ACCEL_CONV}].tiling.h_tile' = 0", id="h0"),
    pytest.param(
        set_tiling(ACCEL_CONV, "w_tile", "x"), f"'layers[{ACCEL_CONV}].tiling.w_tile' must be an integer", id="wx"
    ),
    pytest.param(
        lambda m: m["layers"][ACCEL_CONV].update(tiling=None), f"'layers[{ACCEL_CONV}].tiling' must be given", id="none"
    ),
    pytest.param(set_tiling(ACCEL_CONV, "virtual_threads", 64), "does not fit the scratchpads", id="too-big"),
]


@pytest.mark.parametrize(("change", "needle"), MANIFEST_DAMAGE)
@pytest.mark.parametrize("command", ["run", "simulate"])
def test_invalid_manifest_is_one_line_naming_the_field(capsys, tmp_path, module_copy, image, change, needle, command):
    edit_manifest(module_copy, change)
    args = ["run", module_copy, "--input", image, "--output", tmp_path / "y.npy"]
    result = cli(capsys, *(args if command == "run" else ["simulate", module_copy]))
    error_line(*result, 1, f"{module_copy / 'manifest.json'}", needle)


def test_new_manifests_carry_their_format_version_and_validate(module_dir):
    manifest = json.loads((module_dir / "manifest.json").read_text())
    assert manifest["format"] == "codesign-module"
    assert manifest["format_version"] == deploy.FORMAT_VERSION == 5
    deploy.validate_manifest(manifest)


# ---- item 11: staging directories go on SIGTERM/SIGINT and after a killed compile -----------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_compile_removes_the_staging_directory(capsys, tmp_path, monkeypatch, compiled, signum):
    class SignalledExecutable:
        def export_library(self, path, **options):
            Path(path).write_bytes(b"partial")
            os.kill(os.getpid(), signum)
            time.sleep(30)  # the handler's exception ends this at once

    stopped = dataclasses.replace(compiled, executable=SignalledExecutable())
    monkeypatch.setattr(codesign.pipeline, "compile_model", lambda *args, **kwargs: stopped)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    out = tmp_path / "out"
    started = time.perf_counter()
    error_line(*cli(capsys, *compile_args(out)), 1, f"stopped by {signal.Signals(signum).name}")
    assert time.perf_counter() - started < 20
    assert_nothing_written(out)
    assert {number: signal.getsignal(number) for number in handlers} == handlers


def test_a_signal_a_library_swallows_still_stops_the_compile(capsys, tmp_path, monkeypatch, compiled):
    """onnxslim and TVM callbacks catch every exception; the signal is still honoured at the
    commit point, so nothing is published and the exit code says so."""

    class SwallowingExecutable:
        def export_library(self, path, **options):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            except BaseException:  # noqa: BLE001 (what a bare `except:` in a library does)
                pass
            Path(path).write_bytes(b"complete")

    swallowed = dataclasses.replace(compiled, executable=SwallowingExecutable())
    monkeypatch.setattr(codesign.pipeline, "compile_model", lambda *args, **kwargs: swallowed)
    out = tmp_path / "out"
    error_line(*cli(capsys, *compile_args(out)), 1, "stopped by SIGTERM")
    assert_nothing_written(out)


def test_tvm_builds_the_library_inside_the_staging_directory(capsys, tmp_path, monkeypatch, compiled):
    """So a SIGKILL leaves TVM's object files where the next write to OUT removes them."""
    workspaces = []

    class RecordingExecutable:
        def export_library(self, path, workspace_dir=None, **options):
            workspaces.append(Path(workspace_dir))
            assert Path(workspace_dir).parent == Path(path).parent  # the staging directory
            compiled.executable.export_library(path, workspace_dir=workspace_dir, **options)

    recorded = dataclasses.replace(compiled, executable=RecordingExecutable())
    monkeypatch.setattr(codesign.pipeline, "compile_model", lambda *args, **kwargs: recorded)
    out = tmp_path / "out"
    code, _, err = cli(capsys, *compile_args(out))
    assert code == 0, err
    assert len(workspaces) == 1 and not workspaces[0].exists()
    assert sorted(p.name for p in out.iterdir()) == ["hardware.toml", "manifest.json", "module.so"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_directories_of_a_dead_process_are_removed(capsys, tmp_path, fast_compile):
    out, dead = tmp_path / "out", dead_pid()

    def sibling(name: str, *files: str, age: float = 0) -> Path:
        path = tmp_path / name
        path.mkdir()
        for file in files:
            (path / file).parent.mkdir(parents=True, exist_ok=True)
            (path / file).write_bytes(b"x")
        if age:
            os.utime(path, (time.time() - age, time.time() - age))
        return path

    removed = [
        sibling(f".out.tmp-{dead}-abcd1234", "module.so", "hardware.toml"),  # killed while writing
        sibling(f".out.tmp-{dead}-efgh5678", ".build/lib0.o", "module.so"),  # killed while TVM linked
        sibling(f".out.old-{dead}-abcd1234", "module/manifest.json"),  # killed while replacing
        sibling(".out.tmp-a1b2c3d4", "module.so", age=2 * deploy.STALE_SECONDS),  # older codesign, no pid
    ]
    kept = [
        sibling(f".out.tmp-{os.getpid()}-abcd1234", "module.so"),  # a live process
        sibling(".out.tmp-e5f6g7h8", "module.so"),  # no pid and recent
        sibling(f".out.tmp-{dead}-ijkl5678", "precious.txt"),  # not what codesign stages
        sibling(".out.tmp-notes", "module.so"),  # not codesign's name
        sibling(f".other.tmp-{dead}-abcd1234", "module.so"),  # another output's
    ]
    code, _, err = cli(capsys, *compile_args(out))
    assert code == 0, err
    assert not any(path.exists() for path in removed)
    assert all(path.exists() for path in kept)
    assert (out / "module.so").exists()


def test_a_retired_module_whose_replacement_never_came_is_put_back(tmp_path, module_dir):
    out = tmp_path / "out"
    retired = tmp_path / f".out.old-{dead_pid()}-abcd1234"
    retired.mkdir()
    shutil.copytree(module_dir, retired / "module")
    deploy.remove_stale_siblings(out)
    assert snapshot(out) == snapshot(module_dir)
    assert not retired.exists()


def test_output_dot_is_refused_and_leaves_nothing(capsys, tmp_path, module_copy, monkeypatch, fast_compile):
    before = snapshot(module_copy)
    monkeypatch.chdir(module_copy)
    error_line(*cli(capsys, *compile_args(".")), 1, "current directory")
    assert snapshot(module_copy) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B"]  # no ..old-*, no ..tmp-*


# ---- item 13: OS errors on output paths are one line ---------------------------------------------


@pytest.mark.parametrize(
    ("make_out", "needles"),
    [
        pytest.param(lambda tmp: Path("/proc/codesign-test"), ["/proc/codesign-test"], id="proc"),
        pytest.param(lambda tmp: tmp / ("a" * 300), ["File name too long"], id="name-300"),
        pytest.param(lambda tmp: tmp / "file", ["exists and is not a codesign module"], id="a-file"),
    ],
)
def test_output_path_os_errors_are_one_line(capsys, tmp_path, fast_compile, make_out, needles):
    (tmp_path / "file").write_text("keep\n")
    out = make_out(tmp_path)
    if str(out).startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    error_line(*cli(capsys, *compile_args(out)), 1, *needles)
    assert (tmp_path / "file").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_250_character_output_name_compiles(capsys, tmp_path, fast_compile):
    out = tmp_path / ("m" * 250)
    code, _, err = cli(capsys, *compile_args(out))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    codesign.load(out)


def test_demo_output_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep\n")
    error_line(*cli(capsys, "demo", "-o", blocker), 1, str(blocker), "not a directory")
    assert blocker.read_text() == "keep\n"


def test_demo_refuses_a_directory_it_would_overwrite_before_writing_anything(capsys, tmp_path):
    out = tmp_path / "demo"
    (out / "mnist_vta_default").mkdir(parents=True)
    (out / "mnist_vta_default" / "notes.txt").write_text("keep\n")
    (out / "mnist_calibration.npy").write_text("mine\n")
    before = snapshot(out)
    error_line(*cli(capsys, "demo", "-o", out), 1, "mnist_vta_default")
    assert snapshot(out) == before


# ---- item 20: an input of an unsupported element type names it ------------------------------------
# (float16 models are widened to float32 on import: tests/test_onnx_precision.py)


def test_unsupported_input_type_is_named(capsys, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [1, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    path = tmp_path / "complex.onnx"
    onnx.save(model, str(path))
    line = error_line(*cli(capsys, "compile", path, "--hw", "vta_default", "-o", tmp_path / "out"), 1, "COMPLEX64")
    assert "element type 14" not in line


# ---- item 21: run prints the file it wrote and names what an .npz holds ---------------------------


def test_run_output_without_suffix_prints_the_file_written(capsys, tmp_path, module_dir, image):
    output = tmp_path / "result"
    code, out, err = cli(capsys, "run", module_dir, "--input", image, "--output", output)
    assert code == 0, err
    assert f"Wrote {output}.npy:" in out
    assert (tmp_path / "result.npy").exists() and not output.exists()


def test_run_reads_an_npz_of_inputs_by_name(capsys, tmp_path, module_dir, image):
    x = np.load(image)
    expected = codesign.load(module_dir).run(x)[0]
    for i, (spec, arrays) in enumerate(
        [("{}", {"Input3": x}), ("{}", {"arr_0": x}), ("Input3={}", {"other": x}), ("Input3={}", {"Input3": x})]
    ):
        npz, y = tmp_path / f"in{i}.npz", tmp_path / f"y{i}.npy"
        np.savez(npz, **arrays)
        code, _, err = cli(capsys, "run", module_dir, "--input", spec.format(npz), "--output", y)
        assert code == 0, err
        assert np.array_equal(np.load(y), expected)


def test_run_npz_without_the_input_names_what_it_holds(capsys, tmp_path, module_dir):
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.zeros((1, 1, 28, 28), np.float32), labels=np.zeros(1, np.int64))
    result = cli(capsys, "run", module_dir, "--input", npz, "--output", tmp_path / "y.npy")
    error_line(*result, 1, "x.npz", "images (float32 [1, 1, 28, 28])", "labels (int64 [1])", "Input3")
    assert "<U" not in result[2]


# ---- item 23: simulate on a path that does not exist ----------------------------------------------


def test_simulate_missing_path_says_no_such_file(capsys, tmp_path):
    line = error_line(*cli(capsys, "simulate", tmp_path / "absent.onnx"), 1, "absent.onnx", "no such")
    assert "--hw" not in line


@pytest.mark.parametrize("moment", ["making the staging directory", "writing into it"])
def test_a_signal_at_any_moment_of_writing_leaves_no_staging_directory(tmp_path, monkeypatch, compiled, moment):
    """A SIGTERM that lands after the staging directory exists, even before write_module holds its
    name, leaves nothing beside OUT."""
    from codesign import deploy
    from codesign.files import Terminated, staging_directory

    def interrupted_staging(out):
        staging_directory(out)
        raise Terminated("SIGTERM")

    def interrupted_write(*args, **kwargs):
        raise Terminated("SIGTERM")

    if moment == "making the staging directory":
        monkeypatch.setattr(deploy, "staging_directory", interrupted_staging)
    else:
        monkeypatch.setattr(deploy, "build_manifest", interrupted_write)
    with pytest.raises(Terminated):
        deploy.write_module(compiled, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("moment", ["the staging file was just made", "writing into it", "renaming it"])
def test_a_signal_at_any_moment_of_write_text_atomic_leaves_no_staging_file(tmp_path, monkeypatch, moment):
    """A SIGTERM that lands as the staging file comes into existence (before the call that made it
    has returned), while it is written or while it is renamed leaves OUT as it was and nothing
    beside it (the tune test that kills a run while its report is written found this window)."""
    from codesign import files
    from codesign.files import Terminated, write_text_atomic

    target = tmp_path / "report.html"
    target.write_text("old")
    real_open, real_fdopen, real_replace = files.os.open, files.os.fdopen, files.os.replace

    def open_then_signal(*args, **kwargs):
        real_open(*args, **kwargs)
        raise Terminated("SIGTERM")

    def fdopen_then_signal(*args, **kwargs):
        real_fdopen(*args, **kwargs).close()
        raise Terminated("SIGTERM")

    def signal_before_replace(*args, **kwargs):
        raise Terminated("SIGTERM")

    patched = {
        "the staging file was just made": ("open", open_then_signal),
        "writing into it": ("fdopen", fdopen_then_signal),
        "renaming it": ("replace", signal_before_replace),
    }[moment]
    monkeypatch.setattr(files.os, *patched)
    with pytest.raises(Terminated):
        write_text_atomic(target, "new")
    monkeypatch.setattr(files.os, "open", real_open)
    monkeypatch.setattr(files.os, "fdopen", real_fdopen)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert [entry.name for entry in tmp_path.iterdir()] == ["report.html"]
    assert target.read_text() == "old"


@pytest.mark.parametrize("moment", ["the retired directory was just made", "OUT was moved aside", "removing the old"])
def test_a_signal_while_out_is_replaced_leaves_old_or_new_and_nothing_beside(tmp_path, monkeypatch, moment):
    """A real SIGTERM at each step of swapping OUT for the new module: the swap runs to its end
    (OUT is then the new module), the signal stops the command after it, and no retired
    directory is left beside OUT (CI's kill test once found one: the signal landed during the
    old module's removal)."""
    from codesign import files
    from codesign.errors import Interrupted

    out, staging = tmp_path / "out", tmp_path / ".out.tmp-1-abcdefgh"
    for folder, text in ((out, "old"), (staging, "new")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
    real = {"sibling": files._sibling_directory, "replace": files.os.replace, "rmtree": files.shutil.rmtree}

    def signalled(step):  # the signal lands as the step ends (as the old module's removal begins)
        def patched(*args, **kwargs):
            if step == "rmtree":
                os.kill(os.getpid(), signal.SIGTERM)
            result = real[step](*args, **kwargs)
            if step != "rmtree":
                os.kill(os.getpid(), signal.SIGTERM)
            return result

        return patched

    step = {
        "the retired directory was just made": "sibling",
        "OUT was moved aside": "replace",
        "removing the old": "rmtree",
    }[moment]
    target = {
        "sibling": (files, "_sibling_directory"),
        "replace": (files.os, "replace"),
        "rmtree": (files.shutil, "rmtree"),
    }
    monkeypatch.setattr(*target[step], signalled(step))
    with pytest.raises(Interrupted), files.cleanup_on_signals("replacing out"):
        files.replace_directory(staging, out)
    monkeypatch.undo()
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["out"]
    assert (out / "manifest.json").read_text() == "new"
