"""`codesign tune`: a tuning run in a directory, with a live progress display.

A run directory belongs to one run and to one process at a time:

- `run.json`, written when the run starts, records what defines it (sha256 of the model, data
  and search space; seed, strategy, batch size, input bindings, evaluation samples); `--resume`
  refuses anything else, naming the field;
- a tune holds an OS lock (flock) on `.tune.lock` for as long as it runs, so a second tune on
  the same directory fails at once;
- a new run refuses a non-empty directory that is not a run (it would overwrite the user's
  files), and `--resume` refuses a directory without a run;
- temporary files (a copy of the calibration data) live in `.tune-tmp/` inside the run
  directory and are removed on exit, SIGTERM and SIGINT included;
- a new run that fails before recording an evaluation removes what it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import threading
import time
from pathlib import Path

import tvm
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import codesign
from codesign.errors import CodesignError, UsageError
from codesign.files import file_sha256, reading, remove_staged_files, write_text_atomic
from codesign.importer import import_onnx
from codesign.onnx_file import parse_input_shapes, parse_input_values
from codesign.tuner.bilevel import BilevelSearch, outer_records, plan_bilevel
from codesign.tuner.database import Database
from codesign.tuner.eval_data import load_eval_data
from codesign.tuner.evaluator import gemm_layer_names, grouped_conv_names, prunable_layer_names
from codesign.tuner.executors import EvaluatorSpec, make_executor
from codesign.tuner.run_files import DATABASE_FILE, LOCK_FILE, RUN_FILE, SETTINGS_FILE, SPACE_FILE, TEMP_DIR
from codesign.tuner.space import load_space
from codesign.tuner.strategies import STRATEGIES
from codesign.tuner.tune import best_per_objective, design_file_name, pareto_records, run_tuning, write_outputs
from codesign.units import format_objective

RUN_FORMAT = 1
# run.json field -> how the command line names it
IDENTITY_FIELDS = {
    "model_sha256": "model",
    "data_sha256": "--data",
    "space_sha256": "--space",
    "seed": "--seed",
    "strategy": "--strategy",
    "batch_size": "--batch-size",
    "input_shapes": "--input-shape",
    "input_values": "--input-value",
    "eval_samples": "--eval-samples",
    "calibration_sha256": "--calibration",
}
# Fields a run made before they existed does not record, with the value that meant
RECORDED_BEFORE = {"calibration_sha256": None}


def tune_to_directory(
    model,
    space_path,
    data,
    out: Path,
    budget,
    strategy,
    seed,
    jobs,
    executor,
    address,
    batch_size,
    resume,
    input_shape,
    eval_samples,
    console: Console,
    input_value=None,
    after_run=None,
    calibration=None,
):
    """Tune into the run directory `out`; `after_run(out)` runs when the evaluations are done,
    before the lock is released (the CLI writes the report there). `calibration`: a .npz of
    inputs to calibrate on (default: the first samples of `data`)."""
    _check_choices(strategy, executor, eval_samples)
    space = load_space(space_path)
    out = Path(out)
    check_run_directory(out, resume)  # before anything is written
    shapes = tuple(sorted(parse_input_shapes(input_shape).items()))
    values = tuple(sorted((name, tuple(v)) for name, v in parse_input_values(input_value).items()))
    space_text = Path(space_path).read_text(encoding="utf-8")  # load_space has read it
    options = _RunOptions(
        model=model,
        space_path=space_path,
        data=data,
        out=out,
        budget=budget,
        strategy=strategy,
        seed=seed,
        jobs=jobs,
        executor=executor,
        address=address,
        batch_size=batch_size,
        resume=resume,
        eval_samples=eval_samples,
        shapes=shapes,
        values=values,
        space_text=space_text,
        calibration=calibration,
    )
    records = _tune_in_directory(options, space, console, after_run)
    _print_results(console, out, space, records)


def _tune_in_directory(options: _RunOptions, space, console: Console, after_run) -> list:
    """The run under the directory's lock; a signal that stopped it is reported as such."""
    out, resume = options.out, options.resume
    identity = _run_identity(options)
    if resume:
        check_identity(out, identity, options.model, options.data, options.space_path, options.calibration)
    run_dir = RunDirectory(out, resume)
    try:
        with run_dir:
            return _tune_in_locked_directory(options, identity, space, run_dir, console, after_run)
    except BaseException as err:
        if run_dir.stopped_by is None:
            raise
        # The signal's KeyboardInterrupt may reach here as another error (TVM wraps what a
        # Python callback raises): what stopped the run is the signal.
        kept = "`--resume` continues the run" if _has_records(out) else "no evaluation was recorded"
        raise CodesignError(f"{out}: tuning stopped by {run_dir.stopped_by}; {kept}") from err


@dataclasses.dataclass(frozen=True)
class _RunOptions:
    """What a tune was asked for, its input bindings parsed."""

    model: object
    space_path: object
    data: object
    out: Path
    budget: int
    strategy: str
    seed: int
    jobs: int
    executor: str
    address: object
    batch_size: int
    resume: bool
    eval_samples: int | None
    shapes: tuple  # ((input name, dims), ...), sorted by name
    values: tuple  # ((input name, values), ...), sorted by name
    space_text: str
    calibration: object = None  # a .npz of calibration inputs, or None: the first samples of `data`

    def shapes_json(self) -> dict:
        return {name: list(dims) for name, dims in self.shapes}

    def values_json(self) -> dict:
        return {name: list(v) for name, v in self.values}


def _check_choices(strategy, executor, eval_samples) -> None:
    if strategy not in (*STRATEGIES, BilevelSearch.name):
        raise UsageError(f"--strategy {strategy}: expected one of {', '.join([*STRATEGIES, BilevelSearch.name])}")
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor {executor}: expected local or ray")
    if eval_samples is not None and eval_samples < 1:
        raise UsageError(f"--eval-samples {eval_samples}: expected at least 1")


def _run_identity(options: _RunOptions) -> dict:
    """What defines the run (run.json; the fields of IDENTITY_FIELDS)."""
    return {
        "model_sha256": _sha256(Path(options.model), "model"),
        "data_sha256": _sha256(Path(options.data), "data"),
        "space_sha256": hashlib.sha256(options.space_text.encode("utf-8")).hexdigest(),
        "seed": options.seed,
        "strategy": options.strategy,
        "batch_size": options.batch_size,
        "input_shapes": options.shapes_json(),
        "input_values": options.values_json(),
        "eval_samples": options.eval_samples,
        "calibration_sha256": options.calibration and _sha256(Path(options.calibration), "calibration"),
    }


def _tune_in_locked_directory(
    options: _RunOptions, identity: dict, space, run_dir: RunDirectory, console: Console, after_run
) -> list:
    """The run, once `run_dir` is locked: checks, run files, evaluations, outputs; returns the records."""
    out, resume = options.out, options.resume
    check_run_directory(out, resume, holding_lock=True)  # another tune may have started a run there
    if resume:
        check_identity(out, identity, options.model, options.data, options.space_path, options.calibration)
    layers, prunable, grouped_convs = _check_model_and_data(options)
    space = space.for_layers(layers, prunable, grouped_convs)
    if not resume:
        run_dir.write(RUN_FILE, _json_text({"format": RUN_FORMAT, **identity}))
    if not resume or not (out / SPACE_FILE).exists():  # the same space: checked by its sha256
        run_dir.write(SPACE_FILE, options.space_text)
    spec = _evaluator_spec(options, run_dir)
    started = time.perf_counter()
    earlier_seconds = _read_json(out / SETTINGS_FILE).get("wall_seconds", 0.0) if resume else 0.0
    settings = _settings(options, spec, layers, prunable, grouped_convs)
    # Written first, so the report of an interrupted run still knows the model and data.
    run_dir.write(SETTINGS_FILE, _json_text(settings))
    console.print(f"Preparing the evaluator (model, data, float accuracy) for {Path(options.model).name} ...")
    database = Database(out / DATABASE_FILE)
    runner = make_executor(options.executor, spec, options.jobs, options.address)
    try:
        records = _search(options, space, database, runner, layers, run_dir, console)
    finally:
        runner.close()
    write_outputs(out, space, records, layers)
    runner.write_front(out, space, records)  # front/: the best designs per layer, for the report
    settings["wall_seconds"] = earlier_seconds + time.perf_counter() - started
    run_dir.write(SETTINGS_FILE, _json_text(settings))
    if after_run is not None:
        after_run(out)  # e.g. the CLI's report, still under the run's lock
    run_dir.raise_if_stopped()
    return records


def _check_model_and_data(options: _RunOptions) -> tuple[list[str], list[str], list[str]]:
    """The model and the data, checked here (workers would fail far less clearly); the model's
    GEMM layers, those whose prune ratio can act, and its grouped convs."""
    imported = import_onnx(options.model, dict(options.shapes) or None, options.values_json() or None)
    load_eval_data(options.data, imported.inputs, options.eval_samples)
    if options.calibration is not None:
        load_eval_data(options.calibration, imported.inputs, 1)
    return gemm_layer_names(imported), prunable_layer_names(imported), grouped_conv_names(imported)


def _evaluator_spec(options: _RunOptions, run_dir: RunDirectory) -> EvaluatorSpec:
    return EvaluatorSpec(
        str(Path(options.model).resolve()),
        str(Path(options.space_path).resolve()),
        str(Path(options.data).resolve()),
        options.shapes,
        eval_samples=options.eval_samples,
        input_values=options.values,
        workdir=str(run_dir.temp.resolve()),
        calibration_data=None if options.calibration is None else str(Path(options.calibration).resolve()),
    )


def _settings(
    options: _RunOptions, spec: EvaluatorSpec, layers: list[str], prunable: list[str], grouped_convs: list[str]
) -> dict:
    """settings.json: how the run was made (the report reads it); wall_seconds added at the end."""
    return {
        "model": spec.model,
        "layers": layers,  # the model's GEMM layers: a per-layer space's knobs name them
        "prunable_layers": prunable,  # those whose pruning acts (a per-layer space gives only them a prune knob)
        "grouped_convs": grouped_convs,  # none: a space's grouped_convs knob is dropped
        "space": spec.space,
        "data": spec.data,
        "input_shapes": options.shapes_json(),
        "input_values": options.values_json(),
        "calibration_data": spec.calibration_data,  # None: the first samples of the data
        "calibration_samples": spec.calibration_samples,
        "eval_samples": options.eval_samples,
        "budget": options.budget,
        "strategy": options.strategy,
        "seed": options.seed,
        "jobs": options.jobs,
        "executor": options.executor,
        "batch_size": options.batch_size,
        "codesign_version": codesign.__version__,
        "tvm_version": tvm.__version__,
        "python_version": platform.python_version(),
    }


def _search(options: _RunOptions, space, database, runner, layers, run_dir: RunDirectory, console) -> list:
    """The evaluations up to the budget (those in the database count), with a progress bar. The
    bilevel strategy's budget counts measured compression profiles."""
    run_dir.raise_if_stopped()  # a signal a library swallowed while the evaluator was prepared
    bilevel = options.strategy == BilevelSearch.name
    plan = plan_bilevel(space, layers) if bilevel else None
    with Progress(
        TextColumn("[bold]tuning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:

        def done(history) -> int:
            return len(outer_records(plan, history)) if bilevel else len(history)

        history = database.load(space.needed_metrics(), tuple(space.knobs))
        task = progress.add_task("", total=options.budget, completed=min(done(history), options.budget))

        def on_record(record, history):
            progress.update(task, completed=min(done(history), options.budget), description=_summary(space, history))
            run_dir.raise_if_stopped()

        if bilevel:
            return BilevelSearch().run(plan, database, runner, options.budget, options.seed, layers, on_record)
        strategy = STRATEGIES[options.strategy]()
        return run_tuning(
            space, strategy, database, runner, options.budget, options.batch_size, options.seed, on_record, layers
        )


def _print_results(console: Console, out: Path, space, records) -> None:
    front = pareto_records(space, records)
    feasible = sum(r.feasible for r in records)
    console.print(f"{len(records)} evaluations, {feasible} feasible, Pareto front of {len(front)}; wrote {out}/")
    console.print(f"  report: {out}/report.html, {out}/report.md, {out}/evaluations.csv, {out}/pareto.csv")
    for objective, record in best_per_objective(space, records).items():
        value = format_objective(objective, record.metrics[objective])
        console.print(
            f"  best {objective}: {value} (evaluation {record.index}) -> {out}/best_{objective}.toml + .json, "
            f"{out}/{design_file_name(record.index)}"
        )


# ---- the run directory ------------------------------------------------------------------------


def check_run_directory(out: Path, resume: bool, holding_lock: bool = False) -> None:
    """`out` can take a new run (nothing there, or an empty directory) or, with --resume, holds
    one, and no other tune uses it. Writes nothing."""
    try:
        out.stat()
    except FileNotFoundError:
        pass
    except OSError as err:  # a name too long, a file where a directory belongs, ...
        raise UsageError(f"{out}: cannot hold a run ({err.strerror or err}); choose another -o") from err
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory; choose a directory for the run (-o)")
    try:
        entries = set(os.listdir(out)) if out.is_dir() else set()
    except OSError as err:
        raise CodesignError(f"{out}: cannot read the run directory ({err.strerror})") from err
    if LOCK_FILE in entries and not holding_lock and _locked(out / LOCK_FILE):
        raise _in_use(out)
    if (out / DATABASE_FILE).is_dir():
        raise UsageError(f"{out / DATABASE_FILE}: is a directory, not a tuning database")
    is_run = RUN_FILE in entries or DATABASE_FILE in entries
    if resume:
        if not out.is_dir():
            raise UsageError(f"{out}: no such run directory to resume; drop --resume to start a run there")
        if not is_run:
            raise UsageError(f"{out}: holds no tuning run to resume (no {RUN_FILE}); drop --resume to start one")
        if RUN_FILE not in entries:
            raise UsageError(
                f"{out}: the run has no {RUN_FILE} (an older codesign wrote it), so --resume cannot check it "
                "is the same run; start a new run in another directory"
            )
    elif is_run:
        raise UsageError(f"{out}: holds a tuning run; pass --resume to continue it or choose another -o")
    elif entries - {LOCK_FILE, TEMP_DIR}:
        raise UsageError(
            f"{out}: not empty and not a `codesign tune` run (its files would be overwritten); choose a new or "
            "empty directory for -o (--resume continues a run in a directory `codesign tune` wrote)"
        )


def check_identity(out: Path, identity: dict, model, data, space_path, calibration=None) -> None:
    """--resume continues the same run: same model, data and space (by content), seed,
    strategy, batch size, input bindings and evaluation samples."""
    path = out / RUN_FILE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot read what defines the run ({err}); start a new run") from err
    if not isinstance(recorded, dict):
        raise UsageError(f"{path}: expected a JSON object; start a new run")
    files = {"model_sha256": model, "data_sha256": data, "space_sha256": space_path, "calibration_sha256": calibration}
    recorded = {**RECORDED_BEFORE, **recorded}
    problems = []
    for field, option in IDENTITY_FIELDS.items():
        if field not in recorded:
            problems.append(f"{RUN_FILE} does not record '{field}'")
        elif recorded[field] != identity[field]:
            if field in files and None not in (identity[field], recorded[field]):
                problems.append(
                    f"{option} {files[field]} is not the run's {option.strip('-')} "
                    f"(sha256 {identity[field][:12]}, the run's {str(recorded[field])[:12]})"
                )
            else:
                problems.append(f"{option} {_show(identity[field])} is not the run's ({_show(recorded[field])})")
    if problems:
        raise UsageError(f"{out}: --resume of a different run: " + "; ".join(problems))


def _show(value) -> str:
    return "(none)" if value in (None, {}) else json.dumps(value) if isinstance(value, dict) else str(value)


class RunDirectory:
    """The run directory, created if needed and locked (flock) while the run uses it, with
    `.tune-tmp/` inside for temporary files. On exit the lock is released and `.tune-tmp/`
    removed; a new run that ends (fails, or is stopped) before recording an evaluation removes
    what it wrote.
    SIGTERM and SIGINT raise KeyboardInterrupt meanwhile (and set `stopped_by`), so all of this
    happens on them too."""

    def __init__(self, out: Path, resume: bool):
        self.out, self.resume = out, resume
        self.temp = out / TEMP_DIR
        self._created_dir = False
        self._written: list[Path] = []
        self._lock_fd: int | None = None
        self._signals: dict[int, object] = {}
        self.stopped_by: str | None = None  # the signal that stopped the run

    def __enter__(self) -> RunDirectory:
        self._catch_signals()
        try:
            if not self.out.is_dir():
                try:
                    self.out.mkdir(parents=True)
                except FileExistsError:
                    pass  # made meanwhile: the lock decides who uses it
                except OSError as err:
                    raise CodesignError(f"{self.out}: cannot create the run directory ({err.strerror})") from err
                else:
                    self._created_dir = True
            self._lock()
            shutil.rmtree(self.temp, ignore_errors=True)  # what a killed (kill -9) run left
            remove_staged_files(self.out)
            try:
                self.temp.mkdir()
            except OSError as err:
                raise CodesignError(f"{self.temp}: cannot create ({err.strerror})") from err
        except BaseException:
            self._close(failed=True)
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._close(failed=kind is not None)

    def write(self, name: str, text: str) -> None:
        path = self.out / name
        if not path.exists():  # noted first: a signal right after the write must not keep it
            self._written.append(path)
        write_text_atomic(path, text)

    def _lock(self) -> None:
        path = self.out / LOCK_FILE
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise CodesignError(f"{self.out}: cannot write in the run directory ({err.strerror})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CodesignError(f"{path}: cannot lock the run directory ({err.strerror})") from err
                raise _in_use(self.out) from err
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:  # not a lock file another tune removed (cleaning up) after we opened it
                self._lock_fd = fd
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return
            os.close(fd)
        raise CodesignError(f"{self.out}: cannot lock the run directory (its lock file keeps changing)")

    def _close(self, failed: bool) -> None:
        try:
            shutil.rmtree(self.temp, ignore_errors=True)
            if failed and not self.resume and self._lock_fd is not None and not _has_records(self.out):
                # A new run that recorded nothing: leave the directory as it was.
                for path in (self.out / RUN_FILE, self.out / SPACE_FILE, self.out / SETTINGS_FILE):
                    if path in self._written:
                        path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    if (self.out / DATABASE_FILE).stat().st_size == 0:
                        (self.out / DATABASE_FILE).unlink()
                with contextlib.suppress(OSError):
                    (self.out / LOCK_FILE).unlink()  # still held: a tune that opened it retries
                if self._created_dir:
                    with contextlib.suppress(OSError):
                        self.out.rmdir()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._restore_signals()

    def raise_if_stopped(self) -> None:
        """Stop at a safe point if a signal arrived whose exception a library swallowed."""
        if self.stopped_by is not None:
            raise KeyboardInterrupt(self.stopped_by)

    def _catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupt(number, frame):
            if self.stopped_by is None:
                self.stopped_by = signal.Signals(number).name
                raise KeyboardInterrupt(self.stopped_by)

        for number in (signal.SIGTERM, signal.SIGINT):
            self._signals[number] = signal.signal(number, interrupt)

    def _restore_signals(self) -> None:
        for number, handler in self._signals.items():
            signal.signal(number, handler)
        self._signals.clear()


def _locked(path: Path) -> bool:
    """Whether a tune holds the lock (probed read-only: checking writes nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _in_use(out: Path) -> CodesignError:
    return CodesignError(
        f"{out}: another `codesign tune` is running in this directory; wait for it to finish (then --resume) "
        "or choose another -o"
    )


def _has_records(out: Path) -> bool:
    try:
        return (out / DATABASE_FILE).stat().st_size > 0
    except OSError:
        return False


def _sha256(path: Path, what: str) -> str:
    with reading(path, what):
        return file_sha256(path)


def _json_text(value) -> str:
    return json.dumps(value, indent=2) + "\n"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _summary(space, history) -> str:
    best = best_per_objective(space, history)
    parts = [f"{o} {format_objective(o, r.metrics[o])}" for o, r in best.items()]
    return f"front {len(pareto_records(space, history))} | " + " | ".join(parts)
