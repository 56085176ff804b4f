"""The accuracy measurer: runs a built profile on the evaluation data.

Accuracy is measured, not modelled: the compressed model's deployable integer module (bit-exact
with the numpy reference) runs every sample; the score is top-1 accuracy against the labels, or,
without labels, top-1 agreement with the float model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from codesign.calibration import float_outputs
from codesign.graph import extract_graph
from codesign.importer import ImportedModel
from codesign.tuner.eval_data import EvalData, check_label_range


class AccuracyMeasurer:
    def __init__(self, imported: ImportedModel, data: EvalData, data_path: str | Path):
        """Runs the float model once (its predictions are the reference without labels); labels
        the model's first output cannot predict are a UsageError naming `data_path`."""
        self.samples = data.samples()
        self.input_names = [t.name for t in imported.inputs]
        self.arguments = [[tvm.runtime.tensor(s[name]) for name in self.input_names] for s in self.samples]
        self.float_predictions, classes = self._float_predictions(imported)
        if data.labels is not None:
            check_label_range(data.labels, classes, Path(data_path))
        self.reference = data.labels if data.labels is not None else self.float_predictions

    def _float_predictions(self, imported: ImportedModel) -> tuple[np.ndarray, int]:
        """The float model's top-1 class per sample, and the number of classes (its first output's size)."""
        scores = [outputs[0].reshape(-1) for outputs in float_outputs(extract_graph(imported), imported, self.samples)]
        return np.array([s.argmax() for s in scores]), scores[0].size

    def float_accuracy(self) -> float:
        return 100.0 * float((self.float_predictions == self.reference).mean())

    def measure(self, executable) -> float:
        """Accuracy (%) of a compiled module on the evaluation data."""
        main = relax.VirtualMachine(executable, tvm.cpu())["main"]  # looked up once: 0.1 ms a call
        predictions = np.array([self._top1(main, arguments) for arguments in self.arguments])
        return 100.0 * float((predictions == self.reference).mean())

    def _top1(self, main, arguments: list) -> int:
        """The top-1 class of the model's first output (accuracy is measured on it)."""
        result = main(*arguments)
        first = result[0] if isinstance(result, (tvm.ir.Array, list, tuple)) else result
        return int(first.numpy().reshape(-1).argmax())
