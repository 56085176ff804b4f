"""Writing files and directories so a reader sees the old content or the new, never half of it; reading
a user's files (text, JSON, numpy data) with anything wrong reported as one line naming the file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np

from codesign.errors import DeployError, Interrupted, UsageError

# A directory OUT is staged in .OUT.tmp-PID-XXXXXXXX beside it and renamed into place; the OUT it
# replaces waits in .OUT.old-PID-XXXXXXXX/module until then. Those directories of a process that is
# gone are removed by the next write to OUT; ones without a pid (older codesign) once they are this old.
STALE_SECONDS = 3600


# A file being written by write_text_atomic: '.NAME.' and eight random characters
# (eight hex digits; older codesign used mkstemp's).
STAGED_FILE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}")


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Stage beside the destination, then rename into place (atomic on one file system); the
    staging file is removed on any failure, a signal's exception included. The staging name is
    known before the file exists, so a signal between its creation and the next statement still
    finds it to remove (mkstemp's name arrives only after the file is made)."""
    path = Path(path)
    staging = None
    try:
        staging = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        handle = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException as err:
        # FileExistsError: the random name is somebody else's file; leave it.
        if staging is not None and not isinstance(err, FileExistsError) and os.path.lexists(staging):
            os.unlink(staging)
        if isinstance(err, OSError):
            raise DeployError(f"{path}: cannot write ({err.strerror})") from err
        raise


def remove_staged_files(directory: Path) -> None:
    """Remove what write_text_atomic left in a directory this process owns (after a SIGKILL)."""
    for entry in directory.iterdir():
        if STAGED_FILE.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink()


def output_path(given: Path) -> Path:
    """OUT made absolute (so `-o .` has a name); never the current directory or one holding it."""
    out = Path(os.path.abspath(given))
    try:
        cwd = Path.cwd()
    except OSError:
        cwd = None
    if out == Path(out.anchor) or (cwd is not None and (out == cwd or out in cwd.parents)):
        raise DeployError(
            f"{given}: is the current directory or holds it; refusing to replace it with a module "
            f"(name a directory for the module, e.g. -o {given / 'module'})"
        )
    return out


def staging_directory(out: Path) -> Path:
    """A new empty directory beside OUT (.OUT.tmp-PID-XXXXXXXX) with a new directory's usual mode."""
    staging = _sibling_directory(out, "tmp")
    try:
        staging.chmod(0o777 & ~_umask())
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def remove_own_staging(out: Path) -> None:
    """Remove the staging directories of OUT this process made: also one a signal interrupted
    between its creation and the caller learning its name."""
    prefix = f"{_sibling_prefix(out.name, 'tmp')}{os.getpid()}-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            if entry.name.startswith(prefix) and _MKDTEMP_TAIL.fullmatch(entry.name[len(prefix) :]):
                shutil.rmtree(entry.path, ignore_errors=True)


def replace_directory(staging: Path, out: Path) -> None:
    """Rename `staging` to OUT; an existing OUT is replaced, or put back if that fails."""
    raise_if_stopped()
    if not (out.exists() or out.is_symlink()):
        os.replace(staging, out)
        return
    with signals_deferred():  # a signal here would leave the retired directory behind
        retired = _sibling_directory(out, "old")
        try:
            os.replace(out, retired / "module")
        except BaseException:
            shutil.rmtree(retired, ignore_errors=True)
            raise
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(retired / "module", out)  # put the old OUT back
            shutil.rmtree(retired, ignore_errors=True)
            raise
        shutil.rmtree(retired, ignore_errors=True)


# What follows the prefix of a staging directory: the pid of its process (absent before module
# format 3) and tempfile's eight random characters.
_SIBLING_TAIL = re.compile(r"(?:(?P<pid>[0-9]+)-)?[a-z0-9_]{8}")
_MKDTEMP_TAIL = re.compile(r"[a-z0-9_]{8}")


def _sibling_prefix(name: str, kind: str) -> str:
    """'.NAME.tmp-' (a long NAME shortened, with a hash of it, to keep within NAME_MAX)."""
    if len(os.fsencode(name)) > 200:
        head = name[:150]
        while len(os.fsencode(head)) > 150:
            head = head[:-1]
        name = f"{head}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"
    return f".{name}.{kind}-"


def _sibling_directory(out: Path, kind: str) -> Path:
    prefix = f"{_sibling_prefix(out.name, kind)}{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))


def remove_stale_siblings(out: Path, staged: Collection[str]) -> list[Path]:
    """Remove staging / retired directories of OUT left by a process that is gone (killed with
    SIGKILL, or a crash): only directories named as `staging_directory` and `replace_directory`
    name them, holding only what they hold (a staging directory: names in `staged`), whose pid is
    not running (without a pid: older than STALE_SECONDS). A retired OUT whose replacement never
    arrived is put back as OUT. Returns what was removed."""
    removed = []
    contents = {"tmp": frozenset(staged), "old": frozenset({"module"})}
    prefixes = {kind: _sibling_prefix(out.name, kind) for kind in contents}
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return removed
    for entry in entries:
        for kind, prefix in prefixes.items():
            match = _SIBLING_TAIL.fullmatch(entry.name[len(prefix) :]) if entry.name.startswith(prefix) else None
            if match is None or not _is_stale(Path(entry.path), match["pid"]):
                continue
            path = Path(entry.path)
            try:
                if not {child.name for child in path.iterdir()} <= contents[kind]:
                    continue
                if kind == "old" and (path / "module").is_dir() and not (out.exists() or out.is_symlink()):
                    os.replace(path / "module", out)
                shutil.rmtree(path)
                removed.append(path)
            except OSError:
                continue
    return removed


def _is_stale(path: Path, pid: str | None) -> bool:
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        if pid is None:
            return time.time() - path.stat().st_mtime > STALE_SECONDS
    except OSError:
        return False
    return not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Terminated(BaseException):
    """Raised by the signal handler of `cleanup_on_signals` (a BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it)."""


@contextlib.contextmanager
def cleanup_on_signals(what: str):
    """Within: SIGTERM and SIGINT raise Terminated, so the `finally`/`except BaseException`
    cleanups of a half-written output run; the block leaves as Interrupted (one line, exit 1),
    also when a library turned the exception into its own on the way. A second signal during
    the cleanup is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped_by = _signals_received
    stopped_by.clear()

    def stop(signum, frame):
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)
        stopped_by.append(signal.Signals(signum).name)
        if not _deferring:
            raise Terminated(stopped_by[0])

    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in previous:
        signal.signal(number, stop)
    try:
        yield
        raise_if_stopped()  # a signal whose exception a library swallowed on the way
    except BaseException as err:
        if not stopped_by and not isinstance(err, KeyboardInterrupt):
            raise
        name = stopped_by[0] if stopped_by else "SIGINT"
        raise Interrupted(f"stopped by {name} while {what}; removed what was half-written") from None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        stopped_by.clear()


# The signals `cleanup_on_signals` caught; kept after a library swallowed their exception, so
# a commit point (`replace_directory`) can still refuse to publish the output.
_signals_received: list[str] = []


# Depth of `signals_deferred` blocks being run.
_deferring: list[bool] = []


def raise_if_stopped() -> None:
    if _signals_received:
        raise Terminated(_signals_received[0])


@contextlib.contextmanager
def signals_deferred():
    """Within: a signal `cleanup_on_signals` catches is recorded, not raised, so a short step
    that must not stop half-way (renaming OUT aside and the new one in, then removing the old)
    runs to its end; the signal is raised on leaving."""
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    raise_if_stopped()


# ---- reading a user's files ---------------------------------------------------------------------


@contextlib.contextmanager
def reading(path: Path, what: str):
    """OS and decoding errors while reading a user's `what` file, as one UsageError naming it."""
    try:
        yield
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such {what} file") from err
    except IsADirectoryError as err:
        raise UsageError(f"{path}: is a directory, not a {what} file") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not a text {what} file (byte {err.start} is not UTF-8)") from err
    except OSError as err:
        raise UsageError(f"{path}: cannot read the {what} file ({err.strerror or err})") from err


def parse_json(text: str, path: str | Path, error: type[Exception], what: str = ""):
    """The JSON document `text` read from `path`; a syntax error, or nesting or a number too large for
    the parser, is one `error` line naming the file (and the kind of file: `what`, e.g. "design")."""
    article, kind = ("a ", f"JSON {what} file") if what else ("", "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not {article}valid {kind} (line {err.lineno}: {err.msg})") from err
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply, or a number too long to read"
        raise error(f"{path}: not {article}readable {kind} ({reason})") from err


def open_numpy_file(path: Path, what: str, kinds: str, error: type[Exception]):
    """A user's numpy data file, never unpickled: an .npy's array or an open .npz archive. `what` names
    the file ("calibration"), `kinds` what it may be (".npy/.npz"). A missing file is a UsageError, as
    for every file the user names; anything else wrong with it is one `error` line naming the file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise UsageError(f"{path}: no such {what} file") from err
    except IsADirectoryError as err:
        raise error(f"{path}: is a directory, not a {kinds} {what} file") from err
    except ValueError as err:
        if "Object arrays" in str(err):
            raise error(f"{path}: holds an array of Python objects, not real numbers") from err
        if "pickled" in str(err):
            raise error(f"{path}: a Python pickle, not a {kinds} file of numbers") from err
        raise error(f"{path}: not a {kinds} file ({_reason(err)})") from err
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise error(f"{path}: not a {kinds} file ({_reason(err)})") from err
    except MemoryError as err:
        raise error(f"{path}: holds an array too large to load") from err


def read_array(archive, name: str, path: Path, error: type[Exception], input_dtype: str | None = None) -> np.ndarray:
    """Array `name` of an .npz archive (from open_numpy_file), checked to hold real numbers; a damaged
    member, one too large to load or one of Python objects is one `error` line naming the file and
    the array. `input_dtype`: the dtype of the model input the array feeds, named in the message."""
    try:
        array = archive[name]
    except ValueError as err:
        if "Object arrays" in str(err):
            raise error(_not_real_numbers(path, name, "Python objects", input_dtype)) from err
        raise error(f"{path}: array '{name}' cannot be read ({_reason(err)})") from err
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise error(f"{path}: array '{name}' cannot be read ({_reason(err)})") from err
    except MemoryError as err:
        raise error(f"{path}: array '{name}' is too large to load") from err
    check_real_numbers(array, name, path, error, input_dtype)
    return array


def check_real_numbers(
    array: np.ndarray, name: str, path: Path, error: type[Exception], input_dtype: str | None = None
) -> None:
    """Refuse an array of anything but booleans, integers and real floats (strings, complex numbers,
    Python objects, ...) in one `error` line naming the file and the array (and the dtype of the model
    input it feeds, if given)."""
    if array.dtype.kind not in "biuf":
        what = f"complex numbers ({array.dtype})" if array.dtype.kind == "c" else describe_dtype(array.dtype)
        raise error(_not_real_numbers(path, name, what, input_dtype))


def _not_real_numbers(path: Path, name: str, what: str, input_dtype: str | None) -> str:
    takes = f"; input '{name}' takes {input_dtype} values" if input_dtype else ""
    return f"{path}: array '{name}' holds {what}, not real numbers{takes}"


def describe_dtype(dtype: np.dtype) -> str:
    kinds = {"U": "strings", "S": "byte strings", "O": "Python objects", "V": "records", "M": "dates", "m": "durations"}
    return kinds.get(dtype.kind) or f"values of dtype {dtype}"  # numpy's '<U6' means nothing to most users


def _reason(err: BaseException) -> str:
    """The first line of an exception's message (the error stays one line), or its type if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
