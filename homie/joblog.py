"""A job's output log: stdout and stderr chunks in the order they were read,
with byte offsets, so a reconnecting submitter (or `homie attach`) resumes
exactly where it left off and sees each byte once.

Record: `!BI` (stream, length) + bytes. The offset of a chunk is the file
position just past its record.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import BinaryIO

REC = struct.Struct("!BI")
MAX_CHUNK = 256 * 1024


class JobLog:
    """ended: the log of a job that is over (a submitting daemon keeps every job it ever
    sent): no descriptor is held for it, and its file is not scanned, since nothing
    was being appended to it. close() gives the descriptor back the same way; a log
    appended to again later opens one again (never through a symlink); read() only
    ever reads through the descriptor held (read_records reads by path)."""

    def __init__(self, path: os.PathLike | str, ended: bool = False):
        self.path = os.fspath(path)
        self.cond = threading.Condition()
        self._f: BinaryIO | None = None
        if ended:
            try:
                self.end = os.lstat(self.path).st_size
            except FileNotFoundError:
                self.end = 0
            self.finished = True
            return
        self._file()
        self.end = self._valid_end()
        self.finished = False

    def _file(self) -> BinaryIO:
        """The descriptor appends and reads go through, opened if the log has none."""
        if self._f is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._f = os.fdopen(fd, "ab", buffering=0)
        return self._f

    def _valid_end(self) -> int:
        # A crash mid-write can leave a torn last record: cut it so offsets stay aligned.
        size = os.path.getsize(self.path)
        pos = 0
        with open(self.path, "rb") as f:
            while pos + REC.size <= size:
                f.seek(pos)
                _, n = REC.unpack(f.read(REC.size))
                if pos + REC.size + n > size:
                    break
                pos += REC.size + n
        if pos != size:
            os.truncate(self.path, pos)
        return pos

    def append(self, stream: int, data: bytes) -> int:
        with self.cond:
            for i in range(0, len(data), MAX_CHUNK):
                piece = data[i : i + MAX_CHUNK]
                self._file().write(REC.pack(stream, len(piece)) + piece)
                self.end += REC.size + len(piece)
            self.cond.notify_all()
            return self.end

    def truncate(self, end: int) -> None:
        """Cut the log back to `end`, a record boundary (appends go on from there)."""
        with self.cond:
            if end < self.end:
                os.truncate(self.path, end)
                self.end = end

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def reopen(self) -> None:
        """The job runs again (another attempt): its output goes on in this log."""
        with self.cond:
            self.finished = False

    def close(self) -> None:
        """Finished, and its descriptor given back (read_records reads it by path)."""
        with self.cond:
            self.finished = True
            self.cond.notify_all()
            f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def read(self, offset: int = 0, max_bytes: int = 1 << 20, until: int | None = None):
        """Records from `offset`, read through the descriptor this log holds
        (never reopened by path), and never past what this log wrote."""
        with self.cond:
            end = self.end if until is None else min(until, self.end)
            if self._f is None:
                return []  # closed (the job was dropped): nothing is read by path here
            # A descriptor of our own: close() on another thread must not free the number
            # for the next file the daemon opens (another job's log) while we read.
            fd = os.dup(self._f.fileno())
        try:
            return _parse(lambda pos, n: os.pread(fd, n, pos), offset, end, max_bytes)
        finally:
            os.close(fd)

    @property
    def closed(self) -> bool:
        """Its descriptor given back (close()): read() has nothing more to give."""
        return self._f is None

    def wait(self, offset: int, timeout: float) -> bool:
        """Wait until there is data past `offset` or the log is finished."""
        with self.cond:
            if self.end <= offset and not self.finished:
                self.cond.wait(timeout)
            return self.end > offset


def _parse(pread, offset: int, end: int | None, max_bytes: int):
    """(stream, end_offset, data) records in [offset, end). The budget counts
    headers too: a log of empty records (or one swapped for /dev/zero) ends a
    read at max_bytes instead of growing a list without bound."""
    out = []
    pos = offset
    while pos - offset < max_bytes:
        if end is not None and pos + REC.size > end:
            break
        hdr = pread(pos, REC.size)
        if len(hdr) < REC.size:
            break
        stream, n = REC.unpack(hdr)
        if end is not None and pos + REC.size + n > end:
            break
        data = pread(pos + REC.size, n) if n else b""
        if len(data) < n:
            break
        pos += REC.size + n
        out.append((stream, pos, data))
    return out


def read_records(path: str, offset: int = 0, max_bytes: int = 1 << 20, until: int | None = None):
    """(stream, end_offset, data) records from `offset`, at most ~max_bytes,
    none ending past `until`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return []
    try:
        return _parse(lambda pos, n: os.pread(fd, n, pos), offset, until, max_bytes)
    finally:
        os.close(fd)
