"""codesign: TVM-based hardware/software co-design for VTA-style GEMM accelerators.

Python API:
    hw = codesign.load_hardware("vta_default")            # or a path to a .toml / vta_config.json
    result = codesign.compile_model("model.onnx", hw, calibration="calib.npz")
    codesign.write_module(result, "out/")
    module = codesign.load("out/")
    outputs = module.run(x)
"""

import os

# TVM's runtime otherwise runs parallel loops on a single thread on some machines.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

from codesign import tvm_import  # before anything imports TVM

tvm_import.install()

__version__ = "0.1.0"

# Attributes resolve on first use, so a command that needs no TVM (a cached `simulate`) never loads it.
_EXPORTS = {
    "CodesignError": "codesign.errors",
    "CompileResult": "codesign.pipeline",
    "DeployedModule": "codesign.deploy",
    "HardwareSpec": "codesign.hardware",
    "compile_model": "codesign.pipeline",
    "load": "codesign.deploy",
    "load_hardware": "codesign.hardware",
    "write_module": "codesign.deploy",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'codesign' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
