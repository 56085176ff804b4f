"""Executors: where evaluations run. Each yields (index, config, result) as evaluations finish,
so the tuner records every result the moment it exists.

- serial: in this process;
- processes: `--jobs N` local worker processes, each with its own evaluator;
- ray: the same workers as Ray actors, on a local instance or a cluster (`--address`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing

from codesign.tuner.evaluator import Evaluator
from codesign.tuner.space import load_space


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
        )


class SerialExecutor:
    name = "serial"

    def __init__(self, spec: EvaluatorSpec, evaluator: Evaluator | None = None):
        self._owned = evaluator is None  # an evaluator passed in is its owner's to close
        self.evaluator = evaluator or spec.build()

    def run(self, tasks):
        for index, config in tasks:
            yield index, config, self.evaluator.evaluate(config)

    def close(self) -> None:
        if self._owned:
            self.evaluator.close()


_WORKER: Evaluator | None = None


def _start_worker(spec: EvaluatorSpec) -> None:
    global _WORKER
    _WORKER = spec.build()


def _evaluate(config: dict) -> dict:
    return _WORKER.evaluate(config)


class ProcessExecutor:
    name = "processes"

    def __init__(self, spec: EvaluatorSpec, jobs: int):
        # Spawned, not forked: a fork copies TVM's running thread pool, which then spins.
        context = multiprocessing.get_context("spawn")
        self.pool = concurrent.futures.ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_start_worker, initargs=(spec,)
        )

    def run(self, tasks):
        futures = {self.pool.submit(_evaluate, config): (index, config) for index, config in tasks}
        for future in concurrent.futures.as_completed(futures):
            index, config = futures[future]
            yield index, config, future.result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


class RayExecutor:
    name = "ray"

    def __init__(self, spec: EvaluatorSpec, workers: int, address: str | None = None):
        import ray

        self.ray = ray
        if not ray.is_initialized():
            kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
            ray.init(**kwargs, log_to_driver=False)

        @ray.remote(num_cpus=1)
        class Worker:
            def __init__(self, spec):
                self.evaluator = spec.build()

            def evaluate(self, config):
                return self.evaluator.evaluate(config)

        self.workers = [Worker.remote(spec) for _ in range(workers)]

    def run(self, tasks):
        pending = {}
        for slot, (index, config) in enumerate(tasks):
            pending[self.workers[slot % len(self.workers)].evaluate.remote(config)] = (index, config)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            index, config = pending.pop(done[0])
            yield index, config, self.ray.get(done[0])

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)


def make_executor(kind: str, spec: EvaluatorSpec, jobs: int, address: str | None = None):
    if kind == "ray":
        return RayExecutor(spec, max(jobs, 1), address)
    if jobs > 1:
        return ProcessExecutor(spec, jobs)
    return SerialExecutor(spec)
