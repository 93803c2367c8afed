"""Built-in executors: subprocess (the default) and venv (when the job carries
requirements.txt). Executors only decide what runs; the worker runs it. Written
against the public plugin API (homie.api) only, like any third-party executor."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from homie.api import HOME_DIR, JOB_DIR, STDERR, VENV_DIR, HomieError, hookimpl, script_argv


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
        return script_argv(job, self.ctx.python), {}


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
        self._keys: dict[str, tuple[str, list]] = {}  # job id -> (key, inputs): computed once

    def wants(self, job) -> bool:
        return job.has_file("requirements.txt")

    def _inputs(self, job) -> list:
        """The job's files pip can read: requirements.txt and what it names by
        relative path (-r/-c files, local wheels and projects, --find-links
        directories), by manifest entry. The build sees only these, so the
        environment depends on nothing that is not in its key."""
        by_path = {f.path: f for f in job.files}
        chosen: dict = {}
        todo = ["requirements.txt"]
        while todo:
            rel = todo.pop()
            if rel in chosen or rel not in by_path:
                continue
            chosen[rel] = by_path[rel]
            if len(chosen) > 1 and not rel.endswith(".txt"):
                continue
            try:
                with job.open(rel) as f:
                    text = f.read(1 << 20).decode(errors="replace")
            except (OSError, HomieError):
                continue
            for ref in _relative_refs(text):
                ref = os.path.normpath(ref)
                if ref in ("", ".", "..") and ref != ".":
                    continue
                for path in by_path:
                    if ref == "." or path == ref or path.startswith(ref.rstrip("/") + "/"):
                        todo.append(path)
        return sorted(chosen.values(), key=lambda f: f.path)

    def _key(self, job) -> str:
        cached = self._keys.get(job.id)
        if cached:
            return cached[0]
        inputs = self._inputs(job)
        h = hashlib.sha256()
        parts = [job.submitter, self.ctx.python_version, *(f"{f.path}\0{f.sha256}" for f in inputs)]
        for part in parts:
            b = part.encode()
            h.update(len(b).to_bytes(8, "big"))
            h.update(b)
        key = h.hexdigest()[:16]
        self._keys[job.id] = (key, inputs)
        return key

    def venv_dir(self, job) -> str:
        """The environment's host path (the worker binds it into the sandbox)."""
        return str(Path(self.ctx.venvs) / self._key(job))

    def _seen_as(self, host_path: str) -> str:
        return VENV_DIR if self.ctx.sandboxed else host_path

    def prepare(self, job, emit) -> None:
        key = self._key(job)
        root = Path(self.ctx.venvs)
        target = root / key
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if os.path.isfile(target / READY) and not os.path.islink(target / READY):
                os.utime(target / READY, follow_symlinks=False)
                emit(STDERR, f"homie: reusing environment {key}\n".encode())
                return
            emit(STDERR, f"homie: building environment {key}\n".encode())
            tmp = root / f".{key}.{os.getpid()}.tmp"
            src = root / f".{key}.{os.getpid()}.src"
            for old in (tmp, src):
                self.ctx.remove_tree(old)
            try:
                # Only what the build may read, given to the job's identity.
                self.ctx.stage_files(job, [f.path for f in self._keys[job.id][1]], src)
                for d in (tmp, tmp / ".homie-tmp"):
                    self.ctx.make_setup_dir(job, d)  # readable by later jobs' uids
                venv = self._seen_as(str(tmp))
                self._run(job, [self.ctx.python, "-I", "-m", "venv", venv], str(tmp), src)
                req = f"{JOB_DIR if self.ctx.sandboxed else src}/requirements.txt"
                self._run(job, [f"{venv}/bin/python", "-I", "-m", "pip", "install", "--disable-pip-version-check",
                                "--no-input", "-r", req], str(tmp), src)
                self.ctx.remove_tree(tmp / ".homie-tmp")
                # Taken back whole, whatever the build left: every file the
                # daemon's, no setuid bit, nothing writable by others.
                self.ctx.take_back(tmp)
                _mark_ready(tmp, self.ctx)
            except BaseException:
                self.ctx.remove_tree(tmp)
                raise
            finally:
                self.ctx.remove_tree(src)
            try:
                os.rename(tmp, target)
            except OSError:
                self.ctx.remove_tree(tmp)  # another job won the race
            self.ctx.evict_venvs(keep={key})

    def _run(self, job, argv, venv_host: str, src: Path) -> None:
        home = HOME_DIR if self.ctx.sandboxed else str(Path(venv_host, ".homie-tmp"))
        # Downloads and builds go to disk beside the environment, not to the
        # sandbox's small /tmp (a wheel of a GB or two is common).
        tmp = f"{self._seen_as(venv_host)}/.homie-tmp"
        env = {**self.ctx.base_env, "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1", "HOME": home, "TMPDIR": tmp}
        outcome = self.ctx.run_setup(job, argv, env=env, venv=venv_host, venv_writable=True, job_dir=src)
        if outcome.code != 0:
            raise HomieError(f"environment setup failed: {' '.join(argv[:4])}... exited with"
                             f" {outcome.code if outcome.code is not None else outcome.reason}")

    def command(self, job) -> tuple[list[str], dict]:
        env_dir = self._seen_as(self.venv_dir(job))
        python = f"{env_dir}/bin/python"
        env = {"VIRTUAL_ENV": env_dir, "PATH": f"{env_dir}/bin{os.pathsep}{self.ctx.base_env.get('PATH', '')}"}
        return script_argv(job, python), env


READY = ".homie-ready"
_REF_OPTIONS = ("-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-f", "--find-links")


def _relative_refs(text: str) -> list[str]:
    """Relative paths a requirements file names (values of -r/-c/-e/-f, local
    wheels, sdists and project directories); URLs and absolute paths are not."""
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        skip = False
        for i, tok in enumerate(tokens):
            if skip:  # the value of the option before, taken already
                skip = False
                continue
            value = None
            if tok in _REF_OPTIONS and i + 1 < len(tokens):
                value, skip = tokens[i + 1], True
            elif "=" in tok and tok.split("=", 1)[0] in _REF_OPTIONS:
                value = tok.split("=", 1)[1]
            elif tok == "." or tok.startswith("./") or (i == 0 and "/" in tok and not tok.startswith("-")):
                value = tok
            if value and "://" not in value and not value.startswith(("/", "~")):
                out.append(value.split("#", 1)[0].split("[", 1)[0])
    return out


def _mark_ready(venv: Path, ctx) -> None:
    """The marker a reuse looks for, made by the daemon in its own tree: no
    link a build left at that name is followed."""
    fd = os.open(venv, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            os.unlink(READY, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            ctx.remove_tree(venv / READY)
        os.close(os.open(READY, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


@hookimpl
def homie_executors():
    return [SubprocessExecutor, VenvExecutor]
