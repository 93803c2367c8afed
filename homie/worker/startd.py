"""The worker (HTCondor's startd): lends this machine's slots to friends' jobs.

It owns what the parts share: the table of jobs here (one lock), the slot
book, the sandbox, identities, job directories and blob cache. The server
(homie.worker.server) does the connections' I/O, the session
(homie.worker.session) answers each request, the starter
(homie.worker.starter) runs one job. Jobs live independently of
connections: a dropped link or a closed terminal never stops one.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from homie import files, plugins
from homie.discovery.peers import balance
from homie.errors import HomieError
from homie.worker import jobdir, sandbox
from homie.worker.cgroup import Cgroups
from homie.worker.context import WorkerContext
from homie.worker.identity import Identities, parse_range
from homie.worker.job import WorkerJob, WorkerJobState, cut_args
from homie.worker.owner import SAMPLE_EVERY, OwnerWatch
from homie.worker.proctree import enable_subreaper, processes_of_job, processes_of_uid
from homie.worker.server import Server
from homie.worker.session import Session
from homie.worker.slots import SlotBook, Waiting
from homie.worker.starter import Starter, cap_nproc_for_jobs


class Worker:
    def __init__(self, config, home, log, store, karma, me, trust, peers, resources: Callable[[], dict],
                 announce: Callable[[], None], warn: Callable[..., None], peer_name: Callable,
                 bind_address: str | None):
        self.config = config
        self.home = home
        self.log = log
        self.store = store
        self.karma = karma
        self.me = me
        self.peers = peers
        self.resources = resources
        self.announce = announce
        self.warn = warn
        self.jobs: dict[str, WorkerJob] = {}
        self.lock = threading.Lock()
        self.suspended = False
        self.book = SlotBook(me.name, config.max_jobs, order=self._order)
        self.identities = Identities(parse_range(getattr(self.config, "job_uids", "61184-65519")),
                                     getattr(self.config, "job_user", None))
        try:
            self.work = jobdir.WorkArea(self.home.root, self.identities.per_job)
        except OSError as e:
            raise HomieError(f"cannot set up the job directories: {e.strerror}: {e.filename}") from None
        self.ctx = WorkerContext(self.config, self.home, self.work, self.identities.per_job)
        # The job's output log and control files live where no job can write.
        self.logs = Path(self.home.root) / "joblogs"
        old = os.umask(0o077)
        try:
            self.logs.mkdir(exist_ok=True)
        finally:
            os.umask(old)
        self.starter = Starter(self)
        mode = sandbox.Mode(getattr(self.config, "sandbox", "auto"))
        self.sandbox = sandbox.probe(mode, self.identities.probe_uid(), self.ctx.python,
                                     self.starter.private_paths())
        if mode is sandbox.Mode.REQUIRED and not self.sandbox.active:
            raise HomieError(f"sandbox: required, but {self.sandbox.reason}", 2)
        # After the probe: the probe's uid may still run a job of another daemon here (or of
        # this one's last run), and under the cap its bubblewrap could not fork.
        self.nproc_capped = self.identities.per_job and cap_nproc_for_jobs()
        self.ctx.sandboxed = self.sandbox.active
        if self.sandbox.active:
            enable_subreaper()
        self.ctx.run_setup = self.starter.run_setup
        self.bwrap = sandbox.bwrap_path()
        self.cgroups = Cgroups(str(self.home.root)) if sys.platform.startswith("linux") else None
        # No fsync per blob: it halves upload speed, and a blob torn by a power
        # cut is caught by the size check in Session.have() (docs/architecture.md).
        self.blobs = files.BlobCache(self.home.blobs, int(self.config.cache_max_gb * 2**30), fsync=False)
        self.executors: dict[str, type] = {}
        for group in plugins.call("homie_executors"):
            for cls in group or []:
                self.executors.setdefault(cls.name, cls)
        self.session = Session(self)
        self.server = Server(config, log, me, trust, peer_name, warn, bind_address, self.session.serve)

    def _order(self, waiting: list[Waiting], karma: dict[str, float]) -> list[Waiting]:
        return plugins.call("homie_order_queue", jobs=waiting, karma=karma)

    def karma_of_peers(self) -> dict[str, float]:
        return {p.name: balance(p.karma) for p in self.peers.snapshot()}

    def cpu_idle(self) -> float:
        return float(self.resources().get("cpu_percent_idle", 100.0))

    # -- the server ----------------------------------------------------------------------------
    def bind(self) -> socket.socket:
        return self.server.bind()

    def serve(self, stop: threading.Event) -> None:
        self.server.serve(stop)

    # -- capacity, status, the owner's controls -------------------------------------------------
    @property
    def paused(self) -> bool:
        return self.book.paused

    def running(self) -> int:
        """Jobs holding a slot: running, preparing, or accepted and still uploading."""
        return self.book.used()

    def all_jobs(self) -> list[WorkerJob]:
        with self.lock:
            return list(self.jobs.values())

    def status(self) -> str:
        if self.paused:
            return "paused"
        if self.running() >= self.config.max_jobs:
            return "busy"
        if self.config.accept_jobs == "idle" and self.cpu_idle() < self.config.idle_threshold:
            return "busy"
        return "idle"

    def slots_free(self) -> int:
        return self.book.free()

    def executor_names(self) -> list[str]:
        return sorted(self.executors)

    def drop(self, job: WorkerJob, why: str) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.ckpt is not None:
            job.ckpt.close()
        job.log.close()
        try:
            jobdir.remove(job.dir)
        except OSError as e:  # whatever a job left, the daemon goes on
            self.log.warning("job.remove_failed", job_id=job.id, error=str(e))
        _unlink(Path(job.log.path))
        self.identities.release(job.id)  # if still held: its files were that uid's until removed
        self.store.worker_job_done(job.id)
        # The lending machine remembers what ran on it (homie ps --all there).
        summary = job.summary()
        summary.update(args=cut_args(job.args), finished=job.finished_at, why=why)
        self.store.worker_history_add(job.id, summary)
        self.log.info("job.removed", job_id=job.id, why=why)

    def signal_job(self, job: WorkerJob, sig: int, by: str) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM):
            job.killed_by = job.killed_by or by
        target = job.proc or job.prepare
        if target is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            target.kill(f"killed by {by}")
        else:
            target.signal(sig)
        if job.proc is None and sig == signal.SIGINT:
            job.killed_by = by  # Ctrl-C while its environment is built: it never starts

    def find(self, prefix: str) -> list[WorkerJob]:
        with self.lock:
            return [j for j in self.jobs.values() if j.id.startswith(prefix)]

    def pause(self, suspend: bool, evict: bool = False) -> None:
        self.book.paused = True
        if evict:
            self.evict_all(f"{self.me.name}'s owner took the machine back (homie pause --evict)")
        elif suspend:
            self.suspended = True
            for j in self.all_jobs():
                if j.proc and not j.proc.done:
                    j.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.book.paused = False
        if self.suspended:
            self.suspended = False
            for j in self.all_jobs():
                if j.proc and not j.proc.done:
                    j.proc.signal(signal.SIGCONT)

    def evict_all(self, why: str) -> int:
        """Every job here stops (SIGTERM, then SIGKILL after evict_grace_seconds),
        leaves its last checkpoint, and its submitter runs it on elsewhere."""
        n = 0
        for job in [j for j in self.all_jobs() if not j.done.is_set() and not j.evicted_by]:
            job.evicted_by = why
            job.killed_by = job.killed_by or "eviction"
            target = job.proc or job.prepare
            if target is not None:
                target.kill(f"evicted: {why}", grace=self.config.evict_grace_seconds)
            n += 1
            self.log.info("job.evicted", job_id=job.id, submitter=job.submitter, why=why)
        return n

    def _poll_checkpoint(self, job: WorkerJob) -> None:
        assert job.ckpt is not None
        # At a random moment of the second: polled on the dot every second, a job that
        # writes every half second could always be caught writing in the settle pause.
        time.sleep(random.uniform(0, 0.5))
        try:
            if job.ckpt.poll():
                self.log.info("job.checkpoint", job_id=job.id, seq=job.ckpt.seq,
                              bytes=job.ckpt.snapshot.size if job.ckpt.snapshot else 0)
        except (HomieError, OSError) as e:
            self.warn("job.checkpoint_failed", "cannot take a checkpoint", job_id=job.id, error=str(e))
        except Exception:
            self.log.exception("job.checkpoint_crashed", job_id=job.id)

    def lending_loop(self, stop: threading.Event) -> None:
        """About every second: take the checkpoints that are due; every few
        seconds under accept_jobs: idle, see whether the owner is back."""
        owner = OwnerWatch(self.config.idle_threshold)
        next_owner = 0.0
        polling: dict[str, threading.Thread] = {}
        while not stop.wait(1.0):
            with self.lock:
                running = [j for j in self.jobs.values() if j.state is WorkerJobState.RUNNING and not j.done.is_set()]
            polling = {k: t for k, t in polling.items() if t.is_alive()}
            for job in running:
                if job.ckpt is None or job.evicted_by or (job.proc is not None and job.proc.done) or job.id in polling:
                    continue
                # A thread per job: one whose checkpoint takes long to read (a huge
                # file) holds up neither the other jobs' checkpoints nor the owner's watch.
                polling[job.id] = t = threading.Thread(target=self._poll_checkpoint, args=(job,),
                                                       name=f"ckpt-{job.id}", daemon=True)
                t.start()
            if self.config.accept_jobs != "idle" or time.monotonic() < next_owner:
                continue
            next_owner = time.monotonic() + SAMPLE_EVERY
            if not running:
                owner.reset()
                continue
            try:
                back = owner.sample({j.id: j.proc.cpu_seen for j in running if j.proc is not None})
            except Exception:
                self.log.exception("owner.sample_failed")
                continue
            if back:
                n = self.evict_all(f"{self.me.name}'s owner is using it"
                                   f" ({owner.owner_percent:.0f}% CPU outside homie's jobs)")
                if n:
                    self.announce()
                owner.reset()

    def janitor(self) -> None:
        """Drop finished jobs whose submitter never collected the results."""
        keep = self.config.keep_results_hours * 3600
        now = time.time()
        for job in self.all_jobs():
            if job.done.is_set() and job.finished_at and now - job.finished_at > keep:
                try:
                    self.drop(job, "expired")
                except Exception:
                    self.log.exception("job.expire_failed", job_id=job.id)

    def recover(self) -> None:
        """After a crash or kill -9, jobs of the previous run have no one to
        report to: kill what still runs of them and clear their directories."""
        swept = self.cgroups.sweep() if self.cgroups is not None else 0
        for job_id, rec in self.store.worker_jobs().items():
            try:
                killed = self._recover_one(job_id, rec)
            except Exception:  # one job's leftovers must not keep the daemon from starting
                self.log.exception("job.recover_failed", job_id=job_id)
                killed = 0
            self.store.worker_job_done(job_id)
            self.log.warning("job.lost_in_restart", job_id=job_id, killed=killed + swept, submitter=rec.get("from"))
        for stale in list(self.work.staging.iterdir()):
            try:
                jobdir.remove(stale)
            except OSError as e:
                self.log.warning("job.remove_failed", path=str(stale), error=str(e))

    def _recover_one(self, job_id: str, rec: dict) -> int:
        uid = rec.get("uid")
        if uid is not None:
            # A per-job uid was that job's alone, unless another daemon has
            # given it out again since our crash released its lock.
            pids = [] if self.identities.in_use_elsewhere(uid) else processes_of_uid(uid)
        else:
            pids = processes_of_job(job_id, os.geteuid())
        for p in pids:
            try:
                p.kill()
            except Exception:
                pass
        d = Path(rec["dir"]) if rec.get("dir") else None
        if d is not None and d.parent == self.work.root and d.name == job_id:
            jobdir.remove(d)
        _unlink(self.logs / f"{job_id}.log")
        return len(pids)

    def shutdown(self, grace: float = 3.0) -> None:
        jobs = [j for j in self.all_jobs() if not j.done.is_set()]
        for j in jobs:
            self.signal_job(j, signal.SIGTERM, by=f"{self.me.name}'s owner (homie down)")
        deadline = time.monotonic() + grace
        for j in jobs:
            j.done.wait(max(0.0, deadline - time.monotonic()))
        self.server.close()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
