"""Attempts of one submitted job: the retry policy, its checkpoint syncing,
and putting an end to attempts that were given up on.

An *attempt* is one run of a job on one worker. A job is run again (attempt
n+1, on another peer or the same one once it is back) when its worker is lost
or evicts it; it starts from its last complete checkpoint if it has one.
Only the attempt that finishes brings results home: an earlier one that
turns up again is killed and dropped unread (`Reaper`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from homie import checkpoints

CHECKPOINTED_RETRIES = 3  # a checkpointed job's default: a lost laptop costs minutes, not the job
STALE_TTL = 24 * 3600.0  # how long to keep trying to stop an abandoned attempt
REAP_EVERY = 2.0
MAX_EVICTIONS = 20  # evictions do not count against retries, but a job is not bounced forever


def wire_id(job_id: str, attempt: int | None) -> str:
    """The id a worker knows an attempt by: two attempts of one job may meet on one worker."""
    return job_id if not attempt or attempt <= 1 else f"{job_id}r{attempt}"


def retry_budget(retries: int | None, checkpointed: bool) -> int:
    """--retries N if given; else 3 for a checkpointed job and 0 for a plain one."""
    if retries is not None:
        return retries
    return CHECKPOINTED_RETRIES if checkpointed else 0


@dataclass
class Stale:
    """An attempt given up on: where it ran and how to tell its worker to drop it."""

    instance: str
    ip: str
    port: int
    wire_id: str
    token: str | None
    since: float

    def to_dict(self) -> dict:
        return self.__dict__.copy()

    @classmethod
    def from_dict(cls, d: dict) -> Stale:
        return cls(d["instance"], d["ip"], int(d["port"]), d["wire_id"], d.get("token"), float(d["since"]))


class Syncer:
    """Brings a running attempt's checkpoints home, one fetch at a time, the
    newest announced one; lives as long as the attempt's stream."""

    def __init__(self, job, connect: Callable, commit: Callable, log):
        self.job = job
        self._connect = connect
        self._commit = commit  # (Saved) -> None, called with the job's lock free
        self._log = log
        self._wanted = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def want(self, seq: int) -> None:
        with self._cond:
            self._wanted = max(self._wanted, seq)
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"ckpt-{self.job.id}", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._stop and self._wanted <= self._have():
                    self._cond.wait(1.0)
                if self._stop:
                    return
            try:
                fetch_now(self.job, self._connect, self._commit)
                failures = 0
            except Exception as e:
                failures += 1
                self._log.warning("job.checkpoint_fetch_failed", job_id=self.job.id, error=str(e))
                with self._cond:
                    self._cond.wait(min(10.0, 0.5 * 2 ** failures))

    def _have(self) -> int:
        j = self.job
        return j.ckpt_seq or 0 if (j.ckpt_attempt or 0) == (j.attempt or 1) else 0


def fetch_now(job, connect: Callable, commit: Callable, ch=None) -> checkpoints.Saved | None:
    """Fetch the attempt's newest checkpoint (over ch, or a new connection) and commit it."""
    with job.ckpt_lock:
        own = ch is None
        if own:
            ch = connect(job.peer_ip, job.peer_port)
        try:
            auth = {"token": job.token} if job.token else {}
            saved = checkpoints.fetch(ch, wire_id(job.id, job.attempt), auth, job.ckpt_store, job.attempt or 1)
            if own:
                ch.send("bye")
        finally:
            if own:
                ch.close()
        if saved is not None:
            commit(saved)
        return saved


class Reaper:
    """Stops attempts given up on once their worker is reachable again: SIGKILL,
    then `ack` so the worker drops its directory and results unread."""

    def __init__(self, connect: Callable, online: Callable[[str], bool], log, clock=time.time):
        self._connect = connect
        self._online = online
        self._log = log
        self._clock = clock
        self._busy: set[str] = set()
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, stale: list[Stale]) -> list[Stale]:
        now = self._clock()
        out = []
        with self._lock:
            for s in stale:
                if s.wire_id in self._busy or self._next.get(s.wire_id, 0) > now or not self._online(s.instance):
                    continue
                self._busy.add(s.wire_id)
                self._next[s.wire_id] = now + REAP_EVERY
                out.append(s)
        return out

    def reap(self, s: Stale) -> bool:
        """True once the worker no longer has the attempt."""
        try:
            ch = self._connect(s.ip, s.port)
        except Exception:
            return False
        try:
            auth = {"token": s.token} if s.token else {}
            ch.send("signal", job_id=s.wire_id, sig=int(signal.SIGKILL), **auth)
            reply = ch.recv_msg("ok", "error", timeout=10)
            if reply.t == "error":
                gone = reply.get("code") == "unknown_job"
                if gone:
                    self._log.info("job.stale_attempt_gone", wire_id=s.wire_id)
                return gone
            ch.send("ack", job_id=s.wire_id, **auth)
            ch.recv_msg("ok", "error", timeout=10)
            ch.send("bye")
            self._log.info("job.stale_attempt_stopped", wire_id=s.wire_id)
            return False  # confirmed gone on the next round
        except Exception as e:
            self._log.warning("job.stale_attempt_failed", wire_id=s.wire_id, error=str(e))
            return False
        finally:
            ch.close()
            with self._lock:
                self._busy.discard(s.wire_id)
