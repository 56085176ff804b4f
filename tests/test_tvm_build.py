"""The parallel build with kept kernels: the same executable as tvm.compile, variants reuse only
what they share."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

import codesign
from codesign import tvm_build
from codesign.compression import CompressionConfig
from codesign.demo import MNIST_MODEL, load_mnist_test
from codesign.importer import import_onnx
from codesign.pipeline import compile_model


def outputs(executable, images) -> np.ndarray:
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(image)).numpy() for image in images])


def test_variants_reuse_only_unchanged_kernels_and_equal_tvm_compile(monkeypatch):
    images = load_mnist_test()[0][:8]
    hw = codesign.load_hardware("vta_default")
    imported = import_onnx(MNIST_MODEL)
    tvm_build.forget_compiled_kernels()
    compiled = []
    remember = tvm_build._remember

    def recording(key, group, library):
        compiled.append(group)
        remember(key, group, library)

    monkeypatch.setattr(tvm_build, "_remember", recording)
    for bits in (8, 4):  # int4 weights change the auto tiling of some kernels, not the host functions
        compression = CompressionConfig(
            weight_bits=dict.fromkeys(("conv2d_0", "conv2d_1", "matmul_0"), bits), schedule="auto"
        )
        compiled.clear()
        result = compile_model(
            MNIST_MODEL, hw, imported=imported, compression=compression, warn=lambda m: None, kernel_per_module=True
        )
        reference = tvm.compile(result.lowered.mod, target=result.target)
        assert np.array_equal(outputs(result.executable, images), outputs(reference, images))
        names = sorted(gv.name_hint for group in compiled for gv in group.get_global_vars())
        if bits == 8:
            kernels = names
        else:  # only what changed was compiled again
            assert names and set(names) < set(kernels) and all(n.startswith("gemm_") for n in names), names
    tvm_build.forget_compiled_kernels()
