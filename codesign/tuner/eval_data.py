"""The evaluation data of a tune: a labelled (or unlabelled) .npz, read and checked once.

Anything wrong with it is one UsageError line naming the file and the array.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from codesign.calibration import as_samples
from codesign.errors import UsageError
from codesign.files import open_numpy_file, read_array
from codesign.importer import TensorSpec


@dataclasses.dataclass
class EvalData:
    inputs: dict[str, np.ndarray]  # name -> (samples, *input shape)
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def samples(self) -> list[dict[str, np.ndarray]]:
        """One {input name: array} per sample."""
        return [{name: array[i] for name, array in self.inputs.items()} for i in range(len(self))]


def load_eval_data(path: str | Path, specs: list[TensorSpec], limit: int | None = None) -> EvalData:
    """A .npz with one array per input (samples stacked on a new first axis, or on the batch
    axis of a batch-1 input) and optionally `labels`: one class index per sample, or, for a
    sequence model (CTC), one row of class indices per sample, padded with -1. Anything else is
    one UsageError line naming the file and the array."""
    path = Path(path)
    archive = open_numpy_file(path, "data", ".npz", UsageError)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{path}: expected a .npz with arrays named after the inputs (and 'labels')")
    with archive:
        inputs = {}
        for spec in specs:
            if spec.name not in archive.files:
                raise UsageError(f"{path}: no array '{spec.name}' (has: {', '.join(archive.files) or 'none'})")
            array = read_array(archive, spec.name, path, UsageError, spec.dtype)
            if array.size == 0:
                raise UsageError(f"{path}: array '{spec.name}' holds no samples (shape {list(array.shape)})")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                raise UsageError(f"{path}: array '{spec.name}' holds {array[where]} at {list(where)}")
            inputs[spec.name] = as_samples(array, spec, path)
        available = min(len(a) for a in inputs.values())
        count = available if limit is None else min(available, limit)
        labels = _labels(archive, path, count) if "labels" in archive.files else None
    return EvalData({k: v[:count] for k, v in inputs.items()}, labels)


def _labels(archive, path: Path, count: int) -> np.ndarray:
    """The first `count` labels as whole numbers: (count,) class indices, or (count, length)
    sequences padded with -1."""
    labels = read_array(archive, "labels", path, UsageError)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise UsageError(
            f"{path}: array 'labels' has shape {list(labels.shape)}; expected one class index per sample, "
            "or one row of class indices per sample (a sequence, padded with -1)"
        )
    if len(labels) < count:
        raise UsageError(f"{path}: array 'labels' has {len(labels)} entries for {count} samples")
    labels = labels[:count]
    if labels.dtype.kind in "bf":
        if labels.dtype.kind == "f":
            bad = ~np.isfinite(labels) | (labels != np.round(labels))
        else:
            bad = np.ones(labels.shape, bool)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            where = ", ".join(map(str, first))
            raise UsageError(f"{path}: labels[{where}] = {labels[first]}; labels must be whole class indices")
    return labels.astype(np.int64)


def check_label_range(labels: np.ndarray, classes: int, path: Path) -> None:
    """Labels the model's first output cannot predict would score 0 % silently. A sequence's
    classes are 1 to classes - 1 (0 is CTC's blank), then -1 padding only."""
    if labels.ndim == 2:
        _check_sequences(labels, classes, path)
        return
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(outside):
        first = int(outside[0])
        raise UsageError(
            f"{path}: labels[{first}] = {labels[first]} is not a class of the model's first output "
            f"(0 to {classes - 1}); {len(outside)} label(s) out of range"
        )


def _check_sequences(labels: np.ndarray, classes: int, path: Path) -> None:
    padding = labels == -1
    bad = ~padding & ((labels < 1) | (labels >= classes))
    bad[:, 1:] |= padding[:, :-1] & ~padding[:, 1:]  # a class after the padding began
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise UsageError(
            f"{path}: labels[{row}, {column}] = {labels[row, column]} is not a class of the model's first output "
            f"(a sequence's classes are 1 to {classes - 1}, 0 being CTC's blank, then -1 padding)"
        )
