"""Shared fixtures: the bundled real data, the exported test models, and compiled models."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from codesign.cache import CACHE_DIR_ENV
from codesign.demo import MNIST_MODEL, load_mnist_test


def pytest_configure(config):
    """One cache for the whole run (xdist's workers and the CLI's subprocesses inherit it), never
    the user's: a test's compile then calibrates afresh only what no earlier test calibrated."""
    if CACHE_DIR_ENV not in os.environ:
        config.codesign_cache = tempfile.mkdtemp(prefix="codesign-test-cache-")
        os.environ[CACHE_DIR_ENV] = config.codesign_cache


def pytest_unconfigure(config):
    if getattr(config, "codesign_cache", None):
        shutil.rmtree(config.codesign_cache, ignore_errors=True)
        del os.environ[CACHE_DIR_ENV]


# The longest test files, longest first. scripts/test.sh runs the files in parallel (pytest-xdist,
# one file per worker at a time, so module fixtures are built once); starting the long ones first
# keeps a long file from starting last, while the other workers sit idle.
LONGEST_FILES = [
    "test_tuner.py",
    "test_real_models.py",
    "test_fault_kill.py",
    "test_fuzz_cli.py",
    "test_bitexact.py",
    "test_evaluator.py",
    "test_report.py",
    "test_accuracy.py",
]


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: each file's own order is kept


MODELS = Path(__file__).resolve().parent / "models"
# (path, input name, bound input shape) of every model the suite compiles.
TEST_MODELS = {
    "mnist": (MNIST_MODEL, "Input3", (1, 1, 28, 28)),
    "resnet": (MODELS / "resnet_mini.onnx", "input", (1, 3, 32, 32)),
    "mobilenet": (MODELS / "mobilenetv2_mini.onnx", "input", (1, 3, 32, 32)),
    "transformer": (MODELS / "transformer_tiny.onnx", "tokens_embedded", (1, 16, 64)),
}


@pytest.fixture(scope="session")
def mnist_test_set():
    return load_mnist_test()


@pytest.fixture(scope="session")
def mnist_calibration(tmp_path_factory, mnist_test_set):
    path = tmp_path_factory.mktemp("calibration") / "mnist.npy"
    np.save(path, mnist_test_set[0][:200, 0])
    return path


def sample_inputs(model: str, count: int, seed: int = 0) -> np.ndarray:
    """Realistic inputs: MNIST-range pixels for mnist-8, standard normal otherwise."""
    _, _, shape = TEST_MODELS[model]
    rng = np.random.default_rng(seed)
    if model == "mnist":
        return (rng.random((count, *shape)) * 255).astype(np.float32)
    return rng.standard_normal((count, *shape)).astype(np.float32)


@pytest.fixture(scope="session")
def model_calibration(tmp_path_factory):
    """model name -> .npy calibration file of 16 samples."""
    folder = tmp_path_factory.mktemp("model_calibration")
    paths = {}
    for name in TEST_MODELS:
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], sample_inputs(name, 16, seed=123))
    return paths


@pytest.fixture(scope="session")
def tuned_run(tmp_path_factory, mnist_test_set):
    """A finished `codesign tune` run (16 evaluations of tests/spaces/tiny.toml) with its report."""
    from codesign.cli import main

    folder = tmp_path_factory.mktemp("tuned_run")
    images, labels = mnist_test_set
    data = folder / "mnist_eval.npz"
    np.savez(data, Input3=images[:200, 0], labels=labels[:200])
    space = Path(__file__).parent / "spaces" / "tiny.toml"
    run = folder / "run"
    argv = ["tune", str(MNIST_MODEL), "--space", str(space), "--data", str(data), "-o", str(run)]
    argv += ["--budget", "16", "--batch-size", "8", "--strategy", "random", "--seed", "5", "--eval-samples", "200"]
    assert main(argv) == 0
    return run
