"""Writing files so that a kill never leaves a half-written one, and making output folders.

Every file escnet writes into a run or a cache goes through :func:`atomic_write` (a temporary
file in the same folder, flushed and fsynced, then renamed over the target) or
:func:`atomic_memmap` (the same for large arrays filled in place).
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from escnet.errors import EscnetError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it to
    ``path``: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError) as err:
        # a read-only or vanished folder, or a folder where the file should go: the user's to fix
        raise EscnetError(f"{path}: cannot write it ({err.strerror}); check the folder's "
                          "permissions, or copy the run somewhere writable") from None
    except OSError as err:  # a full disk or quota, a read-only file system: the old file stays
        raise EscnetError(f"{path}: cannot write it ({err.strerror or err}); free some space or "
                          "write somewhere else; the previous version of the file is kept") from None
    except RuntimeError as err:  # torch.save reports a failed write (a full disk) this way
        if "writ" not in str(err):
            raise
        raise EscnetError(f"{path}: cannot write it (is the disk full? {str(err).splitlines()[0][:120]}); "
                          "the previous version of the file is kept") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def new_output(path: str | Path, name: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` checked as a new output file, before any work: one of ``suffixes`` (lower case,
    with the dot), not there yet (escnet never replaces a user's file), in a folder that exists
    and can be written to; ``name`` is the parameter errors name (``out``)."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise EscnetError(f"{name}={path}: give a {' or '.join(suffixes)} file name")
    if path.exists() or path.is_symlink():
        raise EscnetError(f"{name}={path}: already exists; choose another name (escnet does not "
                          "overwrite it)")
    folder = path.parent
    if not folder.is_dir():
        raise EscnetError(f"{name}={path}: folder {folder} does not exist" if not folder.exists()
                          else f"{name}={path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EscnetError(f"{name}={path}: folder {folder} cannot be written to")
    return path


def utf8_text(text: str) -> str:
    """``text`` with a file name in it that is not UTF-8 (Python holds its odd bytes as
    surrogates) written with those bytes as ``\\xNN`` escapes: text that encodes as UTF-8.
    Text without such a name is returned as it is."""
    return text.encode(errors="surrogateescape").decode(errors="backslashreplace")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8 (:func:`atomic_write`, :func:`utf8_text`): what escnet writes is always
    UTF-8 text."""
    data = utf8_text(text).encode()
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """JSON without NaN or infinities (``allow_nan=False``): what any parser accepts."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False))


@contextlib.contextmanager
def atomic_memmap(path: Path, shape: tuple[int, ...], dtype: Any = np.float32) -> Iterator[np.ndarray]:
    """A writable ``.npy`` memmap of ``shape`` under a temporary name, renamed to ``path`` when
    the block ends without an error: an interrupted fill never leaves a file that looks done."""
    partial = path.with_name(f".{path.name}.partial{os.getpid()}.npy")
    try:
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        # reserve the blocks now: a sparse file on a full disk fails later as SIGBUS, mid-fill
        with partial.open("r+b") as f:
            os.posix_fallocate(f.fileno(), 0, partial.stat().st_size)
    except OSError as err:
        partial.unlink(missing_ok=True)
        need = (np.dtype(dtype).itemsize * int(np.prod(shape))) / 2**30
        raise EscnetError(f"{path.parent}: no room for a {need:.2f} GB cache file ({err.strerror}); "
                          "free some space, or set ESCNET_CACHE (data.cache_dir) to a disk with "
                          "room") from None
    try:
        yield array
        array.flush()
        del array
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


INPUT_LIMIT = 64 << 20
"""Bytes of a text input (a config, an annotation table) read at most: a device that never
ends (``/dev/zero``) is refused, not read until memory runs out."""


def read_input(path: Path, what: str, error: type[EscnetError] = EscnetError,
               limit: int = INPUT_LIMIT) -> bytes:
    """The bytes of the input file ``path``: a regular file or a pipe (a named one, or a shell's
    ``<(...)``), refused with ``error`` in one line naming it as ``what`` ("config file") when
    it is missing, a folder, unreadable or longer than ``limit`` bytes."""
    if path.is_dir():
        raise error(f"{path}: {what} is a folder")
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read this {what} ({err.strerror})") from None
    if len(data) > limit:
        raise error(f"{path}: {what} longer than {limit >> 20} MB (a device that never ends?)")
    return data


BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                    (codecs.BOM_UTF16_BE, "utf-16"))
"""Encodings a text input may announce by its first bytes (UTF-32's before UTF-16's: its
little-endian mark begins with UTF-16's)."""


def read_text(path: Path, what: str, error: type[EscnetError] = EscnetError) -> str:
    """The text of the input file ``path`` (:func:`read_input`): UTF-8, or UTF-8, UTF-16 or
    UTF-32 with a byte-order mark (a spreadsheet's "Unicode text" is UTF-16). Another encoding
    (Latin-1, Windows-1252) is refused naming the line, not guessed: a guess would turn labels
    into other labels."""
    data = read_input(path, what, error)
    encoding = next((enc for bom, enc in BYTE_ORDER_MARKS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        where = f"line {line}: " if encoding.startswith("utf-8") else ""
        raise error(f"{path}: {where}{what} is not {encoding.upper().removesuffix('-SIG')} text "
                    f"(byte 0x{data[err.start]:02x}); save it as UTF-8") from None


def new_folder(path: str | Path, name: str) -> Path:
    """``path`` made as a new output folder, or taken if it is an empty one (escnet never writes
    among a user's files); ``name`` is the parameter errors name (``out``)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "is not empty" if path.is_dir() else "is a file, not a folder"
        raise EscnetError(f"{name}={path}: exists and {what}; choose a new folder (escnet does not "
                          "overwrite what is there)")
    return make_output_dir(path)


def command_folder(path: str | Path, name: str, command: str) -> Path:
    """``path`` as the output folder of a ``command`` that writes the same file names on every
    call (``compare``, ``augment-preview``): made new, or taken when it is empty or was made by
    that command (its marker file ``.escnet-COMMAND``), so that a second call replaces the first
    one's files and never a user's; ``name`` is the parameter errors name (``out``)."""
    path = Path(path)
    marker = path / f".escnet-{command}"
    if path.is_dir() and not marker.exists() and any(path.iterdir()):
        raise EscnetError(f"{name}={path}: holds files escnet {command} did not write; choose a new "
                          "or empty folder (escnet does not overwrite what is there)")
    out = make_output_dir(path)
    try:
        marker.touch()
    except OSError as err:
        raise EscnetError(f"{path}: cannot write in this output folder ({err.strerror})") from None
    return out


def make_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents), or raise :class:`EscnetError` saying
    why it cannot be: a file of that name, no permission, a full disk."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EscnetError(f"{path}: exists and is not a folder; choose another output folder") from None
    except OSError as err:
        raise EscnetError(f"{path}: cannot create this output folder ({err.strerror})") from None
    return path


def hold_lock(path: Path, doing: str) -> IO[str]:
    """Take the lock file ``path`` (an advisory ``fcntl`` lock, released when the process ends
    however it ends) and write in it who holds it; while another process holds it, refuse at
    once, naming that process: ``{folder}: {doing} by {holder}``. Close the handle to release."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise EscnetError(f"{path.parent}: {doing} by {holder}; wait for it to end (or stop it), then "
                          "run this again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle
