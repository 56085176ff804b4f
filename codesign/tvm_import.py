"""Importing TVM without what codesign never uses: 0.5-0.7 s of every command that needs TVM.

codesign builds for the host CPU (LLVM) only. Three costs of `import tvm` (TVM 0.27) buy nothing
for it; `install` (called by `import codesign`) takes them away from the process's first
`import tvm`, and everything else of TVM's import runs as it is:

- The device backends' Python hooks (CUDA, Metal, ROCm, Trainium, OpenCL, Vulkan, WebGPU,
  Hexagon, Adreno: TVMScript namespaces, PTX tables) are not loaded (TVM's own switch,
  TVM_DEVICE_BACKEND_AUTOLOAD=0, for the length of the import). The runtime library TVM loads
  with them (`libtvm_runtime_extra`: sorting, random numbers and other CPU runtime functions)
  is loaded as TVM would, and out-of-tree backends' entry points still run. A user who needs a
  device backend in the same process loads it: `tvm.backend.loader.load("cuda")`.
- `tvm.runtime` imports `tvm.runtime.disco` before that library, which defines disco's types, is
  loaded, so the import fails and `tvm.runtime.disco` is None in every process. It fails only
  after a C++ error whose backtrace makes libbacktrace read the debug information of every
  loaded library (0.35-0.4 s, once per process); the module is marked missing for the length of
  the import, so it fails at once with the same result. (The backends' hooks raise such errors
  too, the first of them paying the same.)
- Each of TVM's 52 `_ffi_api` modules lists every global function name (thousands, one FFI call
  each): 0.3 s in all. The list is kept for the length of the import and read again only when
  the number of global functions changed (registration only adds).

CODESIGN_TVM_FULL_IMPORT=1 (or TVM_DEVICE_BACKEND_AUTOLOAD set by the user) leaves the import as
TVM does it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import warnings

_DISCO = "tvm.runtime.disco"
_AUTOLOAD = "TVM_DEVICE_BACKEND_AUTOLOAD"


def install() -> None:
    """Make the process's first `import tvm` take the fast path (nothing if TVM is loaded)."""
    if os.environ.get("CODESIGN_TVM_FULL_IMPORT") == "1" or _AUTOLOAD in os.environ:
        return
    if "tvm" not in sys.modules and not any(isinstance(f, _FirstTVMImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FirstTVMImport())


class _FirstTVMImport(importlib.abc.MetaPathFinder):
    """Runs `tvm`'s import in the fast context, and removes itself once `tvm` is imported."""

    def find_spec(self, name, path, target=None):
        if name != "tvm":
            return None
        spec = self._spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            try:
                with _without_device_backends(), _without_disco(), _kept_global_func_names():
                    execute(module)
            finally:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)

        spec.loader.exec_module = exec_module
        return spec

    def _spec(self, name, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return spec
        return None


@contextlib.contextmanager
def _without_device_backends():
    os.environ[_AUTOLOAD] = "0"
    try:
        yield
    finally:
        del os.environ[_AUTOLOAD]
    _load_cpu_runtime_extras()


def _load_cpu_runtime_extras() -> None:
    """What TVM's backend autoload does besides the device backends' hooks."""
    from importlib.metadata import entry_points
    from pathlib import Path

    from tvm.base import _LOADED_LIBS
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    with contextlib.suppress(OSError, RuntimeError):
        _LOADED_LIBS["tvm_runtime_extra"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_extra", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL"
        )
    for entry_point in entry_points(group="tvm.backends"):
        try:
            entry_point.load()()
        except Exception as err:  # noqa: BLE001 (TVM's autoload warns for any failure too)
            warnings.warn(f"Failed to autoload tvm backend '{entry_point.name}': {err}", stacklevel=2)


@contextlib.contextmanager
def _without_disco():
    marked = sys.modules.setdefault(_DISCO, None) is None
    try:
        yield
    finally:
        if marked and sys.modules.get(_DISCO, ...) is None:
            del sys.modules[_DISCO]


@contextlib.contextmanager
def _kept_global_func_names():
    import tvm_ffi.registry as registry

    listing, kept = registry.list_global_func_names, []

    def list_global_func_names() -> list[str]:
        names = registry.get_global_func("ffi.FunctionListGlobalNamesFunctor")()
        count = names(-1)
        if count != len(kept):
            kept[:] = [names(i) for i in range(count)]
        return list(kept)

    registry.list_global_func_names = list_global_func_names
    try:
        yield
    finally:
        registry.list_global_func_names = listing
