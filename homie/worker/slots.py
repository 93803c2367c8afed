"""The slot book (HTCondor's startd admission): who may have a slot on this
worker now. Pure policy: no sockets, no sleeping, an injected clock; one lock.

A slot is held from the moment a submit is accepted (before its upload, so
two submitters asking at once cannot both get the last one) until the job
ends. When a full worker frees a slot, every submitter queued for it reacts
to the next heartbeat within moments: the book gathers them for
CONTENTION_WINDOW and then gives the slot in the order the
`homie_order_queue` plugins decide (friends who gave the most first),
arrival order otherwise. Submitters refused meanwhile ask again about every
0.3 s, so nobody waits inside a connection thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WAIT_TTL = 3.0  # a refused submitter asks again about every second; after this it went elsewhere
WAIT_MAX = 3600.0
CONTENTION_WINDOW = 0.25
RECENT = 60.0  # submitters seen this recently may be contending for a freed slot


@dataclass
class Waiting:
    job_id: str
    submitter: str
    queued_at: float
    seen: float


@dataclass(frozen=True)
class Admission:
    granted: bool
    code: str = ""  # "paused" or "busy" when refused
    reason: str = ""
    retry_after: float | None = None  # when asking again makes sense (the contention window's end)


Order = Callable[[list[Waiting], dict[str, float]], list[Waiting]]


class SlotBook:
    def __init__(self, name: str, max_jobs: int, order: Order | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self.name = name
        self.max_jobs = max_jobs
        self._order = order
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.paused = False
        self._reserved: set[str] = set()  # accepted, still uploading
        self._holding: set[str] = set()  # preparing or running
        self._waiting: dict[str, Waiting] = {}
        self._recent: dict[str, float] = {}  # submitter -> when it last asked
        self._freed_at = 0.0
        self._contended_until = 0.0

    # -- counts -----------------------------------------------------------------------
    def used(self) -> int:
        with self._lock:
            return len(self._reserved) + len(self._holding)

    def free(self) -> int:
        with self._lock:
            return 0 if self.paused else max(0, self.max_jobs - len(self._reserved) - len(self._holding))

    def has(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._reserved or job_id in self._holding

    # -- admission -----------------------------------------------------------------------
    def admit(self, job_id: str, submitter: str, karma: dict[str, float] | None = None) -> Admission:
        """Reserve a slot for job_id, or say why not. Refused jobs are remembered
        for WAIT_TTL so the next free slot goes to them in karma order."""
        now = self._clock()
        with self._lock:
            if self.paused:
                return Admission(False, "paused", f"{self.name} is paused by its owner")
            self._recent[submitter] = now
            for who in [k for k, t in self._recent.items() if now - t > RECENT]:
                del self._recent[who]
            w = self._waiting.get(job_id)
            self._waiting[job_id] = Waiting(job_id, submitter, w.queued_at if w else self._wall(), now)
            for jid in [j for j, e in self._waiting.items()
                        if now - max(e.seen, self._freed_at) > WAIT_TTL or now - e.seen > WAIT_MAX]:
                del self._waiting[jid]
            used = len(self._reserved) + len(self._holding)
            free = self.max_jobs - used
            if free <= 0:
                return Admission(False, "busy", f"{self.name} is busy ({used}/{self.max_jobs} jobs)")
            waiting = list(self._waiting.values())
            if now < self._contended_until and len(self._recent) > 1:
                # Gather contenders only when friends compete: one submitter's own
                # jobs (a big `homie map`) need no contest and lose no time to one.
                return Admission(False, "busy", f"{self.name} is busy (choosing who gets its free slot)",
                                 retry_after=self._contended_until - now)
        order = self._order(waiting, karma or {}) if self._order else None
        if not order:
            order = sorted(waiting, key=lambda e: e.queued_at)
        first = [e.job_id for e in order[:free]]
        with self._lock:
            if job_id not in first:
                who = order[0].submitter
                return Admission(False, "busy", f"{self.name} is busy (its next slot goes to {who}'s job)")
            if len(self._reserved) + len(self._holding) >= self.max_jobs:
                used = len(self._reserved) + len(self._holding)
                return Admission(False, "busy", f"{self.name} is busy ({used}/{self.max_jobs} jobs)")
            self._waiting.pop(job_id, None)
            self._reserved.add(job_id)
        return Admission(True)

    def hold(self, job_id: str) -> None:
        """Its upload is done and it is being prepared: the job itself holds the slot now."""
        with self._lock:
            self._reserved.discard(job_id)
            self._holding.add(job_id)

    def release(self, job_id: str) -> None:
        """The upload failed, or the job ended: its slot is free. A slot freed on a full
        worker is contended: contenders are gathered before it is given."""
        now = self._clock()
        with self._lock:
            was_full = len(self._reserved) + len(self._holding) >= self.max_jobs
            if job_id in self._holding:
                self._freed_at = now
                if was_full:
                    self._contended_until = now + CONTENTION_WINDOW
            self._reserved.discard(job_id)
            self._holding.discard(job_id)
