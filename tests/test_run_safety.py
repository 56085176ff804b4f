"""A tuning run's safety (issue 10): tune never overwrites what is not its run, one process per
run directory, --resume only of the same run, readers never write, temporary files stay in the
run and go on exit (SIGTERM included), every bad input is one clear line, and a failed new run
leaves nothing behind."""

from __future__ import annotations

import errno
import fcntl
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
from test_cli_errors import cli, error_line, snapshot

from codesign.demo import MNIST_MODEL
from codesign.tuner.database import Database
from codesign.tuner.run_files import LOCK_FILE, TEMP_DIR

SPACE = Path(__file__).parent / "spaces" / "tiny.toml"
IMAGES = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory, mnist_test_set) -> Path:
    images, labels = mnist_test_set
    path = tmp_path_factory.mktemp("safety") / "mnist.npz"
    np.savez(path, Input3=images[:IMAGES, 0], labels=labels[:IMAGES])
    return path


def tune_args(out: Path, data: Path, *extra) -> list:
    """A tiny run: 2 random evaluations of S on a few MNIST images."""
    return [
        "tune", MNIST_MODEL, "--space", SPACE, "--data", data, "-o", out, "--budget", 2, "--batch-size", 2,
        "--strategy", "random", "--seed", 5, "--eval-samples", 8, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data) -> Path:
    """A finished run (2 evaluations); tests copy it before changing it."""
    from codesign.cli import main

    run = tmp_path_factory.mktemp("small") / "run"
    assert main([str(a) for a in tune_args(run, data)]) == 0
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


# ---- item 4: a directory that is not a run is not overwritten ------------------------------------


def test_tune_refuses_a_non_empty_directory_that_is_not_a_run(capsys, tmp_path, data):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("report.md", "settings.json", "evaluations.csv", "best_latency.toml"):
        (mine / name).write_text(f"the user's own {name}\n")
    before = snapshot(mine)
    line = error_line(*cli(capsys, *tune_args(mine, data)), 2, f"{mine}: not empty and not a `codesign tune` run")
    assert "--resume continues a run" in line
    assert snapshot(mine) == before


# ---- item 5: one tune per run directory ---------------------------------------------------------


def test_a_second_tune_on_a_locked_run_fails_in_one_line(capsys, tmp_path, data, small_run):
    run = copy_run(small_run, tmp_path)
    before = snapshot(run)
    holder = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running tune holds
        for extra in ((), ("--resume",)):
            error_line(*cli(capsys, *tune_args(run, data, *extra)), 1, "another `codesign tune` is running")
        assert snapshot(run) == before
    finally:
        os.close(holder)
    code, _, err = cli(capsys, *tune_args(run, data, "--resume"))  # released: the same resume runs
    assert code == 0, err


# ---- item 6: --resume continues the same run only ----------------------------------------------


def _other_space(tmp_path: Path) -> Path:
    path = tmp_path / "other.toml"
    path.write_text(SPACE.read_text().replace("prune = [0.0, 0.25]", "prune = [0.0, 0.5]"))
    return path


def _other_model(tmp_path: Path) -> Path:
    model = onnx.load(str(MNIST_MODEL))
    model.doc_string = "another model"
    onnx.save(model, str(tmp_path / "other.onnx"))
    return tmp_path / "other.onnx"


def _other_data(tmp_path: Path, data: Path) -> Path:
    archive = np.load(data)
    return write_npz(tmp_path / "other.npz", Input3=archive["Input3"][::-1], labels=archive["labels"][::-1])


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda tmp, data: {"--space": _other_space(tmp)}, "is not the run's space"),
        (lambda tmp, data: {"model": _other_model(tmp)}, "is not the run's model"),
        (lambda tmp, data: {"--data": _other_data(tmp, data)}, "is not the run's data"),
        (lambda tmp, data: {"--seed": 6}, "--seed 6 is not the run's (5)"),
        (lambda tmp, data: {"--strategy": "nsga2"}, "--strategy nsga2 is not the run's (random)"),
        (lambda tmp, data: {"--batch-size": 1}, "--batch-size 1 is not the run's (2)"),
        (lambda tmp, data: {"--eval-samples": 4}, "--eval-samples 4 is not the run's (8)"),
    ],
)
def test_resume_refuses_a_different_run_naming_the_field(change, needle, capsys, tmp_path, data, small_run):
    run = copy_run(small_run, tmp_path)
    args = [str(a) for a in tune_args(run, data, "--resume")]
    for option, value in change(tmp_path, data).items():
        if option == "model":
            args[1] = str(value)
        else:
            args[args.index(option) + 1] = str(value)
    before = snapshot(run)
    error_line(*cli(capsys, *args), 2, f"{run}: --resume of a different run", needle)
    assert snapshot(run) == before  # space.toml and the database untouched


# ---- item 7 and 24: readers never write; a corrupted line is named --------------------------------


def test_report_during_a_live_tune_leaves_the_line_being_written(capsys, tmp_path, small_run):
    run = copy_run(small_run, tmp_path)
    database = run / "database.jsonl"
    with database.open("a") as out:
        out.write('{"index": 2, "batch": 1, "con')  # the tune is writing this line
    before = database.read_bytes()
    assert len(Database(database).load()) == 2
    code, out, err = cli(capsys, "report", run)
    assert code == 0, err
    assert database.read_bytes() == before


def test_a_corrupted_line_in_the_middle_is_warned_about_and_kept(capsys, tmp_path, small_run):
    run = copy_run(small_run, tmp_path)
    database = run / "database.jsonl"
    first, second = database.read_text().splitlines()
    database.write_text(f"{first}\n{first[:40]}#garbage\n{second}\n")
    before = database.read_bytes()
    code, _, err = cli(capsys, "report", run)
    assert code == 0, err
    assert err.count("warning:") == 1 and f"{database}, line 2: not a JSON record" in err
    assert database.read_bytes() == before
    assert len(Database(database).load()) == 2


# ---- item 14: records are validated ----------------------------------------------------------


def _drop_metrics(record: dict) -> None:
    del record["metrics"]


def _empty_metrics(record: dict) -> None:
    record["metrics"] = {}


def _no_latency(record: dict) -> None:
    record["metrics"].pop("latency")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (_drop_metrics, "the record has no 'metrics'"),
        (_empty_metrics, "a feasible record has no 'metrics'"),
        (_no_latency, "'metrics' has no 'latency'"),
    ],
)
def test_report_names_file_line_and_field_of_a_bad_record(damage, needle, capsys, tmp_path, small_run):
    run = copy_run(small_run, tmp_path)
    database = run / "database.jsonl"
    records = [json.loads(line) for line in database.read_text().splitlines()]
    feasible = next(i for i, r in enumerate(records) if r["feasible"])
    damage(records[feasible])
    database.write_text("".join(json.dumps(r) + "\n" for r in records))
    error_line(*cli(capsys, "report", run), 2, f"{database}, line {feasible + 1}: {needle}")


# ---- item 11: temporary files stay in the run and go on SIGTERM; item 5 with two processes ------


def test_sigterm_leaves_no_temporary_copy_and_a_second_process_is_refused(capsys, tmp_path, data):
    space = tmp_path / "long.toml"  # enough compression choices to keep compiling for a while
    space.write_text(
        "[hardware]\nblock_in = [8, 16]\n"
        "[compression]\nweight_bits = [8, 4]\nprune = {min = 0.0, max = 0.9, step = 0.05}\n"
    )
    system_temp = tmp_path / "system_temp"
    system_temp.mkdir()
    run = tmp_path / "run"
    args = [str(a) for a in tune_args(run, data)]
    args[args.index("--space") + 1], args[args.index("--budget") + 1] = str(space), "200"
    env = {**os.environ, "TMPDIR": str(system_temp)}
    process = subprocess.Popen(
        [sys.executable, "-m", "codesign.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        database = run / "database.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if database.exists() and database.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read()
        assert list((run / TEMP_DIR).glob("codesign-eval-*/calibration.npz"))  # the copy is in the run
        assert not list(system_temp.glob("codesign-eval-*"))
        error_line(*cli(capsys, *args, "--resume"), 1, "another `codesign tune` is running in this directory")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1
    assert f"{run}: tuning stopped by SIGTERM; `--resume` continues the run" in err.decode()
    assert not (run / TEMP_DIR).exists()
    assert not list(system_temp.glob("codesign-eval-*"))
    assert Database(database).load()  # what finished is kept


# ---- item 13: OS errors on output paths ------------------------------------------------------


def test_output_path_that_is_a_file(capsys, tmp_path, data):
    existing = tmp_path / "results.txt"
    existing.write_text("mine\n")
    error_line(*cli(capsys, *tune_args(existing, data)), 2, f"{existing}: exists and is not a directory")
    assert existing.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("name", "needle"), [("a" * 256, "File name too long"), ("results.txt/run", "Not a directory")]
)
def test_output_path_that_cannot_hold_a_run(capsys, tmp_path, data, name, needle):
    (tmp_path / "results.txt").write_text("mine\n")
    out = tmp_path / name
    error_line(*cli(capsys, *tune_args(out, data)), 2, f"{out}: cannot hold a run ({needle})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_space_that_is_a_directory(capsys, tmp_path, data):
    args = [str(a) for a in tune_args(tmp_path / "run", data)]
    args[args.index("--space") + 1] = str(tmp_path)
    error_line(*cli(capsys, *args), 2, f"{tmp_path}: is a directory, not a search-space file")
    assert not (tmp_path / "run").exists()


def test_read_only_file_system(capsys, tmp_path, data, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    out = tmp_path / "run"
    error_line(
        *cli(capsys, *tune_args(out, data)), 1, f"{out}: cannot create the run directory (Read-only file system)"
    )


# ---- items 15 and 22: data checked up front; a failed new run leaves nothing ---------------------


def _images(count: int = IMAGES) -> np.ndarray:
    from codesign.demo import load_mnist_test

    return load_mnist_test()[0][:count, 0]


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        (lambda: {"Input3": np.array([{"a": 1}] * 4, dtype=object)}, "array 'Input3' holds Python objects"),
        (lambda: {"Input3": np.array(["seven"] * 4)}, "array 'Input3' holds strings, not real numbers"),
        (lambda: {"Input3": _images(), "labels": np.array(["cat"] * IMAGES)}, "array 'labels' holds strings"),
        (lambda: {"Input3": _images(), "labels": np.arange(3)}, "array 'labels' has 3 entries for 8 samples"),
        (
            lambda: {"Input3": _images(), "labels": np.where(np.arange(IMAGES) == 2, np.nan, 1.0)},
            "labels[2] = nan; labels must be whole class indices",
        ),
        (lambda: {"Input3": _images(0), "labels": np.arange(0)}, "array 'Input3' holds no samples"),
        (
            lambda: {"Input3": _images(), "labels": np.where(np.arange(IMAGES) == 5, 10, 1)},
            "labels[5] = 10 is not a class of the model's first output (0 to 9)",
        ),
        (
            lambda: {"Input3": _images(), "labels": np.where(np.arange(IMAGES) >= 6, -1, 1)},
            "labels[6] = -1 is not a class of the model's first output (0 to 9); 2 label(s) out of range",
        ),
    ],
)
def test_bad_data_is_one_line_and_leaves_no_run_behind(arrays, needle, capsys, tmp_path):
    bad = write_npz(tmp_path / "bad.npz", **arrays())
    out = tmp_path / "run"
    error_line(*cli(capsys, *tune_args(out, bad)), 2, f"{bad}: {needle}")
    assert not out.exists()  # no settings.json, space.toml or run.json left
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(*cli(capsys, *tune_args(empty, bad)), 2, needle)
    assert list(empty.iterdir()) == []


def test_database_that_is_a_directory(capsys, tmp_path, data):
    (tmp_path / "run" / "database.jsonl").mkdir(parents=True)
    for extra in ((), ("--resume",)):
        error_line(*cli(capsys, *tune_args(tmp_path / "run", data, *extra)), 2, "is a directory, not a tuning database")


def test_resume_without_a_run_is_refused(capsys, tmp_path, data):
    empty = tmp_path / "empty"
    empty.mkdir()
    error_line(*cli(capsys, *tune_args(empty, data, "--resume")), 2, f"{empty}: holds no tuning run to resume")
    assert list(empty.iterdir()) == []
    missing = tmp_path / "missing"
    error_line(*cli(capsys, *tune_args(missing, data, "--resume")), 2, f"{missing}: no such run directory to resume")
    assert not missing.exists()


# ---- items 16 and 22: search spaces validated up front -------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "[hardware]\nblock_in = {min = 8, max = 32, step = 0}",
            "'hardware.block_in.step' = 0 must be a number above 0",
        ),
        (
            '[hardware]\nwgt_buffer_kib = {min = 0, max = 512, scale = "log2"}',
            "'hardware.wgt_buffer_kib.min' = 0 must be above 0",
        ),
        (
            '[hardware]\nwgt_buffer_kib = {min = 32, max = 512, scale = "cubic"}',
            "'hardware.wgt_buffer_kib.scale' = 'cubic' (expected linear or log2)",
        ),
        (
            '[hardware]\nblock_in = [8]\n[constraints]\naccuracy_drop_max = "two"',
            "'constraints.accuracy_drop_max' = 'two' must be a number",
        ),
        ("objectives = []\n[hardware]\nblock_in = [8]", "'objectives' = [] must be a non-empty list"),
        ('objectives = "latency"\n[hardware]\nblock_in = [8]', "'objectives' = 'latency' must be a non-empty list"),
        ("[hardware]\nblock_in = [12, 4096]", "'hardware.block_in' = [12, 4096]: 12, 4096 cannot be taken"),
        ("[hardware]\nwgt_buffer_kib = [64, 1e9]", "'hardware.wgt_buffer_kib' = [64, 1000000000.0]: 1000000000.0"),
        (
            '[compression]\nprune = [0.0, 0.5]\n[compression.groups]\nearly = "conv2d_0"',
            "'compression.groups.early' = 'conv2d_0' must be a non-empty list of layer-name patterns",
        ),
    ],
)
def test_space_errors_name_file_field_and_value(text, needle, capsys, tmp_path, data):
    space = tmp_path / "space.toml"
    space.write_text(text + "\n")
    args = [str(a) for a in tune_args(tmp_path / "run", data)]
    args[args.index("--space") + 1] = str(space)
    error_line(*cli(capsys, *args), 2, f"{space}: {needle}")
    assert not (tmp_path / "run").exists()
