"""The evaluator: one configuration -> its objectives (latency, energy, EDP, area, accuracy).

Accuracy is measured, not modelled: the compressed model is compiled (the deployable integer
path, bit-exact with the numpy reference) and run on the user's labelled data; without labels
it is top-1 agreement with the float model. It depends only on the compression choice (and on
whether the ALU has a multiplier, which changes the requantization), so it is cached per
(compression, multiplier). Latency, energy and area come from the analytic simulator with the
schedule of every layer tuned for the design (`schedule.mode = "auto"`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from codesign.calibration import as_samples
from codesign.errors import HardwareError, UsageError
from codesign.graph import extract_graph
from codesign.importer import ImportedModel, TensorSpec, import_onnx
from codesign.pipeline import compile_model
from codesign.simulator.design_sweep import Layer, evaluate_designs
from codesign.simulator.host import host_seconds
from codesign.tuner.space import SearchSpace


@dataclasses.dataclass
class EvalData:
    inputs: dict[str, np.ndarray]  # name -> (samples, *input shape)
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


def load_eval_data(path: str | Path, specs: list[TensorSpec], limit: int | None = None) -> EvalData:
    """A .npz with one array per input (samples stacked on a new first axis, or on the batch
    axis of a batch-1 input) and optionally `labels` (one class index per sample). Anything
    else is one UsageError line naming the file and the array."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such data file") from err
    except IsADirectoryError as err:
        raise UsageError(f"{path}: is a directory, not a .npz data file") from err
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"{path}: not a .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UsageError(f"{path}: expected a .npz with arrays named after the inputs (and 'labels')")
    with archive:
        inputs = {}
        for spec in specs:
            if spec.name not in archive.files:
                raise UsageError(f"{path}: no array '{spec.name}' (has: {', '.join(archive.files) or 'none'})")
            array = _numeric_array(archive, spec.name, path)
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


def _numeric_array(archive, name: str, path: Path) -> np.ndarray:
    try:
        array = archive[name]
    except ValueError as err:
        if "allow_pickle" in str(err):  # an array of Python objects
            raise UsageError(f"{path}: array '{name}' holds Python objects, not numbers") from err
        raise UsageError(f"{path}: array '{name}' cannot be read ({err})") from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged member
        raise UsageError(f"{path}: array '{name}' cannot be read ({type(err).__name__}: {err})") from err
    except MemoryError as err:
        raise UsageError(f"{path}: array '{name}' is too large to load") from err
    if array.dtype.kind not in "biuf":
        what = {"U": "strings", "S": "bytes", "c": "complex numbers", "O": "Python objects"}
        raise UsageError(
            f"{path}: array '{name}' holds {what.get(array.dtype.kind, f'dtype {array.dtype}')}, not real numbers"
        )
    return array


def _labels(archive, path: Path, count: int) -> np.ndarray:
    """The first `count` labels as class indices (whole, finite numbers; one per sample)."""
    labels = _numeric_array(archive, "labels", path)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise UsageError(f"{path}: array 'labels' has shape {list(labels.shape)}; expected one class index per sample")
    if len(labels) < count:
        raise UsageError(f"{path}: array 'labels' has {len(labels)} entries for {count} samples")
    labels = labels[:count]
    if labels.dtype.kind in "bf":
        bad = ~np.isfinite(labels) | (labels != np.round(labels)) if labels.dtype.kind == "f" else np.ones(count, bool)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise UsageError(f"{path}: labels[{first}] = {labels[first]}; labels must be whole class indices")
    return labels.astype(np.int64)


def _check_label_range(labels: np.ndarray, classes: int, path: Path) -> None:
    """Labels the model's first output cannot predict would score 0 % silently."""
    outside = np.flatnonzero((labels < 0) | (labels >= classes))
    if len(outside):
        first = int(outside[0])
        raise UsageError(
            f"{path}: labels[{first}] = {labels[first]} is not a class of the model's first output "
            f"(0 to {classes - 1}); {len(outside)} label(s) out of range"
        )


@dataclasses.dataclass
class CompressionProfile:
    """What a compression choice fixes, whatever the hardware: accuracy and the layers' work."""

    accuracy: float
    layers: list[Layer]
    host_work: list[tuple[float, float]]  # (ops, bytes) of every host op


class Evaluator:
    def __init__(
        self,
        model: str | Path,
        space: SearchSpace,
        data: str | Path,
        input_shapes: dict | None = None,
        calibration_samples: int = 64,
        eval_samples: int | None = None,
        input_values: dict | None = None,
        workdir: str | Path | None = None,
    ):
        """`workdir`: where the evaluator keeps its temporary files (a copy of calibration data);
        default, or when it is not a directory here, the system's temporary directory."""
        self.model, self.space, self.input_shapes = str(model), space, input_shapes
        self.input_values = input_values
        self.imported = import_onnx(model, input_shapes, input_values)
        self.layers = gemm_layer_names(self.imported)
        self.data = load_eval_data(data, self.imported.inputs, eval_samples)
        workdir = workdir if workdir is not None and Path(workdir).is_dir() else None
        self._workdir = tempfile.TemporaryDirectory(prefix="codesign-eval-", dir=workdir)
        self.calibration = Path(self._workdir.name) / "calibration.npz"
        calibration = load_eval_data(data, self.imported.inputs, calibration_samples)
        np.savez(self.calibration, **calibration.inputs)
        self.profiles: dict[tuple, CompressionProfile] = {}
        self.float_predictions, classes = self._float_predictions()
        if self.data.labels is not None:
            _check_label_range(self.data.labels, classes, Path(data))

    def close(self) -> None:
        """Remove the temporary files now (not when the evaluator is collected)."""
        self._workdir.cleanup()

    # ---- accuracy ---------------------------------------------------------------------------

    def _float_predictions(self) -> tuple[np.ndarray, int]:
        """The float model's top-1 class per sample, and the number of classes (its first output's size)."""
        from codesign.calibration import float_outputs

        graph = extract_graph(self.imported)
        scores = [outputs[0].reshape(-1) for outputs in float_outputs(graph, self.imported, self._samples())]
        return np.array([s.argmax() for s in scores]), scores[0].size

    def _samples(self) -> list[dict[str, np.ndarray]]:
        return [{name: array[i] for name, array in self.data.inputs.items()} for i in range(len(self.data))]

    def float_accuracy(self) -> float:
        reference = self.data.labels if self.data.labels is not None else self.float_predictions
        return 100.0 * float((self.float_predictions == reference).mean())

    def profile(self, config: dict, multiplier: bool) -> CompressionProfile:
        compression = self.space.compression(config, self.layers)
        key = (compression.key(), multiplier)
        if key not in self.profiles:
            self.profiles[key] = self._measure(compression, multiplier)
        return self.profiles[key]

    def _measure(self, compression, multiplier: bool) -> CompressionProfile:
        base = self.space.base
        hw = dataclasses.replace(
            base,
            alu_has_multiplier=multiplier,
            alu_multiplier_bits=(base.alu_multiplier_bits or 8) if multiplier else 0,
        )
        result = compile_model(
            self.model,
            hw,
            self.input_shapes,
            self.calibration,
            warn=lambda m: None,
            compression=compression,
            input_values=self.input_values,
        )
        vm = relax.VirtualMachine(result.executable, tvm.cpu())
        names = [t.name for t in result.imported.inputs]
        predictions = np.array(
            [_first_output(vm["main"](*[tvm.runtime.tensor(sample[n]) for n in names])) for sample in self._samples()]
        )
        reference = self.data.labels if self.data.labels is not None else self.float_predictions
        layers = [
            Layer(plan.effective_shape or plan.shape, tuple(plan.alu_ops), plan.weight_bits)
            for plan in result.lowered.plans
            if plan.placement == "accel"
        ]
        host = [(p.host_ops, p.host_bytes) for p in result.lowered.plans]
        return CompressionProfile(100.0 * float((predictions == reference).mean()), layers, host)

    # ---- one configuration ----------------------------------------------------------------

    def evaluate(self, config: dict) -> dict:
        return self.evaluate_many([config])[0]

    def evaluate_many(self, configs: list[dict]) -> list[dict]:
        """Results in order; designs sharing a compression profile are simulated in one call."""
        start = time.perf_counter()
        results: list[dict | None] = [None] * len(configs)
        groups: dict[tuple, list[tuple[int, object]]] = {}
        for position, config in enumerate(configs):
            try:
                hw = self.space.hardware(config)
            except HardwareError as err:
                results[position] = {"feasible": False, "reason": str(err), "objectives": {}, "metrics": {}}
                continue
            key = (self.space.compression(config, self.layers).key(), hw.alu_has_multiplier)
            groups.setdefault(key, []).append((position, hw))
        for members in groups.values():
            first = members[0][0]
            profile = self.profile(configs[first], members[0][1].alu_has_multiplier)
            designs = [hw for _, hw in members]
            perf = evaluate_designs(profile.layers, designs, schedule=self.space.schedule_mode)
            for slot, (position, hw) in enumerate(members):
                host = sum(host_seconds(ops, nbytes, hw) for ops, nbytes in profile.host_work)
                results[position] = self._result(perf, slot, host, profile.accuracy)
        elapsed = (time.perf_counter() - start) / max(len(configs), 1)
        for result in results:
            result["seconds"] = elapsed
        return results

    def _result(self, perf: dict, slot: int, host: float, accuracy: float) -> dict:
        accel = float(perf["seconds"][slot])
        metrics = {
            "latency": accel + host,
            "energy": float(perf["energy_pj"][slot]) * 1e-12,
            "area": float(perf["area_mm2"][slot]),
            "accuracy": accuracy,
            "accelerator_seconds": accel,
            "host_seconds": host,
            "float_accuracy": self.float_accuracy(),
        }
        metrics["edp"] = metrics["energy"] * metrics["latency"]
        reason = self._violation(metrics)
        return {
            "feasible": reason is None,
            "reason": reason,
            "objectives": {name: metrics[name] for name in self.space.objectives},
            "metrics": metrics,
        }

    def _violation(self, m: dict) -> str | None:
        if not np.isfinite(m["latency"]):
            return "a layer has no tiling that fits the scratchpads"
        limits = self.space.constraints
        checks = [
            ("area_mm2_max", m["area"], "area {:.3f} mm2 > {}"),
            ("latency_ms_max", m["latency"] * 1e3, "latency {:.3f} ms > {}"),
            ("energy_mj_max", m["energy"] * 1e3, "energy {:.3f} mJ > {}"),
        ]
        for key, value, text in checks:
            if key in limits and value > limits[key]:
                return text.format(value, limits[key])
        if "accuracy_drop_max" in limits and self.float_accuracy() - m["accuracy"] > limits["accuracy_drop_max"]:
            return f"accuracy {m['accuracy']:.2f} % drops more than {limits['accuracy_drop_max']} points"
        return None


def _first_output(result) -> int:
    """The top-1 class of a model's first output (accuracy is measured on it)."""
    first = result[0] if isinstance(result, (tvm.ir.Array, list, tuple)) else result
    return int(first.numpy().reshape(-1).argmax())


def gemm_layer_names(model, input_shapes: dict | None = None, input_values: dict | None = None) -> list[str]:
    """Names of a model's GEMM layers (what compression configs refer to)."""
    imported = model if isinstance(model, ImportedModel) else import_onnx(model, input_shapes, input_values)
    return [n.name for n in extract_graph(imported).gemm_nodes()]
