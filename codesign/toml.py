"""TOML in one place: `tomllib` reads it on Python 3.11+, its backport `tomli` on 3.10 (the
same API); `tomli_w` writes it. Modules that read TOML import this one instead of `tomllib`."""

from __future__ import annotations

import sys
from pathlib import Path

from tomli_w import dump, dumps

if sys.version_info >= (3, 11):
    from tomllib import TOMLDecodeError, load, loads
else:
    from tomli import TOMLDecodeError, load, loads

__all__ = ["TOMLDecodeError", "dump", "dumps", "load", "loads", "parse_toml"]


def parse_toml(text: str, path: str | Path, error: type[Exception]) -> dict:
    """The TOML document `text` read from `path`; a syntax error, or nesting or a number too large
    for the parser, is one `error` line naming the file."""
    try:
        return loads(text)
    except TOMLDecodeError as err:
        raise error(f"{path}: not valid TOML ({err})") from err
    except (ValueError, RecursionError) as err:
        raise error(f"{path}: not readable TOML (nested too deeply, or a number too long to read)") from err
