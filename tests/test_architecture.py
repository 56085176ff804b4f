"""The import graph follows the data flow: no module of a later stage is imported by an earlier one.

Stages, earliest first (docs/architecture.md describes each and the objects passed between them):
foundation -> description (hardware, plans, schedules) -> import -> quantization -> compile ->
simulate -> tune -> report -> front ends (CLI, demo, corpus). Every `import` in the package counts,
including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stage of every module, by pattern (first match wins); the package root is left out, it only
# re-exports the API and holds the version.
STAGES: list[tuple[str, list[str]]] = [
    (
        "foundation",
        [
            "codesign.errors",
            "codesign.cache",
            "codesign.progress",
            "codesign.files",
            "codesign.toml",
            "codesign.units",
            "codesign.tvm_import",
            "codesign.tvm_output",
            "codesign.target",
            "codesign.tvm_build",
            "codesign.metrics",
        ],
    ),
    (
        "description",
        ["codesign.hardware", "codesign.schedules*", "codesign.plan", "codesign.host_work", "codesign.packed_layout"],
    ),
    (
        "import",
        [
            "codesign.onnx_file",
            "codesign.importer",
            "codesign.onnx_passes*",
            "codesign.relax_fold",
            "codesign.graph",
            "codesign.emit",
        ],
    ),
    (
        "quantization",
        [
            "codesign.calibration",
            "codesign.float_numpy",
            "codesign.quantize",
            "codesign.lookup_tables",
            "codesign.alu_activations",
            "codesign.compression",
            "codesign.pruning",
            "codesign.reference",
            "codesign.bias_correction",
            "codesign.design",
        ],
    ),
    (
        "compile",
        [
            "codesign.lowering",
            "codesign.pipeline",
            "codesign.plan_cache",
            "codesign.manifest",
            "codesign.deploy",
            "codesign.explain",
            "codesign.calibration_choice",
        ],
    ),
    ("simulate", ["codesign.simulator*"]),
    ("tune", ["codesign.tuner*"]),
    ("report", ["codesign.report*", "codesign.console_tables"]),
    ("front end", ["codesign.cli", "codesign.demo", "codesign.corpus"]),
]
ORDER = [name for name, _ in STAGES]


def stage_of(module: str) -> str:
    for name, patterns in STAGES:
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return name
    raise AssertionError(f"{module}: no stage; add it to STAGES in {Path(__file__).name}")


def package_modules() -> dict[str, Path]:
    """Module name -> file, for codesign/ and schedules/ (installed as codesign.schedules)."""
    modules = {}
    for folder, package in ((ROOT / "codesign", "codesign"), (ROOT / "schedules", "codesign.schedules")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports (`from codesign import toml` names codesign.toml)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known and name != "codesign"}


def test_every_module_has_a_stage():
    for module in package_modules():
        if module != "codesign":
            stage_of(module)


def backward_imports(modules: dict[str, Path]) -> list[str]:
    known = set(modules)
    backwards = []
    for module, path in sorted(modules.items()):
        if module == "codesign":
            continue
        mine = ORDER.index(stage_of(module))
        for target in sorted(imported_modules(path, known)):
            if ORDER.index(stage_of(target)) > mine:
                backwards.append(f"{module} ({stage_of(module)}) imports {target} ({stage_of(target)})")
    return backwards


def test_no_module_imports_a_later_stage():
    assert backward_imports(package_modules()) == []


def test_the_check_catches_a_backward_import_even_inside_a_function(tmp_path):
    """As lowering once imported the simulator's tile choice, and the tuner the report."""
    lowering = tmp_path / "lowering.py"
    lowering.write_text("def plan():\n    from codesign.simulator.design_sweep import select_tiling\n")
    run = tmp_path / "run.py"
    run.write_text("from codesign.report.build import write_report\n")
    modules = {
        **package_modules(),
        "codesign.lowering": lowering,
        "codesign.tuner.run": run,
    }
    assert backward_imports(modules) == [
        "codesign.lowering (compile) imports codesign.simulator.design_sweep (simulate)",
        "codesign.tuner.run (tune) imports codesign.report.build (report)",
    ]
