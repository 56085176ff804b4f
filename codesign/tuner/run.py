"""`codesign tune`: a tuning run in a directory, with a live progress display."""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import tvm
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import codesign
from codesign.errors import UsageError
from codesign.files import write_text_atomic
from codesign.importer import parse_input_shapes, parse_input_values
from codesign.report.build import write_run_report
from codesign.report.run_data import DATABASE_FILE, SETTINGS_FILE
from codesign.tuner.database import Database
from codesign.tuner.evaluator import gemm_layer_names
from codesign.tuner.executors import EvaluatorSpec, make_executor
from codesign.tuner.space import load_space
from codesign.tuner.strategies import STRATEGIES
from codesign.tuner.tune import best_per_objective, pareto_records, run_tuning, write_outputs


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
):
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor {executor}: expected local or ray")
    space = load_space(space_path)
    out = Path(out)
    if (out / DATABASE_FILE).exists() and not resume:
        raise UsageError(f"{out}: holds a tuning run; pass --resume to continue it or choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space_path, out / "space.toml")
    shapes = tuple(sorted(parse_input_shapes(input_shape).items()))
    values = tuple(sorted((name, tuple(v)) for name, v in parse_input_values(input_value).items()))
    spec = EvaluatorSpec(
        str(Path(model).resolve()),
        str(Path(space_path).resolve()),
        str(Path(data).resolve()),
        shapes,
        eval_samples=eval_samples,
        input_values=values,
    )
    started = time.perf_counter()
    earlier_seconds = _read_json(out / SETTINGS_FILE).get("wall_seconds", 0.0) if resume else 0.0
    settings = {
        "model": spec.model,
        "space": spec.space,
        "data": spec.data,
        "input_shapes": {name: list(dims) for name, dims in shapes},
        "input_values": {name: list(v) for name, v in values},
        "calibration_samples": spec.calibration_samples,
        "eval_samples": eval_samples,
        "budget": budget,
        "strategy": strategy,
        "seed": seed,
        "jobs": jobs,
        "executor": executor,
        "batch_size": batch_size,
        "codesign_version": codesign.__version__,
        "tvm_version": tvm.__version__,
        "python_version": platform.python_version(),
    }
    # Written first, so the report of an interrupted run still knows the model and data.
    write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    console.print(f"Preparing the evaluator (model, data, float accuracy) for {Path(model).name} ...")
    runner = make_executor(executor, spec, jobs, address)
    database = Database(out / DATABASE_FILE)
    try:
        with Progress(
            TextColumn("[bold]tuning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            done = len(database.load())
            task = progress.add_task("", total=budget, completed=min(done, budget))

            def on_record(record, history):
                progress.update(task, advance=1, description=_summary(space, history))

            records = run_tuning(space, STRATEGIES[strategy](), database, runner, budget, batch_size, seed, on_record)
    finally:
        runner.close()
    layers = gemm_layer_names(model, dict(shapes) or None, {name: list(v) for name, v in values} or None)
    write_outputs(out, space, records, layers)
    settings["wall_seconds"] = earlier_seconds + time.perf_counter() - started
    write_text_atomic(out / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")
    console.print("Writing the report (per-layer simulation of the best designs) ...")
    write_run_report(out)
    front = pareto_records(space, records)
    feasible = sum(r.feasible for r in records)
    console.print(f"{len(records)} evaluations, {feasible} feasible, Pareto front of {len(front)}; wrote {out}/")
    console.print(f"  report: {out}/report.html, {out}/report.md, {out}/evaluations.csv, {out}/pareto.csv")
    for objective, record in best_per_objective(space, records).items():
        value = _format(objective, record.metrics[objective])
        console.print(f"  best {objective}: {value} (evaluation {record.index}) -> {out}/best_{objective}.toml + .json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _format(objective: str, value: float) -> str:
    units = {
        "latency": (1e3, "ms"),
        "energy": (1e3, "mJ"),
        "edp": (1e6, "mJ*ms"),
        "area": (1, "mm2"),
        "accuracy": (1, "%"),
    }
    scale, unit = units[objective]
    return f"{value * scale:.4g} {unit}"


def _summary(space, history) -> str:
    best = best_per_objective(space, history)
    parts = [f"{o} {_format(o, r.metrics[o])}" for o, r in best.items()]
    return f"front {len(pareto_records(space, history))} | " + " | ".join(parts)
