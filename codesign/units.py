"""How objectives are shown: the unit that puts a typical value between 1 and 1000 (for the
report's tables and plots, and the tuner's progress lines)."""

from __future__ import annotations

import numpy as np

BASE_UNITS = {"latency": "s", "energy": "J", "edp": "J·s"}
PREFIXES = ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))
OBJECTIVE_TITLES = {"latency": "latency", "energy": "energy", "edp": "EDP", "area": "area", "accuracy": "accuracy"}


def objective_unit(objective: str, values) -> tuple[float, str]:
    """(scale, unit) that shows an objective's typical value between 1 and 1000."""
    if objective == "area":
        return 1.0, "mm²"
    if objective == "accuracy":
        return 1.0, "%"
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    typical = float(np.median(values)) if len(values) else 1.0
    scale, prefix = next(((s, p) for s, p in PREFIXES if typical >= s), PREFIXES[-1])
    return scale, prefix + BASE_UNITS[objective]


def format_objective(objective: str, value: float) -> str:
    """One value in its own best unit: '1.23 ms', '98.7 %'."""
    scale, unit = objective_unit(objective, [value])
    return f"{value / scale:.4g} {unit}"


def axis_title(objective: str, unit: str) -> str:
    return f"{OBJECTIVE_TITLES[objective]} ({unit})"
