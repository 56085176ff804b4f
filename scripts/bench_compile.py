"""Benchmark compiling and running a ResNet-18-shaped ONNX model with codesign.

What is measured, in one run:

* compile time: wall clock of the whole ``codesign.compile_model`` call (import, calibration on
  8 seeded random inputs, quantization, scheduling, TVM build), plus its per-stage ``.seconds``.
  Target: <= 60 s.
* int8 inference time: the module written by ``codesign.write_module`` and loaded with
  ``codesign.load``, run on one seeded random input (2 warm-up runs, then the median of N runs).
* float inference time: onnxruntime with default session options on the same input and with the
  same warm-up/median protocol. Target: int8 time / ORT time <= 10x.

The model (~45 MB) has random, seeded weights, so the int8-vs-float agreement (top-1 and cosine
similarity of the logits) is only reported, not judged. The script always exits 0; the verdict is
printed. Run from the repository root::

    python scripts/bench_compile.py [--runs N] [--hw vta_default] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
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

CALIBRATION_SAMPLES = 8
WARMUP_RUNS = 2
COMPILE_TARGET_SECONDS = 60.0
RATIO_TARGET = 10.0

console = Console()


# ---- measurements -------------------------------------------------------------------------------


def write_calibration(path: Path, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, rng.standard_normal((CALIBRATION_SAMPLES, *INPUT_SHAPE), dtype=np.float32))
    return path


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
    return times.user + times.system


def timed_with_contention(measure: Callable[[], dict]) -> dict:
    """Run `measure` and add 'others': the share of the machine's CPU other processes used meanwhile."""
    busy, own, start = system_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    results = measure()
    wall, busy_after = time.perf_counter() - start, system_busy_seconds()
    if busy is None or busy_after is None:
        return {**results, "others": None}
    others = (busy_after - busy) - (own_cpu_seconds() - own)
    return {**results, "others": max(0.0, others) / (wall * (os.cpu_count() or 1))}


def compile_and_load(model: Path, calibration: Path, hw_name: str, module_dir: Path):
    hw = codesign.load_hardware(hw_name)
    start = time.perf_counter()
    result = codesign.compile_model(model, hw, input_shapes={"input": INPUT_SHAPE}, calibration=calibration)
    compile_seconds = time.perf_counter() - start
    codesign.write_module(result, module_dir)
    return compile_seconds, result.seconds, codesign.load(module_dir)


def ort_session(model: Path) -> tuple[ort.InferenceSession, str]:
    """A default-options session and a description of the intra-op thread count it uses."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    threads = session.get_session_options().intra_op_num_threads
    if threads:
        return session, str(threads)
    # 0 means ORT's default: one intra-op thread per physical core.
    return session, f"{physical_cores()} (default)"


def physical_cores() -> int:
    try:
        import psutil  # optional: only used for the report
    except ImportError:
        return os.cpu_count() or 1
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def agreement(int8_logits: np.ndarray, float_logits: np.ndarray) -> tuple[bool, float]:
    a, b = int8_logits.ravel().astype(np.float64), float_logits.ravel().astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return bool(a.argmax() == b.argmax()), cosine


# ---- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]FAIL[/red]"


def print_stages(stage_seconds: dict[str, float]) -> None:
    table = Table(title="compile stages")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in stage_seconds.items():
        table.add_row(stage, f"{seconds:.2f}")
    table.add_row("[bold]sum[/bold]", f"{sum(stage_seconds.values()):.2f}")
    console.print(table)


def print_results(r: dict) -> None:
    ratio = r["int8"] / r["ort"]
    table = Table(title=f"ResNet-18 on {r['hw']} (median of {r['runs']} runs after {WARMUP_RUNS} warm-up)")
    for column, justify in (("metric", "left"), ("value", "right"), ("target", "right"), ("verdict", "center")):
        table.add_column(column, justify=justify)
    compile_ok, ratio_ok = r["compile"] <= COMPILE_TARGET_SECONDS, ratio <= RATIO_TARGET
    table.add_row("compile time", f"{r['compile']:.2f} s", f"<= {COMPILE_TARGET_SECONDS:.0f} s", verdict(compile_ok))
    table.add_row("int8 module inference", f"{r['int8'] * 1e3:.1f} ms", "", "")
    table.add_row("ORT float inference", f"{r['ort'] * 1e3:.1f} ms", "", "")
    table.add_row("ORT intra-op threads", r["ort_threads"], "", "")
    table.add_row("ratio int8 / ORT", f"{ratio:.2f}x", f"<= {RATIO_TARGET:.0f}x", verdict(ratio_ok))
    table.add_row("int8 vs float: top-1 agrees", "yes" if r["top1"] else "no", "report only", "")
    table.add_row("int8 vs float: cosine", f"{r['cosine']:.4f}", "report only", "")
    console.print(table)
    overall = compile_ok and ratio_ok
    console.print(f"verdict: {verdict(overall)} ({'all targets met' if overall else 'target(s) missed'})")
    if r["others"] is not None:
        console.print(
            f"other processes used {r['others']:.0%} of the {os.cpu_count()} CPUs while timing "
            "(more than a few % skews both timings, ORT's spinning thread pool especially)"
        )


# ---- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed inference runs after warm-up (default 10)")
    parser.add_argument("--hw", default="vta_default", help="hardware name or description file (default vta_default)")
    parser.add_argument("--keep", type=Path, help="keep the model, calibration data and module in this directory")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


def benchmark(work: Path, args: argparse.Namespace) -> dict:
    model = build_resnet18(work / "resnet18.onnx")
    calibration = write_calibration(work / "calibration.npy")
    console.print(f"model: {model} ({model.stat().st_size / 1e6:.1f} MB); compiling for {args.hw} ...")
    compile_seconds, stage_seconds, module = compile_and_load(model, calibration, args.hw, work / "module")
    print_stages(stage_seconds)

    x = np.random.default_rng(2).standard_normal(INPUT_SHAPE, dtype=np.float32)
    session, threads = ort_session(model)
    top1, cosine = agreement(module.run(x)[0], session.run(None, {"input": x})[0])
    timings = timed_with_contention(
        lambda: {
            "int8": median_seconds(lambda: module.run(x), args.runs),
            "ort": median_seconds(lambda: session.run(None, {"input": x}), args.runs),
        }
    )
    return {
        "hw": args.hw,
        "runs": args.runs,
        "compile": compile_seconds,
        **timings,
        "ort_threads": threads,
        "top1": top1,
        "cosine": cosine,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = benchmark(args.keep, args)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_compile-") as tmp:
            results = benchmark(Path(tmp), args)
    print_results(results)
    console.print(f"total script time: {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
