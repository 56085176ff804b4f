"""Export the small ONNX models used as import/compile test inputs.

The three models written to ``tests/models/`` are real ``torch.onnx.export``
outputs (legacy TorchScript exporter, opset 17) with random but seeded weights:

* ``resnet_mini.onnx``       ResNet-style CNN, input ``input`` [N,3,32,32]
* ``mobilenetv2_mini.onnx``  MobileNetV2-style CNN, input ``input`` [N,3,32,32]
* ``transformer_tiny.onnx``  2-layer transformer encoder, input
                             ``tokens_embedded`` [N,S,64]

The .onnx files are committed to the repository so the test suite does not
need torch. To regenerate them (requires ``torch``, ``onnx``, ``onnxruntime``),
run from the repository root::

    python scripts/export_test_models.py

The script is deterministic: every model is built right after
``torch.manual_seed(0)``. Each exported file is checked with
``onnx.checker.check_model`` and compared against torch with onnxruntime at
several batch sizes (and sequence lengths for the transformer).
"""

from __future__ import annotations

import collections
import itertools
import math
import pathlib
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

SEED = 0
OPSET = 17
TOLERANCE = 1e-4
OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "models"


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias, 'same' padding) followed by BatchNorm."""
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def randomize_norm_params(model: nn.Module) -> None:
    """Give every BatchNorm/LayerNorm non-trivial (seeded) parameters and statistics."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)


def export(
    model: nn.Module,
    example: torch.Tensor,
    path: pathlib.Path,
    input_name: str,
    dynamic_axes: dict[int, str],
    fold_constants: bool,
) -> None:
    """Export with the legacy TorchScript exporter (keeps Shape->Gather->Concat chains)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=fold_constants,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_axes={input_name: dynamic_axes, "logits": {0: dynamic_axes[0]}},
        )


def describe(path: pathlib.Path) -> None:
    """Print size, inputs/outputs (with symbolic dims) and the op-type histogram."""
    model = onnx.load(str(path))
    print(f"{path.name}: {path.stat().st_size} bytes, opset {model.opset_import[0].version}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            print(f"  {kind} {value.name}: {dims}")
    histogram = collections.Counter(node.op_type for node in model.graph.node)
    print("  ops:", dict(sorted(histogram.items())))


def require_ops(path: pathlib.Path, op_types: set[str]) -> None:
    present = {node.op_type for node in onnx.load(str(path)).graph.node}
    missing = op_types - present
    if missing:
        raise RuntimeError(f"{path.name}: expected op types missing: {sorted(missing)}")


def verify(model: nn.Module, path: pathlib.Path, shapes: list[tuple[int, ...]]) -> None:
    """check_model, then compare onnxruntime against torch on seeded random inputs."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(SEED)
    for shape in shapes:
        x = rng.standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (actual,) = session.run(None, {input_name: x})
        diff = float(np.max(np.abs(actual - expected)))
        status = "ok" if actual.shape == expected.shape and diff < TOLERANCE else "FAIL"
        print(f"  input {list(shape)} -> output {list(actual.shape)}: max |torch - ort| = {diff:.2e} [{status}]")
        if status != "ok":
            raise RuntimeError(f"{path.name}: onnxruntime disagrees with torch for input {shape}")


# --------------------------------------------------------------------------
# ResNet-style CNN
# --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3))
        needs_projection = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if needs_projection else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def build_resnet_mini() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3),
        nn.ReLU(),
        BasicBlock(16, 16, stride=1),
        BasicBlock(16, 32, stride=2),
        BasicBlock(32, 32, stride=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def export_resnet_mini(out_dir: pathlib.Path) -> None:
    torch.manual_seed(SEED)
    model = build_resnet_mini()
    randomize_norm_params(model)
    model.eval()
    path = out_dir / "resnet_mini.onnx"
    export(model, torch.randn(1, 3, 32, 32), path, "input", {0: "batch"}, fold_constants=False)
    require_ops(path, {"Conv", "BatchNormalization", "Relu", "Add", "GlobalAveragePool", "Gemm"})
    describe(path)
    verify(model, path, [(1, 3, 32, 32), (3, 3, 32, 32)])


# --------------------------------------------------------------------------
# MobileNetV2-style CNN
# --------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 4):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            nn.ReLU6(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.use_residual else y


def build_mobilenetv2_mini() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3, stride=2),
        nn.ReLU6(),
        InvertedResidual(16, 16, stride=1),
        InvertedResidual(16, 24, stride=2),
        InvertedResidual(24, 24, stride=1),
        *conv_bn(24, 64, 1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def export_mobilenetv2_mini(out_dir: pathlib.Path) -> None:
    torch.manual_seed(SEED)
    model = build_mobilenetv2_mini()
    randomize_norm_params(model)
    model.eval()
    path = out_dir / "mobilenetv2_mini.onnx"
    export(model, torch.randn(1, 3, 32, 32), path, "input", {0: "batch"}, fold_constants=False)
    require_ops(path, {"Conv", "BatchNormalization", "Clip", "Add", "GlobalAveragePool", "Gemm"})
    describe(path)
    verify(model, path, [(1, 3, 32, 32), (3, 3, 32, 32)])


# --------------------------------------------------------------------------
# Tiny transformer encoder
# --------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # view(...) on traced shapes gives Shape -> Gather -> Unsqueeze -> Concat -> Reshape.
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        context = context.reshape(x.shape[0], x.shape[1], self.heads * self.head_dim)
        return self.out(context)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerTiny(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128, layers: int = 2, classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, hidden) for _ in range(layers)))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x).mean(dim=1))


def export_transformer_tiny(out_dir: pathlib.Path) -> None:
    torch.manual_seed(SEED)
    model = TransformerTiny()
    randomize_norm_params(model)
    model.eval()
    path = out_dir / "transformer_tiny.onnx"
    export(model, torch.randn(1, 16, 64), path, "tokens_embedded", {0: "batch", 1: "seq"}, fold_constants=True)
    require_ops(path, {"Shape", "Gather", "Concat", "Reshape", "MatMul", "Softmax", "LayerNormalization"})
    describe(path)
    verify(model, path, [(n, s, 64) for s, n in itertools.product((16, 8), (1, 3))])


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    export_resnet_mini(OUT_DIR)
    export_mobilenetv2_mini(OUT_DIR)
    export_transformer_tiny(OUT_DIR)


if __name__ == "__main__":
    main()
