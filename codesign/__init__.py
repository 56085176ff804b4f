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

__version__ = "0.1.0"

from codesign.deploy import DeployedModule, load, write_module
from codesign.errors import CodesignError
from codesign.hardware import HardwareSpec, load_hardware
from codesign.pipeline import CompileResult, compile_model

__all__ = [
    "CodesignError",
    "CompileResult",
    "DeployedModule",
    "HardwareSpec",
    "compile_model",
    "load",
    "load_hardware",
    "write_module",
]
