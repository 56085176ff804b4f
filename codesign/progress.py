"""Progress of long work (stage, item i of N), reported from deep inside the pipeline without
passing a reporter through every function: the front end installs one with `reporting`, the
stages call `stage` and `advance`, which do nothing when none is installed."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Protocol


class ProgressReporter(Protocol):
    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self) -> None: ...


_reporter: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar("progress", default=None)


@contextlib.contextmanager
def reporting(reporter: ProgressReporter | None):
    token = _reporter.set(reporter)
    try:
        yield reporter
    finally:
        _reporter.reset(token)


def stage(name: str, total: int | None = None) -> None:
    """A stage starts: `total` items (calibration samples, layers) or None when not counted."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter.stage(name, total)


def advance() -> None:
    """One item of the current stage is done."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter.advance()
