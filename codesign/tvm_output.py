"""TVM's C++ log lines ("Warning: BlockBuilder destroyed ...", "Fast mode segfaults ...") are
written to file descriptor 2 directly, past `sys.stderr`. They are noise for a user, so the
stages that call into TVM run under `quiet_tvm()`; `--debug` (CODESIGN_DEBUG=1) shows them."""

from __future__ import annotations

import contextlib
import os
import sys


def debugging() -> bool:
    return os.environ.get("CODESIGN_DEBUG") == "1"


@contextlib.contextmanager
def quiet_tvm():
    if debugging():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
