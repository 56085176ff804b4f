"""Fault injection: `codesign compile` and `codesign tune` killed with SIGTERM and SIGKILL.

Each command runs as a subprocess (its own TMPDIR) and is signalled after a delay drawn from a
seeded RNG over the command's measured run time (so a kill lands in a different phase per seed),
or the moment it starts writing its output (the window that matters most). Afterwards:

- compile: OUT is the old module (byte for byte) or the complete new one (manifest valid, files
  matching their sha256, the library loads); beside OUT nothing new remains -- after SIGTERM at
  once, after SIGKILL once the next compile to OUT has cleaned the dead process's staging
  directories; the next compile succeeds;
- tune: what the killed run left is a run `--resume` continues (or, when it recorded nothing, a
  fresh start takes); the resumed run ends with exactly `budget` records, indices 0..budget-1,
  the records of an uninterrupted run, and no temporary file is left in the run directory or in
  the killed process's TMPDIR.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from codesign.demo import MNIST_MODEL

REPO = Path(__file__).resolve().parent.parent
SPACE = REPO / "tests" / "spaces" / "two_profiles.toml"  # two compression profiles: two compiles a run
BUDGET = 6
TUNE_OPTIONS = ["--budget", str(BUDGET), "--batch-size", "3", "--strategy", "random", "--seed", "2"]
TUNE_OPTIONS += ["--eval-samples", "30"]
# What third-party libraries leave in TMPDIR whatever codesign does: onnxruntime's telemetry
# session file (written on import).
FOREIGN_TEMP_FILES = {".ses"}
# A tune's run directory: what `codesign tune` writes there, and nothing else.
RUN_FILES = {
    "run.json", "space.toml", "settings.json", "database.jsonl", ".tune.lock", "pareto.json", "designs", "front",
    "evaluations.csv", "pareto.csv", "report.html", "report.md",
    *(f"best_{o}.{suffix}" for o in ("latency", "energy", "area", "accuracy") for suffix in ("toml", "json")),
}  # fmt: skip
SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}


# ---- running and killing a CLI subprocess -----------------------------------------------------------


def subprocess_env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmpdir)
    env.pop("CODESIGN_DEBUG", None)
    return env


def start(argv: list, tmpdir: Path, logs: Path) -> subprocess.Popen:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "codesign.cli", *map(str, argv)],
            stdout=out,
            stderr=err,
            env=subprocess_env(tmpdir),
            start_new_session=True,  # a signal to the test's process group never reaches it
        )


def signal_after(process: subprocess.Popen, delay: float, signum: int) -> bool:
    """Signal the process after `delay` s unless it finished first; True if it was signalled."""
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
    process.wait(timeout=300)
    return True


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float = 300) -> bool:
    """Signal the process as soon as `ready()` is true (polled every millisecond)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signum)
            break
        time.sleep(0.001)
    else:
        process.wait(timeout=300)
        return False
    process.wait(timeout=300)
    return True


def timed_run(argv: list, tmpdir: Path, logs: Path) -> float:
    started = time.monotonic()
    process = start(argv, tmpdir, logs)
    assert process.wait(timeout=600) == 0, (logs / "stderr").read_text()
    return time.monotonic() - started


def check_exit(returncode: int, signum: int, logs: Path, what: str) -> None:
    """SIGTERM: the command finished (0), stopped cleanly with one line (1), or died of the signal
    before it could catch it (Python starting up). SIGKILL: anything."""
    if signum != signal.SIGTERM:
        return
    err = (logs / "stderr").read_text(errors="replace")
    assert returncode in (0, 1, -signal.SIGTERM), f"{what}: exit {returncode} after SIGTERM\n{err[-3000:]}"
    assert "Traceback" not in err, f"{what}: traceback after SIGTERM\n{err[-3000:]}"
    if returncode == 1:
        lines = [line for line in err.split("\n") if line.strip() and not line.startswith("codesign: warning:")]
        assert len(lines) == 1 and lines[0].startswith("codesign: error:"), f"{what}: after SIGTERM:\n{err[-3000:]}"
        assert "SIGTERM" in lines[0], lines[0]


def temp_leftovers(tmpdir: Path) -> list[str]:
    """What is left in TMPDIR (directories with their files), third parties' files aside."""
    left = []
    for name in sorted(set(os.listdir(tmpdir)) - FOREIGN_TEMP_FILES):
        path = tmpdir / name
        left.append(f"{name}/{sorted(os.listdir(path))}" if path.is_dir() else name)
    return left


def quiet_main(argv: list) -> tuple[int, str]:
    """`codesign ARGV` in this process; (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def delay_for(seed: int, command: str, signum: int, typical: float) -> float:
    """A kill time over the command's whole run (start-up included), from a seeded RNG."""
    rng = random.Random(f"{command}-{signal.Signals(signum).name}-{seed}")
    return rng.uniform(0.1, 1.1 * typical)


CASES = [(name, seed) for name in SIGNALS for seed in (0, 1)] + [(name, "writing") for name in SIGNALS]
# A tune takes a while, so a kill lands at one seeded point (SIGKILL's: SIGTERM's own handling is
# most exposed while the report is written) and while the report is written (both signals).
TUNE_CASES = [("SIGKILL", 1)] + [(name, "writing") for name in SIGNALS]
WRITING_ATTEMPTS = 3


# ---- compile ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, mnist_test_set):
    path = tmp_path_factory.mktemp("fault_calibration") / "mnist.npy"
    np.save(path, mnist_test_set[0][:50, 0])
    return path


@pytest.fixture(scope="module")
def old_module(tmp_path_factory, calibration):
    """An older module (mnist-8 for edge_1x8x8) that a compile for vta_default replaces, and how
    long that compile took as a subprocess (start-up included): the span kills are drawn over."""
    folder = tmp_path_factory.mktemp("fault_old")
    (folder / "tmp").mkdir()
    argv = ["compile", MNIST_MODEL, "--hw", "edge_1x8x8", "-o", folder / "module", "--calibration", calibration]
    seconds = timed_run(argv, folder / "tmp", folder / "logs")
    return folder / "module", seconds


def module_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def old_or_new(out: Path, old: dict[str, bytes]) -> str:
    """'old' if OUT is the old module byte for byte, 'new' if it is a complete module for
    vta_default; anything else fails."""
    from codesign.deploy import load, read_manifest

    assert out.is_dir(), f"{out} is gone (neither the old module nor the new one)"
    files = module_files(out)
    if files == old:
        return "old"
    assert set(files) == {"manifest.json", "module.so", "hardware.toml"}, f"{out} holds {sorted(files)}"
    manifest = read_manifest(out)  # valid, every file matching its sha256
    assert manifest["hardware"]["name"] == "vta_default", f"{out} is neither the old module nor the new one"
    load(out)
    return "new"


@pytest.mark.parametrize(("signal_name", "when"), CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_killed_compile_leaves_the_old_or_the_new_module(signal_name, when, tmp_path, old_module, calibration):
    signum = SIGNALS[signal_name]
    old_module, compile_seconds = old_module
    parent = tmp_path / "parent"
    parent.mkdir()
    out = parent / "module"
    shutil.copytree(old_module, out)
    (parent / "notes.txt").write_text("the user's, beside OUT\n")
    before = sorted(os.listdir(parent))
    old = module_files(out)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    argv = ["compile", MNIST_MODEL, "--hw", "vta_default", "-o", out, "--calibration", calibration]
    process = start(argv, tmpdir, tmp_path / "logs")
    if when == "writing":  # the moment the staging directory beside OUT appears
        signalled = signal_when(process, lambda: any(".module.tmp-" in n for n in os.listdir(parent)), signum)
        assert signalled, "the compile finished before its staging directory was seen"
    else:
        signal_after(process, delay_for(when, "compile", signum, compile_seconds), signum)
    check_exit(process.returncode, signum, tmp_path / "logs", "compile")

    old_or_new(out, old)
    beside = sorted(set(os.listdir(parent)) - set(before))
    if signum == signal.SIGTERM:
        assert beside == [], f"left beside OUT after SIGTERM: {beside}"
        stderr = (tmp_path / "logs" / "stderr").read_text(errors="replace")[-500:]
        assert temp_leftovers(tmpdir) == [], f"left in TMPDIR after SIGTERM (exit {process.returncode}): {stderr}"
    else:  # only the dead process's staging (.module.tmp-PID-*) or retired (.module.old-PID-*) directories
        pid = str(process.pid)
        assert all(n.startswith((f".module.tmp-{pid}-", f".module.old-{pid}-")) for n in beside), beside
        if when == "writing":  # killed mid-export: its staging directory is there for the next compile
            assert beside, "no staging directory left to clean up (the kill came too late)"

    code, err = quiet_main(argv)  # the next compile to OUT: cleans what a SIGKILL left, replaces OUT
    assert code == 0, err
    assert sorted(os.listdir(parent)) == before
    assert old_or_new(out, old) == "new"


# ---- tune ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory, mnist_test_set):
    images, labels = mnist_test_set
    path = tmp_path_factory.mktemp("fault_tune_data") / "mnist.npz"
    np.savez(path, Input3=images[:30, 0], labels=labels[:30])
    return path


def tune_argv(out: Path, data: Path) -> list:
    return ["tune", MNIST_MODEL, "--space", SPACE, "--data", data, "-o", out, *TUNE_OPTIONS]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "database.jsonl").read_text().splitlines()]


def comparable(run: Path) -> list[tuple]:
    return [(r["index"], json.dumps(r["config"], sort_keys=True), r["feasible"], r["metrics"]) for r in records(run)]


@pytest.fixture(scope="module")
def tune_reference(tmp_path_factory, eval_data):
    """An undisturbed tune: its run time (start-up included) and its run directory."""
    folder = tmp_path_factory.mktemp("fault_tune_reference")
    (folder / "tmp").mkdir()
    seconds = timed_run(tune_argv(folder / "run", eval_data), folder / "tmp", folder / "logs")
    assert sorted(r["index"] for r in records(folder / "run")) == list(range(BUDGET))
    return seconds, folder / "run"


def staged_report(run: Path) -> bool:
    """write_text_atomic's staging file of the report (.report.html.XXXXXXXX) exists."""
    try:
        return any(name.startswith(".report.html.") for name in os.listdir(run))
    except FileNotFoundError:
        return False


def unexpected_entries(run: Path, allowed: set[str]) -> list[str]:
    return sorted(set(os.listdir(run)) - allowed) if run.is_dir() else []


def tune_killed_while_writing_the_report(run: Path, data: Path, tmpdir: Path, logs: Path, signum: int):
    """A tune signalled once the report's staging file exists. The file lives a few milliseconds,
    which polling on a loaded machine can miss: a run that finished first is started afresh."""
    for _ in range(WRITING_ATTEMPTS):
        shutil.rmtree(run, ignore_errors=True)
        process = start(tune_argv(run, data), tmpdir, logs)
        if signal_when(process, lambda: staged_report(run), signum):
            return process
    pytest.fail(f"the report's staging file was never seen in {WRITING_ATTEMPTS} runs")


@pytest.mark.parametrize(("signal_name", "when"), TUNE_CASES, ids=[f"{s}-{w}" for s, w in TUNE_CASES])
def test_killed_tune_resumes_to_exactly_the_budget(signal_name, when, tmp_path, eval_data, tune_reference):
    signum = SIGNALS[signal_name]
    seconds, reference = tune_reference
    run = tmp_path / "run"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    if when == "writing":  # while the report (the last and largest file) is being written
        process = tune_killed_while_writing_the_report(run, eval_data, tmpdir, tmp_path / "logs", signum)
    else:
        process = start(tune_argv(run, eval_data), tmpdir, tmp_path / "logs")
        signal_after(process, delay_for(when, "tune", signum, seconds), signum)
    check_exit(process.returncode, signum, tmp_path / "logs", "tune")

    # What the killed run left: its own files only; after SIGTERM no temporary directory either.
    allowed = RUN_FILES | ({".tune-tmp"} if signum == signal.SIGKILL else set())
    if signum == signal.SIGTERM:
        assert unexpected_entries(run, allowed) == [], "left in the run directory after SIGTERM"
    assert temp_leftovers(tmpdir) == [], f"left in TMPDIR (exit {process.returncode})"
    if (run / "database.jsonl").exists():
        finished = [json.loads(line) for line in (run / "database.jsonl").read_bytes().split(b"\n")[:-1]]
        indices = [r["index"] for r in finished]
        assert len(indices) == len(set(indices)) and set(indices) <= set(range(BUDGET)), indices

    resume = (run / "run.json").exists()
    if not resume and run.exists():  # nothing recorded: --resume refuses in one line, a new run starts
        code, err = quiet_main([*tune_argv(run, eval_data), "--resume"])
        assert code == 2 and len(err.strip().split("\n")) == 1, err
    code, err = quiet_main([*tune_argv(run, eval_data), *(["--resume"] if resume else [])])
    assert code == 0, err

    assert sorted(r["index"] for r in records(run)) == list(range(BUDGET))  # nothing lost, nothing repeated
    differences = [
        f"evaluation {mine[0]}: "
        + ", ".join(
            f"{field} {theirs[3].get(field)!r} -> {mine[3].get(field)!r}"
            for field in sorted(set(mine[3]) | set(theirs[3]))
            if mine[3].get(field) != theirs[3].get(field)
        )
        + ("" if mine[:3] == theirs[:3] else f" (config/feasible {theirs[1:3]} -> {mine[1:3]})")
        for mine, theirs in zip(comparable(run), comparable(reference))
        if mine != theirs
    ]
    assert differences == [], "the resumed run's records differ from an undisturbed run's"
    assert unexpected_entries(run, RUN_FILES) == [], "temporary files left in the run directory"
    assert not (run / "designs").exists() or all(not n.startswith(".") for n in os.listdir(run / "designs"))
