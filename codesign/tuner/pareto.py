"""Pareto fronts and hypervolume (minimisation; moocore computes the hypervolume)."""

from __future__ import annotations

import moocore
import numpy as np


def pareto_mask(points: np.ndarray, keep_ties: bool = False) -> np.ndarray:
    """True for the points no other point dominates (all objectives minimised); of equal points,
    the first only, or all with `keep_ties`."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(points, keep_weakly=keep_ties), dtype=bool)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    inside = points[np.all(points < reference, axis=1)] if len(points) else points
    return float(moocore.hypervolume(inside, ref=reference)) if len(inside) else 0.0


def normalise(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return (points - low) / np.where(high > low, high - low, 1.0)
