"""codesign.tvm_import: TVM imported the fast way is the same TVM, less the device backends' hooks."""

import json
import subprocess
import sys

_PROBE = """
import json, sys
{prelude}
import tvm, tvm.relax.frontend.onnx, tvm.s_tir, tvm.tirx
apis = {{name: sorted(n for n in dir(module) if not n.startswith("__"))
        for name, module in sys.modules.items() if name.endswith("._ffi_api") and module is not None}}
import tvm_ffi.registry as registry
import tvm.runtime.disco
print(json.dumps({{
    "apis": apis,
    "functions": sorted(registry.list_global_func_names()),
    "listing": registry.list_global_func_names.__module__,
    "finders": [type(f).__name__ for f in sys.meta_path],
    "disco": hasattr(tvm.runtime.disco, "Session"),
}}))
"""


def _probe(prelude: str, env: dict | None = None) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE.format(prelude=prelude)], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(run.stdout)


def test_fast_import_has_every_function_but_the_device_backends():
    plain, fast = _probe(""), _probe("import codesign")
    assert len(plain["apis"]) > 30
    for name, functions in fast["apis"].items():
        assert functions == plain["apis"][name], name
    # Only the device backends' modules, and disco's, which the plain import tries and fails.
    skipped = set(plain["apis"]) - set(fast["apis"])
    assert all(name.startswith(("tvm.backend.", "tvm.runtime.disco.")) for name in skipped), skipped
    # Global functions: all of the plain import's except the device backends' Python hooks.
    missing = set(plain["functions"]) - set(fast["functions"])
    assert "tvm.contrib.sort.argsort" in fast["functions"]  # libtvm_runtime_extra, loaded as TVM does
    assert len(missing) < 0.02 * len(plain["functions"]), sorted(missing)[:20]
    assert fast["listing"] == "tvm_ffi.registry"  # the original listing is back
    assert "_FirstTVMImport" not in fast["finders"]
    assert fast["disco"] and plain["disco"]  # importable afterwards, as without codesign


def test_full_import_on_request():
    import os

    env = dict(os.environ, CODESIGN_TVM_FULL_IMPORT="1")
    assert _probe("import codesign", env)["apis"] == _probe("")["apis"]


def test_install_after_tvm_is_a_no_op():
    script = "import sys, tvm, codesign.tvm_import as t; t.install(); print(type(sys.meta_path[0]).__name__)"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.strip() != "_FirstTVMImport"
