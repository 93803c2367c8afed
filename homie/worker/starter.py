"""The starter: runs one friend's job on this machine (HTCondor's name for it):
the executor's set-up step and the job itself, each in its sandbox, cgroup
and identity; then its final checkpoint, its directory taken back, its
results listed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from homie import checkpoints, files
from homie.errors import HomieError, ManifestError
from homie.wire import protocol
from homie.worker import execution, jobdir, sandbox
from homie.worker.job import WorkerJob, WorkerJobState
from homie.worker.launch import Launch, Limits
from homie.worker.proctree import processes_of_uid
from homie.worker.runner import JobProcess, Outcome

if TYPE_CHECKING:
    from homie.worker.startd import Worker

PIDS_MAX = 1024  # processes (threads count too) one job may have at once
MAX_RESULT_BYTES = 64 << 30  # what a submitter takes (files.validate_manifest): more is never read


def cap_nproc_for_jobs() -> bool:
    """A root daemon whose jobs each get a uid of their own: every job's RLIMIT_NPROC is
    PIDS_MAX, whatever else the machine runs. The daemon sets it as its own, soft and hard,
    and every job inherits it, instead of a prlimit exec per job (~0.7 ms of CPU each).
    Root in the first user namespace is exempt from its own RLIMIT_NPROC (the kernel skips
    the check for it), so the daemon's threads are not capped; elsewhere (root of a
    container) the daemon would be, and this does nothing. True once set. Every other
    child of the daemon inherits the cap too: root ones are exempt, and one that a plugin
    runs as another non-job uid counts that uid's processes against 1024 (docs/plugins.md)."""
    import resource

    if os.getresuid() != (0, 0, 0) or not _first_user_namespace():
        return False  # the kernel's exemption is for a real uid of 0 in the first user namespace
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (PIDS_MAX, PIDS_MAX))
    except (OSError, ValueError):
        return False
    return True


def _first_user_namespace() -> bool:
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


class Starter:
    def __init__(self, worker: Worker):
        self.w = worker

    def _executor_for(self, job: WorkerJob):
        # Bound to the job: the plugin's executor sees a read-only homie.api.Job, never WorkerJob.
        return execution.bind(self.w.executors, job, self.w.ctx)

    def launch(self, job: WorkerJob, argv: list[str], env: dict, *, venv: str | None = None,
               venv_writable: bool = False, umask: int = 0o077, job_dir: Path | None = None) -> Launch:
        """How to start `argv` with `env` for `job`: in its sandbox, cgroup and identity."""
        ident = job.ident
        assert ident is not None, "a job gets its identity before anything of it runs"
        per_job_uid = self.w.identities.per_job and ident.differs
        env = {**env, "HOMIE_JOB_ID": job.id}
        cg = job.cgroup
        if cg is None and self.w.cgroups is not None and self.w.cgroups.parents:
            mem = int(self.w.config.max_job_memory_gb * 2**30) if self.w.config.max_job_memory_gb else None
            cg = job.cgroup = self.w.cgroups.create(job.id, mem, PIDS_MAX)
        cg = cg if cg is not None and cg.dirs else None
        prefix: list[str] = []
        if (cg is None or self.w.cgroups is None or "pids" not in self.w.cgroups.limits) and not (
                per_job_uid and self.w.nproc_capped):
            # No pids cgroup: RLIMIT_NPROC, which counts every process of the uid,
            # the owner's own included when jobs share the daemon's uid.
            base = 0 if per_job_uid else len(processes_of_uid(ident.uid))
            prlimit = sandbox.system_tool("prlimit")
            if prlimit:
                prefix = [prlimit, f"--nproc={base + PIDS_MAX}", "--"]
        if not self.w.sandbox.active:
            return Launch(argv=[*prefix, *argv], cwd=str(job_dir or job.dir), env=env, user=ident, cgroup=cg,
                          uid_sweep=ident.uid if per_job_uid else None, umask=umask)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe() if cg is not None else (None, None)
        gpus = [job.gpu_index] if job.gpu and job.gpu_index is not None else None
        spec = sandbox.Spec(
            job_dir=str(job_dir or job.dir), venv=venv, venv_writable=venv_writable,
            network=self.w.config.job_network, gpus=gpus, ro_paths=list(self.w.config.sandbox_ro_paths),
            tmp_bytes=int(self.w.config.sandbox_tmp_mb * 2**20), env=env, info_fd=info_w, block_fd=block_r)
        # Nothing of the job's reaches bubblewrap itself: its environment and
        # the options are inside the args memfd and set only in the sandbox.
        argv, argv_fd = sandbox.long_command(argv, self.w.ctx.python)
        args, cmd = sandbox.args_fd(sandbox.options(argv, spec, python=self.w.ctx.python,
                                                    disable_userns=self.w.sandbox.disable_userns,
                                                    private=self.private_paths()))
        pass_fds = tuple(fd for fd in (args, info_w, block_r, argv_fd) if fd is not None)
        assert self.w.bwrap is not None  # the sandbox is active only where bwrap was found
        return Launch(argv=[*prefix, self.w.bwrap, "--args", str(args), "--", *cmd], cwd="/",
                      env={"PATH": sandbox.SYSTEM_PATH},
                      user=ident, cgroup=cg, info_fd=info_r, block_w=block_w, pass_fds=pass_fds, umask=umask)

    def private_paths(self) -> tuple[str, ...]:
        """What no bind may expose: the owner's home and the homie home."""
        return tuple(p for p in (os.path.expanduser("~"), str(self.w.home.root)) if p and p != "/")

    def run_setup(self, job: WorkerJob, argv: list[str], *, env: dict, venv: str | None = None,
                  venv_writable: bool = False, job_dir: Path | None = None) -> Outcome:
        """Run an executor's set-up step (building a venv) as the job, in its
        sandbox, with its output in the job's log; the job's kill reaches it."""
        limits = Limits(max_seconds=self.w.config.max_job_seconds)
        # umask 022: what a set-up step builds (a venv) is shared read-only with later jobs of other uids.
        proc = JobProcess(job.id, self.launch(job, argv, env, venv=venv, venv_writable=venv_writable, umask=0o022,
                                              job_dir=job_dir), job.log, limits, finish_log=False)
        job.prepare = proc
        try:
            if job.killed_by:
                raise HomieError(f"killed by {job.killed_by} before it started")
            proc.start()
            outcome = proc.wait()
            assert outcome is not None  # no timeout: wait() returns once it is over
            return outcome
        finally:
            job.prepare = None

    @staticmethod
    def _binds(ex, job: WorkerJob) -> dict:
        """What an executor needs bound into the sandbox (the venv executor: its environment)."""
        venv_dir = getattr(ex, "venv_dir", None)
        return {"venv": venv_dir(job)} if venv_dir else {}

    def _job_env(self, job: WorkerJob) -> dict:
        env = dict(self.w.ctx.base_env)
        if self.w.sandbox.active:
            home, tmp = sandbox.HOME_DIR, "/tmp"
        else:
            home, tmp = str(job.dir), str(job.dir / files.RESERVED_DIR / "tmp")
        env.update({
            "HOME": home,
            "TMPDIR": tmp,
            "HOMIE_SUBMITTER": job.submitter,
            "HOMIE_PEER": self.w.me.name,
            # Importing a shipped module must not write pkg/__pycache__/*.pyc into the
            # job directory: it would come back as a "result" (the inputs never carry it).
            "PYTHONDONTWRITEBYTECODE": "1",
            # Where a checkpoint goes to be carried home and restored if the job moves.
            "HOMIE_CHECKPOINT_DIR": (f"{sandbox.JOB_DIR}/{checkpoints.DEFAULT_DIR}" if self.w.sandbox.active
                                     else str(job.dir / checkpoints.DEFAULT_DIR)),
        })
        # The submitter's own variables; homie's names stay homie's.
        env.update({k: v for k, v in job.extra_env.items() if not k.startswith("HOMIE_")})
        if job.gpu:
            gpus = self.w.resources().get("gpus") or []
            best = max(gpus, key=lambda g: g.get("mem_free_gb") or 0) if gpus else None
            job.gpu_index = str(best.get("index", 0)) if best else "0"
            env["CUDA_VISIBLE_DEVICES"] = job.gpu_index
        else:
            # A job that did not ask for a GPU does not get to take the owner's.
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def run(self, job: WorkerJob) -> None:
        outcome = Outcome()
        try:
            ex = self._executor_for(job)
            ex.prepare(job, job.log.append)
            if job.killed_by:
                raise HomieError(f"killed by {job.killed_by} before it started")
            argv, extra_env = ex.command(job)
            env = {**self._job_env(job), **extra_env}
            limits = Limits(
                max_seconds=min((t for t in (self.w.config.max_job_seconds, job.timeout) if t), default=None),
                max_memory_bytes=(int(self.w.config.max_job_memory_gb * 2**30) if self.w.config.max_job_memory_gb
                                  else None),
            )
            job.start_offset = job.log.end
            proc = JobProcess(job.id, self.launch(job, argv, env, **self._binds(ex, job)), job.log, limits)
            stdin = None
            if job.stdin:
                # Opened by the daemon before the job runs, never through a link.
                stdin = os.fdopen(jobdir.open_beneath(job.dir, job.stdin), "rb")
            try:
                proc.start(stdin=stdin)
            finally:
                if stdin is not None:
                    stdin.close()
            job.proc = proc
            job.state = WorkerJobState.RUNNING
            if job.evicted_by:  # evicted while it was being started: it goes at once
                proc.kill(f"evicted: {job.evicted_by}", grace=self.w.config.evict_grace_seconds)
            elif job.killed_by:  # a kill that came while it was being started found no process yet
                proc.kill(f"killed by {job.killed_by}")
            elif self.w.suspended:
                proc.signal(signal.SIGSTOP)
            self.w.store.worker_job(job.id, {"state": "running", "dir": str(job.dir), "pid": proc.pid,
                                               "uid": job.ident.uid if job.ident and self.w.identities.per_job
                                               else None,
                                               "from": job.submitter})
            self.w.log.info("job.started", job_id=job.id, pid=proc.pid, argv0=os.path.basename(argv[0]))
            self.w.announce()
            outcome = proc.wait() or Outcome()
        except HomieError as e:
            job.log.append(protocol.STDERR, f"homie: {e}\n".encode())
            outcome = Outcome(code=None, reason=str(e))
        except FileNotFoundError as e:
            job.log.append(protocol.STDERR, f"homie: cannot start the job: {e}\n".encode())
            outcome = Outcome(code=None, reason=f"cannot start the job: {e.strerror}: {e.filename}")
        except Exception as e:
            self.w.log.exception("job.crashed", job_id=job.id)
            outcome = Outcome(code=None, reason=f"worker error: {type(e).__name__}: {e}")
        if job.evicted_by:
            outcome.reason = f"evicted: {job.evicted_by}"
            self._final_checkpoint(job)
        elif job.killed_by and not outcome.reason:
            outcome.reason = f"killed by {job.killed_by}"
        if job.cgroup is not None:
            job.cgroup.kill()  # nothing of the job may outlive it, whatever it did
            job.cgroup.remove()
            job.cgroup = None
        try:
            # Before the directory is taken back: whose each file is tells the job's own from
            # what it linked in (jobdir.not_the_jobs).
            job.results = self._results(job)
        except Exception as e:
            self.w.log.exception("job.results_failed", job_id=job.id)
            if not outcome.reason:
                outcome.reason = f"could not collect results: {e}"
        self._reclaim(job)
        job.outcome = outcome
        job.finished_at = time.time()
        job.state = WorkerJobState.EXITED
        self.w.book.release(job.id)
        job.log.finish()
        job.done.set()
        self.w.store.worker_job(job.id, {"state": "exited", "dir": str(job.dir), "from": job.submitter})
        gpu_s = outcome.wall_s if job.gpu else 0.0
        self.w.karma.record(job.submitter, given=True, cpu_s=outcome.cpu_s, wall_s=outcome.wall_s,
                               gpu_s=gpu_s, job_id=job.id)
        self.w.log.info("job.exited", job_id=job.id, code=outcome.code, signal=outcome.signal,
                      reason=outcome.reason, cpu_s=outcome.cpu_s, wall_s=outcome.wall_s, results=len(job.results))
        self.w.announce()

    def _final_checkpoint(self, job: WorkerJob) -> None:
        """What the job left in its checkpoint paths once it stopped: nothing can change it any more."""
        if job.ckpt is None:
            return
        try:
            job.ckpt.poll(final=True)
        except (HomieError, OSError) as e:
            job.log.append(protocol.STDERR, f"homie: no final checkpoint: {e}\n".encode())

    def _reclaim(self, job: WorkerJob) -> None:
        """Its processes gone, a job's directory goes back to the daemon and its
        uid back to the pool at once, not when the results are collected: a
        friend who never collects cannot hold uids for a day. A directory too
        deep to take back keeps its uid until it is removed."""
        if not (self.w.identities.per_job and job.ident and job.ident.differs):
            return
        try:
            jobdir.give(job.dir, os.geteuid(), os.getegid(), shared_blobs=False, only_from=job.ident.uid)
        except (OSError, HomieError) as e:
            self.w.log.warning("job.reclaim_failed", job_id=job.id, error=str(e))
            return
        self.w.identities.release(job.id)

    def _results(self, job: WorkerJob) -> list[dict]:
        # The job's processes are all gone by now (pid namespace, cgroup, uid
        # sweep), and every open below is by descriptor with O_NOFOLLOW: what a
        # job left as a symlink is skipped, never followed.
        if job.evicted_by:
            return []  # its submitter takes only its checkpoint: nothing to read (a sparse TiB costs the job nothing)
        changed = jobdir.changed(job.dir, job.inputs_stat)
        inputs = jobdir.inodes(job.inputs_stat)
        out = []
        seen = set()
        total = 0
        for rel in changed:
            # A job can create names a manifest refuses; skip those, say so, send the rest.
            try:
                files.check_relpath(rel)
                folded = files._fold(rel)
                if folded in seen:
                    raise ManifestError(f"{rel!r} clashes with another result name")
                seen.add(folded)
            except ManifestError as e:
                job.log.append(protocol.STDERR, f"homie: not sending result {e}\n".encode())
                continue
            try:
                fd = jobdir.open_beneath(job.dir, rel)
            except (OSError, ManifestError):
                continue
            try:
                st = os.fstat(fd)
                if job.ident is not None and jobdir.not_the_jobs(st, job.ident.uid, inputs):
                    job.log.append(protocol.STDERR, f"homie: not sending result {rel!r}: it is a hard link to a"
                                                    " file the job does not own\n".encode())
                    continue
                if total + st.st_size > MAX_RESULT_BYTES:
                    job.log.append(protocol.STDERR, f"homie: not sending result {rel!r}: the results would be more"
                                                    f" than {MAX_RESULT_BYTES >> 30} GiB\n".encode())
                    continue
                size, sha, _ = files.sha256_fd(fd)
                total += size
                mode = 0o755 if st.st_mode & 0o100 else 0o644
            except OSError:
                continue
            finally:
                os.close(fd)
            out.append({"path": rel, "mode": mode, "size": size, "sha256": sha})
        # A job that wrote into a hard-linked input changed the cached blob too: drop it.
        for f in job.files:
            try:
                if self.w.blobs.has(f["sha256"]):
                    st = os.stat(self.w.blobs.path(f["sha256"]))
                    if st.st_size != f["size"]:
                        self.w.blobs.discard(f["sha256"])
            except OSError:
                pass
        return out
