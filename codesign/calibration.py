"""Calibration: run the float graph on sample inputs and record each tensor's range.

Calibration inputs come from a .npy (single-input models) or .npz (arrays named after the
inputs) file. An array is one sample when it has the input's shape, else a stack of samples
along a new leading axis, or along the batch axis when the input's batch is 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from codesign.emit import emit_float_node, module_without_main, target
from codesign.errors import ModelError, UsageError
from codesign.graph import Graph
from codesign.importer import ImportedModel, TensorSpec


def build_float_module(graph: Graph, imported: ImportedModel, taps: list[str]) -> tvm.IRModule:
    """The float model as Relax, returning the graph outputs followed by the tapped tensors."""
    bb = relax.BlockBuilder(module_without_main(imported.mod))
    params = [relax.Var(spec.name, relax.TensorType(spec.shape, spec.dtype)) for spec in imported.inputs]
    with bb.function("main", params):
        with bb.dataflow():
            values = {spec.name: param for spec, param in zip(imported.inputs, params)}
            for node in graph.nodes.values():
                if node.op == "input":
                    continue
                values[node.name] = emit_float_node(bb, node, [values[i] for i in node.inputs])
            result = bb.emit_output(relax.Tuple([values[n] for n in graph.outputs + taps]))
        bb.emit_func_output(result)
    return bb.get()


def run_float(mod: tvm.IRModule, samples: list[dict[str, np.ndarray]], input_names: list[str]):
    executable = tvm.compile(mod, target=target())
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for sample in samples:
        outputs = vm["main"](*[tvm.runtime.tensor(sample[name]) for name in input_names])
        yield [o.numpy() for o in outputs]


def tensor_ranges(graph: Graph, imported: ImportedModel, samples: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |x| over all samples for every tensor-valued node."""
    taps = [n.name for n in graph.nodes.values() if n.shape is not None]
    mod = build_float_module(graph, imported, taps)
    absmax = dict.fromkeys(taps, 0.0)
    skip = len(graph.outputs)
    for outputs in run_float(mod, samples, [t.name for t in imported.inputs]):
        for name, value in zip(taps, outputs[skip:]):
            absmax[name] = max(absmax[name], float(np.abs(value).max(initial=0.0)))
    return absmax


def float_outputs(graph: Graph, imported: ImportedModel, samples: list[dict[str, np.ndarray]]):
    mod = build_float_module(graph, imported, [])
    yield from run_float(mod, samples, [t.name for t in imported.inputs])


# ---- calibration data -----------------------------------------------------------------------


def load_samples(path: str | Path, inputs: list[TensorSpec], limit: int | None = None) -> list[dict[str, np.ndarray]]:
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such calibration file") from err
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: not a .npy/.npz file ({err})") from err
    if isinstance(loaded, np.ndarray):
        if len(inputs) != 1:
            raise UsageError(f"{path}: a .npy file feeds one input, the model has {len(inputs)}; use .npz")
        arrays = {inputs[0].name: loaded}
    else:
        missing = [t.name for t in inputs if t.name not in loaded.files]
        if missing:
            raise UsageError(f"{path}: no array named {', '.join(missing)} (has: {', '.join(loaded.files)})")
        arrays = {t.name: loaded[t.name] for t in inputs}
    stacks = {t.name: as_samples(arrays[t.name], t, path) for t in inputs}
    count = min(len(s) for s in stacks.values())
    count = count if limit is None else min(count, limit)
    return [{name: stack[i] for name, stack in stacks.items()} for i in range(count)]


def as_samples(array: np.ndarray, spec: TensorSpec, path: Path) -> np.ndarray:
    """A stack of samples for one input: one sample, stacked on a new axis, or on the batch axis."""
    shape = tuple(spec.shape)
    array = array.astype(spec.dtype, copy=False)
    if array.shape == shape:
        return array[None]
    if array.shape[1:] == shape:
        return array
    if shape[0] == 1 and array.shape[1:] == shape[1:]:
        return array[:, None]
    raise UsageError(
        f"{path}: array '{spec.name}' has shape {list(array.shape)}; expected {list(shape)} or a stack of those"
    )


def random_samples(inputs: list[TensorSpec], count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in inputs} for _ in range(count)]
