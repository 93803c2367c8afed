"""The worker side: `Watcher` decides when a running job's checkpoint paths hold
a new complete checkpoint, and `take` holds it as a `Snapshot` (open descriptors)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from homie.checkpoints.rules import (
    CHUNK,
    MAX_BYTES,
    MAX_FILES,
    SETTLE,
    SETTLE_TRIES,
    CkptFile,
    Signature,
    is_temporary,
    under,
)
from homie.errors import HomieError, ManifestError
from homie.files.hashing import sha256_fd
from homie.files.manifest import check_relpath
from homie.worker import jobdir


class Snapshot:
    """One complete checkpoint, held by open descriptors until the next replaces it."""

    def __init__(self, seq: int, at: float, files_: list[CkptFile], fds: dict[str, int]):
        self.seq = seq
        self.at = at
        self.files = files_
        self._fds = fds
        self._where: dict[str, tuple[str, int, int]] = {}  # chunk sha -> (path, offset, length)
        for f in files_:
            for i, sha in enumerate(f.chunks):
                self._where.setdefault(sha, (f.path, i * CHUNK, min(CHUNK, f.size - i * CHUNK)))
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def manifest(self) -> list[dict]:
        return [f.to_dict() for f in self.files]

    def has_chunk(self, sha: str) -> bool:
        return sha in self._where

    def where(self, sha: str) -> tuple[str, int, int, int]:
        """(path, fd, offset, length) of a chunk: what the transfer engine reads."""
        path, offset, length = self._where[sha]
        return path, self._fds[path], offset, length

    def read_chunk(self, sha: str) -> bytes:
        """The chunk's bytes, re-checked: a job that rewrote a file in place
        (instead of renaming a new one over it) changed the snapshot."""
        path, fd, offset, length = self.where(sha)
        data = os.pread(fd, length, offset)
        if len(data) != length or hashlib.sha256(data).hexdigest() != sha:
            raise HomieError(changed_message(path))
        return data

    def __enter__(self) -> Snapshot:
        with self._lock:
            if self._closing:
                raise HomieError("that checkpoint was replaced by a newer one")
            self._users += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._close_fds()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._close_fds()

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


def signature(root: Path, prefixes: list[str]) -> Signature:
    """The checkpoint files under root as they are now (walked by descriptor, links never followed)."""
    def keep(rel: str, is_dir: bool) -> bool:  # only the checkpoint paths are walked, not the whole job directory
        return under(rel, prefixes) or (is_dir and any(p.startswith(rel + "/") for p in prefixes))

    try:
        found = jobdir.scan(root, keep, limit=4 * MAX_FILES)
    except jobdir.TooMany:
        raise HomieError(f"a checkpoint of more than {MAX_FILES} files, or of more than {4 * MAX_FILES}"
                         " entries (directories and links count), is not supported") from None
    return {rel: sig for rel, sig in found.items() if not is_temporary(rel) and sendable(rel)}


def sendable(rel: str) -> bool:
    """A name no manifest takes (a newline, invalid UTF-8) is left out, not the whole checkpoint with it."""
    try:
        check_relpath(rel)
    except ManifestError:
        return False
    return True


def take(root: Path, sig: Signature, seq: int, at: float, uid: int | None = None,
         inputs: Collection[int] = ()) -> Snapshot | None:
    """Open and hash every file of sig; None if any changed on the way (it is taken later)
    or is a file that uid (the job's) does not own, other than the job's own inputs
    (jobdir.not_the_jobs: a restored checkpoint is one)."""
    fds: dict[str, int] = {}
    out: list[CkptFile] = []
    try:
        for rel in sorted(sig):
            fd = jobdir.open_beneath(root, rel)
            fds[rel] = fd
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != sig[rel]:
                raise _Changed
            if uid is not None and jobdir.not_the_jobs(st, uid, inputs):
                raise ManifestError(f"checkpoint file {rel} is a file the job does not own")
        for rel in sorted(sig):
            fd = fds[rel]
            size = sig[rel][0]
            got, whole, chunks = sha256_fd(fd, size=size, chunk=CHUNK)
            if got != size:
                raise _Changed
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != sig[rel][:2]:
                raise _Changed
            mode = 0o755 if st.st_mode & 0o100 else 0o644
            out.append(CkptFile(rel, mode, size, whole, chunks))
    except (_Changed, OSError, ManifestError):
        for fd in fds.values():
            os.close(fd)
        return None
    return Snapshot(seq, at, out, fds)


class _Changed(Exception):
    pass


def changed_message(path: str) -> str:
    return (f"checkpoint file {path} changed while it was being sent (write a new file and"
            " rename it into place instead of rewriting it)")


class Watcher:
    """Decides when a running job's checkpoint paths hold a new checkpoint to take.

    poll() is called about every second by the worker; the clock is injectable
    so the policy (settle, interval) is tested without sleeping."""

    def __init__(self, root: Path, paths: list[str], interval: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 scan: Callable[[Path, list[str]], Signature] = signature,
                 taker: Callable[..., Snapshot | None] = take, sleep: Callable[[float], None] = time.sleep):
        self.root = root
        self.paths = paths
        self.interval = interval
        self._clock = clock
        self._wall = wall
        self._scan = scan
        self._take = taker
        self._sleep = sleep
        self._taken: Signature | None = None
        self._taken_at: float | None = None
        self.snapshot: Snapshot | None = None
        self.seq = 0
        self._closed = False
        self.lock = threading.Lock()
        self._poll_lock = threading.Lock()  # the lending loop and the job's end may both poll

    def prime(self) -> None:
        """What the paths hold now (a restored checkpoint) does not count as new."""
        with self._poll_lock:
            try:
                self._taken = self._scan(self.root, self.paths) or None
            except HomieError:
                self._taken = None  # too many files: poll() says so

    def poll(self, final: bool = False) -> bool:
        """Take a new snapshot if one is due; True if it did. final: the job's
        processes are gone (it exited or was evicted), so nothing can change
        any more: no settling, no interval."""
        with self._poll_lock:
            return self._poll(final)

    def _poll(self, final: bool) -> bool:
        now = self._clock()
        sig = self._checked(self._scan(self.root, self.paths))
        if not sig or sig == self._taken:
            return False
        if not final:
            if self._taken_at is not None and now - self._taken_at < self.interval:
                return False
            # Still being written (several files, or one rewritten in place)? Wait for a
            # quiet pause, from the newest state; a job writing through every pause is
            # tried again at the next poll, and so is one whose scans are slow (a huge
            # tree beside its checkpoint): one poll is not let grow past SETTLE_TRIES pauses.
            for _ in range(SETTLE_TRIES):
                self._sleep(SETTLE)
                again = self._checked(self._scan(self.root, self.paths))
                if again == sig:
                    break
                if not again or again == self._taken or self._clock() - now >= SETTLE_TRIES * SETTLE:
                    return False
                sig = again
            else:
                return False
        snap = self._take(self.root, sig, self.seq + 1, self._wall())
        if snap is None:
            return False  # it moved while being read
        with self.lock:
            if self._closed:  # the job was dropped while this one was being read
                snap.close()
                return False
            old, self.snapshot = self.snapshot, snap
            self.seq = snap.seq
        if old is not None:
            old.close()
        self._taken, self._taken_at = sig, now
        return True

    @staticmethod
    def _checked(sig: Signature) -> Signature:
        if len(sig) > MAX_FILES:
            raise HomieError(f"a checkpoint of more than {MAX_FILES} files is not supported")
        if sum(s[0] for s in sig.values()) > MAX_BYTES:
            raise HomieError(f"a checkpoint of more than {MAX_BYTES >> 30} GiB is not supported")
        return sig

    def close(self) -> None:
        with self.lock:
            self._closed = True
            snap, self.snapshot = self.snapshot, None
        if snap is not None:
            snap.close()

