"""A model's layer plans, what the simulator needs, from the cache when it has them.

`plan_model` looks the plans up under the model's content hash, its bindings, the calibration
data, the hardware and the compression; only on a miss does it import, quantize and lower the
model (`codesign.pipeline`, and so TVM). A `simulate` whose plans are cached never imports TVM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from codesign import cache, progress
from codesign.compression import CompressionConfig
from codesign.errors import CodesignError
from codesign.files import file_sha256
from codesign.hardware import HardwareSpec
from codesign.onnx_file import model_sha256
from codesign.plan import LayerPlan


def plan_model(
    model: str | Path,
    hw: HardwareSpec,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    calibration: str | Path | None = None,
    calibration_samples: int | None = None,
    warn=lambda message: print(message, file=sys.stderr),
    compression: CompressionConfig | None = None,
    input_values: dict[str, list[str]] | None = None,
) -> list[LayerPlan]:
    """The layer plans of a model (import, quantize, lower) without building it. Read from the
    cache when the same model, bindings, calibration data, hardware and compression were planned
    before (with the warnings they gave, given again). `calibration_samples`: None for compile's
    default."""
    compression = compression or CompressionConfig()
    key = _plans_key(model, hw, input_shapes, calibration, calibration_samples, compression, input_values)
    payload = cache.load(key) if key else None
    if payload is not None:
        cached = json.loads(payload)
        for message in cached["warnings"]:
            warn(message)
        return [LayerPlan.from_dict(plan) for plan in cached["plans"]]
    warnings = []

    def record(message: str) -> None:
        warnings.append(message)
        warn(message)

    plans = _lowered_plans(model, hw, input_shapes, calibration, calibration_samples, record, compression, input_values)
    if key:
        cache.store(key, json.dumps({"warnings": warnings, "plans": [plan.to_dict() for plan in plans]}).encode())
    return plans


def _lowered_plans(model, hw, input_shapes, calibration, calibration_samples, warn, compression, input_values):
    from codesign.lowering import plan_layers
    from codesign.pipeline import DEFAULT_CALIBRATION_SAMPLES, import_model, quantize_model

    samples = DEFAULT_CALIBRATION_SAMPLES if calibration_samples is None else calibration_samples
    progress.stage("import")
    imported = import_model(model, input_shapes, input_values, warn)
    _, qgraph, _ = quantize_model(imported, hw, calibration, samples, None, warn, compression, measure_biases=False)
    return plan_layers(qgraph, imported, hw, compression)


def _plans_key(model, hw, input_shapes, calibration, calibration_samples, compression, input_values) -> str | None:
    """The cache key of a model's plans, or None when an input file cannot be read (the
    uncached path then reports it)."""
    try:
        model_digest = model_sha256(model)
        calibration_sha256 = file_sha256(Path(calibration)) if calibration is not None else None
    except (CodesignError, OSError):
        return None
    parts = {
        "model": model_digest,
        "input_shapes": sorted((name, list(shape)) for name, shape in (input_shapes or {}).items()),
        "input_values": sorted((name, list(values)) for name, values in (input_values or {}).items()),
        "calibration": calibration_sha256,
        "calibration_samples": calibration_samples,
        "hardware": hw.fingerprint(),
        "compression": compression.to_dict(),
    }
    return cache.entry_key("plans", parts)
