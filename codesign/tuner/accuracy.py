"""The accuracy measurer: runs a built profile on the evaluation data.

Accuracy is measured, not modelled: the compressed model's deployable integer module (bit-exact
with the numpy reference) runs every sample. The score, in %:
- with class labels, the share of samples whose first output's top-1 class is the label;
- with sequence labels (a text recogniser's, one row of classes per sample), character
  accuracy: the mean over samples of 1 - edit distance / max(length of prediction, of label)
  (PaddleOCR's `norm_edit_dis`), the prediction being the greedy CTC decoding of the first
  output (its last axis the classes, class 0 the blank: the best class of each step, repeats
  merged, blanks dropped). Whole lines read right would move in steps of 1 / samples and drop
  by points where a character is misread in a few lines;
- without labels, the share of samples whose top-1 class is the float model's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from rapidfuzz.distance import Levenshtein
from tvm import relax

from codesign.calibration import float_outputs
from codesign.graph import extract_graph
from codesign.importer import ImportedModel
from codesign.tuner.eval_data import EvalData, check_label_range


def ctc_greedy(output: np.ndarray) -> tuple[int, ...]:
    """The classes a CTC output (steps x classes, any leading axes of size 1) decodes to."""
    best = output.reshape(-1, output.shape[-1]).argmax(axis=1)
    kept = np.ones(len(best), dtype=bool)
    kept[1:] = best[1:] != best[:-1]
    return tuple(int(c) for c in best[kept & (best != 0)])


class AccuracyMeasurer:
    def __init__(self, imported: ImportedModel, data: EvalData, data_path: str | Path):
        """Runs the float model once (its predictions are the reference without labels); labels
        the model's first output cannot predict are a UsageError naming `data_path`."""
        self.samples = data.samples()
        self.input_names = [t.name for t in imported.inputs]
        self.arguments = [[tvm.runtime.tensor(s[name]) for name in self.input_names] for s in self.samples]
        self.sequences = data.labels is not None and data.labels.ndim == 2
        outputs = [o[0] for o in float_outputs(extract_graph(imported), imported, self.samples)]
        self.float_predictions = [self._prediction(o) for o in outputs]
        if data.labels is not None:
            classes = outputs[0].shape[-1] if self.sequences else outputs[0].size
            check_label_range(data.labels, classes, Path(data_path))
            self.reference = [_label(row) for row in data.labels] if self.sequences else list(data.labels)
        else:
            self.reference = self.float_predictions

    def _prediction(self, output: np.ndarray):
        """What a sample's first output predicts: its top-1 class, or its decoded sequence."""
        return ctc_greedy(output) if self.sequences else int(output.reshape(-1).argmax())

    def _score(self, predictions: list) -> float:
        pairs = zip(predictions, self.reference, strict=True)
        if self.sequences:
            return 100.0 * float(np.mean([Levenshtein.normalized_similarity(p, r) for p, r in pairs]))
        return 100.0 * float(np.mean([p == r for p, r in pairs]))

    def float_accuracy(self) -> float:
        return self._score(self.float_predictions)

    def measure(self, executable) -> float:
        """Accuracy (%) of a compiled module on the evaluation data."""
        main = relax.VirtualMachine(executable, tvm.cpu())["main"]  # looked up once: 0.1 ms a call
        return self._score([self._prediction(self._first_output(main, arguments)) for arguments in self.arguments])

    @staticmethod
    def _first_output(main, arguments: list) -> np.ndarray:
        result = main(*arguments)
        first = result[0] if isinstance(result, (tvm.ir.Array, list, tuple)) else result
        return first.numpy()


def _label(row: np.ndarray) -> tuple[int, ...]:
    return tuple(int(c) for c in row[row >= 0])
