"""Benchmark the simulator on a ResNet-18-shaped model (random weights), on one core.

Measured in one run:
- the event-level simulator: seconds per full network (every instruction of every offloaded
  layer, VTA default);
- the analytic model through the vectorised design sweep: full-network evaluations per second
  over random hardware designs (block sizes, scratchpads, DRAM bandwidth and latency), cold
  (first call, candidate tilings enumerated) and warm;
- the ratio between the two, and the ResNet-18 totals on the VTA default for reference.
Target: at least 1,000 designs per second (warm). Run from the repository root:

    python scripts/bench_sim.py [--designs 2000] [--seed 0]
"""

from __future__ import annotations

import os

# One core: numpy must not spread over threads (set before numpy is imported).
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from resnet18 import INPUT_SHAPE, build_resnet18  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from codesign.hardware import load_hardware  # noqa: E402
from codesign.importer import import_onnx  # noqa: E402
from codesign.lowering import lower_to_relax  # noqa: E402
from codesign.pipeline import quantize_model  # noqa: E402
from codesign.schedules.mapper import Layer  # noqa: E402
from codesign.simulator.design_sweep import evaluate_designs  # noqa: E402
from codesign.simulator.simulate import simulate_plans  # noqa: E402

TARGET_DESIGNS_PER_SECOND = 1000
console = Console()


def resnet18_plans(hw):
    with tempfile.TemporaryDirectory() as folder:
        model = build_resnet18(Path(folder) / "resnet18.onnx")
        calibration = Path(folder) / "calibration.npy"
        np.save(calibration, np.random.default_rng(1).standard_normal((2, *INPUT_SHAPE), dtype=np.float32))
        imported = import_onnx(model)
        _, qgraph, _ = quantize_model(imported, hw, calibration)
        return lower_to_relax(qgraph, imported, hw).plans


def random_designs(base, count: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [
        dataclasses.replace(
            base,
            name=f"design_{i}",
            batch=int(rng.choice([1, 2, 4])),
            block_in=int(rng.choice([8, 16, 32, 64])),
            block_out=int(rng.choice([8, 16, 32, 64])),
            inp_buffer_bytes=int(2 ** rng.integers(14, 19)),
            wgt_buffer_bytes=int(2 ** rng.integers(16, 21)),
            acc_buffer_bytes=int(2 ** rng.integers(15, 20)),
            dram_bytes_per_cycle=float(rng.choice([4, 8, 16, 32])),
            dram_latency_cycles=int(rng.integers(16, 128)),
            clock_mhz=float(rng.choice([100, 200, 333])),
        )
        for i in range(count)
    ]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    hw = load_hardware("vta_default")
    console.print("Building and lowering the ResNet-18-shaped model for vta_default ...")
    plans = resnet18_plans(hw)
    offloaded = [p for p in plans if p.placement == "accel"]
    event, event_seconds = timed(lambda: simulate_plans(plans, hw, "event"))
    analytic, analytic_seconds = timed(lambda: simulate_plans(plans, hw, "analytic"))

    layers = [Layer(p.shape, tuple(p.alu_ops)) for p in offloaded]
    designs = random_designs(hw, args.designs, args.seed)
    _, cold = timed(lambda: evaluate_designs(layers, designs))
    swept, warm = timed(lambda: evaluate_designs(layers, designs))
    feasible = int(np.isfinite(swept["cycles"]).sum())
    rate = len(designs) / warm

    totals = event.totals()
    counters = totals["counters"]
    table = Table(title="Simulator benchmark, ResNet-18-shaped model", title_justify="left")
    for column in ("metric", "value", "target", "verdict"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("offloaded layers", f"{len(offloaded)}", "", "")
    table.add_row("event-level simulation, one network", f"{event_seconds:.3f} s", "", "")
    table.add_row("analytic model (per-layer path), one network", f"{analytic_seconds:.3f} s", "", "")
    table.add_row(f"design sweep, {len(designs):,} designs, cold", f"{cold:.3f} s", "", "")
    table.add_row(f"design sweep, {len(designs):,} designs, warm", f"{warm:.3f} s", "", "")
    table.add_row(
        "analytic full-network evaluations per second",
        f"{rate:,.0f}",
        f">= {TARGET_DESIGNS_PER_SECOND:,}",
        "PASS" if rate >= TARGET_DESIGNS_PER_SECOND else "FAIL",
    )
    table.add_row("designs with a feasible tiling for every layer", f"{feasible:,}", "", "")
    table.add_row(
        "event-level time / analytic time per network", f"{event_seconds / (warm / len(designs)):,.0f}x", "", ""
    )
    console.print(table)

    analytic_cycles = analytic.totals()["accelerator_cycles"]
    console.print(
        f"ResNet-18 on vta_default (event model): GEMM micro-ops {counters['gemm_counter']:,}, "
        f"DRAM {totals['dram_bytes']:,} B, cycles {totals['accelerator_cycles']:,.0f} "
        f"(analytic {analytic_cycles:,.0f}, {100 * (analytic_cycles / totals['accelerator_cycles'] - 1):+.1f} %), "
        f"GEMM utilisation {100 * totals['macs'] / (totals['accelerator_cycles'] * hw.macs_per_cycle):.1f} %, "
        f"energy {totals['energy_joules'] * 1e3:.3f} mJ, accelerator {totals['accelerator_seconds'] * 1e3:.2f} ms, "
        f"host {totals['host_seconds'] * 1e3:.2f} ms, area {totals['area_mm2']:.3f} mm2"
    )


if __name__ == "__main__":
    main()
