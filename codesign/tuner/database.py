"""The tuning database: one JSON line per finished evaluation, appended and flushed to disk as
it completes, so a killed run (even kill -9) loses nothing finished.

Reading never writes: a report taken during a live run must not touch the line being written.
A last line without its newline (cut short by a kill, or still being written) is ignored on
load; the writer (the tuner, holding the run's lock) cuts it before its first append. A
corrupted line elsewhere is skipped with a warning naming its line, and the file is left as it
is. A line that is JSON but not a record (a field missing or of the wrong type) is an error
naming the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from codesign.errors import CodesignError, UsageError


@dataclasses.dataclass
class Record:
    index: int  # position in the run: batch * batch_size + slot
    batch: int
    config: dict
    feasible: bool
    objectives: dict
    metrics: dict
    reason: str | None
    seconds: float
    seed: int
    strategy: str
    # The evaluated design (`Design.to_dict()`: hardware, compression, schedule); None for a
    # configuration whose hardware is invalid, and in databases written before designs were.
    design: dict | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Record field -> (check, what it must be)
_FIELDS: dict[str, tuple[Callable, str]] = {
    "index": (_count, "an integer >= 0"),
    "batch": (_count, "an integer >= 0"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "feasible": (lambda v: isinstance(v, bool), "true or false"),
    "objectives": (lambda v: isinstance(v, dict), "an object"),
    "metrics": (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()), "an object of numbers"),
    "reason": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "seconds": (_number, "a number"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "strategy": (lambda v: isinstance(v, str), "a string"),
}
# Fields a record may leave out (older databases have none of them)
_OPTIONAL_FIELDS: dict[str, tuple[Callable, str]] = {
    "design": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


def print_warning(message: str) -> None:
    print(f"codesign: warning: {message}", file=sys.stderr)


class Database:
    def __init__(self, path: str | Path, warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.warn = warn or print_warning
        self._repaired = False  # the torn last line, if any, is cut before the first append
        self._warned: set[int] = set()  # corrupted lines already reported

    def load(self, metrics: tuple[str, ...] = (), knobs: tuple[str, ...] = ()) -> list[Record]:
        """The records, the last of each index. Every record that has metrics (every feasible
        one must) holds each of `metrics`; every configuration sets each of `knobs`."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except IsADirectoryError as err:
            raise UsageError(f"{self.path}: is a directory, not a tuning database") from err
        except OSError as err:
            raise UsageError(f"{self.path}: cannot read the tuning database ({err.strerror})") from err
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: nothing, or a line a kill cut short (or being written)
        records: dict[int, Record] = {}
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except (ValueError, RecursionError):  # also undecodable bytes, absurd nesting or numbers
                if number not in self._warned:
                    self._warned.add(number)
                    self.warn(f"{self.path}, line {number}: not a JSON record (corrupted); skipped, file left as it is")
                continue
            record = _record(document, f"{self.path}, line {number}", metrics, knobs)
            records[record.index] = record
        return [records[i] for i in sorted(records)]

    def repair(self) -> None:
        """Cut a last line without its newline (what a kill mid-write leaves). Only the writer
        calls this, before appending."""
        self._repaired = True
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as err:
            raise UsageError(f"{self.path}: cannot read the tuning database ({err.strerror})") from err
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as out:
                out.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Record) -> None:
        self.append_many([record])

    def append_many(self, records: list[Record]) -> None:
        """Append records in one write, so a kill leaves all of them or none (a cut last line)."""
        if not self._repaired:
            self.repair()
        text = "".join(record.to_json() + "\n" for record in records).encode()
        try:
            with self.path.open("ab", buffering=0) as out:
                written = 0
                while written < len(text):
                    written += out.write(text[written:])
                os.fsync(out.fileno())
        except OSError as err:
            indices = ", ".join(str(r.index) for r in records)
            raise CodesignError(f"{self.path}: cannot record evaluation {indices} ({err.strerror})") from err


def _record(document, where: str, metrics: tuple[str, ...], knobs: tuple[str, ...]) -> Record:
    if not isinstance(document, dict):
        raise UsageError(f"{where}: expected a JSON object (a tuning record), got {type(document).__name__}")
    for name, (check, expected) in {**_FIELDS, **_OPTIONAL_FIELDS}.items():
        if name not in document:
            if name in _OPTIONAL_FIELDS:
                continue
            raise UsageError(f"{where}: the record has no '{name}'")
        if not check(document[name]):
            raise UsageError(f"{where}: '{name}' = {_short(document[name])} must be {expected}")
    unknown = sorted(set(document) - set(_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown field '{unknown[0]}' in the record")
    record = Record(**document)
    if record.feasible and not record.metrics:
        raise UsageError(f"{where}: a feasible record has no 'metrics'")
    if record.metrics:
        for name in metrics:
            value = record.metrics.get(name)
            if value is None:
                raise UsageError(f"{where}: 'metrics' has no '{name}'")
            if record.feasible and not _finite(value):
                raise UsageError(f"{where}: 'metrics.{name}' = {value} in a feasible record")
    for knob in knobs:
        if knob not in record.config:
            raise UsageError(f"{where}: 'config' has no '{knob}' (a record of another search space?)")
    return record


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
