"""codesign.tvm_import: TVM imported through the kept function listing is the same TVM."""

import json
import subprocess
import sys

_FFI_APIS = """
import json, sys
{prelude}
import tvm, tvm.relax.frontend.onnx, tvm.s_tir, tvm.tirx
apis = {{name: sorted(n for n in dir(module) if not n.startswith("__"))
        for name, module in sys.modules.items() if name.endswith("._ffi_api") and module is not None}}
import tvm_ffi.registry as registry
print(json.dumps({{"apis": apis, "listing": registry.list_global_func_names.__module__,
                  "finders": [type(f).__name__ for f in sys.meta_path]}}))
"""


def _ffi_apis(prelude: str) -> dict:
    script = _FFI_APIS.format(prelude=prelude)
    return json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)


def test_every_ffi_api_module_gets_the_same_functions():
    plain = _ffi_apis("")
    fast = _ffi_apis("import codesign")
    assert len(plain["apis"]) > 30
    assert fast["apis"] == plain["apis"]
    assert fast["listing"] == "tvm_ffi.registry"  # the original listing is back
    assert "_FirstTVMImport" not in fast["finders"]


def test_install_after_tvm_is_a_no_op():
    script = "import sys, tvm, codesign.tvm_import as t; t.install(); print(type(sys.meta_path[0]).__name__)"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    assert out.strip() != "_FirstTVMImport"
