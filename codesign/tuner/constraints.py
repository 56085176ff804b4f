"""The constraint checks: whether a design's metrics meet the space's [constraints]."""

from __future__ import annotations

import numpy as np

# constraint -> (its value in the constraint's unit, the message of a violation)
_LIMITED = {
    "area_mm2_max": (lambda m: m["area"], "area {:.3f} mm2 > {}"),
    "latency_ms_max": (lambda m: m["latency"] * 1e3, "latency {:.3f} ms > {}"),
    "energy_mj_max": (lambda m: m["energy"] * 1e3, "energy {:.3f} mJ > {}"),
}


def violation(metrics: dict, limits: dict) -> str | None:
    """Why a design with these metrics is infeasible (the first violated constraint), or None.
    `metrics` holds latency, energy, area, accuracy and float_accuracy."""
    if not np.isfinite(metrics["latency"]):
        return "a layer has no tiling that fits the scratchpads"
    for key, (value_of, text) in _LIMITED.items():
        if key in limits and value_of(metrics) > limits[key]:
            return text.format(value_of(metrics), limits[key])
    drop = metrics["float_accuracy"] - metrics["accuracy"]
    if "accuracy_drop_max" in limits and drop > limits["accuracy_drop_max"]:
        return f"accuracy {metrics['accuracy']:.2f} % drops more than {limits['accuracy_drop_max']} points"
    return None
