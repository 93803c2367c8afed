"""The submitter's queue (HTCondor's schedd): owns every job this machine sent
out, in one table under one lock; asks the dispatcher where queued jobs go,
starts a shadow per job, and restores all of it after a restart."""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from homie import files
from homie.discovery.peers import Peer
from homie.errors import EXIT_NO_PEER, EXIT_USAGE, HomieError
from homie.submit import migration
from homie.submit.dispatch import Ask, Dispatcher
from homie.submit.intake import Intake
from homie.submit.job import Job, JobRecord, JobState
from homie.submit.shadow import Me, Shadow

REAP_EVERY = 0.5  # seconds between looks for stale attempts to stop


class Submitter:
    def __init__(self, config, log, store, home, me: Me, dial, peers, local_peer: Callable[[], Peer], karma):
        self.config = config
        self.log = log
        self.store = store
        self.me = me
        self.dial = dial
        self.peers = peers
        self.local_peer = local_peer
        self.outbox = Path(home.outbox)
        self.jobs: dict[str, Job] = {}
        # The jobs not yet over, which the queue looks at on every turn: the table keeps
        # every job ever sent (homie ps --all), and a big map leaves thousands behind.
        # An ended job never runs again (restart makes a new one), so ended ones are
        # dropped from here lazily (_live_jobs).
        self._live: dict[str, Job] = {}
        # Jobs holding attempts given up on (Job.stale), which reap_stale looks at twice a
        # second: kept by save(), through which every change of a job goes, so that look
        # is not a walk over every job ever sent (0.1 s of a daemon's CPU per 10 s of a
        # map after a few thousand jobs).
        self._stale: dict[str, Job] = {}
        self._reaped_at = 0.0
        self.lock = threading.Lock()
        self.wake = threading.Condition()
        self.dispatcher = Dispatcher(config, me.name, me.started)
        self.intake = Intake(config, Path(home.root), self.outbox,
                             files.HashCache(Path(home.root) / "cache" / "hashes.db"),
                             names_online=lambda: {p.name for p in peers.snapshot()}, own_name=me.name)
        self.shadow = Shadow(config, log, me, dial, peers, karma, self.dispatcher, self.intake, self.save, self.kick)
        self._reaper = migration.Reaper(dial.connect, self._online, log)

    # -- jobs in --------------------------------------------------------------------------
    def submit(self, req: dict) -> Job:
        """Validate a `run` request from the CLI and queue it."""
        job = self.intake.new_job(req)
        with self.lock:
            # Queue order is the order jobs become visible to the dispatcher,
            # not when their request arrived (hashing inputs takes a while).
            job.update(created=time.time())
            self.jobs[job.id] = job
            self._live[job.id] = job
        self.save(job)
        self.log.info("job.submitted", job_id=job.id, script=job.script, files=len(job.manifest or []))
        self.kick()
        return job

    def check_peer(self, pin: str | None) -> None:
        self.intake.check_peer(pin)

    @staticmethod
    def check_plugins(req: dict) -> None:
        Intake.check_plugins(req)

    def request_of(self, job: Job) -> dict:
        return self.intake.request_of(job)

    def save(self, job: Job) -> None:
        self.store.save_job(job.doc)
        self._index_stale(job)

    def _index_stale(self, job: Job) -> None:
        with self.lock:
            if job.rec.stale:
                self._stale[job.id] = job
            else:
                self._stale.pop(job.id, None)

    # -- lookup -----------------------------------------------------------------------------
    def find(self, prefix: str) -> list[Job]:
        with self.lock:
            exact = self.jobs.get(prefix)
            if exact:
                return [exact]
            return [j for j in self.jobs.values() if j.id.startswith(prefix)]

    def all(self) -> list[Job]:
        with self.lock:
            return sorted(self.jobs.values(), key=lambda j: j.created)

    def restore(self) -> None:
        """Pick up where the last run of this daemon left off."""
        for doc in self.store.jobs():
            job = Job(JobRecord.from_doc(doc), self.outbox)
            with self.lock:
                self.jobs[job.id] = job
                if not job.terminal:
                    self._live[job.id] = job
            self._index_stale(job)
            if not job.terminal:
                job.ckpt_store.cleanup()  # a checkpoint fetch cut short by the restart
            if job.state == JobState.UPLOADING:
                job.update(state=JobState.QUEUED)  # the upload never completed: start it again
            if job.state == JobState.QUEUED:
                try:
                    self.intake.collect(job)
                except HomieError as e:
                    self.shadow._finish(job, JobState.FAILED, message=str(e), exit_code=EXIT_USAGE)
                    continue
            if job.state == JobState.RUNNING and job.log_end is not None and job.log.end > job.log_end:
                # output mirrored after the last save comes again from the saved remote offset
                job.log.truncate(job.log_end)
            if job.state in (JobState.RUNNING, JobState.FETCHING):
                self.shadow.start(job)
        self.kick()

    # -- the queue --------------------------------------------------------------------------
    def kick(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def _live_jobs(self) -> list[Job]:
        with self.lock:
            for job_id in [i for i, j in self._live.items() if j.terminal]:
                del self._live[job_id]
            return list(self._live.values())

    def dispatch_loop(self, stop: threading.Event) -> None:
        """Assign queued jobs to peers in submission order."""
        while not stop.is_set():
            try:
                self._dispatch_once()
            except Exception:
                self.log.exception("dispatch.failed")
            try:
                # Stale attempts are a matter of seconds (migration.Reaper): a look every
                # REAP_EVERY is enough, not one per kick (every job start and end).
                if time.monotonic() - self._reaped_at >= REAP_EVERY:
                    self._reaped_at = time.monotonic()
                    self.reap_stale()
            except Exception:
                self.log.exception("dispatch.reap_failed")
            with self.wake:
                self.wake.wait(0.5)

    def candidates(self) -> list[Peer]:
        """Online peers (this machine first) with the free slots we can count on."""
        ours: dict[str, int] = {}
        for j in self._live_jobs():
            if j.state in (JobState.UPLOADING, JobState.RUNNING) and j.peer_instance:
                ours[j.peer_instance] = ours.get(j.peer_instance, 0) + 1
        return self.dispatcher.candidates([self.local_peer(), *self.peers.snapshot()], ours)

    def _dispatch_once(self) -> None:
        queued = {j.id: j for j in self._live_jobs() if j.state == JobState.QUEUED}
        if not queued:
            return
        candidates = self.candidates()
        if not self.dispatcher.worth_a_pass(candidates):
            return
        asks = [Ask(job_id=j.id, script=j.script or "", created=j.created, gpu=j.gpu, peer=j.peer,
                    scheduler=j.scheduler or "auto", executor=j.executor or "auto",
                    refused_by=dict(j.refusals or {}), lost_on=frozenset(j.lost_peers or ()),
                    may_return=j.checkpointed) for j in queued.values()]
        for d in self.dispatcher.plan(asks, candidates):
            job = queued[d.job_id]
            if d.fail:
                self.shadow._finish(job, JobState.FAILED, message=d.fail, exit_code=EXIT_NO_PEER)
            elif d.peer is None:
                if d.judged and job.why != d.why:
                    # Not saved: a reason to wait is worked out again after a restart.
                    job.update(why=d.why)
            else:
                p = d.peer
                now = time.time()
                job.update(state=JobState.UPLOADING, why=None, peer_name=p.name, peer_ip=p.ip, peer_port=p.port,
                           peer_instance=p.instance, dispatches=job.dispatches + 1,
                           # A secret only we hold, new for every attempt: the worker lets only it
                           # attach, fetch, ack or signal the job (the name in a member's certificate
                           # is any member's to choose, and an earlier worker has seen the old one).
                           token=secrets.token_hex(16), via="chosen" if job.peer else "best available",
                           dispatched_at=now, first_dispatched_at=job.first_dispatched_at or now, evicted=None)
                job.results_told = None  # what an earlier attempt's worker said is not this one's
                self.save(job)
                self.shadow.start(job)

    # -- attempts given up on -------------------------------------------------------------------
    def reap_stale(self) -> None:
        """Attempts given up on whose worker is back: stop them, drop what they made."""
        with self.lock:
            jobs = [j for j in self._stale.values() if j.rec.stale]
        now = time.time()
        for job in jobs:
            entries = [migration.Stale.from_dict(d) for d in job.stale]
            for st in self._reaper.due([e for e in entries if now - e.since < migration.STALE_TTL]):
                threading.Thread(target=self._reap_one, args=(job, st), name=f"reap-{st.wire_id}",
                                 daemon=True).start()
            if any(now - e.since >= migration.STALE_TTL for e in entries):
                job.update(stale=[d for d in job.stale if now - d["since"] < migration.STALE_TTL])
                self.save(job)

    def _reap_one(self, job: Job, st: migration.Stale) -> None:
        if self._reaper.reap(st):
            job.update(stale=[d for d in job.stale if d["wire_id"] != st.wire_id])
            self.save(job)

    def _online(self, instance: str) -> bool:
        return instance == self.me.instance or self.peers.get(instance) is not None

    # -- control --------------------------------------------------------------------------------
    def signal(self, job: Job, sig: int) -> str:
        return self.shadow.signal(job, sig)

    def save_all(self) -> None:
        """On the way down: every job's remote offset and log end, so the next
        start resumes each output exactly where it stopped."""
        for job in [j for j in self.all() if not j.terminal]:
            self.save(job)

    def forget(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
            self._live.pop(job.id, None)
            self._stale.pop(job.id, None)
        self.store.delete_job(job.id)
        job.log.close()
        shutil.rmtree(job.dir, ignore_errors=True)
