"""Executors: where evaluations run. Each takes a batch of tasks and yields (index, config, result)
for each, in the batch's order, once the batch is evaluated.

A batch is evaluated by the tuner process's `BatchEvaluator`: grouped by compression profile, the
new profiles measured (compiled and run on the data, the slow part), then every design costed in
one vectorised call. Where the profiles are measured:

- serial: in this process;
- processes: `--jobs N` local worker processes, each with its own evaluator, a profile each;
- ray: the same workers as Ray actors, on a local instance or a cluster (`--address`).

After the run, `write_front` simulates the best designs layer by layer into the run directory,
and `write_sequential` writes their sequential counterparts (`codesign.tuner.front`), from the
profiles the executor measured.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
from pathlib import Path

from codesign.tuner.batch_evaluator import BatchEvaluator
from codesign.tuner.database import Record
from codesign.tuner.evaluator import Evaluator
from codesign.tuner.front import write_front, write_sequential
from codesign.tuner.space import SearchSpace, load_space


@dataclasses.dataclass(frozen=True)
class EvaluatorSpec:
    """Everything a worker needs to build its own evaluator (picklable)."""

    model: str
    space: str
    data: str
    input_shapes: tuple = ()
    calibration_samples: int = 64
    eval_samples: int | None = None
    input_values: tuple = ()  # (name, (value, ...)) inputs frozen to constants
    workdir: str | None = None  # temporary files (a copy of calibration data) go here: the run's own
    calibration_data: str | None = None  # a .npz of calibration inputs; None: the first samples of `data`

    def build(self) -> Evaluator:
        return Evaluator(
            self.model,
            load_space(self.space),
            self.data,
            dict(self.input_shapes) or None,
            self.calibration_samples,
            self.eval_samples,
            {name: list(values) for name, values in self.input_values} or None,
            self.workdir,
            self.calibration_data,
        )


class _BatchExecutor:
    """What the executors share: a batch of tasks evaluated by the tuner process's `batches`
    (whose `measure` is where the executor measures profiles), and the front written from the
    profiles they hold. `write_front` is called after `close`, so a profile not measured here (a
    resumed run's best design, from an earlier process) is measured by an evaluator built here."""

    spec: EvaluatorSpec | None
    batches: BatchEvaluator
    closed = False  # whether `batches.measure` can no longer measure (workers, temporary files gone)

    def run(self, tasks):
        tasks = list(tasks)
        results = self.batches.evaluate_many([config for _, config in tasks])
        for (index, config), result in zip(tasks, results):
            yield index, config, result

    def write_front(self, run_dir: Path, space: SearchSpace, records: list[Record]) -> list[Path]:
        """RUN/front/: the best designs simulated, and their sequential counterparts."""
        if not self.closed:
            return self._write_front(run_dir, space, records)
        measure_here = _MeasureHere(self.spec)
        own_measure, self.batches.measure = self.batches.measure, measure_here
        try:
            return self._write_front(run_dir, space, records)
        finally:
            self.batches.measure = own_measure
            measure_here.close()

    def _write_front(self, run_dir: Path, space: SearchSpace, records: list[Record]) -> list[Path]:
        written = write_front(run_dir, space, records, self.batches)
        return [*written, write_sequential(run_dir, space, records, self.batches)]


class _MeasureHere:
    """Measures profiles with an evaluator of this process, built on first use."""

    def __init__(self, spec: EvaluatorSpec | None):
        self.spec, self.evaluator = spec, None

    def __call__(self, requests: dict) -> dict:
        if self.evaluator is None:
            self.evaluator = self.spec.build()
        return self.evaluator.measure_profiles(requests)

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()


class SerialExecutor(_BatchExecutor):
    name = "serial"

    def __init__(self, spec: EvaluatorSpec | None, evaluator: Evaluator | None = None):
        self._owned = evaluator is None  # an evaluator passed in is its owner's to close
        self.spec = spec
        self.evaluator = evaluator or spec.build()
        self.batches = self.evaluator.batches

    def close(self) -> None:
        if self._owned:
            self.evaluator.close()
            self.closed = True


_WORKER: Evaluator | None = None


def _start_worker(spec: EvaluatorSpec) -> None:
    global _WORKER
    _WORKER = spec.build()


def _worker_facts() -> tuple[list[str], list[str], list[str], float]:
    """What the tuner process needs from a worker's evaluator: the GEMM layer names, the prunable
    ones, the grouped convs, the float accuracy."""
    return _WORKER.layers, _WORKER.prunable, _WORKER.grouped_convs, _WORKER.float_accuracy()


def _batch_evaluator(spec: EvaluatorSpec, facts: tuple, measure) -> BatchEvaluator:
    """The tuner process's batch evaluator, from a worker's facts (`_worker_facts`)."""
    layers, prunable, grouped_convs, float_accuracy = facts
    space = load_space(spec.space).for_layers(layers, prunable, grouped_convs)
    return BatchEvaluator(space, layers, float_accuracy, measure)


def _measure_profile(compression, multiplier: bool):
    return _WORKER.measure_profile(compression, multiplier)


class ProcessExecutor(_BatchExecutor):
    name = "processes"

    def __init__(self, spec: EvaluatorSpec, jobs: int):
        self.spec = spec
        # Spawned, not forked: a fork copies TVM's running thread pool, which then spins.
        context = multiprocessing.get_context("spawn")
        self.pool = concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_start_worker, initargs=(spec,)
        )
        try:
            facts = self.pool.submit(_worker_facts).result()
        except BaseException:  # a worker that cannot build its evaluator: no pool left behind
            self.close()
            raise
        self.batches = _batch_evaluator(spec, facts, self._measure)

    def _measure(self, requests: dict) -> dict:
        """The profiles, one per request, spread over the workers as they free up."""
        futures = {self.pool.submit(_measure_profile, *request): key for key, request in requests.items()}
        return {futures[future]: future.result() for future in concurrent.futures.as_completed(futures)}

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.closed = True


class RayExecutor(_BatchExecutor):
    name = "ray"

    def __init__(self, spec: EvaluatorSpec, workers: int, address: str | None = None):
        import ray

        self.ray, self.spec = ray, spec
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
            ray.init(**kwargs, log_to_driver=False)

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self, spec):
                self.evaluator = spec.build()

            def facts(self):
                evaluator = self.evaluator
                return evaluator.layers, evaluator.prunable, evaluator.grouped_convs, evaluator.float_accuracy()

            def measure_profile(self, compression, multiplier):
                return self.evaluator.measure_profile(compression, multiplier)

        self.workers = [Worker.remote(spec) for _ in range(workers)]
        try:
            facts = ray.get(self.workers[0].facts.remote())
        except BaseException:  # a worker that cannot build its evaluator: no actors left behind
            self.close()
            raise
        self.batches = _batch_evaluator(spec, facts, self._measure)

    def _measure(self, requests: dict) -> dict:
        """The profiles, one per request, dealt round the workers."""
        keys = list(requests)
        refs = [
            self.workers[slot % len(self.workers)].measure_profile.remote(*requests[key])
            for slot, key in enumerate(keys)
        ]
        return dict(zip(keys, self.ray.get(refs)))

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)
        self.closed = True


def make_executor(kind: str, spec: EvaluatorSpec, jobs: int, address: str | None = None):
    if kind == "ray":
        return RayExecutor(spec, max(jobs, 1), address)
    if jobs > 1:
        return ProcessExecutor(spec, jobs)
    return SerialExecutor(spec)
