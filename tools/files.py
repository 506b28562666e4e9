"""Reading files named by a user: regular files only, never more than a bound.

A size from ``stat`` is no bound (``/dev/zero`` and ``/proc`` files report 0) and a FIFO
blocks the reader forever, so the file's type is checked first and at most ``max_bytes`` + 1
bytes are ever read.
"""

from __future__ import annotations

import stat
from pathlib import Path


class InputFileError(ValueError):
    """A file that cannot be read as input; the message is meant for the user."""


def read_bounded_text(path: str | Path, max_bytes: int) -> str:
    """UTF-8 text of a regular file of at most ``max_bytes`` (undecodable bytes replaced)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputFileError("not a regular file (a device, FIFO, socket or folder)")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputFileError(f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise InputFileError(f"file too large (over {max_bytes:,} bytes)")
    return data.decode("utf-8", errors="replace")
