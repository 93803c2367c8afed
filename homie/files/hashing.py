"""The one hash helper: SHA-256 of what an fd holds, read 1 MiB at a time.

Everything that hashes a file (the submitter's hash cache, result files,
checkpoint snapshots) reads it through here; the transfer engine hashes the
bytes it moves on its own thread (homie.files.engine) with the same hashlib.
"""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20  # also the unit of a checkpoint's change: see homie.checkpoints


def read_at(fd: int, view: memoryview, offset: int) -> int:
    """Fill view from fd at offset (no seek, so an fd can be shared); the number of bytes read."""
    preadv = getattr(os, "preadv", None)
    if preadv is not None:
        return preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def sha256_fd(fd: int, *, offset: int = 0, size: int | None = None, chunk: int = 0) -> tuple[int, str, list[str]]:
    """(bytes read, hex sha256 of them, hex sha256 of each `chunk`-sized piece if chunk > 0).

    Reads from offset until `size` bytes or the end of the file, whichever
    comes first: a caller that expects `size` compares what was read."""
    h = hashlib.sha256()
    pieces: list[str] = []
    step = chunk or CHUNK
    buf = bytearray(step)
    view = memoryview(buf)
    total = 0
    while size is None or total < size:
        want = step if size is None else min(step, size - total)
        n = read_at(fd, view[:want], offset + total)
        if not n:
            break
        h.update(view[:n])
        if chunk:
            pieces.append(hashlib.sha256(view[:n]).hexdigest())
        total += n
    return total, h.hexdigest(), pieces


def sha256_path(path: str | os.PathLike) -> tuple[int, str]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size, sha, _ = sha256_fd(fd)
    finally:
        os.close(fd)
    return size, sha
