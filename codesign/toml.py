"""TOML in one place: `tomllib` reads it on Python 3.11+, its backport `tomli` on 3.10 (the
same API); `tomli_w` writes it. Modules that read TOML import this one instead of `tomllib`."""

from __future__ import annotations

import sys

from tomli_w import dump, dumps

if sys.version_info >= (3, 11):
    from tomllib import TOMLDecodeError, load, loads
else:
    from tomli import TOMLDecodeError, load, loads

__all__ = ["TOMLDecodeError", "dump", "dumps", "load", "loads"]
