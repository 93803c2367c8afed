"""The submitter's hash cache: sha256 of local files, remembered by stat key."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

from homie.errors import HomieError, ManifestError
from homie.files.hashing import sha256_fd

# A file modified within this long of being hashed may change again without
# its mtime moving (coarse timestamps: 2 s on FAT, 1 s on ext3/HFS+, a kernel
# tick elsewhere), so its hash is not remembered: git's "racily clean" rule.
_RACY_NS = 2_000_000_000


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    # ctime cannot be set by tools that preserve mtime (cp -p, rsync -t, tar x).
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashCache:
    """sha256 of local files, remembered in sqlite by (realpath, size, mtime, ctime, inode, device)."""

    def __init__(self, db_path: str | os.PathLike):
        self.db_path = Path(db_path)
        self.hashed = 0  # files actually read (for tests and stats)
        self.bytes_hashed = 0
        self._lock = threading.Lock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError:
            # It is only a cache: a corrupt or foreign file costs a re-hash,
            # never a failed `homie run`.
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(f"{self.db_path}{suffix}")
                except FileNotFoundError:
                    pass
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Losing the last few entries after a power cut only costs a re-hash.
            db.execute("PRAGMA synchronous=NORMAL")
            # Paths are bytes: Linux file names need not be valid UTF-8.
            db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " ctime_ns INTEGER, ino INTEGER, dev INTEGER, sha256 TEXT NOT NULL)"
            )
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sha256_of(self, path: str | os.PathLike) -> tuple[int, str]:
        real = os.path.realpath(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise HomieError(f"not a regular file: {path}")
        key = _stat_key(st)
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, ino, dev, sha256 FROM hashes WHERE path = ?", (os.fsencode(real),)
            ).fetchone()
        if row is not None and tuple(row[:5]) == key:
            return key[0], row[5]
        size, sha, st = self._hash_stable(real)
        # Only mtime needs to be old: any later write moves mtime to "now",
        # and a tool that puts mtime back still moves ctime (part of the key).
        if time.time_ns() - st.st_mtime_ns > _RACY_NS:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (os.fsencode(real), *_stat_key(st), sha),
                )
        return size, sha

    def _hash_stable(self, real: str, tries: int = 3) -> tuple[int, str, os.stat_result]:
        for _ in range(tries):
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                before = os.fstat(fd)
                n_total, sha, _ = sha256_fd(fd)
                after = os.fstat(fd)
            finally:
                os.close(fd)
            with self._lock:
                self.hashed += 1
                self.bytes_hashed += n_total
            if _stat_key(before) == _stat_key(after) and n_total == after.st_size:
                return n_total, sha, after
        raise ManifestError(f"file changed while reading: {real}")
