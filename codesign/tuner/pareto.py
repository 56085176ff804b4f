"""Pareto fronts and hypervolume (minimisation; moocore computes the hypervolume)."""

from __future__ import annotations

import moocore
import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for the points no other point dominates (all objectives minimised)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(points), dtype=bool)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    inside = points[np.all(points < reference, axis=1)] if len(points) else points
    return float(moocore.hypervolume(inside, ref=reference)) if len(inside) else 0.0


def normalise(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (points - low) / np.where(high > low, high - low, 1.0)
