"""The cache of calibration statistics: the same module with it and without it, a damaged entry
rebuilt, least recently used entries evicted past the cap, a bad cap one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import codesign
from codesign import bias_correction, cache, calibration
from codesign.cli import main
from codesign.demo import MNIST_MODEL


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(folder))
    monkeypatch.delenv(cache.NO_CACHE_ENV, raising=False)
    return folder


def compile_to(out, calibration_file, *extra):
    argv = ["compile", str(MNIST_MODEL), "--hw", "vta_default", "--calibration", str(calibration_file)]
    assert main([*argv, "--calibration-samples", "16", "-o", str(out), *extra]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["compile_seconds"]  # the one field that may differ: how long each stage took
    return manifest


def test_cold_warm_and_uncached_compiles_give_the_same_module(tmp_path, private_cache, mnist_calibration, monkeypatch):
    cold = compile_to(tmp_path / "cold", mnist_calibration)
    entries = sorted(private_cache.iterdir())
    assert [entry.name.split("-")[0] for entry in entries] == ["biases", "ranges"]

    def measured_again(*args, **kwargs):
        raise AssertionError("measured again although the cache holds the result")

    with monkeypatch.context() as patch:
        patch.setattr(calibration, "tensor_ranges", measured_again)
        patch.setattr(bias_correction, "correct_biases", measured_again)
        warm = compile_to(tmp_path / "warm", mnist_calibration)
    for entry in entries:
        os.utime(entry, (1000, 1000))
    uncached = compile_to(tmp_path / "uncached", mnist_calibration, "--no-cache")
    assert all(entry.stat().st_mtime == 1000 for entry in entries)  # neither read nor written
    assert len(list(private_cache.iterdir())) == 2
    assert cold == warm == uncached
    images = np.random.default_rng(0).random((4, 1, 1, 28, 28), dtype=np.float32) * 255
    outputs = [[codesign.load(tmp_path / name).run(image) for image in images] for name in ("cold", "warm", "uncached")]
    for other in outputs[1:]:
        for expected, got in zip(outputs[0], other):
            assert np.array_equal(np.asarray(expected), np.asarray(got))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_rebuilt_never_used(tmp_path, private_cache, mnist_calibration, damage):
    expected = compile_to(tmp_path / "first", mnist_calibration)
    entry = next(entry for entry in private_cache.iterdir() if entry.name.startswith("ranges-"))
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    else:
        position = len(data) - 10  # inside the payload: a range digit changes, the JSON stays valid
        entry.write_bytes(data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :])
    assert cache.load(entry.name) is None and not entry.exists()
    entry.write_bytes(data[: len(data) // 2])
    assert compile_to(tmp_path / "second", mnist_calibration) == expected
    assert entry.read_bytes() == data  # rebuilt whole


def test_ranges_round_trip_exactly():
    ranges = calibration.TensorRanges(
        {"a": 0.1 + 0.2, "b": 1e-300, "c": 3.0}, {"a": np.array([np.pi, np.nextafter(1.0, 2.0), 0.0])}
    )
    back = calibration.TensorRanges.from_json(ranges.to_json())
    assert back.absmax == ranges.absmax
    assert back.channel_absmax["a"].dtype == np.float64
    assert np.array_equal(back.channel_absmax["a"], ranges.channel_absmax["a"])


def test_least_recently_used_entries_go_first_past_the_cap(private_cache, monkeypatch):
    monkeypatch.setenv(cache.MAX_MB_ENV, str(2.5 * 1000 / (1 << 20)))  # room for two 1,000-byte entries
    payload = bytes(1000 - cache.DIGEST_BYTES)
    for age, key in enumerate(["old", "used", "new"]):
        cache.store(key, payload)
        os.utime(private_cache / key, (1000 + age, 1000 + age))
        if key == "used":
            assert cache.load("old") == payload  # "old" is now the most recently used
            os.utime(private_cache / "old", (5000, 5000))
    assert sorted(p.name for p in private_cache.iterdir()) == ["new", "old"]


def test_what_a_killed_writer_left_is_removed_once_stale(private_cache):
    cache.store("first", b"x")
    left, fresh = private_cache / ".second.abcd1234", private_cache / ".third.abcd1234"
    left.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(left, (1000, 1000))
    cache.store("fourth", b"y")
    assert sorted(p.name for p in private_cache.iterdir()) == [fresh.name, "first", "fourth"]


def test_entries_depend_on_the_code_and_every_input():
    base = {"model": "m", "samples": "s"}
    key = cache.entry_key("ranges", base)
    assert key == cache.entry_key("ranges", dict(base))
    assert key != cache.entry_key("ranges", {**base, "samples": "t"})
    assert key != cache.entry_key("plans", base)


def test_entries_written_by_other_code_are_never_read(monkeypatch):
    key = cache.entry_key("ranges", {"model": "m"})
    monkeypatch.setattr(cache, "source_digest", lambda: "another codesign")
    assert cache.entry_key("ranges", {"model": "m"}) != key


def test_a_bad_size_cap_is_one_line(tmp_path, private_cache, mnist_calibration, monkeypatch, capsys):
    monkeypatch.setenv(cache.MAX_MB_ENV, "lots")
    argv = ["compile", str(MNIST_MODEL), "--hw", "vta_default", "--calibration", str(mnist_calibration)]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"codesign: error: {cache.MAX_MB_ENV}='lots': expected a size in MB (0 or more)"]
    assert not (tmp_path / "out").exists()


def test_simulate_plans_again_from_the_cache_to_the_same_report(tmp_path, private_cache, monkeypatch, capsys):
    from codesign import pipeline

    argv = ["simulate", str(MNIST_MODEL), "--hw", "vta_default"]
    reports = []
    for run in range(3):
        with monkeypatch.context() as patch:
            if run == 1:  # the plans come from the cache, or this fails
                patch.setattr(pipeline, "import_model", lambda *args, **kwargs: pytest.fail("planned again"))
            extra = ["--no-cache"] if run == 2 else []
            assert main([*argv, *extra, "--json", str(tmp_path / f"{run}.json")]) == 0
        reports.append(json.loads((tmp_path / f"{run}.json").read_text()))
        # the warning about random calibration data is given every time, cached or not
        assert "no --calibration data" in capsys.readouterr().err
    assert reports[0] == reports[1] == reports[2]
    assert sorted(p.name.split("-")[0] for p in private_cache.iterdir()) == ["model", "plans", "ranges"]


def test_a_cached_simulate_never_loads_tvm(private_cache):
    """What makes a warm `simulate` take under a second: with its plans cached, neither the
    model's import nor TVM (a second to load) is needed, nor onnx (the model's digest is
    remembered)."""
    argv = ["simulate", str(MNIST_MODEL), "--hw", "vta_default"]
    script = (
        "import sys\nfrom codesign.cli import main\n"
        f"code = main({argv!r})\n"
        "print([name for name in ('tvm', 'onnx') if name in sys.modules], code)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True) for _ in range(2)]
    assert [run.stdout.strip().splitlines()[-1] for run in runs] == ["['tvm', 'onnx'] 0", "[] 0"], runs[1].stderr
    assert runs[0].stdout.splitlines()[:-1] == runs[1].stdout.splitlines()[:-1]  # the same report
