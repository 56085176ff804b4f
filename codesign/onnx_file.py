"""Reading an ONNX file and the user's input bindings, without TVM.

`load_onnx` reads a model (weights saved as external data only from beside the file) and its
content hash; `model_sha256` the hash alone. The simulator's cached path and the cache keys use
these, so a command whose result is cached never imports TVM.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from codesign.errors import ModelError, UsageError

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
    path = Path(path)
    model, sha256 = _read_model(path)
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise ModelError(f"{path}: not a valid ONNX model ({_reason(err)})") from err
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    return model, sha256


def model_sha256(path: str | Path) -> str:
    """The sha256 `load_onnx` gives, without checking the model (for cache keys: a miss loads it)."""
    return _read_model(Path(path))[1]


def _read_model(path: Path) -> tuple[onnx.ModelProto, str]:
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
    for tensor in _stored_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _load_external_tensor(tensor, path)
            # Name and length framed, so no two different sets of weights hash alike.
            name = tensor.name.encode()
            digest.update(b"%d:%b%d:" % (len(name), name, len(tensor.raw_data)) + tensor.raw_data)
    return model, digest.hexdigest()


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


def _load_external_tensor(tensor: onnx.TensorProto, path: Path) -> None:
    """Read a tensor's external data, relative to the model file; the file must lie beside it."""
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
