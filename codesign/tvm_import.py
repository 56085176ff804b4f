"""Importing TVM without a cost it pays for nothing: 0.3 s of every command that needs it.

Each of TVM's 52 `_ffi_api` modules lists every global function name (thousands, one FFI call
each) to pick its own. While `tvm` imports, the list is kept and read again only when the number
of global functions changed (registration only adds). `install` (called by `import codesign`)
arranges it for the process's first `import tvm`; the original listing is back once it is done.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import sys


def install() -> None:
    """Make the process's first `import tvm` take the fast path (nothing if TVM is loaded)."""
    if "tvm" not in sys.modules and not any(isinstance(f, _FirstTVMImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _FirstTVMImport())


class _FirstTVMImport(importlib.abc.MetaPathFinder):
    """Runs `tvm`'s import with the kept listing, and removes itself once `tvm` is imported."""

    def find_spec(self, name, path, target=None):
        if name != "tvm":
            return None
        spec = self._spec(name, path, target)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            try:
                with _kept_global_func_names():
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
