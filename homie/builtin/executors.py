"""Built-in executors: subprocess (the default) and venv (when the job carries
requirements.txt). Executors only decide what runs; homie.runner runs it."""

from __future__ import annotations

import hashlib
import os
import shlex
import threading
from pathlib import Path

from homie import files, jobdir, sandbox
from homie.errors import HomieError
from homie.hookspecs import hookimpl
from homie.protocol import STDERR


def script_command(job, python: str) -> list[str]:
    """`.py` runs with the worker's Python; anything else by its shebang line."""
    if job.script.endswith(".py"):
        return [python, job.script, *job.args]
    try:
        fd = jobdir.open_beneath(Path(job.dir), job.script)  # never through a link
        with os.fdopen(fd, "rb") as f:
            first = f.readline(512)
    except (OSError, HomieError) as e:
        raise HomieError(f"cannot read {job.script}: {getattr(e, 'strerror', None) or e}") from None
    if first.startswith(b"#!"):
        interp = shlex.split(first[2:].decode(errors="replace").strip())
        if interp:
            return [*interp, job.script, *job.args]
    raise HomieError(f"don't know how to run {job.script}: not a .py file and no #! line")


class SubprocessExecutor:
    """Runs the script as a plain child process in the job directory."""

    name = "subprocess"
    priority = -100  # the fallback when "auto" finds nothing better

    def __init__(self, ctx):
        self.ctx = ctx

    def wants(self, job) -> bool:
        return True

    def prepare(self, job, emit) -> None:
        pass

    def command(self, job) -> tuple[list[str], dict]:
        return script_command(job, self.ctx.python), {}


class VenvExecutor:
    """Installs the job's requirements.txt into a cached virtual environment.

    Environments are keyed by the submitter, the hash of requirements.txt and
    the Python version, so the next job with the same requirements starts at
    once, and no member's job ever runs in an environment another member's
    job built. The build runs in the job's sandbox as the job (installing can
    run the job's code: setup.py of a local sdist), with pip isolated (-I: the
    job directory is not on its import path, so a shipped `pip/` replaces
    nothing); afterwards the environment is handed back to the daemon and
    given to later jobs read-only.
    """

    name = "venv"
    priority = 10
    _locks: dict[str, threading.Lock] = {}
    _locks_guard = threading.Lock()

    def __init__(self, ctx):
        self.ctx = ctx

    def wants(self, job) -> bool:
        return any(f["path"] == "requirements.txt" for f in job.files)

    def _key(self, job) -> str:
        try:
            fd = jobdir.open_beneath(Path(job.dir), "requirements.txt")
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        except (OSError, HomieError):
            data = b""
        h = hashlib.sha256()
        for part in (job.submitter.encode(), data, self.ctx.python_version.encode()):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()[:16]

    def venv_dir(self, job) -> str:
        """The environment's host path (the worker binds it into the sandbox)."""
        return str(Path(self.ctx.work.venvs) / self._key(job))

    def _seen_as(self, host_path: str) -> str:
        return sandbox.VENV_DIR if self.ctx.sandboxed else host_path

    def prepare(self, job, emit) -> None:
        key = self._key(job)
        root = Path(self.ctx.work.venvs)
        target = root / key
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if (target / ".homie-ready").exists():
                os.utime(target / ".homie-ready")
                emit(STDERR, f"homie: reusing environment {key}\n".encode())
                return
            emit(STDERR, f"homie: building environment {key}\n".encode())
            tmp = root / f".{key}.{os.getpid()}.tmp"
            if tmp.exists():
                jobdir.remove(tmp)
            ident = job.ident
            try:
                os.mkdir(tmp, 0o700)
                os.chmod(tmp, 0o755)  # readable by later jobs' uids; the daemon's umask is 077
                if ident.differs:
                    os.chown(tmp, ident.uid, ident.gid)
                venv = self._seen_as(str(tmp))
                os.mkdir(tmp / ".homie-tmp", 0o700)
                if ident.differs:
                    os.chown(tmp / ".homie-tmp", ident.uid, ident.gid)
                self._run(job, [self.ctx.python, "-I", "-m", "venv", venv], str(tmp))
                req = f"{self.ctx.job_path(job)}/requirements.txt"
                self._run(job, [f"{venv}/bin/python", "-I", "-m", "pip", "install", "--disable-pip-version-check",
                                "--no-input", "-r", req], str(tmp))
                jobdir.remove(tmp / ".homie-tmp")
                if ident.differs:
                    jobdir.give(tmp, os.geteuid(), os.getegid())  # no later job can change it
            except BaseException:
                jobdir.remove(tmp)
                raise
            (tmp / ".homie-ready").touch()
            try:
                os.rename(tmp, target)
            except OSError:
                jobdir.remove(tmp)  # another job won the race
            self.ctx.evict_venvs(keep={key})

    def _run(self, job, argv, venv_host: str) -> None:
        home = sandbox.HOME_DIR if self.ctx.sandboxed else str(Path(job.dir, files.RESERVED_DIR, "tmp"))
        # Downloads and builds go to disk beside the environment, not to the
        # sandbox's small /tmp (a wheel of a GB or two is common).
        tmp = f"{self._seen_as(venv_host)}/.homie-tmp"
        env = {**self.ctx.base_env, "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1", "HOME": home, "TMPDIR": tmp}
        outcome = self.ctx.run_setup(job, argv, env=env, venv=venv_host, venv_writable=True)
        if outcome.code != 0:
            raise HomieError(f"environment setup failed: {' '.join(argv[:4])}... exited with"
                             f" {outcome.code if outcome.code is not None else outcome.reason}")

    def command(self, job) -> tuple[list[str], dict]:
        env_dir = self._seen_as(self.venv_dir(job))
        python = f"{env_dir}/bin/python"
        env = {"VIRTUAL_ENV": env_dir, "PATH": f"{env_dir}/bin{os.pathsep}{self.ctx.base_env.get('PATH', '')}"}
        return script_command(job, python), env


@hookimpl
def homie_executors():
    return [SubprocessExecutor, VenvExecutor]
