"""The float host kernels' schedule (codesign.schedules.host_float): register-blocked and
vectorised where the shape allows it, the naive kernel otherwise, the same values either way."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from codesign.schedules.host_float import schedule_float_module, schedule_reduction_kernel
from codesign.target import target
from codesign.tvm_build import build_executable


def _row_conv(width: int, taps: int, stride: int) -> tvm.IRModule:
    """A 1-D conv written as conv2d of height 1, as tf2onnx exports basic-pitch's filterbank."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 1, width), "float32"))
    w = relax.Var("w", relax.TensorType((1, 1, 1, taps), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.nn.conv2d(x, w, strides=(1, stride))))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize(
    ("width", "taps", "stride", "scheduled"),
    [
        (4159, 64, 1, True),  # 4,096 outputs: blocks of 16 lanes
        (22176, 256, 2, False),  # 10,961 outputs, a prime: no vector width divides them
    ],
)
def test_row_conv_scheduled_where_it_can_be_and_exact_either_way(width, taps, stride, scheduled):
    mod = relax.transform.LegalizeOps()(_row_conv(width, taps, stride))
    (conv,) = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert (schedule_reduction_kernel(conv) is not None) == scheduled
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 1, width)).astype(np.float32)
    w = rng.standard_normal((1, 1, 1, taps)).astype(np.float32)
    vm = relax.VirtualMachine(
        build_executable(schedule_float_module(_row_conv(width, taps, stride)), target()), tvm.cpu()
    )
    ours = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy().ravel()
    expected = np.correlate(x.ravel().astype(np.float64), w.ravel().astype(np.float64))[::stride]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-3)
