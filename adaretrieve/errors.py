"""One exception type for mistakes a user can fix: bad sizes, bad files, mismatched indexes.

The CLI prints its message as one line on stderr and exits with status 2; library users catch it
like any ValueError.

Readers raise AdaError themselves where they know the file and line. ``describe`` is the CLI's last
resort for the classes of failure that a bad input causes but that surface from deeper down
(a decoder, gzip, the OS, faiss, numpy): it turns them into one line, and returns None for
anything else, which is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import zlib


class AdaError(ValueError):
    """An input or configuration error, with a message that names the rule and the bad value."""


class IndexDamaged(AdaError):
    """A file of an opened index is missing or unreadable. To the CLI a bad input like any other; to a
    server the fault is its own, not the request's (HTTP 503, /health not ok)."""


def _first_line(e: BaseException, limit: int = 200) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


_WHY = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large: a file-size limit (ulimit -f) was reached"}


def io_reason(e: BaseException) -> str | None:
    """Why a write failed, in words, for the OS errors a full disk or a limit causes, including the two
    that carry no errno: numpy's short write ('38400 requested and 25568 written') and safetensors'
    SafetensorError ('... I/O error: File too large (os error 27)'). None for anything else."""
    if isinstance(e, OSError) and e.errno is not None:
        return _WHY.get(e.errno, e.strerror or _first_line(e))
    m = re.search(r"(\d+) requested and (\d+) written", str(e))
    if isinstance(e, OSError) and m:
        return (f"a write was cut short ({m.group(1)} bytes requested, {m.group(2)} written): "
                "the disk is full or a file-size limit (ulimit -f) was reached")
    m = re.search(r"os error (\d+)", str(e))
    if type(e).__name__ == "SafetensorError" and m:
        return _WHY.get(int(m.group(1)), os.strerror(int(m.group(1))))
    if isinstance(e, (OSError, RuntimeError)):  # faiss' "write error in ...: 27 (File too large)" and the like
        for code, why in _WHY.items():
            if os.strerror(code) in str(e):
                return why
    return None


def describe(e: BaseException) -> str | None:
    """One line for a failure caused by a bad input or environment, or None when ``e`` is a bug."""
    import gzip

    if isinstance(e, AdaError):
        return str(e)
    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text ({e.reason} at byte {e.start}); convert the file to UTF-8"
    if isinstance(e, (gzip.BadGzipFile, zlib.error)) or (isinstance(e, EOFError) and "compressed" in str(e)):
        return f"a gzip file is corrupt or truncated ({_first_line(e)})"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    if isinstance(e, OSError) and e.errno is not None:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        why = io_reason(e)
        return f"{where}: {why}" if where else str(why)
    if io_reason(e) is not None:
        return io_reason(e)
    if isinstance(e, RuntimeError) and "faiss" in str(e):
        return f"faiss could not read or use an index file: {_first_line(e)}"
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            return f"not valid YAML ({_first_line(e)})"
    except ImportError:
        pass
    return None
