"""What happens to a submitted job when an attempt ends badly: the retry
policy (lost worker, failed upload) and eviction, each run again from the
last checkpoint (homie.submit.migration has the pieces it uses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from homie import checkpoints
from homie.errors import EXIT_PEER_LOST, HomieError, ProtocolError
from homie.submit import migration
from homie.submit.job import Job, JobState
from homie.wire import protocol
from homie.wire.channel import Channel, ConnectionClosed


class Lost(Exception):
    """The worker no longer has the job."""


def _auth(job: Job) -> dict:
    return {"token": job.token} if job.token else {}


class Attempts:
    """Mixed into the Shadow: uses its config, log, dial, dispatch, intake, save and kick."""

    config: Any
    log: Any
    dial: Any
    dispatch: Any
    intake: Any
    save: Callable[[Job], None]
    kick: Callable[[], None]

    def _finish(self, job: Job, state: JobState, **fields: Any) -> None:
        raise NotImplementedError

    def _peer_alive(self, job: Job) -> bool:
        raise NotImplementedError

    def _retries_left(self, job: Job) -> int:
        return migration.retry_budget(job.retries, job.checkpointed) - (job.losses or 0)

    def _retry_upload(self, job: Job, ch: Channel, why: str) -> bool:
        """A job with retries left (homie map, --retries) goes to another peer after a failed upload."""
        if self._retries_left(job) <= 0:
            return False
        ch.close()
        job.log.append(protocol.STDERR, f"homie: {why}; retrying elsewhere\n".encode())
        job.update(losses=(job.losses or 0) + 1, lost_peers=list(job.lost_peers or []) + [job.peer_instance],
                   log_end=job.log.end)
        self._requeue(job, f"retrying after {why}")
        return True

    def _requeue(self, job: Job, why: str) -> None:
        self.dispatch.release(job.id)
        job.update(state=JobState.QUEUED, why=why, peer_name=None, peer_ip=None, peer_port=None, peer_instance=None,
                   started_at=None)
        self.save(job)
        self.kick()

    def _lost(self, job: Job, why: str) -> None:
        self.log.warning("job.lost", job_id=job.id, peer=job.peer_name, why=why)
        if self._retries_left(job) > 0:
            # Run it again (from its checkpoint, if it has one) elsewhere, or on the same
            # peer once it is back; the attempt left behind is stopped if it turns up.
            self._next_attempt(job, why, lost=True)
            return
        self._end_attempt(job, "lost", why)
        self._finish(job, JobState.LOST, message=why, exit_code=EXIT_PEER_LOST)

    def _end_attempt(self, job: Job, outcome: str, why: str | None = None) -> None:
        """One line in the job's history: where this attempt ran and how it ended."""
        hist = list(job.history or [])
        hist.append({"attempt": job.attempt or 1, "peer": job.peer_name, "started_at": job.started_at,
                     "ended_at": time.time(), "outcome": outcome, "why": why,
                     "checkpoint_at": job.ckpt_at if (job.ckpt_attempt or 0) == (job.attempt or 1) else None})
        job.update(history=hist)

    def _next_attempt(self, job: Job, why: str, lost: bool) -> None:
        if job.syncer is not None:
            job.syncer.stop()
            job.syncer = None
        self._end_attempt(job, "lost" if lost else "evicted", why)
        stale = list(job.stale or [])
        if lost and job.peer_instance:
            stale.append(migration.Stale(job.peer_instance, job.peer_ip, job.peer_port, job.wire_id, job.token,
                                         time.time()).to_dict())
        saved = job.ckpt_store.current()
        where = (f"from the checkpoint of {time.strftime('%H:%M:%S', time.localtime(saved.at))}" if saved
                 else "from the beginning (no checkpoint yet)")
        job.log.append(protocol.STDERR, f"homie: {why}; running it again {where}\n".encode())
        fields = {"attempt": (job.attempt or 1) + 1, "stale": stale, "restored_at": saved.at if saved else None,
                  "remote_offset": 0, "log_end": job.log.end,
                  "code": None, "signal": None, "reason": None, "evicted": None}
        if lost:
            fields.update(losses=(job.losses or 0) + 1, lost_peers=list(job.lost_peers or []) + [job.peer_instance])
        else:
            fields.update(evictions=(job.evictions or 0) + 1)
        job.update(**fields)
        job.manifest = None  # inputs again, with the checkpoint on top
        job.log.reopen()
        self._requeue(job, f"running it again after {why}")

    def _fetch_evicted(self, job: Job) -> None:
        """An evicted attempt: bring its last checkpoint home, let the worker drop
        it, and run the job on (evictions are not the job's fault: no retry is spent)."""
        ev = job.evicted or {}
        why = f"{job.peer_name} {ev.get('why') or 'evicted it'}"
        for tries in range(60):
            try:
                ch, job.channel = job.channel, None
                if ch is None or ch.closed:
                    ch = self.dial.connect(job.peer_ip, job.peer_port)
                try:
                    if ev.get("seq", 0) > self._have_seq(job):
                        migration.fetch_now(job, self.dial.connect, lambda saved: self._committed(job, saved), ch=ch)
                    ch.send("ack", job_id=job.wire_id, **_auth(job))
                    ch.recv_msg("ok", "error", timeout=10)
                    ch.send("bye")
                finally:
                    ch.close()
                break
            except (TimeoutError, ConnectionClosed, OSError, HomieError, ProtocolError) as e:
                if not self._peer_alive(job) or tries == 59:
                    why += f" (its last checkpoint could not be fetched: {e})"
                    break
                time.sleep(0.5)
        if (job.evictions or 0) >= migration.MAX_EVICTIONS:
            self._end_attempt(job, "evicted", why)
            self._finish(job, JobState.LOST, message=f"{why}; evicted {job.evictions} times, giving up",
                         exit_code=EXIT_PEER_LOST)
            return
        self._next_attempt(job, why, lost=False)

    @staticmethod
    def _have_seq(job: Job) -> int:
        return (job.ckpt_seq or 0) if (job.ckpt_attempt or 0) == (job.attempt or 1) else 0

    def _syncer(self, job: Job) -> migration.Syncer:
        if job.syncer is None:
            job.syncer = migration.Syncer(job, self.dial.connect, lambda saved: self._committed(job, saved), self.log)
        return job.syncer

    def _committed(self, job: Job, saved: checkpoints.Saved) -> None:
        job.update(ckpt_seq=saved.seq, ckpt_at=saved.at, ckpt_attempt=saved.attempt, ckpt_bytes=saved.size)
        self.save(job)
        self.log.info("job.checkpoint", job_id=job.id, attempt=saved.attempt, seq=saved.seq, bytes=saved.size)
