"""What executor plugins may use on the worker: the config, the job's Python,
the base environment, and where things are as the job sees them."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from homie.worker import jobdir, sandbox


class WorkerContext:
    """What executors may use: config, the job Python, base env, and where
    things are as the job sees them (inside the sandbox, or on the host)."""

    def __init__(self, config, home, work: jobdir.WorkArea, per_job_uids: bool):
        self.config = config
        self.home = home
        self.work = work
        self.sandboxed = False  # set by the worker once the sandbox probe has run
        self.run_setup: Callable[..., Any] | None = None  # the worker's: an executor's set-up step, sandboxed
        self.python = self._pick_python(config, per_job_uids)
        self.python_version = "{}.{}".format(*sys.version_info[:2])
        self.base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",  # output must arrive live, not when the job ends
        }

    @staticmethod
    def _pick_python(config, per_job_uids: bool) -> str:
        wanted = getattr(config, "job_python", None)
        if wanted:
            return wanted
        # The base interpreter, not the daemon's virtual environment: a job gets a
        # plain Python, not homie's own dependencies.
        base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        if not per_job_uids or jobdir.passable_by_others(base):
            return base
        # The daemon's own interpreter may sit in a private home (e.g. /root);
        # a job's own uid needs one it can execute.
        for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
            if cand and jobdir.passable_by_others(cand):
                return cand
        return base

    def job_path(self, job) -> str:
        """The job directory as the job sees it."""
        return sandbox.JOB_DIR if self.sandboxed else str(job.dir)

    def evict_venvs(self, keep=()) -> None:
        cap = int(self.config.venv_cache_max_gb * 2**30)
        root = Path(self.work.venvs)
        envs = []
        for d in root.iterdir() if root.exists() else []:
            try:
                ready = os.stat(d / ".homie-ready", follow_symlinks=False)
            except OSError:
                continue
            if d.name in keep or d.is_symlink():
                continue
            envs.append((ready.st_mtime, jobdir.tree_size(d), d))
        total = sum(s for _, s, _ in envs)
        for _, size, d in sorted(envs):
            if total <= cap:
                break
            jobdir.remove(d)
            total -= size
