"""The installed package as a user gets it: the wheel, installed into a fresh virtual environment,
run from a directory outside the repository. Its presets (codesign.hw_targets), schedules
(codesign.schedules) and bundled MNIST model must all come from the wheel. Also the TOML
compatibility module that lets codesign read TOML on Python 3.10 (no tomllib there)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from codesign import toml

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject.toml names the README and maps the other three).
SOURCES = ("pyproject.toml", "README.md", "codesign", "schedules", "hw_targets")


def build_isolation_flags() -> list[str]:
    """Build with this environment's setuptools when it can write wheels itself (>= 70.1, which
    the `test` extra installs); an older one cannot, and pip then fetches the build requirements
    into an isolated environment from the package index."""
    try:
        setuptools = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        return []
    return ["--no-build-isolation"] if setuptools >= Version("70.1") else []


def run(args: list, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the package's sources: setuptools builds in the source tree (build/, egg-info),
    and a stale build/ there would leak deleted modules into the wheel."""
    src = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-w", out]
    run([*pip_wheel, *build_isolation_flags(), source], cwd=out)
    (path,) = out.glob("codesign-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path, dict]:
    """(venv, a working directory outside the repository, the environment to run in). The venv
    sees this environment's packages (TVM and the rest are not installed again), but codesign
    itself is the wheel's."""
    venv = tmp_path_factory.mktemp("venv")
    work = tmp_path_factory.mktemp("work")
    assert REPO not in work.parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=work, env=env)
    # This environment's pip (visible through the system site-packages) installs into the venv.
    install = ["-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", "--disable-pip-version-check"]
    run([venv / "bin" / "python", *install, wheel], cwd=work, env=env)
    return venv, work, env


def test_wheel_holds_every_module_under_the_codesign_namespace(wheel, source):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert all(n.startswith(("codesign/", "codesign-0.1.0.dist-info/")) for n in names), sorted(names)

    def files(folder: str, pattern: str, prefix: str) -> set[str]:
        paths = (p for p in (source / folder).rglob(pattern) if p.is_file() and "__pycache__" not in p.parts)
        return {f"{prefix}/{p.relative_to(source / folder).as_posix()}" for p in paths}

    expected = (
        files("codesign", "*.py", "codesign")  # a subpackage missing from pyproject's list shows here
        | files("codesign/data", "*", "codesign/data")
        | files("schedules", "*.py", "codesign/schedules")
        | files("hw_targets", "*", "codesign/hw_targets")
    )
    assert {"codesign/hw_targets/vta_default.toml", "codesign/schedules/tiling.py"} <= expected
    assert sorted(expected - names) == []


def test_installed_codesign_is_the_wheels(installed):
    venv, work, env = installed
    script = (
        "import json, importlib.resources, codesign, codesign.demo, codesign.schedules.tiling\n"
        "print(json.dumps([codesign.__file__, codesign.schedules.tiling.__file__, codesign.demo.MNIST_MODEL.as_posix(),"
        " str(importlib.resources.files('codesign.hw_targets').joinpath('vta_default.toml'))]))"
    )
    paths = json.loads(run([venv / "bin" / "python", "-c", script], cwd=work, env=env).stdout)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert [Path(p).relative_to(site).as_posix() for p in paths] == [
        "codesign/__init__.py",
        "codesign/schedules/tiling.py",
        "codesign/data/mnist-8.onnx",
        "codesign/hw_targets/vta_default.toml",
    ]


def test_installed_cli_reads_a_preset(installed):
    venv, work, env = installed
    proc = run([venv / "bin" / "codesign", "hw", "vta_default"], cwd=work, env=env)
    assert proc.stdout.startswith("vta_default: valid")


def test_installed_cli_compiles_the_bundled_mnist(installed):
    venv, work, env = installed
    model = run([venv / "bin" / "python", "-c", "import codesign.demo; print(codesign.demo.MNIST_MODEL)"], work, env)
    model = Path(model.stdout.strip())
    assert venv in model.parents
    out = work / "mnist_vta"
    run([venv / "bin" / "codesign", "compile", model, "--hw", "vta_default", "-o", out], cwd=work, env=env)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hardware"]["name"] == "vta_default"
    assert (out / manifest["library"]).is_file()


def test_toml_reads_and_writes():
    doc = {"name": 'a "quoted"\nname', "gemm": {"batch": 1, "block_in": 16}}
    assert toml.loads(toml.dumps(doc)) == doc
    with pytest.raises(toml.TOMLDecodeError):
        toml.loads("name = ")


def test_toml_reads_with_tomli_before_python_3_11(monkeypatch):
    """On 3.10 the module takes tomli (a dependency there) and never imports tomllib."""
    import tomllib  # stands in for tomli, its backport with the same API

    tomli = types.ModuleType("tomli")
    tomli.load, tomli.loads, tomli.TOMLDecodeError = tomllib.load, tomllib.loads, tomllib.TOMLDecodeError
    monkeypatch.setitem(sys.modules, "tomli", tomli)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails, as on 3.10
    monkeypatch.setattr(sys, "version_info", (3, 10, 14, "final", 0))
    spec = importlib.util.spec_from_file_location("codesign_toml_py310", toml.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (module.loads, module.load, module.TOMLDecodeError) == (tomli.loads, tomli.load, tomli.TOMLDecodeError)
    assert module.loads('name = "x"') == {"name": "x"}


def test_the_package_reads_toml_only_through_codesign_toml():
    direct = re.compile(r"^\s*(import tomllib|from tomllib import|import tomli\b|from tomli import)", re.MULTILINE)
    offenders = [
        p.relative_to(REPO).as_posix()
        for folder in ("codesign", "schedules")
        for p in (REPO / folder).rglob("*.py")
        if p != REPO / "codesign" / "toml.py" and direct.search(p.read_text())
    ]
    assert offenders == []
