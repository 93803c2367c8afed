"""The dispatcher: which queued job goes to which peer now. Pure policy: no
sockets, no threads of its own, an injected clock; the submitter acts on its
decisions (homie.submit.schedd) and tells it what happened (reserve, release,
refuse_briefly)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from homie import plugins, scheduling
from homie.discovery.peers import Peer

if TYPE_CHECKING:
    from homie.config import Config

# Reasons a peer gives that pass with time: a job waits for them instead of failing.
TEMPORARY = ("busy", "paused", "in use")
# While every slot is taken, a pass judges no job (none could go anywhere): waiting jobs'
# reasons, and failures for want of any peer, are brought up to date this often.
REJUDGE_EVERY = 0.5
# The longest a busy refusal keeps a peer out (the shadow asks for at most this): a
# refusal that seems longer is a wall clock stepped back, and is over.
MAX_BRIEF_REFUSAL = 2.0


@dataclass
class Ask:
    """What the dispatcher needs of one queued job."""

    job_id: str
    script: str
    created: float
    gpu: bool = False
    peer: str | None = None  # pinned with -n
    scheduler: str = "auto"
    executor: str = "auto"
    refused_by: dict[str, str] = field(default_factory=dict)  # peer instance -> why it never will
    lost_on: frozenset[str] = frozenset()  # peer instances earlier attempts were lost on
    may_return: bool = False  # checkpointed: back to a lost peer if nobody else can take it


@dataclass
class Decision:
    job_id: str
    peer: Peer | None = None  # send it there now
    fail: str | None = None  # no peer can ever take it: the job fails with this
    why: str | None = None  # it waits, for this reason
    judged: bool = True  # False: it waits, not looked at this pass (no slot free anywhere)


class Dispatcher:
    def __init__(self, config: Config, submitter: str, started: float,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.submitter = submitter
        self.started = started
        self.clock = clock
        self._lock = threading.Lock()  # drivers release while the dispatch thread plans
        self._pending: dict[str, set[str]] = {}  # peer instance -> jobs sent there not yet seen started
        self._refused: dict[str, float] = {}  # peer instance -> until when not to try it
        self._judged_at = float("-inf")  # the last pass that judged every queued job

    # -- what the drivers report ----------------------------------------------------------
    def reserve(self, instance: str, job_id: str) -> None:
        with self._lock:
            self._pending.setdefault(instance, set()).add(job_id)

    def release(self, job_id: str) -> None:
        """The job no longer holds a slot we reserved (it started, failed or moved)."""
        with self._lock:
            for ids in self._pending.values():
                ids.discard(job_id)

    def refuse_briefly(self, instance: str, seconds: float) -> None:
        """A busy or paused refusal: the worker may be holding its next slot for someone
        after a karma decision, so ask again soon, not at once."""
        with self._lock:
            self._refused[instance] = self.clock() + min(seconds, MAX_BRIEF_REFUSAL)

    def settling(self) -> bool:
        """Right after start the peer table is still filling: no job fails for want of peers yet."""
        grace = min(float(self.config.peer_timeout), 2 * float(self.config.heartbeat_interval) + 1.0)
        return 0 <= self.clock() - self.started < grace  # a clock stepped back is not a fresh start

    # -- deciding --------------------------------------------------------------------------
    def candidates(self, peers: list[Peer], ours: dict[str, int]) -> list[Peer]:
        """Copies of the peers with the free slots we can count on: a heartbeat may not
        show yet the jobs we just sent, but our own records do. ours: peer instance ->
        our jobs uploading or running there."""
        now = self.clock()
        out = []
        with self._lock:
            for p in peers:
                p = copy.copy(p)
                if 0 < self._refused.get(p.instance, 0) - now <= MAX_BRIEF_REFUSAL:
                    p.slots_free = 0
                elif p.slots_free is not None:
                    free = p.slots_free - len(self._pending.get(p.instance, ()))
                    if p.max_jobs is not None:
                        free = min(free, p.max_jobs - ours.get(p.instance, 0))
                    p.slots_free = max(0, free)
                out.append(p)
        return out

    def request(self, ask: Ask) -> scheduling.JobRequest:
        return scheduling.JobRequest(job_id=ask.job_id, script=ask.script, submitter=self.submitter, gpu=ask.gpu,
                                     peer=ask.peer, scheduler=ask.scheduler or "auto",
                                     executor=ask.executor or "auto", queued_at=ask.created)

    def worth_a_pass(self, candidates: list[Peer]) -> bool:
        """Whether plan() would judge any job: a slot is free somewhere, or a rejudge is due
        (the queue need not even be looked at otherwise)."""
        return not _full(candidates) or self._rejudge_due(self.clock())

    def _rejudge_due(self, now: float) -> bool:
        # A wall clock stepped back (a laptop waking up) must not hold the next rejudge off.
        return not 0 <= now - self._judged_at < REJUDGE_EVERY

    def plan(self, queued: list[Ask], candidates: list[Peer]) -> list[Decision]:
        """One decision per queued job, oldest first; a job given a peer takes one of its
        slots (reserved here) before the next job is considered. Once no candidate has a
        slot free, the rest wait unjudged, but for a pass every REJUDGE_EVERY: a map keeps
        twice the slots queued, and judging each against every peer on each pass (a
        heartbeat, a job's start or end) was most of a submitting daemon's dispatch CPU,
        and its reason, "busy (3/4 jobs)", changed with every count."""
        now = self.clock()
        rejudge = self._rejudge_due(now)
        if rejudge:
            self._judged_at = now
        out = []
        for ask in sorted(queued, key=lambda a: a.created):
            if not rejudge and _full(candidates):
                out.append(Decision(ask.job_id, judged=False))
                continue
            req = self.request(ask)
            refused = set(ask.refused_by)
            cands = [p for p in candidates if p.instance not in refused | ask.lost_on]
            peer, verdicts = scheduling.choose(req, cands, self.config)
            if peer is None and ask.lost_on and ask.may_return:
                # Nobody else can take it: the peer it was lost on, now that it is back.
                peer, verdicts = scheduling.choose(req, [p for p in candidates if p.instance not in refused],
                                                   self.config)
            if peer is not None:
                if peer.slots_free is not None:
                    peer.slots_free -= 1
                self.reserve(peer.instance, ask.job_id)
                out.append(Decision(ask.job_id, peer=peer))
                continue
            permanent = self.permanent(req, verdicts)
            if permanent and ask.refused_by:
                permanent += "; refused by " + "; ".join(ask.refused_by.values())
            if permanent and not self.settling():
                out.append(Decision(ask.job_id, fail=permanent))
            else:
                out.append(Decision(ask.job_id, why=scheduling.why_waiting(verdicts, req)))
        return out

    @staticmethod
    def permanent(req: scheduling.JobRequest, verdicts: list[tuple[Peer, list[str]]]) -> str | None:
        """Why no peer can ever take this job, or None if it should wait."""
        if not verdicts:
            if req.peer:
                return f"peer {req.peer!r} is not online"
            return "no peer can take this job"
        if any(any(r.startswith(TEMPORARY) for r in reasons) for _, reasons in verdicts):
            return None
        detail = "; ".join(f"{p.name}: {', '.join(r)}" for p, r in verdicts)
        return f"no peer can take this job ({detail})"


ELIGIBILITY = "homie.builtin.eligibility"  # the plugin whose rule _full relies on


def _full(candidates: list[Peer]) -> bool:
    """No candidate has a slot free: the built-in eligibility calls each busy, so no job can
    go. Without that plugin (disabled by config, or unregistered after it raised) a
    replacement may take a peer with no free slot, and every pass judges."""
    return (bool(candidates) and plugins.pm.get_plugin(ELIGIBILITY) is not None
            and all(p.slots_free is not None and p.slots_free <= 0 for p in candidates))
