"""The LLVM target the host code is built for."""

from __future__ import annotations

import os

import tvm
from tvm.target import codegen

from codesign.errors import UsageError


def target(cpu: str | None = None) -> tvm.target.Target:
    """LLVM for this machine's CPU, or for `cpu` (an LLVM CPU name; 'x86-64' is portable)."""
    cpu = cpu or codegen.llvm_get_system_cpu()
    if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        raise UsageError(f"--cpu {cpu}: not a CPU LLVM knows (e.g. x86-64, haswell, {codegen.llvm_get_system_cpu()})")
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": os.cpu_count() or 1})
