"""Report benchmark: does the report of a large tuning run stay usable?

Runs `codesign tune` for 20,000 evaluations (random search over spaces/mnist_joint.toml,
accuracy on real MNIST test images; reuses --run if it already holds them), writes its report,
and opens report.html in headless Chromium with the browser test's checks (no console errors,
nothing fetched, every plot drawn), timing from navigation until every plot is drawn (median of
--repeats fresh browsers). Baseline, measured in the same run: the report of the run's first
200 evaluations. Targets: report.html under 10 MB, open in under 5 s.

    python scripts/bench_report.py [--evaluations 20000] [--run DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.report.build import write_run_report
from codesign.tuner.database import Database
from codesign.tuner.run import tune_to_directory

# The browser test's checks are test tooling: tests/browser_check.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser_check import chromium_missing, open_report

SPACE = Path(__file__).resolve().parent.parent / "spaces" / "mnist_joint.toml"
BASELINE_EVALUATIONS = 200
SIZE_TARGET_MB, OPEN_TARGET_S = 10.0, 5.0
console = Console()


def ensure_run(run_dir: Path, evaluations: int, eval_images: int) -> None:
    if len(Database(run_dir / "database.jsonl").load()) >= evaluations:
        console.print(f"Reusing the {evaluations:,} evaluations in {run_dir}")
        return
    images, labels = load_mnist_test()
    resume = (run_dir / "database.jsonl").exists()  # a run cut short: finish it
    run_dir.mkdir(parents=True, exist_ok=True)
    data = run_dir.parent / "mnist_eval.npz"
    if not resume:
        np.savez(data, Input3=images[:eval_images, 0], labels=labels[:eval_images])
    tune_to_directory(
        MNIST_MODEL, SPACE, data, run_dir, evaluations, "random", 0, 1, "local", None, 1000,
        resume, None, None, console,
    )  # fmt: skip


def first_evaluations(run_dir: Path, count: int, out: Path) -> Path:
    out.mkdir(parents=True)
    for name in ("space.toml", "settings.json"):
        shutil.copy(run_dir / name, out / name)
    lines = (run_dir / "database.jsonl").read_text().splitlines(keepends=True)[:count]
    (out / "database.jsonl").write_text("".join(lines))
    return out


def measure(run_dir: Path, repeats: int) -> dict:
    start = time.perf_counter()
    run = write_run_report(run_dir)
    write_seconds = time.perf_counter() - start
    page = run_dir / "report.html"
    checks = [open_report(page) for _ in range(repeats)]
    for check in checks:
        problems = check.console_errors + check.resource_requests + [p.div_id for p in check.plots if not p.rendered]
        if problems:
            raise SystemExit(f"{page}: {problems}")
    return {
        "evaluations": len(run.records),
        "front": len(run.front),
        "write_s": write_seconds,
        "size_mb": page.stat().st_size / 1e6,
        "open_s": statistics.median(c.open_seconds for c in checks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=20_000)
    parser.add_argument("--run", type=Path, default=None, help="run directory to reuse or create")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=500, help="MNIST test images for accuracy")
    args = parser.parse_args()
    missing = chromium_missing()
    if missing:
        raise SystemExit(f"bench_report: cannot open the report: {missing}")
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        run_dir = args.run or Path(scratch) / "run"
        started = time.perf_counter()
        ensure_run(run_dir, args.evaluations, args.eval_images)
        console.print(f"tuning run ready in {time.perf_counter() - started:.0f} s")
        baseline = measure(first_evaluations(run_dir, BASELINE_EVALUATIONS, Path(scratch) / "baseline"), args.repeats)
        large = measure(run_dir, args.repeats)
    table = Table(title="Report of a large tuning run (open: navigation until every plot is drawn, headless Chromium)")
    for column in ("run", "evaluations", "Pareto front", "write s", "report.html MB", "open s (median)"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, row in (("baseline: first 200", baseline), ("large", large)):
        table.add_row(
            name,
            f"{row['evaluations']:,}",
            f"{row['front']:,}",
            f"{row['write_s']:.1f}",
            f"{row['size_mb']:.2f}",
            f"{row['open_s']:.2f}",
        )
    console.print(table)
    ratio_size, ratio_open = large["size_mb"] / baseline["size_mb"], large["open_s"] / baseline["open_s"]
    console.print(
        f"large / baseline: size {ratio_size:.2f}x, open time {ratio_open:.2f}x "
        f"({large['evaluations'] / baseline['evaluations']:.0f}x the evaluations)"
    )
    size_ok, open_ok = large["size_mb"] < SIZE_TARGET_MB, large["open_s"] < OPEN_TARGET_S
    console.print(
        f"targets: size {large['size_mb']:.2f} MB < {SIZE_TARGET_MB:g} MB: {'met' if size_ok else 'MISSED'}; "
        f"open {large['open_s']:.2f} s < {OPEN_TARGET_S:g} s: {'met' if open_ok else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
