"""Writing files so a reader sees the old content or the new, never half of it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from codesign.errors import DeployError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Stage beside the destination, then rename into place (atomic on one file system)."""
    path = Path(path)
    staging = None
    try:
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp's files are private; give the usual mode
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(staging, path)
    except OSError as err:
        if staging is not None and os.path.exists(staging):
            os.unlink(staging)
        raise DeployError(f"{path}: cannot write ({err.strerror})") from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
