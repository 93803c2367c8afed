"""The worker's side of the executor API (homie.api): an executor plugin bound to one job.

Executors see only the public read-only `api.Job` and an `api.ExecutorContext`;
the worker keeps its internal job and calls the `Bound` executor `bind()`
returns with it, exactly as it would call the plugin's executor.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

from homie import api, files
from homie.worker import jobdir


def job_view(job) -> api.Job:
    """The read-only view of a worker's job that executors get."""
    return api.Job(
        id=job.id, script=job.script, args=tuple(job.args),
        files=tuple(api.JobFile(path=f["path"], size=f["size"], sha256=f["sha256"],
                                mode=f.get("mode", files.MODE_FILE)) for f in job.files),
        dir=Path(job.dir), gpu=bool(job.gpu), submitter=job.submitter,
    )


class Context:
    """api.ExecutorContext over the worker's context, for one job."""

    def __init__(self, wctx, job):
        self._w = wctx
        self._job = job
        self.view = job_view(job)
        self.config = wctx.config
        self.python = wctx.python
        self.python_version = wctx.python_version
        self.base_env = MappingProxyType(dict(wctx.base_env))
        self.sandboxed = bool(wctx.sandboxed)
        self.venvs = str(wctx.work.venvs)

    def _internal(self, job: api.Job):
        if job.id != self._job.id:
            raise ValueError(f"job {job.id} is not the job this executor runs ({self._job.id})")
        return self._job

    def job_path(self, job: api.Job) -> str:
        return api.JOB_DIR if self.sandboxed else str(job.dir)

    def run_setup(self, job: api.Job, argv, *, env, venv=None, venv_writable=False, job_dir=None) -> api.SetupResult:
        outcome = self._w.run_setup(self._internal(job), list(argv), env=dict(env), venv=venv,
                                    venv_writable=venv_writable, job_dir=Path(job_dir) if job_dir is not None else None)
        return api.SetupResult(code=outcome.code, reason=outcome.reason)

    def stage_files(self, job: api.Job, paths, dest) -> None:
        internal = self._internal(job)
        by_path = {f.path: f for f in job.files}
        os.mkdir(dest, 0o700)
        writer = files.SafeWriter(dest)
        for rel in paths:
            mode = by_path[rel].mode if rel in by_path else files.MODE_FILE
            with job.open(rel) as inp, writer.open_new(rel, mode) as out:
                while chunk := inp.read(1 << 20):
                    out.write(chunk)
        if internal.ident.differs:
            jobdir.give(Path(dest), internal.ident.uid, internal.ident.gid)

    def make_setup_dir(self, job: api.Job, path) -> None:
        ident = self._internal(job).ident
        os.mkdir(path, 0o700)
        os.chmod(path, 0o755)  # readable by later jobs' uids; the daemon's umask is 077
        if ident.differs:
            os.chown(path, ident.uid, ident.gid)

    def take_back(self, path) -> None:
        jobdir.give(Path(path), os.geteuid(), os.getegid(), shared_blobs=False, strip_modes=True)

    def remove_tree(self, path) -> None:
        jobdir.remove(Path(path))

    def evict_venvs(self, keep=()) -> None:
        self._w.evict_venvs(keep=set(keep))


class Bound:
    """A plugin's executor bound to one job. The worker calls it with its internal
    job; the executor gets the view. `venv_dir` exists only if the executor's does."""

    def __init__(self, executor, view: api.Job):
        self.executor = executor
        self.view = view
        self.name = executor.name
        if callable(getattr(executor, "venv_dir", None)):
            self.venv_dir = lambda _job: executor.venv_dir(view)

    def prepare(self, _job, emit) -> None:
        self.executor.prepare(self.view, emit)

    def command(self, _job) -> tuple[list[str], dict]:
        argv, env = self.executor.command(self.view)
        return list(argv), dict(env or {})


def bind(executors: dict, job, wctx) -> Bound:
    """The executor for `job`: the one it names, or with "auto" the highest-priority one that wants it."""
    ctx = Context(wctx, job)
    if job.executor != "auto":
        return Bound(executors[job.executor](ctx), ctx.view)
    wanting = [cls for cls in executors.values() if cls(ctx).wants(ctx.view)]
    cls = max(wanting, key=lambda c: getattr(c, "priority", 0))
    return Bound(cls(ctx), ctx.view)
