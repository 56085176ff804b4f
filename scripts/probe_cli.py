"""Probe the `codesign` CLI as a hostile or careless user would, and count the probes handled cleanly.

The measurement behind issue 10 ("Reliability and safety"): every numbered item of the issue is
covered by at least one probe, plus variations (missing, empty, binary, truncated and huge files
for every file argument; wrong types and out-of-range values in every file format; output paths
that cannot be written; signals during compile and tune; two processes on one directory).

A probe runs `python -m codesign.cli ARGV` in a subprocess, in a directory of its own (W) that its
setup filled with its inputs (copies of the shared fixtures: a module compiled from mnist-8, a
two-evaluation tuning run, calibration and evaluation data). It is handled cleanly when

- the exit code is 1 or 2 (0 for a probe whose input is valid: `expect="ok"`; either for
  `expect="any"`), and the process was not killed by a signal nor timed out;
- stdout and stderr hold no "Traceback" and no "internal error";
- a failure prints exactly one error line on stderr (besides "warning:"/"note:" lines, e.g. a
  database's corrupted lines named before the error); a success prints only such lines there;
- no file in W changed, appeared or disappeared except the probe's declared outputs (and, for a
  failure, nothing at all unless the probe allows it): this catches a user's files overwritten,
  staging directories (.OUT.tmp-*) left beside an output, and temporary files left behind (each
  probe's TMPDIR is W/.tmp);
- the probe's own checks pass (the message names the culprit, a compiled module is complete, ...).

    python scripts/probe_cli.py [--jobs 2] [--only SUBSTRING] [--json results.json] [--keep]

Signal probes send SIGTERM/SIGINT once the command has installed its handler (SigCgt in
/proc/PID/status), so they measure the command's own handling, not Python's start-up. The
"early" ones are four shots each at fixed delays: a signal lost in a narrow window is caught
most runs, not every run, so the count may differ by one between runs.

Prints a table of the probes not handled cleanly and "N of M probes handled cleanly"; always exits 0
(it is a measurement; 1 only if the shared setup itself fails). Probe directories of unclean
probes are kept for inspection (--keep keeps all). Workers are forked processes, each driving one
probe's subprocess at a time. Takes about 10 minutes with --jobs 2 on two cores.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from codesign import toml as tomllib

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "codesign" / "data"
MNIST = DATA_DIR / "mnist-8.onnx"  # codesign.demo.MNIST_MODEL (not imported: that would load TVM here)
TINY_SPACE = REPO / "tests" / "spaces" / "tiny.toml"
PRESETS = REPO / "hw_targets"
HW_DEFAULT = (PRESETS / "vta_default.toml").read_text()
SPACE_TEXT = TINY_SPACE.read_text()
TIMEOUT = 120.0
# onnxruntime (imported through onnxslim) keeps a session id in $TMPDIR/.ses: not codesign's file.
IGNORED = {".tmp/.ses"}
HUGE = 64 << 20  # bytes of a "huge" (sparse) file
PIB_SHAPE = (10**12, 1, 28, 28)  # an .npy header claiming petabytes
WARNING = re.compile(r"^(codesign: )?(warning|note)\b", re.IGNORECASE)
VTA_CONFIG = {
    "TARGET": "sim",
    "HW_VER": "0.0.2",
    "LOG_INP_WIDTH": 3,
    "LOG_WGT_WIDTH": 3,
    "LOG_ACC_WIDTH": 5,
    "LOG_BATCH": 0,
    "LOG_BLOCK": 4,
    "LOG_UOP_BUFF_SIZE": 15,
    "LOG_INP_BUFF_SIZE": 15,
    "LOG_WGT_BUFF_SIZE": 18,
    "LOG_ACC_BUFF_SIZE": 17,
}
# What `codesign report` may write in a run directory.
REPORT_OUTPUTS = ("run/report.html", "run/report.md", "run/evaluations.csv", "run/pareto.csv", "run/designs")

console = Console(width=None if sys.stdout.isatty() else 160)


# ---- the shared fixtures (built once per run) -----------------------------------------------------


@dataclasses.dataclass
class Shared:
    root: Path  # everything of this run: shared/, probes/, logs/
    dir: Path  # root/shared: the fixtures probes copy
    compile_seconds: float = 0.0

    def path(self, name: str) -> Path:
        return self.dir / name


SHARED: Shared | None = None


def mnist_test(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` MNIST test images (count, 1, 28, 28) float32 0-255 and their labels."""
    images = np.frombuffer(gzip.open(DATA_DIR / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(DATA_DIR / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 1, 28, 28)[:count].astype(np.float32), labels[:count].astype(np.int64)


def save_model(nodes, inputs, outputs, initializers, path: Path) -> None:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_shared(root: Path) -> Shared:
    """Fixtures: calibration and evaluation data, small models, a module compiled from mnist-8 (B)
    and a two-evaluation tuning run of tests/spaces/tiny.toml (run)."""
    shared = Shared(root, root / "shared")
    d = shared.dir
    d.mkdir(parents=True)
    shutil.copy(MNIST, d / "mnist-8.onnx")
    shutil.copy(TINY_SPACE, d / "space.toml")
    images, labels = mnist_test(20)
    np.save(d / "calib.npy", images[:16])
    np.save(d / "x.npy", images[:1])
    np.savez(d / "data.npz", Input3=images, labels=labels)
    # A model whose spatial dims are dynamic (item 18), one with an fp16 input (item 20), one
    # with an unsupported op, and mnist-8 with its weights as external data (item 2).
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H", "W"])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 3, 3], rng.normal(size=144).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    save_model(nodes, [x], [y], [weight], d / "dynamic.onnx")
    x16 = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y16 = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    save_model([helper.make_node("Relu", ["x"], ["y"])], [x16], [y16], [], d / "fp16.onnx")
    xv = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    yv = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("LpNormalization", ["r"], ["y"], axis=0)]
    save_model(nodes, [xv], [yv], [], d / "unsupported.onnx")
    model = onnx.load(str(MNIST))
    model.doc_string = "another model: same graph, other bytes"
    onnx.save(model, str(d / "other.onnx"))
    (d / "ext").mkdir()
    model = onnx.load(str(MNIST))
    for tensor in model.graph.initializer:  # as raw bytes: only those are saved as external data
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
    onnx.save_model(
        model,
        str(d / "ext" / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    # The module and the run, compiled and tuned at the same time.
    env = probe_env(d)
    (d / ".tmp").mkdir()
    compile_argv = ["compile", "mnist-8.onnx", "--hw", "vta_default", "-o", "B", "--calibration", "calib.npy"]
    tune_argv = [*TUNE_BASE[:-1], "run"]  # -o run
    started = time.perf_counter()
    procs = [
        subprocess.Popen(cli(argv), cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for argv in (compile_argv, tune_argv)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    shared.compile_seconds = time.perf_counter() - started
    for argv, proc, (out, err) in zip((compile_argv, tune_argv), procs, outputs):
        if proc.returncode != 0:
            raise RuntimeError(f"setup: codesign {' '.join(argv)} failed:\n{err.decode()}{out.decode()}")
    shutil.rmtree(d / ".tmp")
    return shared


def probe_env(w: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TMPDIR"] = str(w / ".tmp")  # so a temporary file left behind shows in W
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # write nothing into the source tree
    env.pop("CODESIGN_DEBUG", None)
    return env


def cli(argv: list) -> list:
    return [sys.executable, "-m", "codesign.cli", *argv]


# What `uses` names: shared fixture -> its name in W.
USES = {
    "model": "mnist-8.onnx",
    "calib": "calib.npy",
    "data": "data.npz",
    "space": "space.toml",
    "x": "x.npy",
    "dynamic": "dynamic.onnx",
    "module": "B",
    "run": "run",
    "ext": "ext",
}


def copy_shared(use: str, w: Path) -> None:
    name = USES[use]
    source = SHARED.path(name)
    if source.is_dir():
        ignore = shutil.ignore_patterns("report.html", "designs") if use == "run" else None
        shutil.copytree(source, w / name, symlinks=True, ignore=ignore)
    else:
        shutil.copy(source, w / name)


# ---- probes ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    code: int | None  # None: killed by a signal or timed out
    signal: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)  # reasons found by a custom action


@dataclasses.dataclass
class Probe:
    name: str
    item: str  # the item number, or "extra"
    argv: list  # codesign's arguments; "{w}" is replaced by the probe's directory
    setup: Callable[[Path], None] | None = None
    uses: tuple[str, ...] = ()  # shared fixtures copied into W first
    expect: str = "error"  # error | ok | any
    outputs: tuple[str, ...] = ("out",)  # paths in W a success may change
    outputs_on_error: bool = False  # a failure may change them too
    check: Callable[[Path, Outcome], str | None] | None = None
    cwd: str = "."  # relative to W
    action: Callable[[Probe, Path], Outcome] | None = None  # instead of one plain run
    timeout: float = TIMEOUT


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def binary(seed: int = 0, size: int = 4096) -> bytes:
    return b"\xff\xfe\x00" + np.random.default_rng(seed).bytes(size)


def sparse(path: Path, size: int = HUGE) -> None:
    with open(path, "wb") as out:
        out.truncate(size)


def truncate_copy(source: Path, path: Path, keep: float = 0.5) -> None:
    data = source.read_bytes()
    write(path, data[: int(len(data) * keep)])


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def huge_npy_header(shape=PIB_SHAPE) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


def pickled_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def hw_text(*replacements: tuple[str, str]) -> str:
    text = HW_DEFAULT
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def space_text(*replacements: tuple[str, str], append: str = "") -> str:
    text = SPACE_TEXT
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text + append


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    """Change a JSON file's document in place (what `change` returns is ignored)."""
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2) + "\n")


def wrap_json(path: Path, wrap: Callable[[object], object]) -> None:
    """Replace a JSON file's document by what `wrap` makes of it."""
    path.write_text(json.dumps(wrap(json.loads(path.read_text()))) + "\n")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rehash(module: Path, name: str) -> None:
    """Record a module file's current sha256 in its manifest (a user covering an edit)."""
    edit_json(module / "manifest.json", lambda m: m["files"].__setitem__(name, sha256(module / name)))


def first_error_line(o: Outcome) -> str:
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("codesign: error:")]
    return (errors or lines or [""])[0]


# ---- checks (None: fine; else why not) --------------------------------------------------------------


def line_has(*needles: str):
    def check(w: Path, o: Outcome):
        if o.code == 0:
            return None
        line = first_error_line(o).replace(str(w) + "/", "")
        missing = [n for n in needles if n.lower() not in line.lower()]
        return f"error line does not name {', '.join(map(repr, missing))}" if missing else None

    return check


def line_lacks(*needles: str):
    def check(w: Path, o: Outcome):
        line = first_error_line(o)
        found = [n for n in needles if n in line]
        return f"error line shows {', '.join(map(repr, found))}" if found else None

    return check


def all_of(*checks):
    def check(w: Path, o: Outcome):
        for one in checks:
            if problem := one(w, o):
                return problem
        return None

    return check


def module_complete(rel: str = "out"):
    """W/rel is a whole module: a manifest whose listed files exist with their sha256, nothing else."""

    def check(w: Path, o: Outcome):
        out = w / rel
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            for name, digest in manifest["files"].items():
                if sha256(out / name) != digest:
                    return f"{rel}/{name} does not match its manifest"
            extra = {p.name for p in out.iterdir()} - {"manifest.json", *manifest["files"]}
            return f"{rel}/ also holds {sorted(extra)}" if extra else None
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"{rel}/ is not a complete module ({type(err).__name__}: {err})"

    return check


def absent_or(check):
    """W/out does not exist, or passes `check`."""
    return lambda w, o: None if not (w / "out").exists() else check(w, o)


def hardware_name(rel: str, name: str):
    """W/rel is valid TOML whose name is `name` and which holds nothing injected."""

    def check(w: Path, o: Outcome):
        try:
            doc = tomllib.loads((w / rel).read_text())
        except (OSError, ValueError) as err:
            return f"{rel} is not valid TOML ({err})"
        if doc.get("name") != name:
            return f"{rel}: name {doc.get('name')!r}, expected {name!r}"
        if doc.get("gemm", {}).get("batch") != 1:
            return f"{rel}: gemm.batch {doc.get('gemm', {}).get('batch')!r} (injected?)"
        return None

    return check


def quantization_as_shared(rel: str = "out"):
    """The module compiled from mnist-8 with external-data weights quantizes like B (same weights)."""

    def check(w: Path, o: Outcome):
        try:
            got = json.loads((w / rel / "manifest.json").read_text())
        except (OSError, ValueError) as err:
            return f"no manifest ({err})"
        expected = json.loads((SHARED.path("B") / "manifest.json").read_text())
        if got["quantization"]["layers"] != expected["quantization"]["layers"]:
            return "quantization differs from mnist-8's: the weights were not the model's own"
        if got["model"]["sha256"] == sha256(w / "ext" / "model.onnx"):
            return "the model sha256 is that of model.onnx alone (external weights not hashed)"
        return None

    return check


def database_indices(rel: str, count: int):
    def check(w: Path, o: Outcome):
        try:
            lines = (w / rel).read_text().splitlines()
            indices = sorted(json.loads(line)["index"] for line in lines)
        except (OSError, ValueError, KeyError) as err:
            return f"{rel}: unreadable ({type(err).__name__}: {err})"
        return None if indices == list(range(count)) else f"{rel}: indices {indices}, expected 0..{count - 1}"

    return check


def stdout_has(*needles: str):
    def check(w: Path, o: Outcome):
        missing = [n for n in needles if n not in o.stdout]
        return f"output does not mention {', '.join(map(repr, missing))}" if missing else None

    return check


def stderr_has(*needles: str):
    def check(w: Path, o: Outcome):
        missing = [n for n in needles if n not in o.stderr]
        return f"stderr does not mention {', '.join(map(repr, missing))}" if missing else None

    return check


def exists(rel: str):
    def check(w: Path, o: Outcome):
        return None if (w / rel).exists() else f"{rel} was not written"

    return check


# ---- running ----------------------------------------------------------------------------------------


def format_argv(argv: list, w: Path) -> list:
    return [a.replace("{w}", str(w)) if isinstance(a, str) else a for a in argv]


def spawn(probe: Probe, w: Path, argv: list | None = None, tag: str = "") -> tuple[subprocess.Popen, Path]:
    log = SHARED.root / "logs" / f"{w.name}{tag}"
    log.parent.mkdir(exist_ok=True)
    with open(f"{log}.out", "wb") as out, open(f"{log}.err", "wb") as err:
        proc = subprocess.Popen(
            cli(format_argv(argv if argv is not None else probe.argv, w)),
            cwd=w / probe.cwd,
            env=probe_env(w),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc.started = time.perf_counter()  # type: ignore[attr-defined]
    return proc, log


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> Outcome:
    timed_out = False
    try:
        proc.wait(timeout=max(timeout - (time.perf_counter() - proc.started), 1))  # type: ignore[attr-defined]
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = time.perf_counter() - proc.started  # type: ignore[attr-defined]
    code = proc.returncode
    read = lambda suffix: Path(f"{log}{suffix}").read_bytes().decode("utf-8", "replace")  # noqa: E731
    return Outcome(
        None if code < 0 else code, -code if code < 0 else None, read(".out"), read(".err"), seconds, timed_out
    )


def plain(probe: Probe, w: Path) -> Outcome:
    proc, log = spawn(probe, w)
    return finish(proc, log, probe.timeout)


def handles(pid: int, number: int) -> bool:
    """Whether the process has a handler installed for the signal (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (number - 1) & 1)
    return False


def wait_until(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 90) -> bool:
    """Poll until `condition` holds while the process runs; False if it ended (or timed out) first."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.005)
    return False


def database_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def staging_present(w: Path, name: str = "out") -> bool:
    return any(entry.startswith(f".{name}.tmp-") for entry in os.listdir(w))


def signal_when(number: int, ready: Callable[[subprocess.Popen, Path], bool], delay: float = 0.0):
    """An action: send `number` once `ready` holds (and `delay` more seconds passed)."""

    def action(probe: Probe, w: Path) -> Outcome:
        proc, log = spawn(probe, w)
        if not wait_until(proc, lambda: ready(proc, w)):
            outcome = finish(proc, log, probe.timeout)
            outcome.notes.append("harness: the process ended before the signal could be sent")
            return outcome
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, number)
        else:
            outcome = finish(proc, log, probe.timeout)
            outcome.notes.append("harness: the process ended before the signal could be sent")
            return outcome
        return finish(proc, log, probe.timeout)

    return action


def signal_shots(number: int, delays: tuple[float, ...]):
    """An action: run the command once per delay, sending `number` that long after it installed its
    SIGTERM handler. The outcome is the first run that exited 0 (the signal was lost), else the last."""

    def action(probe: Probe, w: Path) -> Outcome:
        outcome = None
        for shot, delay in enumerate(delays):
            proc, log = spawn(probe, w, tag=f"-{shot}")
            if not wait_until(proc, lambda proc=proc: handles(proc.pid, signal.SIGTERM)):
                outcome = finish(proc, log, probe.timeout)
                outcome.notes.append("harness: the process ended before the signal could be sent")
                return outcome
            time.sleep(delay)
            sent = proc.poll() is None
            if sent:
                os.kill(proc.pid, number)
            outcome = finish(proc, log, probe.timeout)
            if not sent:
                outcome.notes.append("harness: the process ended before the signal could be sent")
                return outcome
            if outcome.code == 0:
                name = signal.Signals(number).name
                outcome.notes.append(f"{name} sent {delay:.2f} s after the handler was installed was lost")
                return outcome
            if outcome.code not in (1, 2):
                return outcome
        return outcome

    return action


def catching_sigterm(proc: subprocess.Popen, w: Path) -> bool:
    return handles(proc.pid, signal.SIGTERM)


def kill9_then_rerun(probe: Probe, w: Path) -> Outcome:
    """kill -9 a compile while it writes its module, then compile again: the rerun must clean up."""
    proc, log = spawn(probe, w, tag="-killed")
    if not wait_until(proc, lambda: staging_present(w)):
        outcome = finish(proc, log, probe.timeout)
        outcome.notes.append("harness: the first compile ended before it could be killed")
        return outcome
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return plain(probe, w)


def kill_tune_then_resume(number: int, resume: bool):
    """Stop a tune (budget 4) with `number` after its first record; with `resume`, resume it."""

    def action(probe: Probe, w: Path) -> Outcome:
        proc, log = spawn(probe, w, tag="-first")
        if not wait_until(proc, lambda: database_lines(w / "out" / "database.jsonl") >= 1, timeout=100):
            outcome = finish(proc, log, probe.timeout)
            outcome.notes.append("harness: the tune ended before it recorded an evaluation")
            return outcome
        os.kill(proc.pid, number)
        first = finish(proc, log, probe.timeout)
        if first.code == 0:
            first.notes.append("harness: the tune finished before the signal")
            return first
        if not resume:
            return first
        notes = []
        if number != signal.SIGKILL:
            if first.signal is not None:
                notes.append(f"the tune was killed by {signal.Signals(first.signal).name}")
            elif len([line for line in first.stderr.splitlines() if line.strip()]) != 1:
                notes.append(f"the stopped tune printed {first.stderr.strip()!r}")
        leftovers = sorted(set(os.listdir(w / ".tmp")) - {Path(i).name for i in IGNORED})
        if leftovers:
            notes.append(f"left in TMPDIR after the stopped tune: {leftovers}")
        proc, log = spawn(probe, w, argv=[*probe.argv, "--resume"], tag="-resumed")
        outcome = finish(proc, log, probe.timeout)
        outcome.notes += notes
        return outcome

    return action


def two_at_once(second_argv: list | None = None, stagger: float = 0.0):
    """Run the probe's command twice at the same time (or `second_argv`); the outcome reported is
    a failing one if any (it must be one clean line), else the first."""

    def action(probe: Probe, w: Path) -> Outcome:
        first = spawn(probe, w, tag="-a")
        time.sleep(stagger)
        second = spawn(probe, w, argv=second_argv, tag="-b")
        outcomes = [finish(*first, probe.timeout), finish(*second, probe.timeout)]
        failed = [o for o in outcomes if o.code != 0]
        chosen = failed[0] if failed else outcomes[0]
        if probe.expect == "error" and not failed:
            chosen.notes.append("both processes exited 0")
        if len(failed) == 2:
            chosen.notes.append("both processes failed: " + " / ".join(first_error_line(o) for o in failed))
        return chosen

    return action


def tune_with_live_report(probe: Probe, w: Path) -> Outcome:
    """`codesign report` on a run while its tune is appending records."""
    tune_argv = [*TUNE_BASE[:6], "--budget", "4", "--batch-size", "1", *TUNE_BASE[10:]]
    tune, tune_log = spawn(probe, w, argv=tune_argv, tag="-tune")
    if not wait_until(tune, lambda: database_lines(w / "out" / "database.jsonl") >= 1, timeout=100):
        outcome = finish(tune, tune_log, probe.timeout)
        outcome.notes.append("harness: the tune ended before it recorded an evaluation")
        return outcome
    report = plain(probe, w)
    tuned = finish(tune, tune_log, probe.timeout)
    if tuned.code != 0:
        report.notes.append(f"the tune failed: {first_error_line(tuned) or tuned.signal}")
    return report


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: ('d',), ('l', target), ('f', sha256) or ('?',); but IGNORED."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if rel in IGNORED:
                continue
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    entries[rel] = ("l", os.readlink(path))
                elif stat.S_ISDIR(mode):
                    entries[rel] = ("d",)
                elif stat.S_ISREG(mode):
                    # A tune writes its pid into its lock file: only the lock's existence counts.
                    entries[rel] = ("f", "lock" if name == ".tune.lock" else sha256(Path(path)))
                else:
                    entries[rel] = ("?",)
            except OSError:
                entries[rel] = ("gone",)
    return entries


def changes(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    def inside(rel: str) -> bool:
        return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allowed)

    found = []
    for rel in sorted(set(before) | set(after)):
        if before.get(rel) == after.get(rel) or inside(rel):
            continue
        what = "new" if rel not in before else "removed" if rel not in after else "changed"
        found.append(f"{rel} ({what})")
    return found


def judge(probe: Probe, o: Outcome, changed: list[str]) -> list[str]:
    reasons = list(o.notes)
    text = o.stdout + o.stderr
    err_lines = [line for line in o.stderr.splitlines() if line.strip()]
    if o.timed_out:
        reasons.append(f"timed out after {probe.timeout:.0f} s")
    elif o.signal is not None:
        reasons.append(f"killed by {signal.Signals(o.signal).name}")
    elif o.code == 0:
        if probe.expect == "error":
            reasons.append("exit 0 (expected an error)")
        other = [line for line in err_lines if not WARNING.match(line)]
        if other:
            reasons.append(f"{len(other)} unexpected stderr line(s) on success")
    elif o.code in (1, 2):
        if probe.expect == "ok":
            reasons.append(f"exit {o.code} (expected success)")
        errors = [line for line in err_lines if not WARNING.match(line)]  # warnings may precede it
        if len(errors) != 1:
            reasons.append(f"{len(errors)} error lines on stderr (expected one)")
    else:
        reasons.append(f"exit code {o.code}")
    if "Traceback" in text:
        reasons.append("traceback")
    if "internal error" in text:
        reasons.append("internal error")
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        reasons.append(f"changed: {shown}")
    return reasons


def run_probe(index: int) -> dict:
    probe = PROBES[index]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", probe.name)
    w = SHARED.root / "probes" / f"{index:03d}-{slug}"
    started = time.perf_counter()
    outcome = Outcome(None, None, "", "", 0.0)
    try:
        (w / ".tmp").mkdir(parents=True)
        for use in probe.uses:
            copy_shared(use, w)
        if probe.setup:
            probe.setup(w)
        before = snapshot(w)
        outcome = (probe.action or plain)(probe, w)
        after = snapshot(w)
        allowed = probe.outputs if outcome.code == 0 or probe.outputs_on_error else ()
        reasons = judge(probe, outcome, changes(before, after, allowed))
        if probe.check and not outcome.timed_out and (problem := probe.check(w, outcome)):
            reasons.append(problem)
    except Exception as err:  # noqa: BLE001 (a harness problem, reported as such)
        reasons = [f"harness: {type(err).__name__}: {err}"]
    first = first_error_line(outcome) or next((line for line in outcome.stdout.splitlines() if line.strip()), "")
    return {
        "name": probe.name,
        "item": probe.item,
        "argv": [os.fsdecode(a) for a in probe.argv],
        "expect": probe.expect,
        "clean": not reasons,
        "reasons": reasons,
        "exit_code": outcome.code,
        "signal": outcome.signal,
        "seconds": round(time.perf_counter() - started, 2),
        "first_line": first.replace(str(w) + "/", "").replace(str(w), "W"),
        "stdout": outcome.stdout[-4000:],
        "stderr": outcome.stderr[-4000:],
        "dir": str(w),
    }


# ---- the probes ---------------------------------------------------------------------------------------

CAL = ["--calibration", "calib.npy"]
COMPILE = ["compile", "mnist-8.onnx", "--hw", "vta_default", "-o", "out", *CAL]
RUN = ["run", "B", "--input", "x.npy", "--output", "y.npy"]
SIMULATE = ["simulate", "B", "--json", "sim.json"]
TUNE_BASE = [
    "tune", "mnist-8.onnx", "--space", "space.toml", "--data", "data.npz", "--budget", "2", "--batch-size", "2",
    "--strategy", "random", "--eval-samples", "20", "-o", "out",
]  # fmt: skip
RESUME = [*TUNE_BASE[:-1], "run", "--resume"]


def compile_p(name, item, setup=None, argv=None, extra=(), **kw) -> Probe:
    kw.setdefault("uses", ("model", "calib"))
    return Probe(f"compile/{name}", item, [*(argv or COMPILE), *extra], setup, **kw)


def hw_p(name, item, setup=None, description="hw.toml", **kw) -> Probe:
    return Probe(f"hw/{name}", item, ["hw", description], setup, outputs=(), **kw)


def put(name: str, data: str | bytes):
    """Setup: write W/name."""
    return lambda w: write(w / name, data)


def notes(directory: str):
    """Setup: a user's file, DIR/notes.txt."""
    return put(f"{directory}/notes.txt", "keep\n")


def from_shared(name: str, as_name: str | None = None):
    return lambda w: shutil.copy(SHARED.path(name), w / (as_name or name))


def npy(name: str, array: np.ndarray):
    return lambda w: np.save(w / name, array)


def npz(name: str, **arrays: np.ndarray):
    return lambda w: np.savez(w / name, **arrays)


def npz_raw(name: str, **members: bytes):
    """Setup: an .npz whose members are the given bytes (NAME.npy)."""

    def setup(w: Path):
        with zipfile.ZipFile(w / name, "w") as archive:
            for member, data in members.items():
                archive.writestr(f"{member}.npy", data)

    return setup


def truncated_npz(name: str):
    """Setup: the first half of an .npz of 16 MNIST images (as Input3)."""

    def setup(w: Path):
        buffer = io.BytesIO()
        np.savez(buffer, Input3=images())
        write(w / name, buffer.getvalue()[: len(buffer.getvalue()) // 2])

    return setup


def vta(change: Callable[[dict], object] | None = None, name: str = "vta_config.json"):
    def setup(w: Path):
        config = dict(VTA_CONFIG)
        result = change(config) if change else None
        write(w / name, json.dumps(config if result is None else result))

    return setup


def run_p(name, item, setup=None, argv=None, extra=(), **kw) -> Probe:
    kw.setdefault("uses", ("module", "x"))
    kw.setdefault("outputs", ("y.npy",))
    return Probe(f"run/{name}", item, [*(argv or RUN), *extra], setup, **kw)


def sim_p(name, item, setup=None, argv=None, extra=(), **kw) -> Probe:
    kw.setdefault("uses", ("module",))
    kw.setdefault("outputs", ("sim.json", "rep"))
    return Probe(f"simulate/{name}", item, [*(argv or SIMULATE), *extra], setup, **kw)


def tune_p(name, item, setup=None, argv=None, extra=(), **kw) -> Probe:
    kw.setdefault("uses", ("model", "data", "space"))
    return Probe(f"tune/{name}", item, [*(argv or TUNE_BASE), *extra], setup, **kw)


def resume_p(name, item, setup=None, extra=(), argv=None, **kw) -> Probe:
    kw.setdefault("uses", ("model", "data", "space", "run"))
    kw.setdefault("outputs", ("run",))
    return Probe(f"tune-resume/{name}", item, [*(argv or RESUME), *extra], setup, **kw)


def report_p(name, item, setup=None, argv=None, **kw) -> Probe:
    kw.setdefault("uses", ("run",))
    kw.setdefault("outputs", REPORT_OUTPUTS)
    kw.setdefault("outputs_on_error", True)
    return Probe(f"report/{name}", item, argv or ["report", "run"], setup, **kw)


def manifest(change: Callable[[dict], object], module: str = "B"):
    return lambda w: edit_json(w / module / "manifest.json", change)


def space(*replacements, append: str = ""):
    return lambda w: write(w / "space.toml", space_text(*replacements, append=append))


def data(**arrays):
    """W/data.npz of the first 20 MNIST images and labels, with `arrays` replacing or adding members."""

    def setup(w: Path):
        images, labels = mnist_test(20)
        members = {"Input3": images, "labels": labels}
        members.update(arrays)
        np.savez(w / "data.npz", **{k: v for k, v in members.items() if v is not None})

    return setup


def calibration(array: np.ndarray, name: str = "calib.npy"):
    """Setup: calibration data W/name (.npy, or an .npz with the array as Input3)."""

    def setup(w: Path):
        if name.endswith(".npz"):
            np.savez(w / name, Input3=array)
        else:
            np.save(w / name, array)

    return setup


def images(count: int = 16) -> np.ndarray:
    return mnist_test(count)[0]


def with_value(index, value, count: int = 16, dtype=np.float32) -> np.ndarray:
    array = images(count).astype(dtype)
    array[index] = value
    return array


def database(change: Callable[[list[dict]], list]):
    """Rewrite W/run/database.jsonl: `change` maps its records (dicts) to lines (dicts or bytes)."""

    def setup(w: Path):
        path = w / "run" / "database.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        lines = change(records)
        path.write_bytes(
            b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
        )

    return setup


def mkdirs(*names: str):
    def setup(w: Path):
        for name in names:
            (w / name).mkdir(parents=True, exist_ok=True)

    return setup


def seq(*setups):
    def setup(w: Path):
        for one in setups:
            one(w)

    return setup


def symlink(link: str, target: str):
    return lambda w: os.symlink(target if target.startswith("/") else w / target, w / link)


def shared_module_copy(name: str):
    return lambda w: shutil.copytree(SHARED.path("B"), w / name)


def truncated_shared(source: str, name: str, keep: float = 0.5):
    return lambda w: truncate_copy(SHARED.path(source), w / name, keep)


def ext_model_elsewhere(w: Path) -> None:
    (w / "elsewhere").mkdir()


def ext_decoy(w: Path) -> None:
    (w / "decoy").mkdir()
    weights = np.frombuffer((w / "ext" / "weights.bin").read_bytes(), np.uint8).copy()
    weights[::7] ^= 0x55  # same size, other bytes
    (w / "decoy" / "weights.bin").write_bytes(weights.tobytes())


def ext_escaping(w: Path) -> None:
    """ext/model.onnx's tensors point at ../weights.bin (beside ext/, outside the model's directory)."""
    model = onnx.load(str(w / "ext" / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, str(w / "ext" / "model.onnx"))
    shutil.move(w / "ext" / "weights.bin", w / "weights.bin")


def forge_hardware(w: Path) -> None:
    """B's hardware.toml edited to an 8-wide core with every hash and the manifest's spec updated."""
    text = (w / "B" / "hardware.toml").read_text().replace("block_in = 16", "block_in = 8")
    (w / "B" / "hardware.toml").write_text(text)
    doc = tomllib.loads(text)

    def change(m):
        m["files"]["hardware.toml"] = sha256(w / "B" / "hardware.toml")
        m["hardware"]["spec"]["block_in"] = 8
        fields = {k: v for k, v in m["hardware"]["spec"].items() if k != "name"}
        m["hardware"]["sha256"] = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        assert doc["gemm"]["block_in"] == 8

    edit_json(w / "B" / "manifest.json", change)


def edit_file(rel: str, old: str, new: str):
    def setup(w: Path):
        text = (w / rel).read_text()
        assert old in text, old
        (w / rel).write_text(text.replace(old, new, 1))

    return setup


def flip_byte(rel: str, at: float = 0.5):
    def setup(w: Path):
        data = bytearray((w / rel).read_bytes())
        data[int(len(data) * at)] ^= 0xFF
        (w / rel).write_bytes(bytes(data))

    return setup


def layer(index: int, change: Callable[[dict], None]):
    return manifest(lambda m: change(m["layers"][index]))


def first_accelerated_layer(change: Callable[[dict], None]):
    return manifest(lambda m: change(next(lay for lay in m["layers"] if lay["placement"] == "accel")))


def build_probes() -> list[Probe]:
    p: list[Probe] = []
    name_250, name_256 = "o" * 250, "o" * 256
    m = ["--hw", "vta_default", "-o", "out"]  # compile MODEL + m

    # ---- compile: the model ---------------------------------------------------------------------------------
    ext = ["compile", "{w}/ext/model.onnx", "--hw", "vta_default", "-o", "{w}/out", "--calibration", "{w}/calib.npy"]
    p += [
        compile_p("model-missing", "extra", argv=["compile", "absent.onnx", *m, *CAL]),
        compile_p("model-binary", "extra", put("m.onnx", binary(1)), ["compile", "m.onnx", *m]),
        compile_p("model-truncated", "extra", truncated_shared("mnist-8.onnx", "m.onnx"), ["compile", "m.onnx", *m]),
        compile_p("model-huge", "extra", lambda w: sparse(w / "m.onnx"), ["compile", "m.onnx", *m]),
        compile_p(
            "model-unsupported-op",
            "extra",
            from_shared("unsupported.onnx"),
            ["compile", "unsupported.onnx", *m],
            check=line_has("LpNormalization"),
        ),
        # fp16 models are now widened to float32: either that works, or the error names the type.
        compile_p(
            "model-fp16-input",
            "20",
            from_shared("fp16.onnx"),
            ["compile", "fp16.onnx", *m],
            expect="any",
            check=all_of(line_has("float16"), line_lacks("element type 10")),
        ),
        compile_p(
            "external-data-other-cwd",
            "2",
            mkdirs("elsewhere"),
            ext,
            uses=("ext", "calib"),
            cwd="elsewhere",
            expect="ok",
            check=quantization_as_shared(),
        ),
        compile_p(
            "external-data-decoy-in-cwd",
            "2",
            ext_decoy,
            ext,
            uses=("ext", "calib"),
            cwd="decoy",
            expect="ok",
            check=quantization_as_shared(),
        ),
        compile_p(
            "external-data-escaping",
            "2",
            ext_escaping,
            ["compile", "ext/model.onnx", *m, *CAL],
            uses=("ext", "calib"),
            check=line_has("weights.bin"),
        ),
        compile_p(
            "external-data-missing",
            "2",
            lambda w: (w / "ext" / "weights.bin").unlink(),
            ["compile", "ext/model.onnx", *m, *CAL],
            uses=("ext", "calib"),
            check=line_has("weights.bin"),
        ),
    ]

    # ---- compile: the output directory ----------------------------------------------------------------------
    manifest_v3 = json.dumps({"format": "codesign-module", "format_version": 3})
    to = lambda name: [*COMPILE[:-3], name, *CAL]  # noqa: E731
    p += [
        compile_p("out-json-manifest-with-notes", "1", seq(put("out/manifest.json", "{}"), notes("out")), outputs=()),
        compile_p(
            "out-codesign-manifest-with-notes",
            "1",
            seq(put("out/manifest.json", manifest_v3), notes("out")),
            outputs=(),
        ),
        compile_p("out-module-with-notes", "1", seq(shared_module_copy("out"), notes("out")), outputs=()),
        compile_p("out-user-dir", "1", notes("out"), outputs=()),
        compile_p("out-symlink-to-user-dir", "1", seq(notes("mine"), symlink("out", "mine")), outputs=()),
        compile_p("out-empty-dir", "1", mkdirs("out"), expect="ok", check=module_complete()),
        compile_p("out-existing-module", "1", shared_module_copy("out"), expect="ok", check=module_complete()),
        compile_p("out-is-file", "13", put("out", "keep\n"), outputs=()),
        compile_p("out-under-file", "13", put("f", "keep\n"), to("f/out"), outputs=()),
        compile_p(
            "out-dot",
            "13",
            mkdirs("sub"),
            ["compile", "../mnist-8.onnx", "--hw", "vta_default", "-o", ".", "--calibration", "../calib.npy"],
            cwd="sub",
            outputs=(),
        ),
        compile_p("out-proc", "13", argv=to("/proc/probe_cli_out"), outputs=()),
        compile_p("out-250-char-name", "13", argv=to(name_250), outputs=(name_250,), expect="ok"),
        compile_p("out-256-char-name", "13", argv=to(name_256), outputs=()),
        # "o[/x]" is the directory x] in o[, a name rich would read as markup.
        compile_p("out-rich-markup-name", "extra", argv=to("o[/x]"), outputs=("o[",), expect="ok"),
        compile_p("report-proc", "13", extra=["--report", "/proc/probe_cli_report"], outputs_on_error=True),
    ]

    # ---- compile: calibration data -------------------------------------------------------------------------
    def cal(name, item, setup, **kw):
        return compile_p(f"calibration-{name}", item, setup, uses=("model",), **kw)

    npz_argv = [*COMPILE[:-1], "calib.npz"]
    p += [
        cal("missing", "extra", None),
        cal("empty-file", "extra", put("calib.npy", b"")),
        cal("binary", "extra", put("calib.npy", binary(2))),
        cal("huge-sparse", "extra", lambda w: sparse(w / "calib.npy")),
        cal("header-claims-petabytes", "extra", put("calib.npy", huge_npy_header())),
        cal("npz-truncated", "extra", truncated_npz("calib.npz"), argv=npz_argv),
        cal("strings", "15", calibration(np.array(["a", "bb", "cc"]))),
        cal("npz-object-array", "15", npz("calib.npz", Input3=np.array([{"a": 1}], dtype=object)), argv=npz_argv),
        cal("npy-pickled-objects", "15", lambda w: pickled_npy(w / "calib.npy")),
        cal("inf", "9", calibration(with_value((3, 0, 0, 5), np.inf)), check=line_has("sample 3")),
        cal("all-nan", "9", calibration(np.full((16, 1, 28, 28), np.nan, np.float32))),
        cal("one-nan-last-sample", "9", calibration(with_value((15, 0, 14, 14), np.nan)), check=line_has("sample 15")),
        cal("all-zero", "9", calibration(np.zeros((16, 1, 28, 28), np.float32))),
        cal("complex", "9", calibration(images().astype(np.complex64) * (1 + 1j))),
        cal("complex-zero-imaginary", "9", calibration(images().astype(np.complex128))),
        cal("float64-overflows-float32", "9", calibration(with_value((2, 0, 3, 3), 1e300, dtype=np.float64))),
        cal("zero-samples", "9", calibration(np.zeros((0, 1, 28, 28), np.float32))),
        cal("float64-valid", "9", calibration(images().astype(np.float64)), expect="ok", check=module_complete()),
    ]

    # ---- compile: --compression ----------------------------------------------------------------------------
    def comp(name, content, **kw):
        setup = put("comp.json", content) if isinstance(content, (str, bytes)) else content
        return compile_p(f"compression-{name}", "19", setup, extra=["--compression", "comp.json"], **kw)

    p += [
        comp("missing", lambda w: None),
        comp("empty", ""),
        comp("binary", binary(3)),
        comp("huge", lambda w: sparse(w / "comp.json")),
        comp("json-list", "[8, 4]"),
        comp("prune-string", '{"prune": {"conv2d_0": "0.5"}}'),
        comp("bits-list", '{"weight_bits": {"conv2d_0": [8]}}'),
        comp("prune-nan", '{"prune": {"conv2d_0": NaN}}'),
        comp("prune-one", '{"prune": {"conv2d_0": 1.0}}'),
        comp("bits-float", '{"weight_bits": {"conv2d_0": 4.0}}'),
        comp("unknown-layer", '{"weight_bits": {"conv9d_9": 4}}', check=line_has("conv9d_9")),
        comp("schedule-bogus", '{"schedule": "fast"}'),
        comp("valid", '{"weight_bits": {"conv2d_1": 4}, "prune": {"conv2d_1": 0.25}}', expect="ok"),
    ]

    # ---- compile: options ----------------------------------------------------------------------------------
    dyn = ["compile", "dynamic.onnx", *m]
    hw_toml = [*COMPILE[:3], "hw.toml", *COMPILE[4:]]
    injected = 'name = "a\\"\\n[gemm]\\nbatch = 64\\n#"'
    p += [
        compile_p("input-shape-mismatch", "18", extra=["--input-shape", "Input3=1,1,28,29"]),
        compile_p("input-shape-unknown-name", "18", extra=["--input-shape", "Nope=1,2"], check=line_has("Nope")),
        compile_p("input-shape-negative", "18", extra=["--input-shape", "Input3=1,1,-28,28"]),
        compile_p(
            "dynamic-huge-shape",
            "18",
            argv=[*dyn, "--input-shape", "x=1,4,100000,100000"],
            uses=("dynamic",),
            check=line_has("memory"),
        ),
        compile_p("dynamic-int64-overflow", "18", argv=[*dyn, "--input-shape", "x=1,4,99999999999999999999,8"]),
        compile_p("dynamic-zero-dim", "18", argv=[*dyn, "--input-shape", "x=1,4,0,8"], uses=("dynamic",)),
        compile_p("dynamic-unbound", "18", argv=dyn, uses=("dynamic",), check=line_has("--input-shape")),
        compile_p("dynamic-bound", "18", argv=[*dyn, "--input-shape", "x=1,4,8,8"], uses=("dynamic",), expect="ok"),
        compile_p("input-value-text", "extra", extra=["--input-value", "Input3=abc"]),
        compile_p(
            "hw-name-quote-injection",
            "10",
            put("hw.toml", hw_text(('name = "vta_default"', injected))),
            hw_toml,
            expect="ok",
            check=hardware_name("out/hardware.toml", 'a"\n[gemm]\nbatch = 64\n#'),
        ),
        compile_p(
            "hw-name-rich-markup",
            "extra",
            put("hw.toml", hw_text(('name = "vta_default"', 'name = "[/]"'))),
            hw_toml,
            expect="ok",
            check=hardware_name("out/hardware.toml", "[/]"),
        ),
        compile_p("hw-vta-config", "17", vta(), [*COMPILE[:3], "vta_config.json", *COMPILE[4:]], expect="ok"),
    ]
    for probe in p:
        if probe.argv[:2] == ["compile", "dynamic.onnx"]:
            probe.uses = ("dynamic",)

    # ---- hw: hardware descriptions -------------------------------------------------------------------------
    def hw(name, item, replacement=None, **kw):
        setup = put("hw.toml", hw_text(replacement)) if isinstance(replacement, tuple) else replacement
        return hw_p(name, item, setup, **kw)

    p += [
        hw("missing-file", "extra"),
        hw("empty", "extra", put("hw.toml", "")),
        hw("binary", "15", put("hw.toml", binary(4))),
        hw("huge", "extra", lambda w: sparse(w / "hw.toml")),
        hw("dev-null", "extra", description="/dev/null"),
        hw("invalid-toml", "extra", ("block_in = 16", "block_in = ")),
        hw("block-in-string", "extra", ("block_in = 16", 'block_in = "x"'), check=line_has("gemm.block_in")),
        hw("clock-nan", "extra", ("clock_mhz = 100", "clock_mhz = nan")),
        hw("weight-buffer-1e9", "extra", ("weight = 262144", "weight = 1e9")),
        hw("unknown-section", "extra", put("hw.toml", HW_DEFAULT + "\n[cache]\nsize = 1\n"), check=line_has("cache")),
        hw("unknown-field", "extra", ("batch = 1", "batch = 1\nbatchh = 2"), check=line_has("batchh")),
        hw("latin1-comment", "extra", put("hw.toml", hw_text(("# VTA's", "# VTA\xe9s")).encode("latin-1"))),
        hw(
            "name-quote", "10", ('name = "vta_default"', 'name = "say \\"hi\\""'), expect="ok", check=stdout_has('"hi"')
        ),
        hw("name-rich-markup", "extra", ('name = "vta_default"', 'name = "[/]"'), expect="ok"),
    ]

    # ---- hw: vta_config.json -------------------------------------------------------------------------------
    def v(name, setup, **kw):
        return hw_p(f"vta-config-{name}", "17", setup, description="vta_config.json", **kw)

    p += [
        v("valid", vta(), expect="ok"),
        v(
            "block-in-string",
            vta(lambda c: c.update(LOG_BLOCK_IN="x", LOG_BLOCK_OUT=4)),
            check=line_has("LOG_BLOCK_IN"),
        ),
        v(
            "block-in-99",
            vta(lambda c: c.update(LOG_BLOCK_IN=99, LOG_BLOCK_OUT=4)),
            check=all_of(line_has("LOG_BLOCK_IN"), line_lacks("gemm.block_in")),
        ),
        v("block-12", vta(lambda c: c.update(LOG_BLOCK=12)), check=all_of(line_has("LOG_BLOCK"), line_lacks("gemm."))),
        v("batch-true", vta(lambda c: c.update(LOG_BATCH=True)), check=line_has("LOG_BATCH")),
        v("width-float", vta(lambda c: c.update(LOG_INP_WIDTH=3.0)), check=line_has("LOG_INP_WIDTH")),
        v("list", vta(lambda c: [c])),
        v("binary", put("vta_config.json", binary(5))),
        v("empty", put("vta_config.json", "")),
    ]

    # ---- run -----------------------------------------------------------------------------------------------
    outside = lambda w: shutil.copytree(w / "B", w / "outside")  # noqa: E731

    def run_input(name, item, setup, file, **kw):
        return run_p(name, item, setup, ["run", "B", "--input", file, "--output", "y.npy"], **kw)

    def shape_edited(w: Path) -> None:
        edit_json(w / "B" / "manifest.json", lambda m: m["inputs"][0].update(shape=[1, 1, 28, 29]))
        np.save(w / "s.npy", np.ones((1, 1, 28, 29), np.float32))

    def dtype_edited(w: Path) -> None:
        edit_json(w / "B" / "manifest.json", lambda m: m["inputs"][0].update(dtype="float64"))
        np.save(w / "d.npy", np.ones((1, 1, 28, 28)))

    def library_absolute(w: Path) -> None:
        outside(w)
        edit_json(w / "B" / "manifest.json", lambda m: m.update(library=str(w / "outside" / "module.so")))

    def library_symlink(w: Path) -> None:
        outside(w)
        (w / "B" / "module.so").unlink()
        os.symlink(w / "outside" / "module.so", w / "B" / "module.so")

    truncate_library = lambda w: truncate_copy(w / "B" / "module.so", w / "B" / "module.so")  # noqa: E731
    p += [
        run_p("valid", "extra", expect="ok", check=exists("y.npy")),
        run_p(
            "output-without-suffix",
            "21",
            argv=[*RUN[:-1], "y"],
            outputs=("y", "y.npy"),
            expect="ok",
            check=all_of(exists("y.npy"), stdout_has("y.npy")),
        ),
        run_input(
            "input-npz-strings", "21", npz("x.npz", Input3=np.array(["abcdef"])), "x.npz", check=line_lacks("<U")
        ),
        run_input("input-binary", "extra", put("b.npy", binary(6)), "b.npy"),
        run_input("input-npz-truncated", "extra", truncated_npz("t.npz"), "t.npz"),
        run_input("input-header-claims-petabytes", "extra", put("h.npy", huge_npy_header()), "h.npy"),
        run_input("input-wrong-shape", "extra", npy("s.npy", np.ones((1, 1, 28, 29), np.float32)), "s.npy"),
        run_input("input-pickled-objects", "extra", lambda w: pickled_npy(w / "o.npy"), "o.npy"),
        run_input("input-unknown-name", "extra", None, "Nope=x.npy", check=line_has("Nope")),
        run_input(
            "input-nan", "extra", npy("n.npy", np.full((1, 1, 28, 28), np.nan, np.float32)), "n.npy", expect="any"
        ),
        run_p("output-proc", "13", argv=[*RUN[:-1], "/proc/probe_cli.npy"], outputs=()),
        # numpy writes ydir.npy beside an existing directory ydir: fine either way.
        run_p("output-is-dir", "13", mkdirs("ydir"), [*RUN[:-1], "ydir"], outputs=("ydir.npy",), expect="any"),
        run_p("output-under-file", "13", put("f", "keep\n"), [*RUN[:-1], "f/y.npy"], outputs=()),
        run_p("output-rich-markup-name", "extra", mkdirs("y["), [*RUN[:-1], "y[/].npy"], outputs=("y[",), expect="ok"),
        run_p("hw-mismatch", "extra", extra=["--hw", "edge_1x8x8"], check=line_has("edge_1x8x8")),
        run_p("module-extra-file", "8", put("B/notes.txt", "mine\n"), expect="ok"),
        run_p("library-flipped-byte", "8", flip_byte("B/module.so"), check=line_has("module.so")),
        run_p("library-truncated", "12", truncate_library, check=line_has("module.so")),
        run_p("library-truncated-rehashed", "12", seq(truncate_library, lambda w: rehash(w / "B", "module.so"))),
        run_p("library-hash-changed", "8", manifest(lambda m: m["files"].__setitem__("module.so", "0" * 64))),
        run_p(
            "library-escapes",
            "3",
            seq(outside, manifest(lambda m: m.update(library="../outside/module.so"))),
            check=line_has("library"),
        ),
        run_p("library-absolute", "3", library_absolute),
        run_p("library-symlink-outside", "3", library_symlink),
        run_p(
            "files-entry-escapes",
            "3",
            seq(outside, manifest(lambda m: m["files"].__setitem__("../outside/module.so", m["files"]["module.so"]))),
        ),
        run_p("manifest-binary", "14", put("B/manifest.json", binary(7))),
        run_p("manifest-empty", "14", put("B/manifest.json", "")),
        run_p("manifest-list", "14", lambda w: wrap_json(w / "B" / "manifest.json", lambda m: [m])),
        run_p("manifest-no-inputs", "14", manifest(lambda m: m.pop("inputs")), check=line_has("inputs")),
        run_p(
            "manifest-dtype-float99",
            "14",
            manifest(lambda m: m["inputs"][0].update(dtype="float99")),
            check=line_has("float99"),
        ),
        run_p("manifest-hardware-extra-key", "14", manifest(lambda m: m["hardware"]["spec"].update(turbo=True))),
        run_p("manifest-format-version-99", "14", manifest(lambda m: m.update(format_version=99))),
        # The manifest cannot hash itself: an edited input spec that disagrees with module.so.
        run_input("manifest-shape-edited", "14", shape_edited, "s.npy", expect="any"),
        run_input("manifest-dtype-edited", "14", dtype_edited, "d.npy", expect="any"),
    ]

    # ---- simulate ------------------------------------------------------------------------------------------
    def hw_outside(w: Path) -> None:
        shutil.copy(w / "B" / "hardware.toml", w / "hw_outside.toml")
        (w / "B" / "hardware.toml").unlink()
        os.symlink(w / "hw_outside.toml", w / "B" / "hardware.toml")

    edit_hw = edit_file("B/hardware.toml", "block_in = 16", "block_in = 8")
    onnx_sim = ["simulate", "mnist-8.onnx", "--hw", "vta_default"]
    p += [
        sim_p("module-valid", "extra", expect="ok", check=exists("sim.json")),
        sim_p("onnx-valid", "extra", argv=onnx_sim, uses=("model",), expect="ok"),
        sim_p("missing-path-no-hw", "23", argv=["simulate", "absent.onnx"], uses=(), check=line_has("no such")),
        sim_p("missing-dir-no-hw", "23", argv=["simulate", "absent_module"], uses=(), check=line_has("no such")),
        sim_p("onnx-without-hw", "extra", argv=["simulate", "mnist-8.onnx"], uses=("model",), check=line_has("--hw")),
        sim_p("hardware-edited", "8", edit_hw, check=line_has("hardware.toml")),
        sim_p(
            "hardware-edited-rehashed",
            "8",
            seq(edit_hw, lambda w: rehash(w / "B", "hardware.toml")),
            check=line_has("hardware.toml"),
        ),
        sim_p("hardware-forged-consistently", "8", forge_hardware, expect="any"),
        sim_p(
            "hardware-binary-rehashed",
            "15",
            seq(put("B/hardware.toml", binary(8)), lambda w: rehash(w / "B", "hardware.toml")),
        ),
        sim_p(
            "hardware-file-passwd",
            "3",
            manifest(lambda m: m["hardware"].update(file="../../../../etc/passwd")),
            check=line_has("hardware"),
        ),
        sim_p("hardware-file-absolute", "3", manifest(lambda m: m["hardware"].update(file="/etc/passwd"))),
        sim_p("hardware-symlink-outside", "3", hw_outside),
        sim_p(
            "tiling-zero",
            "14",
            first_accelerated_layer(lambda lay: lay["tiling"].update(h_tile=0)),
            check=line_has("layers"),
        ),
        sim_p(
            "tiling-too-big",
            "14",
            first_accelerated_layer(lambda lay: lay["tiling"].update(h_tile=100000, w_tile=100000)),
            check=line_has("layers"),
        ),
        sim_p("layer-not-object", "14", manifest(lambda m: m["layers"].__setitem__(1, 5))),
        sim_p("layer-op-unknown", "14", layer(1, lambda lay: lay.update(op="conv9d")), expect="any"),
        sim_p("layers-empty", "14", manifest(lambda m: m.update(layers=[])), expect="any"),
        sim_p("manifest-list", "14", lambda w: wrap_json(w / "B" / "manifest.json", lambda m: [m])),
        sim_p("json-proc", "13", argv=["simulate", "B", "--json", "/proc/probe_cli.json"], outputs=()),
        sim_p("report-is-file", "13", put("rep", "keep\n"), argv=["simulate", "B", "--report", "rep"], outputs=()),
        sim_p(
            "dynamic-huge-shape",
            "18",
            argv=["simulate", "dynamic.onnx", "--hw", "vta_default", "--input-shape", "x=1,4,100000,100000"],
            uses=("dynamic",),
        ),
        sim_p(
            "calibration-inf",
            "9",
            calibration(with_value((0, 0, 0, 0), np.inf)),
            argv=[*onnx_sim, *CAL],
            uses=("model",),
        ),
    ]

    # ---- tune: the search space (refused before anything is written) ---------------------------------------
    def s(name, item, setup, **kw):
        return tune_p(f"space-{name}", item, setup, **kw)

    objectives = 'objectives = ["latency", "energy", "area", "accuracy"]'
    p += [
        s("is-dir", "13", seq(lambda w: (w / "space.toml").unlink(), mkdirs("space.toml"))),
        s("binary", "extra", put("space.toml", binary(9))),
        s("huge", "extra", lambda w: sparse(w / "space.toml")),
        s(
            "step-zero",
            "16",
            space(("block_in = [8, 16]", "block_in = {min = 8, max = 16, step = 0}")),
            check=line_has("step"),
        ),
        s(
            "log2-min-zero",
            "16",
            space(("wgt_buffer_kib = [32, 256]", 'wgt_buffer_kib = {min = 0, max = 256, scale = "log2"}')),
        ),
        s(
            "accuracy-drop-two",
            "16",
            space(("accuracy_drop_max = 2.0", 'accuracy_drop_max = "two"')),
            check=line_has("accuracy_drop_max"),
        ),
        s("objectives-empty", "16", space((objectives, "objectives = []"))),
        s(
            "block-in-unreachable",
            "16",
            space(("block_in = [8, 16]", "block_in = [12, 4096]")),
            check=line_has("block_in"),
        ),
        s(
            "wgt-buffer-1e9",
            "16",
            space(("wgt_buffer_kib = [32, 256]", "wgt_buffer_kib = [1e9]")),
            check=line_has("wgt_buffer_kib"),
        ),
        s(
            "scale-cubic",
            "16",
            space(("wgt_buffer_kib = [32, 256]", 'wgt_buffer_kib = {min = 32, max = 256, scale = "cubic"}')),
            check=line_has("cubic"),
        ),
        s("objectives-string", "22", space((objectives, 'objectives = "latency"')), check=line_lacks("'l'", "'a'")),
        s("groups-string", "22", space(append='\n[compression.groups]\nearly = "conv2d_0"\n'), check=line_lacks("'c'")),
        s(
            "range-too-wide",
            "extra",
            space(("dram_bytes_per_cycle = [4, 16]", "dram_bytes_per_cycle = {min = 1, max = 4096, step = 0.0001}")),
        ),
        s("unknown-knob", "extra", space(("block_in = [8, 16]", "block_inn = [8, 16]")), check=line_has("block_inn")),
        s("choice-nan", "extra", space(("dram_bytes_per_cycle = [4, 16]", "dram_bytes_per_cycle = [nan]"))),
        s(
            "objective-unknown",
            "extra",
            space((objectives, 'objectives = ["latency", "speed"]')),
            check=line_has("speed"),
        ),
    ]

    # ---- tune: the data ------------------------------------------------------------------------------------
    def d(name, item, setup, **kw):
        return tune_p(f"data-{name}", item, setup, **kw)

    zeros = npy_bytes(np.zeros(20, np.int64))
    p += [
        d("empty-file", "extra", put("data.npz", b"")),
        d("truncated", "extra", lambda w: truncate_copy(w / "data.npz", w / "data.npz")),
        d(
            "no-arrays",
            "22",
            lambda w: np.savez(w / "data.npz"),
            check=all_of(line_has("data.npz"), line_lacks(".tune-tmp", ".tmp/")),
        ),
        d("object-array", "15", npz("data.npz", Input3=np.array([{"a": 1}], dtype=object), labels=np.zeros(1))),
        d("string-labels", "15", data(labels=np.array(["seven"] * 20))),
        d("labels-too-short", "15", data(labels=np.zeros(3, np.int64))),
        d("labels-nan", "22", data(labels=np.full(20, np.nan))),
        # mnist-8 has 10 classes: label 99 can never match (accuracy 0 % without a word).
        d("labels-out-of-range", "extra", data(labels=np.full(20, 99))),
        d("input-inf", "extra", data(Input3=with_value((0, 0, 0, 0), np.inf, count=20))),
        d("input-complex", "extra", data(Input3=images(20).astype(np.complex64))),
        d("input-wrong-shape", "extra", data(Input3=np.ones((20, 3, 28, 28), np.float32))),
        d("member-claims-petabytes", "extra", npz_raw("data.npz", Input3=huge_npy_header(), labels=zeros)),
    ]

    # ---- tune: the run directory and options ---------------------------------------------------------------
    to = lambda name: [*TUNE_BASE[:-1], name]  # noqa: E731
    p += [
        tune_p("out-is-file", "13", put("out", "keep\n"), outputs=()),
        tune_p("out-under-file", "13", put("f", "keep\n"), to("f/run"), outputs=()),
        tune_p("out-proc", "13", argv=to("/proc/probe_cli_run"), outputs=()),
        tune_p("out-256-char-name", "13", argv=to(name_256), outputs=()),
        tune_p(
            "out-user-files",
            "4",
            seq(put("out/report.md", "mine\n"), put("out/settings.json", "{}\n"), put("out/pareto.csv", "a,b\n")),
            outputs=(),
            check=line_has("--resume"),
        ),
        tune_p("out-user-notes", "4", notes("out"), outputs=()),
        tune_p(
            "out-existing-run",
            "4",
            lambda w: shutil.copytree(SHARED.path("run"), w / "out"),
            outputs=(),
            check=line_has("--resume"),
        ),
        tune_p("resume-empty-dir", "22", mkdirs("out"), extra=["--resume"], outputs=()),
        tune_p("resume-non-run-dir", "22", notes("out"), extra=["--resume"], outputs=()),
        tune_p("seed-negative", "extra", extra=["--seed", "-1"], expect="any"),
        tune_p("model-missing", "extra", argv=["tune", "absent.onnx", *TUNE_BASE[2:]]),
        tune_p("calibration-missing", "extra", extra=["--calibration", "absent.npz"], outputs=()),
        tune_p(
            "calibration-wrong-input",
            "extra",
            npz("cal.npz", x=np.zeros((4, 3))),
            extra=["--calibration", "cal.npz"],
            outputs=(),
        ),
    ]

    # ---- tune --resume of a different run (the copy of the shared run must be refused untouched) ---------
    p += [
        resume_p("other-space", "6", space(("prune = [0.0, 0.25]", "prune = [0.0, 0.5]")), check=line_has("--space")),
        resume_p("other-seed", "6", extra=["--seed", "1"], check=line_has("--seed")),
        resume_p(
            "other-strategy",
            "6",
            argv=[*RESUME[:10], "--strategy", "xgboost", *RESUME[12:]],
            check=line_has("--strategy"),
        ),
        resume_p(
            "other-batch-size",
            "6",
            argv=[*RESUME[:8], "--batch-size", "4", *RESUME[10:]],
            check=line_has("--batch-size"),
        ),
        resume_p("other-data", "6", data(labels=np.roll(mnist_test(20)[1], 1)), check=line_has("--data")),
        resume_p("other-model", "6", from_shared("other.onnx", "mnist-8.onnx"), check=line_has("model")),
        resume_p(
            "other-eval-samples",
            "6",
            argv=[*RESUME[:12], "--eval-samples", "10", *RESUME[14:]],
            check=line_has("--eval-samples"),
        ),
        resume_p(
            "other-input-shape", "6", extra=["--input-shape", "Input3=1,1,28,28"], check=line_has("--input-shape")
        ),
        resume_p(
            "same-run-more-budget",
            "6",
            argv=[*RESUME[:6], "--budget", "3", *RESUME[8:]],
            expect="ok",
            check=database_indices("run/database.jsonl", 3),
        ),
        resume_p("run-json-corrupt", "6", put("run/run.json", "{not json")),
        resume_p(
            "database-is-dir",
            "15",
            seq(lambda w: (w / "run" / "database.jsonl").unlink(), mkdirs("run/database.jsonl")),
        ),
    ]

    # ---- report --------------------------------------------------------------------------------------------
    def record(change):
        return database(lambda r: [r[0], change(dict(r[1]))])

    def config(change):
        return record(lambda rec: {**rec, "config": change(dict(rec["config"]))})

    def settings(change):
        return lambda w: edit_json(w / "run" / "settings.json", change)

    torn = lambda w: write(w / "run" / "database.jsonl", (w / "run" / "database.jsonl").read_bytes() + b'{"batch"')  # noqa: E731
    garbage = binary(13).replace(b"\n", b"") + b"\n" + binary(14).replace(b"\n", b"") + b"\n"
    p += [
        report_p("valid", "extra", expect="ok", check=exists("run/report.html")),
        report_p("torn-last-line", "7", torn, expect="ok"),
        report_p(
            "corrupt-middle-line",
            "24",
            database(lambda r: [r[0], b"{garbage", r[1]]),
            expect="ok",
            check=stderr_has("line 2"),
        ),
        report_p(
            "record-without-metrics",
            "14",
            record(lambda rec: {k: v for k, v in rec.items() if k != "metrics"}),
            check=line_has("metrics"),
        ),
        report_p(
            "database-is-dir",
            "15",
            seq(lambda w: (w / "run" / "database.jsonl").unlink(), mkdirs("run/database.jsonl")),
        ),
        report_p("database-binary-lines", "extra", put("run/database.jsonl", garbage)),
        report_p("record-index-string", "14", record(lambda rec: {**rec, "index": "1"})),
        report_p(
            "record-metrics-nan",
            "14",
            record(lambda rec: {**rec, "metrics": {**rec["metrics"], "latency": math.nan}}),
            expect="any",
        ),
        report_p("record-config-unreachable", "14", config(lambda c: {**c, "hw.block_in": 12}), expect="any"),
        report_p("record-config-string", "14", config(lambda c: {**c, "hw.block_in": "16"}), expect="any"),
        report_p(
            "record-config-missing-knob", "14", config(lambda c: {k: v for k, v in c.items() if k != "hw.block_in"})
        ),
        report_p("record-feasible-no-metrics", "14", record(lambda rec: {**rec, "feasible": True, "metrics": {}})),
        report_p("space-missing", "extra", lambda w: (w / "run" / "space.toml").unlink()),
        report_p(
            "space-other-choices",
            "extra",
            edit_file("run/space.toml", "block_in = [8, 16]", "block_in = [8, 32]"),
            expect="any",
        ),
        report_p("settings-binary", "extra", put("run/settings.json", binary(16)), expect="any"),
        report_p("settings-model-number", "extra", settings(lambda st: st.update(model=5)), expect="any"),
        report_p(
            "settings-input-shapes-string", "extra", settings(lambda st: st.update(input_shapes="x")), expect="any"
        ),
        report_p(
            "settings-is-dir",
            "extra",
            seq(lambda w: (w / "run" / "settings.json").unlink(), mkdirs("run/settings.json")),
            expect="any",
        ),
        report_p(
            "report-md-is-dir", "extra", seq(lambda w: (w / "run" / "report.md").unlink(), mkdirs("run/report.md"))
        ),
        report_p(
            "report-html-symlink-to-user-file",
            "extra",
            seq(put("mine.html", "mine\n"), symlink("run/report.html", "mine.html")),
            expect="ok",
        ),
        report_p("dir-is-module", "extra", argv=["report", "B"], uses=("module",)),
        report_p(
            "during-live-tune",
            "7",
            argv=["report", "out"],
            uses=("model", "data", "space"),
            outputs=("out",),
            expect="ok",
            action=tune_with_live_report,
            check=database_indices("out/database.jsonl", 4),
        ),
    ]

    # ---- demo, and the command line itself -----------------------------------------------------------------
    p += [
        Probe("demo/out-is-file", "13", ["demo", "-o", "f"], put("f", "keep\n"), outputs=()),
        Probe("demo/out-under-file", "13", ["demo", "-o", "f/demo"], put("f", "keep\n"), outputs=()),
        Probe("demo/out-proc", "13", ["demo", "-o", "/proc/probe_cli_demo"], outputs=()),
        Probe("demo/out-holds-user-module-dir", "1", ["demo", "-o", "out"], notes("out/mnist_vta_default"), outputs=()),
        Probe(
            "demo/out-holds-user-calibration-file",
            "extra",
            ["demo", "-o", "out"],
            put("out/mnist_calibration.npy", "mine\n"),
            outputs=("out/mnist_vta_default", "out/mnist_vta_shift_only"),
            expect="any",
        ),
        Probe("cli/unknown-command", "extra", ["frobnicate"], outputs=()),
    ]

    # ---- faults: signals, and two processes at once --------------------------------------------------------
    while_writing = lambda proc, w: staging_present(w)  # noqa: E731
    budget_4 = [*TUNE_BASE[:6], "--budget", "4", "--batch-size", "1", *TUNE_BASE[10:]]
    p += [
        compile_p(
            "sigterm-mid-compile",
            "11",
            action=signal_when(signal.SIGTERM, catching_sigterm, 0.6),
            check=line_has("SIGTERM"),
        ),
        # --no-cache: from the cache a compile of mnist-8 takes 0.3 s, over before the signal.
        compile_p(
            "sigint-mid-compile", "11", extra=("--no-cache",), action=signal_when(signal.SIGINT, catching_sigterm, 0.8)
        ),
        # Early: while the model is imported (onnxslim importing onnxruntime, TVM folding constants).
        compile_p(
            "sigterm-early-4-shots",
            "11",
            action=signal_shots(signal.SIGTERM, (0.02, 0.05, 0.12, 0.2)),
            outputs=(),
            check=line_has("SIGTERM"),
        ),
        compile_p(
            "sigterm-while-writing-over-module",
            "11",
            shared_module_copy("out"),
            action=signal_when(signal.SIGTERM, while_writing),
            expect="any",
            outputs_on_error=True,
            check=module_complete(),
        ),
        compile_p(
            "sigterm-while-writing-new",
            "11",
            action=signal_when(signal.SIGTERM, while_writing),
            expect="any",
            outputs_on_error=True,
            check=absent_or(module_complete()),
        ),
        compile_p(
            "kill-9-while-writing-then-rerun", "11", action=kill9_then_rerun, expect="ok", check=module_complete()
        ),
        compile_p(
            "two-compiles-one-out",
            "extra",
            action=two_at_once(),
            expect="any",
            outputs_on_error=True,
            check=module_complete(),
        ),
        tune_p(
            "two-tunes-one-out",
            "5",
            argv=[*TUNE_BASE[:6], "--budget", "4", *TUNE_BASE[8:]],
            action=two_at_once(),
            outputs_on_error=True,
            check=all_of(line_has("another"), database_indices("out/database.jsonl", 4)),
        ),
        tune_p(
            "sigterm-while-preparing",
            "11",
            action=signal_when(signal.SIGTERM, catching_sigterm, 1.5),
            outputs=(),
        ),
        tune_p(
            "sigterm-early-4-shots",
            "11",
            action=signal_shots(signal.SIGTERM, (0.02, 0.05, 0.12, 0.4)),
            outputs=(),
            check=line_has("SIGTERM"),
        ),
        tune_p(
            "sigterm-after-a-record-then-resume",
            "11",
            argv=budget_4,
            action=kill_tune_then_resume(signal.SIGTERM, resume=True),
            expect="ok",
            check=database_indices("out/database.jsonl", 4),
        ),
        tune_p(
            "sigint-after-a-record",
            "11",
            argv=budget_4,
            action=kill_tune_then_resume(signal.SIGINT, resume=False),
            outputs_on_error=True,
            check=line_has("--resume"),
        ),
        tune_p(
            "kill-9-after-a-record-then-resume",
            "11",
            argv=budget_4,
            action=kill_tune_then_resume(signal.SIGKILL, resume=True),
            expect="ok",
            check=database_indices("out/database.jsonl", 4),
        ),
    ]
    return p


PROBES: list[Probe] = []


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    global SHARED, PROBES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="probes run at a time (default 2)")
    parser.add_argument("--only", help="run only the probes whose name contains this (or whose item is this)")
    parser.add_argument("--json", type=Path, help="write every probe's result here")
    parser.add_argument("--keep", action="store_true", help="keep every probe's directory (default: unclean ones)")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    args = parser.parse_args(argv)

    PROBES = build_probes()
    names = [probe.name for probe in PROBES]
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})
    selected = [
        i for i, probe in enumerate(PROBES) if not args.only or args.only in probe.name or args.only == probe.item
    ]
    if args.list:
        for i in selected:
            console.print(f"{PROBES[i].item:>5}  {PROBES[i].name}", highlight=False, markup=False)
        console.print(f"{len(selected)} probes")
        return 0
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="probe_cli-"))
    console.print(f"Setting up in {root} (compiling mnist-8, tuning 2 evaluations) ...")
    try:
        SHARED = build_shared(root)
    except Exception as err:  # noqa: BLE001 (the measurement cannot be taken)
        console.print(f"[red]setup failed[/]: {err}", markup=True, highlight=False)
        return 1
    console.print(
        f"Set up in {time.perf_counter() - started:.0f} s; running {len(selected)} probes, {args.jobs} at a time"
    )

    results: list[dict] = []
    context = multiprocessing.get_context("fork")  # the workers share PROBES and SHARED
    columns = TextColumn("[bold]probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    with (
        Progress(*columns, console=console) as progress,
        concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool,
    ):
        task = progress.add_task("", total=len(selected))
        futures = {pool.submit(run_probe, i): i for i in selected}
        for future in concurrent.futures.as_completed(futures):
            results.append(future.result())
            progress.advance(task)
    results.sort(key=lambda r: selected.index(names.index(r["name"])))

    failures = [r for r in results if not r["clean"]]
    if failures:
        table = Table(title=f"Probes not handled cleanly ({len(failures)})", title_justify="left", show_lines=False)
        for column in ("probe", "item", "why not clean", "first line of output"):
            table.add_column(column, overflow="fold")
        for r in failures:
            table.add_row(r["name"], r["item"], "; ".join(r["reasons"]), r["first_line"][:160])
        console.print(table, markup=False, highlight=False)
    items = {}
    for r in results:
        counts = items.setdefault(r["item"], [0, 0])
        counts[0] += r["clean"]
        counts[1] += 1
    order = sorted(items, key=lambda k: (k == "extra", int(k) if k.isdigit() else 0))
    console.print("By item (clean/probes): " + ", ".join(f"{k} {items[k][0]}/{items[k][1]}" for k in order))

    for r in results:
        if r["clean"] and not args.keep:
            shutil.rmtree(r["dir"], ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"Wrote {args.json}", markup=False, highlight=False)
    if failures or args.keep:
        console.print(f"Kept the probe directories in {root / 'probes'} (logs in {root / 'logs'})", markup=False)
    else:
        shutil.rmtree(root, ignore_errors=True)
    console.print(f"Ran in {time.perf_counter() - started:.0f} s")
    clean = len(results) - len(failures)
    console.print(f"{clean} of {len(results)} probes handled cleanly", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
