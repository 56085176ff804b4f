"""The `codesign` command line: compile | run | simulate | tune | report | demo | hw.

Errors print one line naming the problem and exit 2 (usage) or 1 (anything else); `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

from codesign.errors import CodesignError, DeployError, UsageError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hardware/software co-design for VTA-style GEMM accelerators."
)
# Piped output gets a wide table instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


NoCacheOption = Annotated[
    bool,
    typer.Option("--no-cache", help="Neither read nor write the cache of calibration statistics (see README)."),
]


QuietOption = Annotated[bool, typer.Option("--quiet", help="No live progress display (stage, layer i of N).")]
PlacementOption = Annotated[
    str | None,
    typer.Option(
        "--placement",
        help="Where grouped convs narrower than the core's lanes run: accelerator (the default: every conv the "
        "description holds runs on the core) or fastest (on the host where the modelled host conv is faster).",
    ),
]


class _LiveProgress:
    """The current stage, item i of N and the time elapsed, on one line that disappears when done."""

    def __init__(self, bar):
        self.bar = bar
        self.task = bar.add_task("", total=None)

    def stage(self, name: str, total: int | None) -> None:
        # Drawn at once: a stage shorter than the display's refresh period is still shown.
        self.bar.update(self.task, description=name, total=total, completed=0, refresh=True)

    def advance(self) -> None:
        self.bar.advance(self.task)


@contextlib.contextmanager
def _live_progress(quiet: bool):
    """A live display on a terminal; nothing in a pipe or with --quiet."""
    if quiet or not console.is_terminal:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from codesign.progress import reporting

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar, reporting(_LiveProgress(bar)):
        yield


def _cache_choice(no_cache: bool) -> None:
    if no_cache:
        from codesign import cache

        cache.disable()


@app.callback()
def _global(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False):
    """Hardware/software co-design for VTA-style GEMM accelerators."""


@app.command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory for the deployable module.")],
    hw: Annotated[
        str | None, typer.Option("--hw", help="Accelerator description (.toml, vta_config.json) or preset name.")
    ] = None,
    design: Annotated[
        Path | None,
        typer.Option("--design", help="A design file (e.g. RUN/designs/eval_N.json): hardware, compression, schedule."),
    ] = None,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Bind an input shape: NAME=D1,D2,... (repeatable).")
    ] = None,
    input_value: Annotated[
        list[str] | None,
        typer.Option("--input-value", help="Freeze an input to a constant: NAME=V or NAME=V1,V2,... (repeatable)."),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="Calibration inputs (.npy or .npz named by input).")
    ] = None,
    calibration_samples: Annotated[int, typer.Option(help="Calibration samples to use at most.", min=1)] = 200,
    weight_bits: Annotated[int | None, typer.Option(help="Weight bits (4 or 8); default: the hardware's.")] = None,
    cpu: Annotated[
        str | None, typer.Option(help="LLVM CPU to build for (default: this machine's; x86-64 runs anywhere).")
    ] = None,
    compression: Annotated[
        Path | None, typer.Option("--compression", help="Per-layer weight bits and pruning (JSON, e.g. from tune).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write a design report (HTML, Markdown, CSV) here.")
    ] = None,
    calibration_method: Annotated[
        str | None,
        typer.Option(
            "--calibration-method",
            help="Activation ranges: max (the default), mean_max (the mean of each sample's max |x|), "
            "percentile (99.99), entropy (KL), mse (least squared error), or auto: each calibrates on 3/4 of "
            "the samples and the one closest to the float model on the rest is used. Overrides a --design's.",
        ),
    ] = None,
    bias_correction: Annotated[
        bool,
        typer.Option(
            "--bias-correction/--no-bias-correction",
            help="Correct each layer's bias for the mean error quantization leaves, on the calibration data.",
        ),
    ] = True,
    explain: Annotated[
        bool, typer.Option("--explain", help="Print each tensor's quantization error on the calibration data.")
    ] = False,
    float_layers: Annotated[
        list[str] | None,
        typer.Option(
            "--float-layers", help="Keep these layers in float on the host (glob over layer names; repeatable)."
        ),
    ] = None,
    wide_layers: Annotated[
        list[str] | None,
        typer.Option(
            "--wide-layers",
            help="Give these GEMM layers int16 activations, in two passes of the core (glob over names; repeatable).",
        ),
    ] = None,
    placement: PlacementOption = None,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
):
    """Compile an ONNX model into a deployable module for an accelerator description."""
    _cache_choice(no_cache)
    from codesign.console_tables import print_placement
    from codesign.deploy import check_output, write_module
    from codesign.files import cleanup_on_signals
    from codesign.onnx_file import parse_input_shapes, parse_input_values
    from codesign.pipeline import compile_model

    if weight_bits not in (None, 4, 8):
        raise UsageError(f"--weight-bits {weight_bits}: expected 4 or 8")
    spec, compression_choices = _design_choices(hw, design, compression, (float_layers, wide_layers), placement)
    check_output(out)  # before the compile: refuses what write_module would, without writing anything
    with cleanup_on_signals(f"compiling {out}/"), _live_progress(quiet):  # SIGTERM removes the staging directory
        result = compile_model(
            model,
            spec,
            parse_input_shapes(input_shape),
            calibration,
            calibration_samples,
            weight_bits,
            cpu=cpu,
            compression=compression_choices,
            input_values=parse_input_values(input_value),
            calibration_method=calibration_method,
            bias_correction=bias_correction,
            run_here=False,
        )
        write_module(result, out)
    from codesign.simulator.simulate import simulate_plans

    print_placement(result.lowered.plans, spec, console, simulate_plans(result.lowered.plans, spec, "analytic"))
    total = sum(result.seconds.values())
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
    console.print(f"Wrote {escape(str(out))}/ ({total:.2f} s: {stages})")
    if explain:
        _print_explanation(result, calibration, calibration_samples)
    if report is not None:
        simulation = simulate_plans(result.lowered.plans, spec, "event")
        _write_design_report(report, model, spec, simulation, f"the compiled module {out}/")


def _with_layer_patterns(config, layer_patterns):
    """`config` with --float-layers and --wide-layers (a pair of pattern lists, each None if not given) added."""
    float_layers, wide_layers = layer_patterns or (None, None)
    return config.with_float_layers(float_layers).with_wide_layers(wide_layers)


def _compression(path: Path | None, layer_patterns, placement: str | None = None):
    """The --compression file's choices, with --float-layers and --wide-layers added and --placement set."""
    from codesign.compression import PLACEMENT_POLICIES, CompressionConfig, load_compression

    config = _with_layer_patterns(load_compression(path) if path else CompressionConfig(), layer_patterns)
    if placement is None:
        return config
    if placement not in PLACEMENT_POLICIES:
        raise UsageError(f"--placement {placement}: expected one of {', '.join(PLACEMENT_POLICIES)}")
    return dataclasses.replace(config, placement=placement)


def _design_choices(hw: str | None, design: Path | None, compression: Path | None, layer_patterns, placement=None):
    """(hardware, compression choices) of --design FILE, or of --hw, --compression and
    --placement; --float-layers and --wide-layers (`layer_patterns`) add to either."""
    from codesign.hardware import load_hardware

    if design is None:
        if hw is None:
            raise UsageError("--hw is required (a hardware description or preset), or --design FILE")
        return load_hardware(hw), _compression(compression, layer_patterns, placement)
    options = (("--hw", hw), ("--compression", compression), ("--placement", placement))
    given = [option for option, value in options if value is not None]
    if given:
        raise UsageError(
            f"--design and {' and '.join(given)} cannot be used together: the design file holds the hardware, "
            "the compression and the schedule"
        )
    from codesign.design import Design

    chosen = Design.load(design)
    return chosen.hardware, _with_layer_patterns(chosen.compression, layer_patterns)


def _print_explanation(result, calibration: Path | None, calibration_samples: int, worst: int = 20) -> None:
    from rich.table import Table

    from codesign.calibration import load_samples, random_samples
    from codesign.explain import quantization_errors

    inputs = result.imported.inputs
    samples = load_samples(calibration, inputs, calibration_samples) if calibration else random_samples(inputs, 8)
    rows = quantization_errors(result, samples[:16])
    table = Table(
        title=f"Quantization error against the float graph, worst {worst} of {len(rows)}", title_justify="left"
    )
    for column in ("tensor", "op", "runs on", "cosine", "relative error"):
        table.add_column(column)
    for row in rows[:worst]:
        table.add_row(row.name, row.op, row.placement, f"{row.cosine:.5f}", f"{row.relative_error:.4f}")
    console.print(table)


@app.command("run")
def run_command(
    module_dir: Annotated[Path, typer.Argument(help="Compiled module directory (from `codesign compile`).")],
    input: Annotated[
        list[str],
        typer.Option(
            "--input", help="Input array: FILE.npy or NAME=FILE.npy, or an .npz of arrays named by input (repeatable)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", help="Where to write the output (.npy; .npz for several).")],
    hw: Annotated[str | None, typer.Option("--hw", help="Refuse to run unless built for this description.")] = None,
):
    """Run a compiled module on inputs stored as .npy (or .npz) files. Each input holds one
    sample, or every input a stack of them (one more leading axis, as calibration files do): the
    outputs are then stacked the same way."""
    from codesign.deploy import load
    from codesign.hardware import load_hardware

    module = load(module_dir, load_hardware(hw) if hw else None)
    arrays = _read_inputs(input, [t.name for t in module.inputs])
    count = _stacked_samples(arrays, module.inputs)
    if count is None:
        results = module.run(**arrays)
    else:
        runs = [module.run(**{name: value[i] for name, value in arrays.items()}) for i in range(count)]
        results = [np.stack(parts) for parts in zip(*runs)]
    written = _write_outputs(output, results, [t.name for t in module.outputs])
    shapes = ", ".join(f"{t.name} {list(r.shape)}" for t, r in zip(module.outputs, results))
    samples = "" if count is None else f" ({count} samples)"
    console.print(f"Wrote {escape(str(written))}: {shapes}{samples}")


def _stacked_samples(arrays: dict[str, np.ndarray], inputs) -> int | None:
    """The number of samples when every input is a stack of them (shape [S, *its shape]); None
    when they are single samples (the module checks those)."""
    stacked = {t.name: arrays[t.name].shape[1:] == tuple(t.shape) for t in inputs if t.name in arrays}
    if not any(stacked.values()):
        return None
    if not all(stacked.values()):
        singles = ", ".join(name for name, is_stack in stacked.items() if not is_stack)
        raise UsageError(f"inputs mix stacks of samples and single samples ({singles}): stack all or none")
    counts = {name: arrays[name].shape[0] for name in stacked}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise UsageError(f"stacked inputs hold different numbers of samples: {listed}")
    return next(iter(counts.values()))


def _read_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """--input values -> arrays by input name: FILE.npy (the inputs in order) or NAME=FILE.npy; an
    .npz holds arrays named by input (NAME=FILE.npz: the array NAME, or the archive's only one)."""
    arrays = {}
    for position, spec in enumerate(specs):
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = None, spec
        loaded = _load_array_file(spec, file)
        if isinstance(loaded, dict) and name is None:
            arrays.update(_npz_inputs(spec, file, loaded, names))
            continue
        if isinstance(loaded, dict):
            if name not in loaded and len(loaded) != 1:
                raise DeployError(
                    f"--input {spec}: {file} holds {_npz_contents(loaded)}; expected an array named {name}"
                )
            loaded = loaded[name] if name in loaded else next(iter(loaded.values()))
        if name is None:
            if len(specs) != len(names) or position >= len(names):
                raise UsageError(f"--input {spec}: name it as NAME=FILE (inputs: {', '.join(names)})")
            name = names[position]
        arrays[name] = loaded
    return arrays


def _load_array_file(spec: str, file: str) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy file's array, or an .npz archive's arrays by name."""
    try:
        loaded = np.load(file, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                return {key: loaded[key] for key in loaded.files}
        return loaded
    except FileNotFoundError as err:
        raise UsageError(f"--input {spec}: no such file {file}") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeployError(f"--input {spec}: {file} is not a .npy or .npz file of arrays ({reason})") from err
    except MemoryError as err:
        raise DeployError(f"--input {spec}: {file} holds an array too large to load") from err


def _npz_inputs(spec: str, file: str, arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The inputs of an .npz given without a name: its arrays named by input (or, for a model
    with one input, the archive's only array)."""
    if len(names) == 1 and len(arrays) == 1:
        return {names[0]: next(iter(arrays.values()))}
    missing = [name for name in names if name not in arrays]
    if missing:
        raise DeployError(
            f"--input {spec}: {file} holds {_npz_contents(arrays)}; expected arrays named by input: "
            f"{', '.join(names)} (or give one array as NAME=FILE)"
        )
    return {name: arrays[name] for name in names}


def _npz_contents(arrays: dict[str, np.ndarray], shown: int = 4) -> str:
    if not arrays:
        return "no arrays"
    items = [f"{key} ({value.dtype} {list(value.shape)})" for key, value in list(arrays.items())[:shown]]
    more = f" and {len(arrays) - shown} more" if len(arrays) > shown else ""
    return f"array{'s' if len(arrays) > 1 else ''} " + ", ".join(items) + more


def _write_outputs(path: Path, results: list[np.ndarray], names: list[str]) -> Path:
    """Write one output as .npy, several (or to a .npz path) as .npz, atomically; returns the
    file written (numpy's suffix added when the path lacks it)."""
    import io

    from codesign.files import write_bytes_atomic

    suffix = ".npy" if len(results) == 1 and path.suffix != ".npz" else ".npz"
    written = path if path.suffix == suffix else Path(f"{path}{suffix}")
    data = io.BytesIO()
    if suffix == ".npy":
        np.save(data, results[0])
    else:
        np.savez(data, **dict(zip(names, results)))
    write_bytes_atomic(written, data.getvalue())  # a reader never sees half an output
    return written


@app.command("simulate")
def simulate_command(
    target: Annotated[Path, typer.Argument(help="An ONNX model, or a compiled module directory.")],
    hw: Annotated[
        str | None, typer.Option("--hw", help="Accelerator description or preset (required for an ONNX model).")
    ] = None,
    design: Annotated[
        Path | None, typer.Option("--design", help="A design file (hardware, compression, schedule) instead of --hw.")
    ] = None,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Bind an input shape: NAME=D1,D2,... (repeatable).")
    ] = None,
    input_value: Annotated[
        list[str] | None,
        typer.Option("--input-value", help="Freeze an input to a constant: NAME=V or NAME=V1,V2,... (repeatable)."),
    ] = None,
    calibration: Annotated[Path | None, typer.Option("--calibration", help="Calibration inputs (.npy/.npz).")] = None,
    model: Annotated[str, typer.Option(help="Cycle model: event (instruction-level) or analytic.")] = "event",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the full report as JSON.")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write a design report (HTML, Markdown, CSV) here.")
    ] = None,
    float_layers: Annotated[
        list[str] | None,
        typer.Option("--float-layers", help="Keep these layers in float on the host (glob over names; repeatable)."),
    ] = None,
    wide_layers: Annotated[
        list[str] | None,
        typer.Option("--wide-layers", help="Give these GEMM layers int16 activations (glob over names; repeatable)."),
    ] = None,
    placement: PlacementOption = None,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
):
    """Per-layer counters, cycles, utilisation, bound and energy of a model on an accelerator."""
    _cache_choice(no_cache)
    from codesign.simulator.simulate import MODELS, simulate_plans

    if model not in MODELS:
        raise UsageError(f"--model {model}: expected one of {', '.join(MODELS)}")
    with _live_progress(quiet):
        spec, plans = _plans_for(
            target, hw, input_shape, input_value, calibration, (float_layers, wide_layers), design, placement
        )
    simulation = simulate_plans(plans, spec, model)
    from codesign.console_tables import print_simulation

    print_simulation(simulation, console)
    if json_path is not None:
        _write_json(json_path, simulation.to_dict())
        console.print(f"Wrote {escape(str(json_path))}")
    if report is not None:
        source = f"the compiled module {target}/" if target.is_dir() else f"{target.name} lowered for {spec.name}"
        _write_design_report(report, target, spec, simulation, source)


def _write_design_report(out_dir: Path, model: Path, spec, simulation, source: str) -> None:
    import platform

    import tvm

    import codesign
    from codesign.report.build import write_design_report
    from codesign.report.design_sim import SimulatedDesign

    context = [
        ("model", str(model)),
        ("accelerator", spec.name),
        ("simulated", f"{source}, {simulation.model} cycle model"),
        ("versions", f"codesign {codesign.__version__}, tvm {tvm.__version__}, python {platform.python_version()}"),
    ]
    page = write_design_report(out_dir, SimulatedDesign(spec.name, spec, simulation), context)
    console.print(f"Wrote {escape(str(page))} (+ report.md, layers.csv)")


def _plans_for(
    target: Path,
    hw: str | None,
    input_shape,
    input_value,
    calibration,
    layer_patterns=None,
    design=None,
    placement=None,
):
    """(hardware, layer plans) of a compiled module directory or of an ONNX model to lower."""
    if target.is_dir():
        if placement is not None:
            raise UsageError(f"--placement: {target} is a compiled module, placed when it was compiled")
        from codesign.deploy import module_hardware, read_manifest
        from codesign.plan import LayerPlan

        manifest = read_manifest(target)  # validated, its files' sha256 checked
        spec = module_hardware(target, manifest)
        if hw is not None or design is not None:
            wanted, _ = _design_choices(hw, design, None, None)
            if wanted.fingerprint() != spec.fingerprint():
                raise DeployError(
                    f"{target}: module was built for '{spec.name}', not for '{hw or design}'; recompile it"
                )
        return spec, [LayerPlan.from_dict(layer) for layer in manifest["layers"]]
    if not target.exists():
        from codesign.errors import ModelError

        raise ModelError(f"{target}: no such ONNX file or compiled module directory")
    if hw is None and design is None:
        raise UsageError("--hw (or --design) is required to simulate an ONNX model")
    from codesign.onnx_file import parse_input_shapes, parse_input_values
    from codesign.plan_cache import plan_model

    spec, compression = _design_choices(hw, design, None, layer_patterns, placement)
    shapes, values = parse_input_shapes(input_shape), parse_input_values(input_value)
    return spec, plan_model(target, spec, shapes, calibration, compression=compression, input_values=values)


def _write_json(path: Path, document: dict) -> None:
    import json

    from codesign.files import write_text_atomic

    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


@app.command("tune")
def tune_command(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    space: Annotated[Path, typer.Option("--space", help="Search-space TOML file (see spaces/).")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Evaluation data: .npz with inputs by name and 'labels' (a class per sample, or a CTC "
            "recogniser's class sequence per sample, padded with -1).",
        ),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run directory.")],
    budget: Annotated[
        int, typer.Option(help="Evaluations in all (bilevel: compression profiles measured for accuracy).", min=1)
    ] = 100,
    strategy: Annotated[
        str,
        typer.Option(
            help="xgboost (surrogate), random, nsga2, or bilevel (surrogate over compression, every hardware swept)."
        ),
    ] = "xgboost",
    seed: Annotated[int, typer.Option(help="Seed of every random choice.", min=0)] = 0,
    jobs: Annotated[int, typer.Option(help="Parallel evaluations.", min=1)] = 1,
    executor: Annotated[str, typer.Option(help="local (processes) or ray.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    batch_size: Annotated[int, typer.Option(help="Configurations proposed at a time.", min=1)] = 8,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in OUT (same model, data, space, seed, strategy).")
    ] = False,
    input_shape: Annotated[
        list[str] | None, typer.Option("--input-shape", help="Bind an input shape: NAME=D1,D2,... (repeatable).")
    ] = None,
    input_value: Annotated[
        list[str] | None,
        typer.Option("--input-value", help="Freeze an input to a constant: NAME=V or NAME=V1,V2,... (repeatable)."),
    ] = None,
    eval_samples: Annotated[int | None, typer.Option(help="Evaluate accuracy on at most this many samples.")] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="Calibration inputs (.npz by input name), apart from --data; default: --data's first 64."),
    ] = None,
    no_cache: NoCacheOption = False,
):
    """Search hardware, compression and schedules jointly for the Pareto front."""
    _cache_choice(no_cache)
    from codesign.report.build import write_run_report
    from codesign.tuner.run import tune_to_directory

    def report(run_dir: Path) -> None:
        console.print("Writing the report (per-layer simulation of the best designs) ...")
        write_run_report(run_dir, warn=lambda message: None)  # the tune has warned already

    tune_to_directory(
        model, space, data, out, budget, strategy, seed, jobs, executor, address, batch_size, resume,
        input_shape, eval_samples, console, input_value, after_run=report, calibration=calibration,
    )  # fmt: skip


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A tuning run directory (from `codesign tune`).")],
):
    """Write RUN/report.html (self-contained), report.md and CSVs of all evaluations and of the front."""
    from codesign.report.build import write_run_report

    run = write_run_report(run_dir)
    console.print(
        f"Wrote {escape(str(run_dir))}/report.html, report.md, evaluations.csv ({len(run.records):,} rows), "
        f"pareto.csv ({len(run.front):,} rows)"
    )


@app.command("demo")
def demo_command(
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Keep the demo's modules here.")] = None,
):
    """Compile the bundled mnist-8 for VTA's default and measure it on the 10,000 MNIST test images."""
    from codesign.demo import run_demo
    from codesign.files import cleanup_on_signals

    with cleanup_on_signals("running the demo"):
        run_demo(out, console)


@app.command("hw")
def hw_command(
    description: Annotated[str, typer.Argument(help="Description file (.toml, vta_config.json) or preset name.")],
):
    """Validate an accelerator description and print it."""
    from codesign.hardware import load_hardware

    spec = load_hardware(description)
    int4_macs = spec.for_layer_weights(4).macs_per_cycle
    scaling = f", {int4_macs} with int4 weights" if int4_macs != spec.macs_per_cycle else ""
    console.print(
        f"[bold]{escape(spec.name)}[/]: valid ({spec.gemm_shape} GEMM core, {spec.macs_per_cycle} MACs/cycle{scaling})"
    )
    console.print(spec.to_toml(), markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if debug:
        os.environ["CODESIGN_DEBUG"] = "1"
    try:
        result = app(args=argv, prog_name="codesign", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.TyperException as err:  # typer's own click: usage errors, no-args help
        if debug:
            raise
        if getattr(err, "ctx", None) is not None and type(err).__name__ == "NoArgsIsHelpError":
            err.show()
        else:
            print(f"codesign: error: {err.format_message()}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except typer.Abort:
        return 1
    except CodesignError as err:
        if debug:
            raise
        _release_frames(err)
        print(f"codesign: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        if debug:
            raise
        _release_frames(err)
        message = str(err).strip().splitlines()
        print(
            f"codesign: internal error: {type(err).__name__}: {message[-1] if message else ''} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


def _one_line(message: str) -> str:
    """The message with control characters (a newline in a user's key or name) and unpaired
    surrogates escaped, so an error is always one printable line."""
    return "".join(
        repr(char)[1:-1] if (char.isprintable() is False and char != " ") or 0xD800 <= ord(char) <= 0xDFFF else char
        for char in message
    )


def _release_frames(err: BaseException) -> None:
    """Free what the failed command's frames held, with TVM's log quiet: TVM objects log when
    destroyed ("BlockBuilder destroyed with remaining blocks!"), after our one line otherwise."""
    import gc

    from codesign.tvm_output import quiet_tvm

    with quiet_tvm():
        while err is not None:
            err.__traceback__ = None
            err = err.__cause__ or err.__context__
        gc.collect()


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
