"""Benchmark the time to a first design and compiling and running a ResNet-18-shaped ONNX model.

What is measured, in one run, for the ResNet-18-shaped model (random seeded weights, 8 random
calibration inputs) and for the bundled mnist-8 (200 MNIST calibration images):

* cold compile: `codesign.compile_model` with an empty cache (calibration runs), per stage, as
  `codesign compile` runs it (the module is written, so no machine code is made in memory);
* warm compile: the same again (calibration statistics from the cache), per stage;
* cold and warm `codesign simulate MODEL --hw vta_default` end to end: the CLI as a user runs it,
  in a fresh process (Python start and imports included), with an empty cache and then again;
  the median of three such pairs, each with its own cache (one run varies by 10-20 %); codesign's
  bytecode is compiled first, as an installed package has it;
* mnist-8 only: the tuner's accuracy evaluation of one compression profile (compile the profile
  + run it on 1,000 MNIST test images) inside the tuner's evaluator: the first of six profiles of
  `spaces/mnist_joint.toml` and the median of the six (the evaluator's one-off setup apart);
* ResNet-18 only: int8 inference time of the written module against onnxruntime's float model
  (2 warm-up runs, then the median of N runs).

Targets: ResNet-18 cold compile <= 10 s, cold simulate <= 4 s, warm simulate <= 1 s; mnist-8
profile evaluation <= 1 s; int8 / ORT inference <= 10x. `--json FILE` saves the figures and
`--compare FILE` prints the ratio of each to a saved run (e.g. the same script run with
PYTHONPATH pointing at a checkout of an earlier commit). The script always exits 0; the verdict
is printed. Run from the repository root::

    python scripts/bench_compile.py [--runs N] [--hw vta_default] [--json now.json] [--compare before.json]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from resnet18 import INPUT_SHAPE, build_resnet18
from rich.console import Console
from rich.table import Table

import codesign
from codesign.demo import MNIST_MODEL, load_mnist_test

CALIBRATION_SAMPLES = 8
MNIST_CALIBRATION_SAMPLES = 200
MNIST_EVAL_IMAGES = 1000
MNIST_SPACE = Path(__file__).resolve().parent.parent / "spaces" / "mnist_joint.toml"
TUNE_CALIBRATION_SAMPLES = 64  # the evaluator's default
MNIST_CONVS, MNIST_ALL = ("conv2d_0", "conv2d_1"), ("conv2d_0", "conv2d_1", "matmul_0")
MNIST_PROFILES = (  # (weight bits, prune ratio) per layer: choices spaces/mnist_joint.toml offers
    ({}, {}),
    (dict.fromkeys(MNIST_CONVS, 4), {}),
    (dict.fromkeys(MNIST_ALL, 4), {}),
    ({}, dict.fromkeys(MNIST_CONVS, 0.25)),
    (dict.fromkeys(MNIST_CONVS, 4), dict.fromkeys(MNIST_CONVS, 0.5)),
    ({"matmul_0": 4}, {"conv2d_1": 0.25}),
)
WARMUP_RUNS = 2
SIMULATE_RUNS = 3  # cold + warm `simulate` pairs; the median of each is reported
TARGETS = {  # figure -> its upper limit (seconds, or a ratio for int8_over_ort)
    "resnet18.compile_cold": 10.0,
    "resnet18.simulate_cold": 4.0,
    "resnet18.simulate_warm": 1.0,
    "mnist.profile_eval": 1.0,
    "resnet18.int8_over_ort": 10.0,
}

console = Console()


# ---- measurements -------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    for _ in range(WARMUP_RUNS):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def system_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def with_contention(measure: Callable[[], dict]) -> tuple[dict, float | None]:
    """`measure()`, and the share of the machine's CPU other processes used meanwhile."""
    busy, own, start = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    results = measure()
    wall, busy_after = time.perf_counter() - start, system_busy_seconds()
    if busy is None or busy_after is None:
        return results, None
    others = (busy_after - busy) - (own_cpu_seconds() - own)
    return results, max(0.0, others) / (wall * (os.cpu_count() or 1))


def use_cache(directory: Path) -> None:
    os.environ["CODESIGN_CACHE_DIR"] = str(directory)  # read by codesign and by the CLI it starts
    os.environ.pop("CODESIGN_NO_CACHE", None)


def forget_compiled_kernels() -> None:
    try:
        from codesign.tvm_build import forget_compiled_kernels as forget
    except ImportError:  # a checkout before the kernel store
        return
    forget()


def timed_compile(model: Path, calibration: Path, hw, shapes: dict | None, samples: int):
    start = time.perf_counter()
    result = codesign.compile_model(  # as `codesign compile` does: the module is written, not run here
        model, hw, input_shapes=shapes, calibration=calibration, calibration_samples=samples, warn=lambda m: None,
        run_here=False,
    )  # fmt: skip
    return time.perf_counter() - start, result


def simulate_seconds(model: Path, calibration: Path, shapes: dict | None, hw_name: str) -> float:
    """Wall time of `codesign simulate` in a new process, as a user runs it."""
    argv = [sys.executable, "-m", "codesign.cli", "simulate", str(model), "--hw", hw_name]
    argv += ["--calibration", str(calibration)]
    for name, shape in (shapes or {}).items():
        argv += ["--input-shape", f"{name}={','.join(map(str, shape))}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def first_design(name: str, model: Path, calibration: Path, shapes, samples: int, work: Path, hw_name: str) -> tuple:
    """Cold and warm compile (in this process) and simulate (a new process each), each with its own
    cache directory, started empty."""
    hw = codesign.load_hardware(hw_name)
    use_cache(work / f"cache-{name}-compile")
    cold, result = timed_compile(model, calibration, hw, shapes, samples)
    cold_stages = dict(result.seconds)
    forget_compiled_kernels()  # warm means the on-disk cache, not this process's compiled kernels
    warm, warm_result = timed_compile(model, calibration, hw, shapes, samples)
    cold_runs, warm_runs = [], []
    for run in range(SIMULATE_RUNS):
        use_cache(work / f"cache-{name}-simulate-{run}")
        cold_runs.append(simulate_seconds(model, calibration, shapes, hw_name))
        warm_runs.append(simulate_seconds(model, calibration, shapes, hw_name))
    simulate_cold, simulate_warm = statistics.median(cold_runs), statistics.median(warm_runs)
    figures = {
        f"{name}.compile_cold": cold,
        f"{name}.compile_warm": warm,
        f"{name}.simulate_cold": simulate_cold,
        f"{name}.simulate_warm": simulate_warm,
    }
    figures |= {f"{name}.cold.{stage}": seconds for stage, seconds in cold_stages.items()}
    figures |= {f"{name}.warm.{stage}": seconds for stage, seconds in warm_result.seconds.items()}
    return figures, result


def mnist_profile_evals(work: Path, hw_name: str) -> dict:
    """The tuner's accuracy evaluation of one compression profile: compile the profile and run it
    on MNIST_EVAL_IMAGES test images, inside an `Evaluator` as a tune does (it imports the model,
    reads the data and runs the float model once per tune: its setup is reported apart). Every
    profile is new to the evaluator; the first one also compiles the kernels later ones share."""
    from codesign.compression import CompressionConfig
    from codesign.tuner.evaluator import Evaluator
    from codesign.tuner.space import load_space

    images, labels = load_mnist_test()
    data = work / "mnist_eval.npz"
    np.savez(data, Input3=images[:MNIST_EVAL_IMAGES], labels=labels[:MNIST_EVAL_IMAGES])
    use_cache(work / "cache-mnist-profile")
    start = time.perf_counter()
    evaluator = Evaluator(MNIST_MODEL, load_space(MNIST_SPACE), data, calibration_samples=TUNE_CALIBRATION_SAMPLES)
    setup = time.perf_counter() - start
    seconds, accuracies = [], []
    for weight_bits, prune in MNIST_PROFILES:
        compression = CompressionConfig(weight_bits=weight_bits, prune=prune, schedule="auto")
        start = time.perf_counter()
        accuracies.append(evaluator.measure_profile(compression, True).accuracy)
        seconds.append(time.perf_counter() - start)
    evaluator.close()
    shown = ", ".join(f"{a:.1f}%" for a in accuracies)
    console.print(f"mnist-8 top-1 on {MNIST_EVAL_IMAGES:,} images of {len(MNIST_PROFILES)} profiles: {shown}")
    return {
        "mnist.tune_setup": setup,
        "mnist.profile_eval_first": seconds[0],
        "mnist.profile_eval": statistics.median(seconds),
    }


def inference(result, model: Path, work: Path, runs: int) -> dict:
    module_dir = work / "module"
    codesign.write_module(result, module_dir)
    module = codesign.load(module_dir)
    x = np.random.default_rng(2).standard_normal(INPUT_SHAPE, dtype=np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    int8 = median_seconds(lambda: module.run(x), runs)
    float_seconds = median_seconds(lambda: session.run(None, {"input": x}), runs)
    return {
        "resnet18.int8_inference": int8,
        "resnet18.ort_inference": float_seconds,
        "resnet18.int8_over_ort": int8 / float_seconds,
    }


# ---- report -------------------------------------------------------------------------------------


def print_figures(figures: dict, before: dict | None) -> None:
    table = Table(title="time to a first design (seconds; ratio = before / now, > 1 is faster now)")
    for column, justify in (("figure", "left"), ("now", "right"), ("before", "right"), ("ratio", "right")):
        table.add_column(column, justify=justify)
    table.add_column("target", justify="right")
    for name, value in figures.items():
        previous = (before or {}).get(name)
        unit = "x" if name.endswith("_over_ort") else " s"
        ratio = f"{previous / value:.2f}x" if previous and value and unit == " s" else ""
        target = ""
        if name in TARGETS:
            verdict = "[green]PASS[/green]" if value <= TARGETS[name] else "[red]FAIL[/red]"
            target = f"<= {TARGETS[name]:g}{unit.strip() or ''} {verdict}"
        shown_before = f"{previous:.3f}" if previous is not None else ""
        table.add_row(name, f"{value:.3f}", shown_before, ratio, target)
    console.print(table)


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed inference runs after warm-up (default 10)")
    parser.add_argument("--hw", default="vta_default", help="hardware preset name (default vta_default)")
    parser.add_argument("--json", type=Path, help="save the figures here")
    parser.add_argument("--compare", type=Path, help="figures of an earlier run (--json) to print ratios against")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def benchmark(work: Path, args: argparse.Namespace) -> dict:
    resnet = build_resnet18(work / "resnet18.onnx")
    resnet_calibration = work / "resnet18_calibration.npy"
    rng = np.random.default_rng(1)
    np.save(resnet_calibration, rng.standard_normal((CALIBRATION_SAMPLES, *INPUT_SHAPE), dtype=np.float32))
    mnist_calibration = work / "mnist_calibration.npy"
    np.save(mnist_calibration, load_mnist_test()[0][:MNIST_CALIBRATION_SAMPLES, 0])

    console.print(f"ResNet-18: {resnet} ({resnet.stat().st_size / 1e6:.1f} MB) for {args.hw} ...")
    shapes = {"input": INPUT_SHAPE}
    figures, result = first_design("resnet18", resnet, resnet_calibration, shapes, CALIBRATION_SAMPLES, work, args.hw)
    console.print("mnist-8 ...")
    mnist, _ = first_design("mnist", MNIST_MODEL, mnist_calibration, None, MNIST_CALIBRATION_SAMPLES, work, args.hw)
    figures |= mnist
    figures |= mnist_profile_evals(work, args.hw)
    figures |= inference(result, resnet, work, args.runs)
    return figures


def compile_bytecode() -> None:
    """codesign's bytecode, as an installed package has it: an environment with
    PYTHONDONTWRITEBYTECODE set (or a read-only checkout) would otherwise compile every module
    from source in each new process (0.2 s of each `simulate`)."""
    import codesign
    import codesign.schedules

    for package in (codesign, codesign.schedules):
        compileall.compile_dir(Path(package.__file__).resolve().parent, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    before = json.loads(args.compare.read_text()) if args.compare else None
    start = time.perf_counter()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench_compile-") as tmp:
        figures, others = with_contention(lambda: benchmark(Path(tmp), args))
    print_figures(figures, before)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    if others is not None:
        console.print(f"other processes used {others:.0%} of the {os.cpu_count()} CPUs meanwhile (more skews timings)")
    console.print(f"total script time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
