"""The node's durable state: an sqlite3 database in the home.

Jobs this node submitted (so a restart of the daemon loses nothing), jobs it
runs for others (so a restart can clean up after a crash), and the karma
ledger. Records are JSON documents: the schema evolves without migrations.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from homie.errors import HomieError
from homie.home import open_private


def _tolerant(fn):
    """A full disk must not take the daemon down: a failed write is logged by
    the caller's logger (via on_error) and the job goes on in memory."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        try:
            return fn(self, *a, **kw)
        except sqlite3.Error as e:
            if self.on_error:
                self.on_error(fn.__name__, e)
            return None

    return wrapper


def _private_db(path: str) -> None:
    """The database holds every job's arguments: create it 0600 (sqlite would
    leave that to the umask, and its -wal/-shm files copy the database's mode)
    and never open it, or its journals, through a symlink."""
    try:
        os.close(open_private(path, os.O_RDWR | os.O_CREAT))
        for journal in (f"{path}-wal", f"{path}-shm", f"{path}-journal"):
            if os.path.islink(journal):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), journal)
    except OSError as e:
        why = "it is a symlink, which homie does not follow" if e.errno == errno.ELOOP else e.strerror
        raise HomieError(f"cannot open the job database {e.filename or path}: {why}") from None


class Store:
    on_error: Callable[[str, Exception], None] | None = None

    def __init__(self, path):
        self.path = str(path)
        _private_db(self.path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, state TEXT, doc TEXT);
                CREATE TABLE IF NOT EXISTS worker_jobs (id TEXT PRIMARY KEY, doc TEXT);
                CREATE TABLE IF NOT EXISTS worker_history (id TEXT PRIMARY KEY, finished REAL, doc TEXT);
                CREATE INDEX IF NOT EXISTS worker_history_by_finished ON worker_history (finished);
                CREATE TABLE IF NOT EXISTS ledger (
                    job_id TEXT, peer TEXT, direction TEXT, cpu_s REAL, gpu_s REAL, wall_s REAL, at REAL,
                    PRIMARY KEY (job_id, direction));
                """
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- submitted jobs --------------------------------------------------------
    @_tolerant
    def save_job(self, doc: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO jobs (id, created, state, doc) VALUES (?, ?, ?, ?)",
                (doc["id"], doc["created"], doc["state"], json.dumps(doc)),
            )

    def jobs(self, states: tuple[str, ...] | None = None) -> list[dict]:
        with self._lock:
            if states:
                q = f"SELECT doc FROM jobs WHERE state IN ({','.join('?' * len(states))}) ORDER BY created"
                rows = self._db.execute(q, states).fetchall()
            else:
                rows = self._db.execute("SELECT doc FROM jobs ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    @_tolerant
    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- jobs run here for others ----------------------------------------------------
    @_tolerant
    def worker_job(self, job_id: str, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO worker_jobs (id, doc) VALUES (?, ?)", (job_id, json.dumps(doc)))

    @_tolerant
    def worker_job_done(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM worker_jobs WHERE id = ?", (job_id,))

    @_tolerant
    def worker_history_add(self, job_id: str, doc: dict, keep: int = 1000) -> None:
        """What ran here for a friend, once it is gone from the worker (the newest `keep` kept)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO worker_history (id, finished, doc) VALUES (?, ?, ?)",
                             (job_id, doc.get("finished") or 0.0, json.dumps(doc)))
            # By the index on finished: the oldest beyond `keep` go. (Sorting the whole table
            # for a NOT IN on every job was most of a lending daemon's sqlite time in a map.)
            self._db.execute("DELETE FROM worker_history WHERE finished <"
                             " (SELECT finished FROM worker_history ORDER BY finished DESC LIMIT 1 OFFSET ?)",
                             (keep - 1,))

    def worker_history(self) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, doc FROM worker_history").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def worker_jobs(self) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, doc FROM worker_jobs").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    # -- karma ledger -------------------------------------------------------------------
    @_tolerant
    def record(self, job_id: str, peer: str, direction: str, cpu_s: float, gpu_s: float,
               wall_s: float) -> float:
        """direction: 'given' (we ran it for peer) or 'taken' (peer ran it for us). Returns the
        CPU seconds of the row this one replaced (0.0 if none), None if nothing was written."""
        with self._lock:
            old = self._db.execute("SELECT cpu_s FROM ledger WHERE job_id = ? AND direction = ?",
                                   (job_id, direction)).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, peer, direction, cpu_s, gpu_s, wall_s, time.time()),
            )
        return (old[0] or 0.0) if old else 0.0

    def ledger(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT peer, direction, SUM(cpu_s), SUM(gpu_s), SUM(wall_s), COUNT(*) FROM ledger"
                " GROUP BY peer, direction ORDER BY peer"
            ).fetchall()
        return [
            {"peer": r[0], "direction": r[1], "cpu_s": r[2] or 0.0, "gpu_s": r[3] or 0.0, "wall_s": r[4] or 0.0,
             "jobs": r[5]}
            for r in rows
        ]

    def ledger_entries(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT job_id, peer, direction, cpu_s, gpu_s, wall_s, at FROM ledger").fetchall()
        cols = ("job_id", "peer", "direction", "cpu_s", "gpu_s", "wall_s", "at")
        return [dict(zip(cols, r, strict=True)) for r in rows]
