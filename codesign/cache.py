"""A content-addressed cache of costly intermediate results (calibration statistics, a model's
layer plans), shared by commands, tuning runs and concurrent processes.

An entry is a file named after the hash of everything its content depends on, the source of
codesign included, so a changed input or a new codesign never reads an old entry. Each file
starts with the SHA-256 of its payload: a truncated or corrupted entry is detected, removed and
rebuilt, never used. Entries are written beside their final name and renamed into place, so
concurrent writers and readers see a whole entry or none. When the cache grows past its size
cap, the least recently used entries go.

Where: $CODESIGN_CACHE_DIR, else $XDG_CACHE_HOME/codesign/cache, else ~/.cache/codesign/cache.
Off with --no-cache (or CODESIGN_NO_CACHE=1). Cap: $CODESIGN_CACHE_MAX_MB (default 2048).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from pathlib import Path

from codesign.errors import DeployError, UsageError
from codesign.files import write_bytes_atomic

CACHE_DIR_ENV = "CODESIGN_CACHE_DIR"
NO_CACHE_ENV = "CODESIGN_NO_CACHE"
MAX_MB_ENV = "CODESIGN_CACHE_MAX_MB"
DEFAULT_MAX_MB = 2048
DIGEST_BYTES = 32
STALE_STAGING_SECONDS = 3600  # a staging file this old belongs to a writer that was killed


def cache_directory() -> Path | None:
    """Where entries live, or None when caching is off."""
    if os.environ.get(NO_CACHE_ENV, "").strip() not in ("", "0"):
        return None
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "codesign" / "cache"


def disable() -> None:
    """Turn the cache off for this process and the processes it starts (--no-cache)."""
    os.environ[NO_CACHE_ENV] = "1"


@functools.cache
def source_digest() -> str:
    """SHA-256 of codesign's own source: an entry written by other code is never read."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def entry_key(kind: str, parts: dict) -> str:
    """The name of an entry of `kind` whose content depends on exactly `parts` (JSON-serialisable)."""
    text = json.dumps({"kind": kind, "codesign": source_digest(), **parts}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:40]}"


def load(key: str) -> bytes | None:
    """The payload stored under `key`, or None (missing, cache off, or damaged: then removed)."""
    path = _entry_path(key)
    if path is None:
        return None
    _max_bytes()  # a bad cap is reported before the work whose result would be stored
    try:
        data = path.read_bytes()
    except OSError:
        return None
    payload = data[DIGEST_BYTES:]
    if len(data) < DIGEST_BYTES or hashlib.sha256(payload).digest() != data[:DIGEST_BYTES]:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: evicted last
    return payload


def store(key: str, payload: bytes) -> None:
    """Store `payload` under `key`; a cache that cannot be written is skipped, never an error."""
    path = _entry_path(key)
    if path is None:
        return
    max_bytes = _max_bytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, hashlib.sha256(payload).digest() + payload)
        evict(path.parent, max_bytes)
    except (OSError, DeployError):
        pass


def evict(directory: Path, max_bytes: int) -> None:
    """Remove the least recently used entries until the directory holds at most `max_bytes`, and
    what killed writers left half-written (staging files older than an hour)."""
    entries = []
    for path in directory.iterdir():
        with contextlib.suppress(OSError):
            stat = path.stat()
            if path.name.startswith(".") and stat.st_mtime < time.time() - STALE_STAGING_SECONDS:
                path.unlink()
            elif not path.name.startswith("."):
                entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size


def _entry_path(key: str) -> Path | None:
    directory = cache_directory()
    return None if directory is None else directory / key


def _max_bytes() -> int:
    value = os.environ.get(MAX_MB_ENV, "").strip() or str(DEFAULT_MAX_MB)
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = math.nan
    if not (math.isfinite(megabytes) and megabytes >= 0):
        raise UsageError(f"{MAX_MB_ENV}={value!r}: expected a size in MB (0 or more)")
    return int(megabytes * (1 << 20))
