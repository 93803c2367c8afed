"""Built-in executors: subprocess (the default) and venv (when the job carries
requirements.txt). Executors only decide what runs; homie.runner runs it."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

from homie.errors import HomieError
from homie.hookspecs import hookimpl
from homie.protocol import STDERR, STDOUT


def script_command(job, python: str) -> list[str]:
    """`.py` runs with the worker's Python; anything else by its shebang line."""
    path = Path(job.dir) / job.script
    if job.script.endswith(".py"):
        return [python, job.script, *job.args]
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError as e:
        raise HomieError(f"cannot read {job.script}: {e.strerror}") from None
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

    Environments are keyed by the hash of requirements.txt and the Python
    version, so the next job with the same requirements starts at once.
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
        req = Path(job.dir, "requirements.txt")
        data = req.read_bytes() if req.exists() else b""
        h = hashlib.sha256()
        h.update(data)
        h.update(self.ctx.python_version.encode())
        return h.hexdigest()[:16]

    def env_dir(self, job) -> Path:
        return Path(self.ctx.home.venvs) / self._key(job)

    def prepare(self, job, emit) -> None:
        key = self._key(job)
        root = Path(self.ctx.home.venvs)
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
            shutil.rmtree(tmp, ignore_errors=True)
            user = self.ctx.user
            try:
                # Built as the job user (installing can run the job's code: setup.py of a local
                # sdist), then handed back to the daemon so no later job can change it.
                tmp.mkdir(mode=0o755)
                if user.differs:
                    os.chown(tmp, user.uid, user.gid)
                self._run(job, [self.ctx.python, "-m", "venv", str(tmp)], emit)
                req = Path(job.dir, "requirements.txt")
                pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                       "--no-input", "-r", str(req)]
                # Local wheels/paths in requirements.txt are relative to the job directory.
                self._run(job, pip, emit, cwd=job.dir)
                if user.differs:
                    for d, dirs, fnames in os.walk(tmp):
                        for name in [d, *(os.path.join(d, n) for n in dirs + fnames)]:
                            os.lchown(name, os.geteuid(), os.getegid())
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            (tmp / ".homie-ready").touch()
            try:
                os.rename(tmp, target)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another job won the race
            self.ctx.evict_venvs(keep={key})

    def _run(self, job, argv, emit, cwd=None) -> None:
        tmpdir = str(Path(job.dir, ".homie", "tmp"))  # the job user's: pip's cache and temp files
        env = {**self.ctx.base_env, "PIP_NO_INPUT": "1", "HOME": tmpdir, "TMPDIR": tmpdir}
        user = self.ctx.user
        kw = {"user": user.uid, "group": user.gid, "extra_groups": []} if user.differs else {}
        # umask 022: the environment is shared by jobs that may run as another user
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True, umask=0o022, **kw)
        job.prepare_pid = proc.pid
        for line in proc.stdout:
            emit(STDOUT, line)
        code = proc.wait()
        job.prepare_pid = None
        if code != 0:
            raise HomieError(f"environment setup failed: {' '.join(argv[:4])}... exited with {code}")

    def command(self, job) -> tuple[list[str], dict]:
        env_dir = self.env_dir(job)
        python = str(env_dir / "bin" / "python")
        env = {"VIRTUAL_ENV": str(env_dir), "PATH": f"{env_dir / 'bin'}{os.pathsep}{self.ctx.base_env.get('PATH', '')}"}
        return script_command(job, python), env


@hookimpl
def homie_executors():
    return [SubprocessExecutor, VenvExecutor]
