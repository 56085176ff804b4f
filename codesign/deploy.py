"""The deployable module: OUT/ with the TVM library, manifest.json and the hardware file.

Written to a temporary sibling directory and renamed into place at the end, so a failed
compile never leaves a half-written OUT/ (staging directories of a process that died are removed
by the next write to the same OUT; see `codesign.files`). Loads with plain TVM
(`tvm.runtime.load_module` + `relax.VirtualMachine`) or with `codesign.load(OUT)`, which validates
the manifest against its format (`codesign.manifest`), keeps every path it names inside OUT and
checks every file's sha256 first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import codesign
from codesign.errors import DeployError
from codesign.files import STALE_SECONDS as STALE_SECONDS  # re-exported
from codesign.files import (
    describe_dtype,
    file_sha256,
    output_path,
    remove_own_staging,
    replace_directory,
    staging_directory,
)
from codesign.files import remove_stale_siblings as _remove_stale_siblings
from codesign.hardware import HardwareSpec
from codesign.importer import TensorSpec
from codesign.manifest import FORMAT, FORMAT_VERSION, InvalidManifest, validate_manifest
from codesign.pipeline import CompileResult

LIBRARY_FILE = "module.so"
MANIFEST_FILE = "manifest.json"
HARDWARE_FILE = "hardware.toml"
MODULE_FILES = frozenset({MANIFEST_FILE, LIBRARY_FILE, HARDWARE_FILE})
BUILD_WORKSPACE = ".build"  # in a staging directory: TVM's object files while the library links


def build_manifest(result: CompileResult, files: dict[str, str] | None = None) -> dict:
    """The manifest of a compiled result; `files`: file name -> sha256 of the module's files."""
    hw = result.hw
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "codesign_version": codesign.__version__,
        "tvm_version": tvm.__version__,
        "library": LIBRARY_FILE,
        "files": dict(files or {}),
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
        n.name: _scale_json(n.scale)
        for n in qgraph.nodes.values()
        if n.dtype == "int8" and n.op not in ("passthrough", "clamp")
    }
    layers = {}
    for node in qgraph.gemm_nodes():
        p = node.params
        layers[node.name] = {
            "placement": node.placement,
            "input_scale": _scale_json(qgraph.nodes[node.inputs[0]].scale),
            "output_scale": _scale_json(node.scale),
            "multiplier": p["multiplier"].tolist(),
            "shift": p["shift"].tolist(),
            "clamp": [p["lo"], p["hi"]],
        }
        activation = p.get("activation")
        if activation is not None:  # computed on acc + bias before the rescaling (codesign.plan.AluActivation)
            channel = {key: p[key].tolist() for key in activation.channel_params}
            layers[node.name]["activation"] = {**dataclasses.asdict(activation), **channel}
    return {
        "scheme": "int8 activations per tensor (per channel before grouped convs and lookup tables), symmetric"
        " but for one-sided lookup tables read by unpadded GEMMs (a zero point, folded into the readers' bias),"
        " weights per output channel, int32 bias",
        "config": qgraph.config.to_dict(),
        "calibration": result.calibration,
        "requantization": "clamp(((acc + bias) * multiplier + ((1 << shift) >> 1)) >> shift, lo, hi)",
        "tensor_scales": tensors,
        # real = (int8 - zero_point) * scale; only one-sided tables read by unpadded GEMMs have one
        "tensor_zero_points": {
            n.name: _scale_json(n.zero_point)
            for n in qgraph.nodes.values()
            if n.dtype == "int8" and np.any(n.zero_point)
        },
        "layers": layers,
    }


def _scale_json(scale) -> float | list[float]:
    return scale.tolist() if isinstance(scale, np.ndarray) else scale


def write_module(result: CompileResult, out_dir: str | Path) -> Path:
    """Write the module to OUT (replacing an older module there); returns OUT as given.

    Refuses an existing OUT that is not a module (a directory holding anything but a codesign
    manifest and the module's files); an OS error is one DeployError naming OUT.
    """
    given = Path(out_dir)
    out = output_path(given)
    try:
        _check_destination(out, given)
        remove_stale_siblings(out)
        staging = staging_directory(out)
    except OSError as err:
        remove_own_staging(out)
        raise DeployError(f"{given}: cannot write the module there ({_os_reason(err)})") from err
    except BaseException:  # a signal while the staging directory was made
        remove_own_staging(out)
        raise
    try:
        # TVM's object files go to a workspace inside the staging directory, so that a SIGKILL
        # leaves them where the next write to OUT removes them (not in the system's TMPDIR).
        workspace = staging / BUILD_WORKSPACE
        workspace.mkdir()
        result.executable.export_library(str(staging / LIBRARY_FILE), workspace_dir=str(workspace))
        shutil.rmtree(workspace)
        (staging / HARDWARE_FILE).write_text(result.hw.to_toml())
        files = {name: file_sha256(staging / name) for name in (LIBRARY_FILE, HARDWARE_FILE)}
        (staging / MANIFEST_FILE).write_text(json.dumps(build_manifest(result, files), indent=2) + "\n")
        replace_directory(staging, out)
    except OSError as err:
        remove_own_staging(out)
        raise DeployError(f"{given}: cannot write the module ({_os_reason(err)})") from err
    except BaseException:
        remove_own_staging(out)
        raise
    return given


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove what killed writes of a module to OUT left beside it (`files.remove_stale_siblings`)."""
    return _remove_stale_siblings(out, MODULE_FILES | {BUILD_WORKSPACE})


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def check_output(out_dir: str | Path) -> None:
    """write_module's refusals that need nothing written (OUT is the current directory, holds
    other files, lies under a file or an unwritable directory), to fail before a long compile."""
    given = Path(out_dir)
    out = output_path(given)
    try:
        existing = out.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise DeployError(f"{given}: cannot create output directory ({existing} is not a directory)")
        if not os.access(existing, os.W_OK):
            raise DeployError(f"{given}: output directory is not writable")
        _refuse_non_module(out, given)
    except OSError as err:
        raise DeployError(f"{given}: cannot write the module there ({_os_reason(err)})") from err


def _check_destination(out: Path, given: Path) -> None:
    parent = out.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as err:
            raise DeployError(f"{given}: cannot create output directory ({err.strerror})") from err
    if not parent.is_dir():
        raise DeployError(f"{given}: cannot create output directory ({parent} is not a directory)")
    if not os.access(parent, os.W_OK):
        raise DeployError(f"{given}: output directory is not writable")
    _refuse_non_module(out, given)


def _refuse_non_module(out: Path, given: Path) -> None:
    if out.exists() or out.is_symlink():
        problem = "it is not a directory" if not out.is_dir() else _not_a_module(out)
        if problem:
            raise DeployError(f"{given}: exists and is not a codesign module ({problem}); refusing to overwrite it")


def _not_a_module(directory: Path) -> str | None:
    """Why an existing directory may not be replaced by a module (None: empty, or a module)."""
    entries = list(directory.iterdir())
    if not entries:
        return None
    names = {entry.name for entry in entries}
    if MANIFEST_FILE not in names:
        return f"no {MANIFEST_FILE}"
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST_FILE} is not readable JSON"
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or type(version) is not int or version < 1:
        return f"{MANIFEST_FILE} is not a {FORMAT} manifest"
    others = sorted(names - MODULE_FILES)
    if others:
        return f"it also holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            return f"{entry.name} is not a regular file"
    return None


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
        library_path = module_file(self.path, self.manifest["library"], "library")  # hash checked on read
        problem = elf_truncation(library_path)
        if problem:
            raise DeployError(f"{library_path}: not a loadable shared library ({problem})")
        try:
            library = tvm.runtime.load_module(str(library_path))
        except Exception as err:
            raise DeployError(f"{self.path / self.manifest['library']}: cannot load compiled library ({err})") from err
        self._vm = relax.VirtualMachine(library, tvm.cpu())

    def run(self, *args: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
        arrays = self._bind(args, named)
        try:
            result = self._vm["main"](*[tvm.runtime.tensor(a) for a in arrays])
        except (ValueError, RuntimeError, TypeError) as err:  # what TVM raises on a bad argument
            # The manifest's inputs passed verification but not the library's own checks.
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise DeployError(f"{self.path}: the library refused the inputs its manifest describes ({first})") from err
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
                raise DeployError(f"input '{spec.name}' holds {describe_dtype(value.dtype)}, expected {spec.dtype}")
            if value.shape != spec.shape:
                raise DeployError(f"input '{spec.name}' has shape {list(value.shape)}, expected {list(spec.shape)}")
            arrays.append(np.ascontiguousarray(value))
        return arrays


def read_manifest(path: str | Path, verify_files: bool = True) -> dict:
    """The manifest of a module directory, validated against its format (one DeployError naming
    the first wrong field); with `verify_files`, every file it lists must lie inside the directory
    and match its recorded sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise DeployError(f"{path}: no such compiled module directory")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise DeployError(f"{path}: not a compiled module (no {MANIFEST_FILE})") from err
    except (OSError, ValueError) as err:
        raise DeployError(f"{manifest_path}: unreadable manifest ({str(err)[:120]})") from err
    except RecursionError as err:
        raise DeployError(f"{manifest_path}: unreadable manifest (nested too deeply)") from err
    try:
        json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as err:
        raise DeployError(f"{manifest_path}: holds text that is not valid Unicode") from err
    try:
        validate_manifest(manifest)
    except InvalidManifest as err:
        raise DeployError(f"{manifest_path}: {err}") from err
    if verify_files:
        verify_module_files(path, manifest)
    return manifest


def module_file(path: Path, name: str, field: str = "files") -> Path:
    """path/name, refused unless it resolves (symbolic links followed) inside the module directory."""
    root = Path(path).resolve()
    target = (root / name).resolve()
    if Path(name).is_absolute() or root not in target.parents:
        raise DeployError(
            f"{Path(path) / MANIFEST_FILE}: '{field}' = {json.dumps(name)} is outside the module directory"
        )
    return target


def verify_module_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists inside the module directory, with the sha256 it records."""
    for field, name in (("library", manifest["library"]), ("hardware.file", manifest["hardware"]["file"])):
        module_file(path, name, field)
    for name, sha256 in manifest["files"].items():
        file = module_file(path, name, f"files.{name}")
        try:
            actual = file_sha256(file)
        except FileNotFoundError as err:
            raise DeployError(f"{Path(path) / name}: missing (listed in the module's manifest)") from err
        except OSError as err:
            raise DeployError(f"{Path(path) / name}: cannot read ({_os_reason(err)})") from err
        if actual != sha256:
            raise DeployError(
                f"{Path(path) / name}: sha256 {actual[:12]} does not match the manifest's {sha256[:12]} "
                "(the file was changed or truncated after compiling); recompile the module"
            )


def module_hardware(path: Path, manifest: dict) -> HardwareSpec:
    """The module's hardware file (verified by `read_manifest`), which must be the manifest's spec."""
    from codesign.hardware import load_hardware

    spec = load_hardware(module_file(path, manifest["hardware"]["file"], "hardware.file"))
    if spec.fingerprint() != manifest["hardware"]["sha256"]:
        raise DeployError(
            f"{Path(path) / manifest['hardware']['file']}: not the hardware in the module's manifest "
            f"(sha256 {spec.fingerprint()[:12]}, manifest {manifest['hardware']['sha256'][:12]}); recompile the module"
        )
    return spec


def load(path: str | Path, hw: HardwareSpec | None = None) -> DeployedModule:
    """Load a compiled module directory; with `hw`, refuse a module built for other hardware."""
    return DeployedModule(path, hw)


def elf_truncation(path: Path) -> str | None:
    """What makes `path` an incomplete 64-bit ELF file, or None. Mapping a library whose
    segments lie past its end kills the process with SIGBUS, so this runs before loading (the
    sha256 check alone does not catch a library truncated and then re-hashed)."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        header = stream.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return "no 64-bit ELF header"
        order = "<" if header[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(order + "QQ", header, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 54)
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
            return f"its headers end past its {size} bytes"
        for index in range(phnum):
            stream.seek(phoff + index * phentsize)
            entry = stream.read(phentsize)
            (offset,) = struct.unpack_from(order + "Q", entry, 8)  # p_offset
            (filesz,) = struct.unpack_from(order + "Q", entry, 32)  # p_filesz
            if offset + filesz > size:
                return f"segment {index} ends at byte {offset + filesz}, past its {size} bytes"
    return None
