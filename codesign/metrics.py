"""How close two tensors are: the cosine every accuracy figure against a reference uses."""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of the flattened tensors; two all-zero tensors count 1.0, one 0.0."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


def output_cosines(runs: list[list[np.ndarray]], references: list[list[np.ndarray]]) -> list[float]:
    """Per output, the cosine of its values over every run (each run a list of outputs) against
    the references' (a scalar output gets a vector)."""
    return [cosine(_stacked(runs, i), _stacked(references, i)) for i in range(len(references[0]))]


def _stacked(runs: list[list[np.ndarray]], index: int) -> np.ndarray:
    return np.concatenate([run[index].ravel() for run in runs])
