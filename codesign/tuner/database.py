"""The tuning database: one JSON line per finished evaluation, appended and flushed to disk as
it completes, so a killed run (even kill -9) loses nothing finished. A line cut short by the
kill is ignored on load."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


class Database:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        """A kill mid-write leaves a last line without its newline: cut it before appending."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as out:
                out.truncate(data.rfind(b"\n") + 1)

    def load(self) -> list[Record]:
        if not self.path.exists():
            return []
        records: dict[int, Record] = {}
        with self.path.open() as lines:
            for line in lines:
                try:
                    record = Record(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue  # a line cut short by a kill
                records[record.index] = record
        return [records[i] for i in sorted(records)]

    def append(self, record: Record) -> None:
        with self.path.open("a") as out:
            out.write(record.to_json() + "\n")
            out.flush()
            os.fsync(out.fileno())
