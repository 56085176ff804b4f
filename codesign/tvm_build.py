"""Build: a Relax module -> a TVM executable, its kernels compiled on every core and reused.

`tvm.compile` runs the Relax pipeline, writes the VM bytecode and compiles every TIR function
into one LLVM module, on one core: LLVM takes most of a compile (0.2 s per accelerated conv of a
ResNet-18). Here the TIR functions are compiled as several LLVM modules (one per core, or one
per function for the tuner), on threads (TVM's code generation releases the GIL), and
linked into the same executable, which runs and exports as `tvm.compile`'s does. LLVM's JIT
(machine code from the optimised IR, as much time again) runs on the same threads: left to itself
it would run on one core when a VM first loads the executable.

Compiled modules are kept in memory under the structural hash of their TIR functions and the
target: a process that builds the same kernels again (the tuner's compression profiles, which
change some accelerated kernels and rarely the host functions; calibration runs of variants of
one model) links the compiled ones instead, and LLVM's JIT has already run on them.

(The VM code generation and linking are TVM's own, `relax.vm_build`'s private steps of
`relax.build`, for the pinned TVM version.)
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
from tvm.relax.analysis import all_global_vars

MODULES_KEPT = 512  # compiled LLVM modules kept in memory (LRU); one is tens of KB of code
ACCELERATED_PREFIX = "gemm_"  # how lowering names an accelerated layer's kernel
TUNER_OPT_LEVEL = 1  # LLVM's optimisation level for the tuner's builds (`_group_target`)

_compiled: collections.OrderedDict[tuple[int, str], tuple[tvm.IRModule, tvm.runtime.Module]] = collections.OrderedDict()
_compiled_lock = threading.Lock()


# An empty function for the root module the kernels are linked under (built directly: parsing it
# as TVMScript at import would cost 0.4 s of every command that imports this module).
_ROOT_FUNC = tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(tvm.tirx.const(0, "int32"))).with_attr(
    "global_symbol", "_ROOT_FUNC"
)


def build_executable(
    mod: tvm.IRModule, target: tvm.target.Target, kernel_per_module: bool = False, jit: bool = True
) -> relax.VMExecutable:
    """`mod` built for `target`: what `tvm.compile(mod, target=target)` returns.
    `kernel_per_module`: compile each TIR function as its own LLVM module, for a process that
    builds many variants of one model (the tuner): a variant then recompiles only the functions
    it changes (a pruned layer changes its pools and layout kernels too). Otherwise they are
    dealt out to one module per core (LLVM's JIT, when a VM first loads the executable, costs
    about 0.1 s more per module). `jit`: also make the machine code to run it in this process
    (False for an executable only exported, or built for another CPU)."""
    with target:
        mod = relax.get_pipeline("default")(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    called = _called_functions(mod)
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    kernels = _only(vm_build._filter_tir(mod), called)
    library = None if kernels is None else _linked(compiled_kernels(kernels, target, kernel_per_module, jit), target)
    params = dict(attrs.get("const_name_to_constant", {}))
    external = list(attrs.get("external_mods", []))
    return relax.VMExecutable(tvm.relax._ffi_api.VMLink(builder, target, library, external, params))


def _called_functions(mod: tvm.IRModule) -> set[str]:
    """Names of the functions the Relax functions call. The pipeline leaves behind the TIR of
    reshapes it turned into VM builtins (a copy kernel each): compiling them cost mnist-8 a third
    of its build."""
    return {
        gv.name_hint
        for func in mod.functions.values()
        if isinstance(func, relax.Function)
        for gv in all_global_vars(func)
    }


def _only(kernels: tvm.IRModule | None, names: set[str]) -> tvm.IRModule | None:
    if kernels is None:
        return None
    kept = {gv: func for gv, func in kernels.functions.items() if gv.name_hint in names}
    return tvm.IRModule(kept, attrs=kernels.attrs) if kept else None


def _linked(libraries: list[tvm.runtime.Module], target) -> tvm.runtime.Module:
    """A new root module importing `libraries` (kept ones are shared between executables: their
    own imports must not change)."""
    root = tvm.tirx.build(tvm.IRModule({"codesign_root": _ROOT_FUNC}), target=target)
    for library in libraries:
        root.import_module(library)
    return root


def compiled_kernels(
    kernels: tvm.IRModule, target: tvm.target.Target, kernel_per_module: bool = False, jit: bool = True
) -> list[tvm.runtime.Module]:
    """The TIR functions of `kernels` compiled for `target`, as LLVM modules (see
    `build_executable`). Modules compiled before come from memory; the others are compiled on
    threads, one per core."""
    groups = _groups(kernels, os.cpu_count() or 1, kernel_per_module)
    targets = [_group_target(group, target, kernel_per_module) for group in groups]
    keys = [(tvm_ffi.structural_hash(group), str(group_target)) for group, group_target in zip(groups, targets)]
    libraries = [_remembered(key, group) for key, group in zip(keys, groups)]
    missing = [index for index, library in enumerate(libraries) if library is None]
    if missing:
        with ThreadPoolExecutor(min(len(missing), os.cpu_count() or 1)) as pool:
            built = pool.map(lambda index: _built(groups[index], targets[index], jit), missing)
            for index, library in zip(missing, built):
                libraries[index] = library
                _remember(keys[index], groups[index], library)
    return libraries


def _group_target(group: tvm.IRModule, target: tvm.target.Target, kernel_per_module: bool) -> tvm.target.Target:
    """The tuner's builds (`kernel_per_module`) at LLVM's -O1: a 2x2 int8 max-pool takes 0.26 s
    of LLVM at -O3, 0.06 s at -O1, and every profile changes some kernels. The integers are the
    same at any level (`test_tvm_build` compares with an -O3 build); running mnist-8's 1,000
    images takes as long (0.25 s), and a profile's build about 0.1-0.3 s less."""
    if not kernel_per_module:
        return target
    return tvm.target.Target({**dict(target.export()), "opt-level": TUNER_OPT_LEVEL})


def _built(group: tvm.IRModule, target: tvm.target.Target, jit: bool) -> tvm.runtime.Module:
    """`group` compiled, with LLVM's JIT run on it if `jit` (here, on this thread: a VM loading it
    later would run it on the main one)."""
    library = tvm.tirx.build(group, target=target)
    if jit:
        library.get_function(next(iter(group.functions)).name_hint, query_imports=False)
    return library


def forget_compiled_kernels() -> None:
    """Empty the in-memory store (a benchmark measuring builds from scratch calls it)."""
    with _compiled_lock:
        _compiled.clear()


def _remembered(key: tuple[int, str], group: tvm.IRModule) -> tvm.runtime.Module | None:
    with _compiled_lock:
        entry = _compiled.get(key)
        if entry is None or not tvm_ffi.structural_equal(entry[0], group):
            return None
        _compiled.move_to_end(key)
        return entry[1]


def _remember(key: tuple[int, str], group: tvm.IRModule, library: tvm.runtime.Module) -> None:
    with _compiled_lock:
        _compiled[key] = (group, library)
        while len(_compiled) > MODULES_KEPT:
            _compiled.popitem(last=False)


def _groups(kernels: tvm.IRModule, cores: int, kernel_per_module: bool) -> list[tvm.IRModule]:
    """The functions dealt out in turn to one module per core, accelerated kernels first (0.2 s
    of LLVM each on a ResNet-18); with `kernel_per_module`, each function apart (about 0.02 s
    more LLVM per module: less than recompiling a changed module's unchanged functions)."""
    functions = sorted(kernels.functions.items(), key=lambda item: item[0].name_hint)
    if kernel_per_module:
        return [tvm.IRModule(dict([item]), attrs=kernels.attrs) for item in functions]
    accelerated = [item for item in functions if item[0].name_hint.startswith(ACCELERATED_PREFIX)]
    host = [item for item in functions if not item[0].name_hint.startswith(ACCELERATED_PREFIX)]
    groups = _deal(accelerated + host, cores)
    return [tvm.IRModule(group, attrs=kernels.attrs) for group in groups]


def _deal(items: list, count: int) -> list[dict]:
    return [dict(items[start::count]) for start in range(min(count, len(items)))]
