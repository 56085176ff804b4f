"""A ResNet-18-shaped ONNX model with seeded random weights, built with onnx.helper (no torch).

Shared by the benchmarks (`from resnet18 import build_resnet18`: Python puts a script's own
folder on its import path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17; newer onnx defaults to IRs older onnxruntimes reject
INPUT_SHAPE = (1, 3, 224, 224)
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)


class _GraphBuilder:
    """Accumulates ONNX nodes and seeded random initializers with unique names."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        output = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_bn(self, x: str, cin: int, cout: int, kernel: int, stride: int) -> str:
        """Conv (no bias, He-normal weights, 'same' padding) followed by BatchNormalization."""
        std = np.sqrt(2.0 / (cin * kernel * kernel))
        weight = self.constant("w", self.rng.normal(0.0, std, (cout, cin, kernel, kernel)))
        pad = kernel // 2
        y = self.node("Conv", [x, weight], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
        bn = [
            self.constant("gamma", self.rng.uniform(0.5, 1.0, cout)),
            self.constant("beta", self.rng.normal(0.0, 0.1, cout)),
            self.constant("mean", self.rng.normal(0.0, 0.1, cout)),
            self.constant("var", self.rng.uniform(0.5, 2.0, cout)),
        ]
        return self.node("BatchNormalization", [y, *bn], epsilon=1e-5)

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.node("Relu", [self.conv_bn(x, cin, cout, 3, stride)])
        y = self.conv_bn(y, cout, cout, 3, 1)
        shortcut = self.conv_bn(x, cin, cout, 1, stride) if stride != 1 or cin != cout else x
        return self.node("Relu", [self.node("Add", [y, shortcut])])


def build_resnet18(path: str | Path, seed: int = 0) -> Path:
    """Write a ResNet-18-shaped ONNX model (input 'input' [1,3,224,224], output 'logits' [1,1000])."""
    g = _GraphBuilder(np.random.default_rng(seed))
    x = g.node("Relu", [g.conv_bn("input", 3, 64, 7, 2)])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in STAGES:
        x = g.basic_block(x, cin, cout, stride)
        x = g.basic_block(x, cout, cout, 1)
        cin = cout
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    weight = g.constant("fc_w", g.rng.normal(0.0, np.sqrt(1.0 / 512), (1000, 512)))
    bias = g.constant("fc_b", np.zeros(1000))
    g.nodes.append(helper.make_node("Gemm", [x, weight, bias], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        g.nodes,
        "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="bench_compile"
    )
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
