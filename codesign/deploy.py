"""The deployable module: OUT/ with the TVM library, manifest.json and the hardware file.

Written to a temporary sibling directory and renamed into place at the end, so a failed
compile never leaves a half-written OUT/. Loads with plain TVM (`tvm.runtime.load_module` +
`relax.VirtualMachine`) or with `codesign.load(OUT)`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import codesign
from codesign.errors import DeployError
from codesign.hardware import HardwareSpec
from codesign.importer import TensorSpec
from codesign.pipeline import CompileResult

LIBRARY_FILE = "module.so"
MANIFEST_FILE = "manifest.json"
HARDWARE_FILE = "hardware.toml"
FORMAT = "codesign-module"
FORMAT_VERSION = 2


def build_manifest(result: CompileResult) -> dict:
    hw = result.hw
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "codesign_version": codesign.__version__,
        "tvm_version": tvm.__version__,
        "library": LIBRARY_FILE,
        "target": str(result.target),
        "model": {"source": Path(result.imported.source).name, "sha256": result.imported.sha256},
        "hardware": {"name": hw.name, "sha256": hw.fingerprint(), "file": HARDWARE_FILE, "spec": hw.to_dict()},
        "inputs": [t.to_dict() for t in result.imported.inputs],
        "frozen_inputs": {name: value.tolist() for name, value in result.imported.frozen_inputs.items()},
        "outputs": [t.to_dict() for t in result.imported.outputs],
        "quantization": quantization_summary(result),
        "compression": result.compression.to_dict(),
        "layers": [plan.to_dict() for plan in result.lowered.plans],
        "compile_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }


def quantization_summary(result: CompileResult) -> dict:
    qgraph = result.qgraph
    tensors = {
        n.name: n.scale for n in qgraph.nodes.values() if n.dtype == "int8" and n.op not in ("passthrough", "clamp")
    }
    layers = {}
    for node in qgraph.gemm_nodes():
        p = node.params
        layers[node.name] = {
            "placement": node.placement,
            "input_scale": qgraph.nodes[node.inputs[0]].scale,
            "output_scale": node.scale,
            "multiplier": p["multiplier"].tolist(),
            "shift": p["shift"].tolist(),
            "clamp": [p["lo"], p["hi"]],
        }
    return {
        "scheme": "symmetric int8 activations per tensor, weights per output channel, int32 bias",
        "config": qgraph.config.to_dict(),
        "calibration": result.calibration,
        "requantization": "clamp(((acc + bias) * multiplier + ((1 << shift) >> 1)) >> shift, lo, hi)",
        "tensor_scales": tensors,
        "layers": layers,
    }


def write_module(result: CompileResult, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        result.executable.export_library(str(staging / LIBRARY_FILE))
        (staging / HARDWARE_FILE).write_text(result.hw.to_toml())
        (staging / MANIFEST_FILE).write_text(json.dumps(build_manifest(result), indent=2) + "\n")
        _replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check_destination(out_dir: Path) -> None:
    parent = out_dir.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as err:
            raise DeployError(f"{out_dir}: cannot create output directory ({err.strerror})") from err
    if not parent.is_dir():
        raise DeployError(f"{out_dir}: cannot create output directory ({parent} is not a directory)")
    if not os.access(parent, os.W_OK):
        raise DeployError(f"{out_dir}: output directory is not writable")
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).exists())
    ):
        raise DeployError(f"{out_dir}: exists and is not a codesign module; refusing to overwrite it")


def _replace_directory(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, retired / "module")
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


class DeployedModule:
    """A compiled module loaded for inference: validates inputs, runs, returns numpy arrays."""

    def __init__(self, path: str | Path, hw: HardwareSpec | None = None):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.hardware = HardwareSpec(**self.manifest["hardware"]["spec"])
        if hw is not None and hw.fingerprint() != self.manifest["hardware"]["sha256"]:
            raise DeployError(
                f"{self.path}: module was built for hardware '{self.manifest['hardware']['name']}' "
                f"(sha256 {self.manifest['hardware']['sha256'][:12]}), not for '{hw.name}' "
                f"(sha256 {hw.fingerprint()[:12]}); recompile it for that description"
            )
        self.inputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in self.manifest["inputs"]]
        self.outputs = [TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in self.manifest["outputs"]]
        try:
            library = tvm.runtime.load_module(str(self.path / self.manifest["library"]))
        except Exception as err:
            raise DeployError(f"{self.path / self.manifest['library']}: cannot load compiled library ({err})") from err
        self._vm = relax.VirtualMachine(library, tvm.cpu())

    def run(self, *args: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        arrays = self._bind(args, named)
        result = self._vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
        values = list(result) if isinstance(result, (tvm.ir.Array, list, tuple)) else [result]
        return [v.numpy() for v in values]

    __call__ = run

    def _bind(self, args, named) -> list[np.ndarray]:
        if args and named:
            raise DeployError("pass inputs either by position or by name, not both")
        if named:
            unknown = sorted(set(named) - {t.name for t in self.inputs})
            if unknown:
                raise DeployError(
                    f"unknown input {', '.join(unknown)} (inputs: {', '.join(t.name for t in self.inputs)})"
                )
            missing = [t.name for t in self.inputs if t.name not in named]
            if missing:
                raise DeployError(f"missing input {', '.join(missing)}")
            args = tuple(named[t.name] for t in self.inputs)
        if len(args) != len(self.inputs):
            raise DeployError(f"expected {len(self.inputs)} input(s), got {len(args)}")
        arrays = []
        for spec, value in zip(self.inputs, args):
            value = np.asarray(value)
            if value.dtype != np.dtype(spec.dtype):
                raise DeployError(f"input '{spec.name}' has dtype {value.dtype}, expected {spec.dtype}")
            if value.shape != spec.shape:
                raise DeployError(f"input '{spec.name}' has shape {list(value.shape)}, expected {list(spec.shape)}")
            arrays.append(np.ascontiguousarray(value))
        return arrays


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise DeployError(f"{path}: no such compiled module directory")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise DeployError(f"{path}: not a compiled module (no {MANIFEST_FILE})") from err
    except (OSError, json.JSONDecodeError) as err:
        raise DeployError(f"{manifest_path}: unreadable manifest ({err})") from err
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DeployError(f"{manifest_path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    return manifest


def load(path: str | Path, hw: HardwareSpec | None = None) -> DeployedModule:
    """Load a compiled module directory; with `hw`, refuse a module built for other hardware."""
    return DeployedModule(path, hw)
