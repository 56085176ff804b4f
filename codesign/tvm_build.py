"""Build: a Relax module -> a TVM executable, its kernels compiled on every core and reused.

`tvm.compile` runs the Relax pipeline, writes the VM bytecode and compiles every TIR function
into one LLVM module, on one core: LLVM takes most of a compile (0.2 s per accelerated conv of a
ResNet-18). Here the TIR functions are split into one LLVM module per core, compiled on threads
(TVM's code generation releases the GIL) and linked into the same executable, which runs and
exports exactly as `tvm.compile`'s does.

A compiled set of kernels is kept in memory under the structural hash of its TIR functions and
the target: a process that builds the same kernels again (the tuner's compression profiles that
change only weights, calibration runs of variants of one model) links the compiled ones instead.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax import vm_build

KERNEL_SETS_KEPT = 16  # compiled kernel sets kept in memory (LRU); an entry is a few MB at most

_compiled: collections.OrderedDict[tuple[int, str], tuple[tvm.IRModule, tvm.runtime.Module]] = collections.OrderedDict()
_compiled_lock = threading.Lock()


def build_executable(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """`mod` built for `target`: what `tvm.compile(mod, target=target)` returns."""
    with target:
        mod = relax.get_pipeline("default")(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    kernels = vm_build._filter_tir(mod)
    library = compiled_kernels(kernels, target) if kernels is not None else None
    params = dict(attrs.get("const_name_to_constant", {}))
    external = list(attrs.get("external_mods", []))
    return relax.VMExecutable(tvm.relax._ffi_api.VMLink(builder, target, library, external, params))


def compiled_kernels(kernels: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    """The TIR functions of `kernels` compiled for `target`, from memory when compiled before."""
    key = (tvm_ffi.structural_hash(kernels), str(target))
    with _compiled_lock:
        entry = _compiled.get(key)
        if entry is not None and tvm_ffi.structural_equal(entry[0], kernels):
            _compiled.move_to_end(key)
            return entry[1]
    library = _compile_in_parallel(kernels, target)
    with _compiled_lock:
        _compiled[key] = (kernels, library)
        while len(_compiled) > KERNEL_SETS_KEPT:
            _compiled.popitem(last=False)
    return library


def forget_compiled_kernels() -> None:
    """Empty the in-memory store (a benchmark measuring builds from scratch calls it)."""
    with _compiled_lock:
        _compiled.clear()


def _compile_in_parallel(kernels: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Module:
    """One LLVM module per core, compiled on threads, the rest imported into the first. (The
    machine code is generated later, when a VM first loads the library: LLVM's JIT does not run
    faster on threads.)"""
    parts = _split(kernels, os.cpu_count() or 1)
    if len(parts) == 1:
        return tvm.tirx.build(parts[0], target=target)
    with ThreadPoolExecutor(len(parts)) as pool:
        libraries = list(pool.map(lambda part: tvm.tirx.build(part, target=target), parts))
    root = libraries[0]
    for library in libraries[1:]:
        root.import_module(library)
    return root


def _split(kernels: tvm.IRModule, count: int) -> list[tvm.IRModule]:
    """Up to `count` modules of about equal work: the accelerated kernels (most of LLVM's time)
    dealt out in turn, then the host functions."""
    functions = sorted(kernels.functions.items(), key=lambda item: item[0].name_hint)
    functions.sort(key=lambda item: not item[0].name_hint.startswith("gemm_"))
    count = max(1, min(count, len(functions)))
    parts: list[dict] = [{} for _ in range(count)]
    for index, (global_var, function) in enumerate(functions):
        parts[index % count][global_var] = function
    return [tvm.IRModule(part, attrs=kernels.attrs) for part in parts]
