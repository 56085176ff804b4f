"""Reading an ONNX file and the user's input bindings, without TVM.

`load_onnx` reads a model (weights saved as external data only from beside the file) and its
content hash; `model_sha256` the hash alone. The simulator's cached path and the cache keys use
these, so a command whose result is cached never imports TVM. `model_sha256` remembers a
file's digest under its size and modification time (and those of its external weights), so a
cached command does not parse the model either.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from codesign import cache
from codesign.errors import ModelError, UsageError

if TYPE_CHECKING:  # onnx is imported by what reads a model, not by what only hashes one
    import onnx

MAX_DIM = 2**31 - 1  # TVM's shapes are int64, its buffers indexed by int32


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """['x=1,3,224,224', ...] -> {'x': (1, 3, 224, 224)}."""
    shapes = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1 or max(shape) > MAX_DIM:
            raise UsageError(f"--input-shape '{spec}': expected NAME=D1,D2,... with integers from 1 to {MAX_DIM:,}")
        shapes[name] = shape
    return shapes


def parse_input_values(specs: list[str] | None) -> dict[str, list[str]]:
    """['sr=16000', 'w=1,2'] -> {'sr': ['16000'], 'w': ['1', '2']} (typed by freeze_inputs)."""
    values = {}
    for spec in specs or []:
        name, sep, text = spec.partition("=")
        items = [item.strip() for item in text.split(",")]
        if not sep or not name or not all(items):
            raise UsageError(f"--input-value '{spec}': expected NAME=V or NAME=V1,V2,...")
        values[name] = items
    return values


def load_onnx(path: str | Path) -> tuple[onnx.ModelProto, str]:
    """The model, with weights saved as external data read from beside the model file (never
    from the working directory), and the sha256 of the file and of those weights."""
    import onnx

    path = Path(path)
    model, sha256, external, data = _remembered_read(path) or _read_model(path)
    try:  # the file's bytes, when they hold all of it: serializing a large model again costs more
        onnx.checker.check_model(model if external else data)
    except Exception as err:
        raise ModelError(f"{path}: not a valid ONNX model ({_reason(err)})") from err
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model, sha256


def model_sha256(path: str | Path) -> str:
    """The sha256 `load_onnx` gives, without checking the model (for cache keys: a miss loads
    it). Read from the cache while the file and its external weights keep their size and
    modification time."""
    path = Path(path)
    key = _digest_key(path)
    payload = cache.load(key) if key else None
    if payload is not None:
        memo = json.loads(payload)
        if all(_file_stamp(Path(name)) == stamp for name, stamp in memo["external"]):
            return memo["sha256"]
    read = _read_model(path)
    _, sha256, external, _ = read
    _remember_read(path, read)
    if key:
        memo = {"sha256": sha256, "external": [(str(file), _file_stamp(file)) for file in sorted(external)]}
        cache.store(key, json.dumps(memo).encode())
    return sha256


# The model `model_sha256` last parsed (a cache miss, which then loads the model), for `load_onnx`
# to take instead of parsing the file again: (stamps of the file and its weights, the read).
_last_read: list = []


def _remember_read(path: Path, read: tuple) -> None:
    _last_read[:] = [(_read_stamps(path, read[2]), read)]


def _remembered_read(path: Path) -> tuple | None:
    """The read `model_sha256` left for this file, if the file and its weights are unchanged (once)."""
    if not _last_read:
        return None
    (stamps, read), _last_read[:] = _last_read[0], []
    return read if stamps == _read_stamps(path, read[2]) else None


def _read_stamps(path: Path, external: set[Path]) -> list:
    return [(os.path.abspath(file), _file_stamp(file)) for file in [path, *sorted(external)]]


def _file_stamp(path: Path) -> list[int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns, status.st_ino]


def _digest_key(path: Path) -> str | None:
    stamp = _file_stamp(path)
    if stamp is None:
        return None
    return cache.entry_key("model-digest", {"path": os.path.abspath(path), "stamp": stamp})


def _read_model(path: Path) -> tuple[onnx.ModelProto, str, set[Path], bytes]:
    """The model with its external weights read in, the sha256 of both, the weight files, and
    the file's bytes."""
    import onnx

    try:
        data = path.read_bytes()
    except FileNotFoundError as err:
        raise ModelError(f"{path}: no such ONNX file") from err
    except OSError as err:
        raise ModelError(f"{path}: cannot read ONNX file ({err.strerror})") from err
    digest = hashlib.sha256(data)
    try:
        model = onnx.load_from_string(data)
    except Exception as err:
        raise ModelError(f"{path}: not a valid ONNX model ({_reason(err)})") from err
    external = set()
    for tensor in _stored_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external.add(_load_external_tensor(tensor, path))
            # Name and length framed, so no two different sets of weights hash alike.
            name = tensor.name.encode()
            digest.update(b"%d:%b%d:" % (len(name), name, len(tensor.raw_data)) + tensor.raw_data)
    return model, digest.hexdigest(), external, data


def _reason(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _stored_tensors(graph: onnx.GraphProto):
    """Every TensorProto a graph stores: initializers and attribute tensors, in subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _stored_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _stored_tensors(subgraph)


def _load_external_tensor(tensor: onnx.TensorProto, path: Path) -> Path:
    """Read a tensor's external data, relative to the model file (the file must lie beside it);
    returns the file read."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor

    location = ExternalDataInfo(tensor).location
    base = path.parent.resolve()
    file = (base / location).resolve() if location else base
    where = f"{path}: tensor '{tensor.name}' keeps its data in '{location}'"
    if not location or Path(location).is_absolute() or base not in file.parents:
        raise ModelError(f"{where}, outside the model's directory {path.parent}")
    if not file.is_file():
        raise ModelError(f"{where}, but there is no such file beside the model ({path.parent / location})")
    try:
        load_external_data_for_tensor(tensor, str(base))
    except Exception as err:
        raise ModelError(f"{where}, which cannot be read ({_reason(err)})") from err
    return file
