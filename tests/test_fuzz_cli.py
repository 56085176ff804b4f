"""Fuzzing the CLI's file inputs (hypothesis, derandomized so CI is deterministic).

Every file the CLI reads -- hardware TOML, vta_config.json, search spaces, a compiled module's
manifest.json, compression JSON and tuning-database lines -- is taken from a real example and
mutated (keys deleted, duplicated or renamed, values swapped for strings, lists, booleans, huge,
negative, NaN and infinite numbers, quotes and unicode inserted, bytes truncated and flipped).
The cheapest command that reads the file then runs on it, and must

- exit 0, 1 or 2 -- never a signal, never a traceback;
- on failure, print exactly one `codesign: error: ...` line (warnings aside): not two lines, and
  not the catch-all `codesign: internal error: ...`, which is an exception nothing handled;
- change no file outside the example's own output (inputs keep their bytes and mtimes, nothing
  new appears beside them).

Commands run in-process (`codesign.cli.main`) with stdout an strict UTF-8 stream like a real
pipe's, under a per-example time limit; a few run as subprocesses to catch signals.
`test_known_bad_inputs` keeps the minimal inputs that broke the contract when this was written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_hardware import VTA_DEFAULT_CONFIG as VTA_CONFIG  # VTA's own vta_config.json

from codesign import toml as tomllib
from codesign.cli import main
from codesign.demo import MNIST_MODEL
from codesign.errors import CodesignError

REPO = Path(__file__).resolve().parent.parent
PRESETS = sorted((REPO / "hw_targets").glob("*.toml"))
SPACES = [REPO / "tests" / "spaces" / "tiny.toml", *sorted((REPO / "spaces").glob("*.toml"))]
TINY_SPACE = REPO / "tests" / "spaces" / "tiny.toml"
# Compression files as `codesign compile --compression` takes them (mnist-8's layers).
COMPRESSIONS = [
    {"weight_bits": {"conv2d_1": 4}, "prune": {"conv2d_1": 0.25}, "schedule": "auto", "float_layers": ["conv2d_0"]},
    {"weight_bits": {"conv2d_0": 8, "matmul_0": 4}, "prune": {}, "schedule": "rule"},
    {"prune": {"conv2d_0": 0.5, "matmul_0": 0.125}},
]
REPORT_OUTPUTS = ("report.html", "report.md", "evaluations.csv", "pareto.csv", "designs")
EXAMPLE_SECONDS = 5  # in-process time limit of one example (hw, simulate, report, failing tune: < 0.5 s)
SLOW_SECONDS = 120  # ... of a whole compile or tune

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    # No shrinking: it can rerun a slow (timed-out) example hundreds of times; each example
    # `note`s the mutations it made, which is the reproduction.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


def note(text: str) -> None:
    """Shown with a failing example (outside hypothesis, e.g. in test_known_bad_inputs: nothing)."""
    if currently_in_test_context():
        hypothesis_note(text)


# ---- mutations ------------------------------------------------------------------------------------

# Stand-ins replaced in the serialized text: an integer too long for int() (Python's 4,300-digit
# limit) and arrays nested deeper than the recursion limit.
BIGINT, DEEP = "@@bigint@@", "@@deep@@"
BIGINT_TEXT, DEEP_TEXT = "1" + "0" * 5000, "[" * 5000 + "]" * 5000

ODD_STRINGS = [
    "", " ", "x", "'", '"', "\\", "\n", "a\nb", "\t", "[/]", "[bold red]x", "é", "中文", "\u202e", "\x00", "\x1b[31m",
    "../x", "/abs", "vta_default", "rule", "auto", "accel", "host", "conv2d_0", "*", "%s", "{}", "x" * 3000,
]  # fmt: skip
ODD_NUMBERS = [
    0, -1, 1, 2, 3, 4, 7, 8, 255, 1024, 2**31, 2**63, -(2**63) - 1, 10**30, -(10**30), 10**400,
    0.5, -0.0, 0.999999, 1e-320, 1e308, -1e308, math.nan, math.inf, -math.inf,
]  # fmt: skip
# What broke parsers and printers before: text that is not one plain line, rich markup,
# numbers beyond float and int(), nesting beyond the recursion limit.
NASTY_STRINGS = ["a\nb", "\r\n", "[/]", "x[/]y", "[bold", "\x1b[2J", "", "x" * 3000, "\u2028"]
NASTY_NUMBERS = [BIGINT, DEEP, 10**400, -(10**400), 10**20, 2**64, -1, 0, math.nan, math.inf, -math.inf, 1e308]
ODD_KEYS = ["", " ", "x", "a.b", "a\nb", "\r", "[/]", "é", "\x00", '"', "'", "name", "gemm", "index", "prune"]


def nasty_strings(fmt: str):
    return st.sampled_from(NASTY_STRINGS + (["x\ud800y", "\udfff"] if fmt == "json" else []))


def odd_values(fmt: str):
    """Values of every type the format can spell; TOML has no null, JSON no dates and (escaped)
    lone surrogates."""
    scalars = [*ODD_NUMBERS, *ODD_STRINGS, True, False]
    if fmt == "json":
        scalars += [None, "\ud800"]
    else:
        import datetime

        scalars += [datetime.date(1979, 5, 27), datetime.time(7, 32)]
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
    leaf = st.one_of(st.sampled_from(scalars), st.integers(), st.floats(), text)
    return st.one_of(
        nasty_strings(fmt),
        st.sampled_from(NASTY_NUMBERS),
        leaf,
        st.lists(leaf, max_size=3),
        st.dictionaries(st.sampled_from(ODD_KEYS), leaf, max_size=2),
    )


def odd_keys(fmt: str):
    keys = st.sampled_from(ODD_KEYS + (["\ud800"] if fmt == "json" else []))
    return st.one_of(keys, nasty_strings(fmt), st.text(st.characters(exclude_categories=["Cs"]), max_size=8))


def tree_paths(doc, prefix=()) -> list[tuple]:
    """The path (keys and indices) of every value under `doc`."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    paths = []
    for key, value in items:
        paths.append((*prefix, key))
        paths += tree_paths(value, (*prefix, key))
    return paths


def container(doc, path):
    for key in path[:-1]:
        doc = doc[key]
    return doc


def value_at(doc, path):
    return container(doc, path)[path[-1]]


def shorten(value, limit: int = 60) -> str:
    stand_ins = {BIGINT: "<5,000-digit integer>", DEEP: "<arrays nested 5,000 deep>"}
    text = stand_ins[value] if isinstance(value, str) and value in stand_ins else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


OPS = ["delete", "replace", "replace", "restring", "renumber", "renumber", "swap", "rename", "add", "duplicate"]


@st.composite
def mutate_tree(draw, doc, fmt: str, max_ops: int = 3):
    """A deep copy of `doc` with 0..max_ops structural mutations, and what they were."""
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(draw(st.integers(0, max_ops))):
        paths = tree_paths(doc)
        if not paths:
            break
        op = draw(st.sampled_from(OPS))
        if op in ("restring", "renumber"):  # a value of that type, for one that breaks things
            kind = str if op == "restring" else (int, float)
            typed = [p for p in paths if isinstance(value_at(doc, p), kind) and not isinstance(value_at(doc, p), bool)]
            paths = typed or paths
        path = draw(st.sampled_from(paths))
        parent, key = container(doc, path), path[-1]
        what = ""
        if op in ("restring", "renumber", "replace"):
            value = {
                "restring": nasty_strings(fmt),
                "renumber": st.sampled_from(NASTY_NUMBERS),
                "replace": odd_values(fmt),
            }[op]
            parent[key] = draw(value)
            what = f" = {shorten(parent[key])}"
        elif op == "delete":
            del parent[key]
        elif op == "swap":  # a value from elsewhere in the file: plausible, but of another field
            other = draw(st.sampled_from(paths))
            parent[key] = copy.deepcopy(container(doc, other)[other[-1]])
            what = f" = the value of {list(other)}"
        elif op == "rename":
            if not isinstance(parent, dict):
                continue  # a list item has no name
            name = draw(odd_keys(fmt))
            parent[name] = parent.pop(key)
            what = f" to {shorten(name)}"
        elif op == "add":
            target = parent[key] if isinstance(parent[key], (dict, list)) else parent
            value = draw(odd_values(fmt))
            if isinstance(target, dict):
                name = draw(odd_keys(fmt))
                target[name] = value
                what = f" {shorten(name)} = {shorten(value)}"
            else:
                target.insert(draw(st.integers(0, len(target))), value)
                what = f" item {shorten(value)}"
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(parent[key]))
            else:
                parent[f"{key}_copy" if isinstance(key, str) else key] = copy.deepcopy(parent[key])
        done.append(f"{op} {list(path)}{what}")
    return doc, done


def serialize(doc, fmt: str, ascii_only: bool = True) -> bytes:
    if fmt == "json":
        text = json.dumps(doc, indent=2, ensure_ascii=ascii_only)
        text = text.replace(f'"{BIGINT}"', BIGINT_TEXT).replace(f'"{DEEP}"', DEEP_TEXT)
        return text.encode("utf-8", "surrogatepass")  # raw (CESU) surrogates: not UTF-8
    text = tomli_w.dumps(doc)
    return text.replace(f'"{BIGINT}"', BIGINT_TEXT).replace(f'"{DEEP}"', DEEP_TEXT).encode()


SNIPPETS = [
    b'"', b"'", b"\\", b"\n", b"[", b"]", b"{", b"}", b",", b"=", b":", b"#", b"\x00", b"\xff", b"\xed\xa0\x80",
    "é".encode(), "\u202e".encode(), b"nan", b"-inf", b"1e999", b"[[x]]\n", b"\r\n", BIGINT_TEXT.encode(),
]  # fmt: skip


@st.composite
def mutate_bytes(draw, data: bytes, max_ops: int = 2):
    done = []
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "insert", "dup_line", "drop_line"]))
        position = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:position]
        elif op == "flip" and data:
            position = min(position, len(data) - 1)
            data = data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
        elif op == "insert":
            data = data[:position] + draw(st.sampled_from(SNIPPETS)) + data[position:]
        else:
            lines = data.splitlines(keepends=True)
            if lines:
                index = draw(st.integers(0, len(lines) - 1))
                lines[index : index + 1] = [lines[index]] * (2 if op == "dup_line" else 0)
                data = b"".join(lines)
        done.append(f"{op} at {position}")
    return data, done


@st.composite
def mutated_file(draw, docs: list, fmt: str, originals: list[bytes] | None = None):
    """(bytes, description): one of `docs` mutated in structure, serialized, then maybe in bytes.
    `originals`: the documents' own text (comments and all), used when the structure is kept."""
    index = draw(st.integers(0, len(docs) - 1))
    doc, tree_ops = draw(mutate_tree(docs[index], fmt))
    if tree_ops or originals is None:
        data = serialize(doc, fmt, ascii_only=fmt != "json" or draw(st.booleans()))
    else:
        data = originals[index]
    data, byte_ops = draw(mutate_bytes(data, max_ops=2 if tree_ops else 3))
    description = f"base #{index}; " + "; ".join(tree_ops + byte_ops or ["unchanged"])
    note(description)
    return data, description


# ---- running a command and checking the contract ----------------------------------------------------


@dataclasses.dataclass
class Case:
    """A command over files in `work`; it may write only `outputs` (paths relative to `work`)."""

    argv: list[str]
    work: Path
    outputs: tuple[str, ...] = ()
    seconds: float = EXAMPLE_SECONDS  # in-process time limit


class ExampleTimeout(BaseException):
    """Raised in the command when an example runs too long (a BaseException: main() lets it out)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise ExampleTimeout(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(case: Case) -> tuple[int, str, str]:
    """main(argv) in `case.work`, stdout a strict UTF-8 stream (as a pipe's), stderr with
    backslashreplace (as Python's own)."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    cwd = os.getcwd()
    os.chdir(case.work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(case.seconds):
            code = main(case.argv)
    except ExampleTimeout as timeout:
        pytest.fail(f"codesign {' '.join(case.argv)}: {timeout} (a hang on this input)")
    finally:
        os.chdir(cwd)
    return code, out_bytes.getvalue().decode("utf-8", "replace"), err_bytes.getvalue().decode("utf-8", "replace")


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("CODESIGN_DEBUG", None)
    return env


def run_subprocess(case: Case) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "codesign.cli", *case.argv],
        cwd=case.work,
        env=subprocess_env(),
        capture_output=True,
        timeout=120,
    )
    return done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")


def check_contract(case: Case, code: int, out: str, err: str) -> None:
    command = "codesign " + " ".join(case.argv)
    if code < 0:
        pytest.fail(f"{command}: killed by signal {-code}\n{err[-2000:]}")
    if "Traceback" in out + err:
        pytest.fail(f"{command}: printed a traceback\n{err[-3000:]}")
    if code not in (0, 1, 2):
        pytest.fail(f"{command}: exit code {code}\n{err[-2000:]}")
    if code == 0:
        return
    lines = [line for line in err.split("\n") if line.strip()]  # a line ends at \n (not at \x1e, \u2028, ...)
    errors = [line for line in lines if not line.startswith("codesign: warning:")]
    if len(errors) != 1:
        pytest.fail(f"{command}: exit {code} with {len(errors)} error lines, expected one:\n{err[-2000:]}")
    if not errors[0].startswith("codesign: error:"):
        pytest.fail(f"{command}: exit {code}, not handled: {errors[0][:500]}")
    if any(line.startswith("codesign:") for line in out.split("\n")):
        pytest.fail(f"{command}: an error on stdout\n{out[-2000:]}")


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """relative path -> (bytes, mtime_ns, mode) of every file under root (directories: their
    mode), but `skip` (relative paths, with all under them)."""
    state = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if any(relative == s or relative.startswith(s + "/") for s in skip):
            continue
        stat = path.lstat()
        if path.is_dir() and not path.is_symlink():
            state[relative] = ("directory", stat.st_mode)  # its entries are compared one by one
        else:
            content = path.read_bytes() if path.is_file() else os.readlink(path)
            state[relative] = (content, stat.st_mtime_ns, stat.st_mode)
    return state


def external_state(paths: list[Path]) -> dict[str, tuple]:
    """(size, mtime_ns) of files the commands read outside the example's directory."""
    state = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            stat = file.stat()
            state[str(file)] = (stat.st_size, stat.st_mtime_ns)
    return state


def check_unchanged(before: dict, after: dict, what: str) -> None:
    if before == after:
        return
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    pytest.fail(f"{what}: files changed outside the output: added {added}, removed {removed}, changed {changed}")


def exercise(case: Case, externals: list[Path], runner=run_in_process) -> tuple[int, str, str]:
    before, outside = snapshot(case.work, case.outputs), external_state(externals)
    code, out, err = runner(case)
    note(f"exit {code}; stderr {err[-600:]!r}")
    check_contract(case, code, out, err)
    command = "codesign " + " ".join(case.argv)
    check_unchanged(before, snapshot(case.work, case.outputs), command)
    check_unchanged(outside, external_state(externals), command)
    return code, out, err


@pytest.fixture(autouse=True)
def _frozen_gc():
    """Objects alive when a test starts (TVM's, the fixtures') kept out of the collector's scans:
    `main` runs gc.collect() after every failed command, which would otherwise walk them all
    (~0.1 s a time here; nothing in a fresh CLI process)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A fresh directory per example (made and removed by the test: hypothesis reuses fixtures)."""
    base = tmp_path_factory.mktemp("fuzz")

    @contextlib.contextmanager
    def make():
        work = Path(tempfile.mkdtemp(dir=base))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return make


# ---- the cases, by file kind --------------------------------------------------------------------------


def hardware_case(work: Path, data: bytes, name: str = "hw.toml") -> Case:
    (work / name).write_bytes(data)
    return Case(["hw", str(work / name)], work)


def space_case(work: Path, data: bytes) -> Case:
    """tune with the space and a missing --data: a valid space fails on the data, before the run
    directory is made; an invalid one fails on the space first."""
    (work / "space.toml").write_bytes(data)
    argv = ["tune", str(MNIST_MODEL), "--space", str(work / "space.toml"), "--data", str(work / "missing.npz")]
    return Case([*argv, "-o", str(work / "out"), "--budget", "1"], work, ("out",))


def manifest_case(work: Path, data: bytes, module: Path, model: str = "event") -> Case:
    shutil.copytree(module, work / "module")
    (work / "module" / "manifest.json").write_bytes(data)
    return Case(["simulate", str(work / "module"), "--model", model], work)


def database_case(work: Path, data: bytes, run_template: Path) -> Case:
    shutil.copytree(run_template, work / "run")
    (work / "run" / "database.jsonl").write_bytes(data)
    return Case(["report", str(work / "run")], work, tuple(f"run/{name}" for name in REPORT_OUTPUTS))


def compression_case(work: Path, data: bytes, calibration: Path) -> Case:
    (work / "compression.json").write_bytes(data)
    argv = ["compile", str(MNIST_MODEL), "--hw", "vta_default", "-o", str(work / "out")]
    argv += ["--calibration", str(calibration), "--compression", str(work / "compression.json")]
    return Case(argv, work, ("out",), SLOW_SECONDS)


# ---- fixtures: real files to start from ---------------------------------------------------------------


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory, mnist_calibration):
    """mnist-8 compiled for vta_default (its manifest.json is what gets mutated)."""
    out = tmp_path_factory.mktemp("fuzz_module") / "module"
    argv = ["compile", str(MNIST_MODEL), "--hw", "vta_default", "-o", str(out), "--calibration", str(mnist_calibration)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def run_template(tmp_path_factory, tuned_run):
    """The tuned run's inputs to `report`, without settings.json (as an interrupted run has none),
    so a report does not re-simulate designs and stays fast."""
    template = tmp_path_factory.mktemp("fuzz_run") / "run"
    template.mkdir()
    for name in ("database.jsonl", "space.toml", "run.json"):
        shutil.copy2(tuned_run / name, template / name)
    return template


@pytest.fixture(scope="module")
def mnist_graph():
    from codesign.graph import extract_graph
    from codesign.importer import import_onnx

    return extract_graph(import_onnx(MNIST_MODEL))


def database_lines(run_template: Path) -> list[bytes]:
    return (run_template / "database.jsonl").read_bytes().splitlines(keepends=True)


@st.composite
def mutated_database(draw, lines: list[bytes]):
    """database.jsonl: records mutated as JSON, lines added, dropped, repeated or garbled, and
    the file's bytes cut or flipped."""
    lines = list(lines)
    done = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["record", "record", "record", "append", "drop", "repeat", "garbage", "blank"]))
        index = draw(st.integers(0, len(lines) - 1)) if lines else 0
        try:
            record = json.loads(lines[index]) if lines else None
        except (ValueError, RecursionError):  # a line garbled by an earlier op
            record = None
        if op in ("record", "append") and isinstance(record, dict):
            record, ops = draw(mutate_tree(record, "json", max_ops=2))
            line = serialize(record, "json").replace(b"\n", b"") + b"\n"
            if op == "record":
                lines[index] = line
            else:
                lines.append(line)
            done.append(f"{op} {index}: {ops}")
        elif op == "drop" and lines:
            del lines[index]
            done.append(f"drop {index}")
        elif op == "repeat" and lines:
            lines.insert(index, lines[index])
            done.append(f"repeat {index}")
        elif op == "garbage":
            lines.insert(index, draw(st.sampled_from([*SNIPPETS, b"{}", b"[]", b"null", b'{"index": 0}'])) + b"\n")
            done.append(f"garbage at {index}")
        elif op == "blank":
            lines.insert(index, b"   \n")
            done.append(f"blank at {index}")
    data, byte_ops = draw(mutate_bytes(b"".join(lines), max_ops=1))
    note("database: " + "; ".join(done + byte_ops))
    return data


def text_docs(paths: list[Path]) -> tuple[list, list[bytes]]:
    return [tomllib.loads(p.read_text()) for p in paths], [p.read_bytes() for p in paths]


PRESET_DOCS, PRESET_TEXTS = text_docs(PRESETS)
SPACE_DOCS, SPACE_TEXTS = text_docs(SPACES)


# ---- the fuzz tests ---------------------------------------------------------------------------------------


@fuzz(150)
@given(file=mutated_file(PRESET_DOCS, "toml", PRESET_TEXTS))
def test_fuzz_hardware_toml(file, scratch):
    with scratch() as work:
        exercise(hardware_case(work, file[0]), PRESETS)


@fuzz(100)
@given(file=mutated_file([VTA_CONFIG], "json"))
def test_fuzz_vta_config_json(file, scratch):
    with scratch() as work:
        exercise(hardware_case(work, file[0], "vta_config.json"), PRESETS)


@fuzz(100)
@given(file=mutated_file(SPACE_DOCS, "toml", SPACE_TEXTS), seed=st.integers(0, 2**16))
def test_fuzz_search_space(file, seed, scratch, mnist_graph):
    """The CLI's one line for a bad space; a space it accepts must mean something for every
    configuration it can propose (hardware the evaluator can price or refuse with HardwareError,
    a compression choice per layer)."""
    from codesign.errors import HardwareError
    from codesign.tuner.space import load_space

    with scratch() as work:
        case = space_case(work, file[0])
        exercise(case, [MNIST_MODEL, *PRESETS])
        assert not (work / "out").exists(), "a tune that failed before starting left its run directory"
        try:
            space = load_space(work / "space.toml")
        except CodesignError:  # one clear line at the CLI (UsageError, HardwareError for a bad base preset)
            return
        except Exception as err:  # noqa: BLE001 -- the CLI said the same above; this names it precisely
            pytest.fail(f"load_space raised {type(err).__name__}: {err}")
        layers = [node.name for node in mnist_graph.gemm_nodes()]
        rng = np.random.default_rng(seed)
        configs = [space.sample(rng) for _ in range(4)]
        space.encode(configs)
        for config in configs:
            with contextlib.suppress(HardwareError):  # the evaluator records it as infeasible
                space.hardware(config)
            space.compression(config, layers)
        assert space.needed_metrics()


@fuzz(100)
@given(file=st.data(), model=st.sampled_from(["event", "analytic"]))
def test_fuzz_manifest(file, model, scratch, module_dir):
    manifest = json.loads((module_dir / "manifest.json").read_text())
    data, _ = file.draw(mutated_file([manifest], "json"))
    with scratch() as work:
        exercise(manifest_case(work, data, module_dir, model), [module_dir, *PRESETS])


@fuzz(50)
@given(file=st.data())
def test_fuzz_database_lines(file, scratch, run_template):
    data = file.draw(mutated_database(database_lines(run_template)))
    with scratch() as work:
        exercise(database_case(work, data, run_template), [run_template, *PRESETS])


@fuzz(100)
@given(file=mutated_file(COMPRESSIONS, "json"))
def test_fuzz_compression_file(file, scratch, mnist_graph, mnist_calibration):
    """The loader and the check against the model (what compile does before compiling) raise only
    UsageError of one line; a file they refuse fails `codesign compile` in one line (fast: before
    the compile). Files they accept are compiled by test_fuzz_compression_compiles."""
    from codesign.compression import load_compression, validate_compression

    with scratch() as work:
        case = compression_case(work, file[0], mnist_calibration)
        try:
            validate_compression(load_compression(work / "compression.json"), mnist_graph)
        except CodesignError:
            pass
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"load_compression / validate_compression raised {type(err).__name__}: {err}")
        else:
            return  # a valid file: a full compile (~2 s); see test_fuzz_compression_compiles
        exercise(case, [MNIST_MODEL, mnist_calibration, *PRESETS])
        assert not (work / "out").exists()


def _valid_compression(data: bytes) -> bool:
    from codesign.compression import load_compression

    with tempfile.NamedTemporaryFile(suffix=".json") as file:
        file.write(data)
        file.flush()
        try:
            load_compression(file.name)
        except Exception:  # noqa: BLE001 -- only files the loader takes are wanted here
            return False
    return True


@fuzz(2)
@given(file=mutated_file(COMPRESSIONS, "json").filter(lambda file: _valid_compression(file[0])))
def test_fuzz_compression_compiles(file, scratch, mnist_calibration):
    """A few mutated files the loader accepts, through a whole `codesign compile`."""
    with scratch() as work:
        code, _, _ = exercise(compression_case(work, file[0], mnist_calibration), [MNIST_MODEL, mnist_calibration])
        if code == 0:
            from codesign.deploy import read_manifest

            read_manifest(work / "out")


def _valid_space(data: bytes) -> bool:
    from codesign.tuner.space import load_space

    with tempfile.NamedTemporaryFile(suffix=".toml") as file:
        file.write(data)
        file.flush()
        try:
            load_space(file.name)
        except Exception:  # noqa: BLE001
            return False
    return True


@pytest.fixture(scope="module")
def small_eval_data(tmp_path_factory, mnist_test_set):
    images, labels = mnist_test_set
    path = tmp_path_factory.mktemp("fuzz_data") / "mnist20.npz"
    np.savez(path, Input3=images[:20, 0], labels=labels[:20])
    return path


@fuzz(1)
@given(file=mutated_file(SPACE_DOCS[:1], "toml", SPACE_TEXTS[:1]).filter(lambda file: _valid_space(file[0])))
def test_fuzz_search_space_tunes(file, scratch, small_eval_data):
    """A couple of mutated spaces the loader accepts, through a whole tune of one evaluation."""
    with scratch() as work:
        (work / "space.toml").write_bytes(file[0])
        argv = ["tune", str(MNIST_MODEL), "--space", str(work / "space.toml"), "--data", str(small_eval_data)]
        argv += ["-o", str(work / "out"), "--budget", "1", "--strategy", "random", "--eval-samples", "20"]
        code, _, _ = exercise(Case(argv, work, ("out",), SLOW_SECONDS), [MNIST_MODEL, small_eval_data, *PRESETS])
        if code == 0:
            lines = (work / "out" / "database.jsonl").read_text().splitlines()
            assert [json.loads(line)["index"] for line in lines] == [0]


@fuzz(4)
@given(kind=st.sampled_from(["hw", "vta", "manifest", "database", "space"]), data=st.data())
def test_fuzz_in_a_subprocess(kind, data, scratch, module_dir, run_template):
    """The same contract with real streams and no in-process safety net: no signal, exit 0/1/2."""
    with scratch() as work:
        if kind == "hw":
            case = hardware_case(work, data.draw(mutated_file(PRESET_DOCS, "toml", PRESET_TEXTS))[0])
        elif kind == "vta":
            case = hardware_case(work, data.draw(mutated_file([VTA_CONFIG], "json"))[0], "vta_config.json")
        elif kind == "manifest":
            manifest = json.loads((module_dir / "manifest.json").read_text())
            case = manifest_case(work, data.draw(mutated_file([manifest], "json"))[0], module_dir)
        elif kind == "database":
            case = database_case(work, data.draw(mutated_database(database_lines(run_template))), run_template)
        else:
            case = space_case(work, data.draw(mutated_file(SPACE_DOCS, "toml", SPACE_TEXTS))[0])
        exercise(case, [module_dir, run_template, *PRESETS], runner=run_subprocess)


# ---- inputs that broke the contract (a regression corpus) ------------------------------------------------


def _preset_with(old: str, new: str) -> bytes:
    text = (REPO / "hw_targets" / "vta_default.toml").read_text()
    assert old in text
    return text.replace(old, new, 1).encode()


def _space_with(old: str, new: str) -> bytes:
    text = TINY_SPACE.read_text()
    assert old in text
    return text.replace(old, new, 1).encode()


def _manifest_with(module: Path, change) -> bytes:
    manifest = json.loads((module / "manifest.json").read_text())
    change(manifest)
    return json.dumps(manifest, indent=2).encode()


def _database_with(run_template: Path, change=None, extra: bytes = b"") -> bytes:
    records = [json.loads(line) for line in database_lines(run_template)]
    if change:
        change(records)
    return b"".join(json.dumps(r).encode() + b"\n" for r in records) + extra


def _set(*path_and_value):
    """A change setting the field at path (keys and indices) to the last argument."""
    *parents, last, value = path_and_value

    def change(doc):
        for key in parents:
            doc = doc[key]
        doc[last] = value

    return change


def _vta_with(key: str, text: str) -> bytes:
    return json.dumps({**VTA_CONFIG, key: "@@here@@"}).replace('"@@here@@"', text).encode()


BEYOND_FLOAT = "1" + "0" * 400  # an integer literal no float holds
KNOWN_BAD = {
    # hardware descriptions: `codesign hw`
    "hw-name-rich-markup": ("hw", lambda m, r: _preset_with('name = "vta_default"', 'name = "x[/]y"')),
    "hw-key-with-newline": ("hw", lambda m, r: _preset_with("[gemm]", '"a\\nb" = 1\n[gemm]')),
    "hw-toml-deep-array": ("hw", lambda m, r: _preset_with("[gemm]", f"deep = {DEEP_TEXT}\n[gemm]")),
    "hw-toml-5000-digit-int": ("hw", lambda m, r: _preset_with("batch = 1", f"batch = {BIGINT_TEXT}")),
    "vta-json-deep-array": ("vta", lambda m, r: DEEP_TEXT.encode()),
    "vta-json-5000-digit-int": ("vta", lambda m, r: _vta_with("LOG_BATCH", BIGINT_TEXT)),
    # search spaces: `codesign tune --space`
    "space-int-beyond-float": ("space", lambda m, r: _space_with("[0.0, 0.25]", f"[0.0, {BEYOND_FLOAT}]")),
    "space-constraint-beyond-float": ("space", lambda m, r: _space_with("= 2.0", f"= {BEYOND_FLOAT}")),
    "space-group-with-newline": (
        "space",
        lambda m, r: _space_with("[compression]", '[compression.groups]\n"a\\nb" = 1\n[compression]'),
    ),
    "space-base-with-newline": ("space", lambda m, r: _space_with('base = "vta_default"', 'base = "a\\nb"')),
    "space-deep-array": ("space", lambda m, r: _space_with("[0.0, 0.25]", DEEP_TEXT)),
    "space-5000-digit-int": ("space", lambda m, r: _space_with("[0.0, 0.25]", f"[{BIGINT_TEXT}]")),
    # manifests: `codesign simulate MODULE`
    "manifest-layer-name-rich-markup": ("manifest", lambda m, r: _manifest_with(m, _set("layers", 1, "name", "[/]"))),
    "manifest-layer-name-lone-surrogate": (
        "manifest",
        lambda m, r: _manifest_with(m, _set("layers", 1, "name", "x\ud800y")),
    ),
    "manifest-key-with-newline": ("manifest", lambda m, r: _manifest_with(m, _set("x\ny", 1))),
    "manifest-effective-shape-of-format-4": (  # pruned layers now carry their real shape
        "manifest",
        lambda m, r: _manifest_with(m, _set("layers", 2, "effective_shape", {"out_channels": 10**20})),
    ),
    "manifest-shape-1e20-channels": (
        "manifest",
        lambda m, r: _manifest_with(m, _set("layers", 2, "shape", "out_channels", 10**20)),
    ),
    "manifest-deep-array": ("manifest", lambda m, r: DEEP_TEXT.encode()),
    # database lines: `codesign report RUN`
    "database-key-with-newline": ("database", lambda m, r: _database_with(r, _set(0, "x\ny", 1))),
    "database-knob-value-string": ("database", lambda m, r: _database_with(r, _set(1, "config", "hw.block_in", "x"))),
    "database-knob-value-list": ("database", lambda m, r: _database_with(r, _set(1, "config", "hw.block_in", [16]))),
    "database-metric-int-beyond-float": (
        "database",
        lambda m, r: _database_with(r, _set(1, "metrics", "accuracy", 10**400)),
    ),
    "database-deep-line": ("database", lambda m, r: _database_with(r, extra=DEEP_TEXT.encode() + b"\n")),
    # compression files: `codesign compile --compression`
    "compression-deep-array": ("compression", lambda m, r: DEEP_TEXT.encode()),
    "compression-5000-digit-int": ("compression", lambda m, r: f'{{"prune": {{"conv2d_1": {BIGINT_TEXT}}}}}'.encode()),
    "compression-layer-with-newline": ("compression", lambda m, r: json.dumps({"weight_bits": {"x\ny": 4}}).encode()),
}


@pytest.mark.parametrize("name", list(KNOWN_BAD))
def test_known_bad_inputs(name, tmp_path, module_dir, run_template, mnist_calibration):
    kind, make = KNOWN_BAD[name]
    data = make(module_dir, run_template)
    work = tmp_path / "work"
    work.mkdir()
    case = {
        "hw": lambda: hardware_case(work, data),
        "vta": lambda: hardware_case(work, data, "vta_config.json"),
        "space": lambda: space_case(work, data),
        "manifest": lambda: manifest_case(work, data, module_dir),
        "database": lambda: database_case(work, data, run_template),
        "compression": lambda: compression_case(work, data, mnist_calibration),
    }[kind]()
    exercise(case, [module_dir, run_template, *PRESETS])
