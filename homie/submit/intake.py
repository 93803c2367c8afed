"""Taking a `run` request in: checking it, hashing its inputs, and what each
new attempt uploads (the inputs, with the last checkpoint on top)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from homie import checkpoints, files
from homie.errors import EXIT_NO_PEER, EXIT_USAGE, HomieError, ManifestError
from homie.submit.job import Job, JobRecord
from homie.wire import protocol

STDIN_NAME = ".homie-stdin"  # the manifest entry holding what `homie run` read from its stdin


def new_job_id() -> str:
    return secrets.token_hex(4)


class Intake:
    def __init__(self, config, home_root: Path, outbox: Path, hashes: files.HashCache,
                 names_online: Callable[[], set[str]], own_name: str):
        self.config = config
        self.home_root = home_root
        self.outbox = outbox
        self.hashes = hashes
        self._names_online = names_online
        self.own_name = own_name

    def new_job(self, req: dict) -> Job:
        """A checked, hashed job from a `run` request (not yet queued). Every mistake
        in it is one sentence with exit code 2 now, not a failure after queueing."""
        cwd = Path(req["cwd"])
        script = Path(req["script"])
        script_path = script if script.is_absolute() else cwd / script
        directory = req.get("directory")
        if directory is not None:
            directory = Path(directory) if Path(directory).is_absolute() else cwd / directory
            if not directory.is_dir():
                raise HomieError(f"not a directory: {req['directory']}", EXIT_USAGE)
        if not script_path.is_file():
            raise HomieError(f"script not found: {req['script']}", EXIT_USAGE)
        args = req.get("args") or []
        if not all(isinstance(a, str) for a in args):
            raise HomieError("arguments must be strings", EXIT_USAGE)
        pin = req.get("peer")
        try:
            ckpt_paths = checkpoints.normalize(req.get("checkpoints"))[1:]
        except ManifestError as e:
            raise HomieError(str(e), EXIT_USAGE) from None
        self.check_peer(pin)
        self.check_plugins(req)
        rec = JobRecord(
            id=new_job_id(), created=time.time(), script_path=str(script_path.resolve()), args=list(args),
            cwd=str(cwd),
            # -f paths and globs are the user's, relative to where they typed the command
            files=[f if os.path.isabs(f) else str(cwd / f) for f in (req.get("files") or [])],
            directory=str(directory.resolve()) if directory else None, peer=pin, gpu=bool(req.get("gpu")),
            executor=req.get("executor") or self.config.executor,
            scheduler=req.get("scheduler") or self.config.scheduler,
            tag=req.get("tag"), retries=max(0, int(req["retries"])) if req.get("retries") is not None else None,
            checkpoints=ckpt_paths, env=dict(req.get("env") or {}) or None, timeout=req.get("timeout"),
            name=req.get("name"))
        job = Job(rec, self.outbox)
        try:
            if req.get("stdin_file"):
                self._take_stdin(job, Path(req["stdin_file"]))
            self.collect(job)
        except BaseException:
            shutil.rmtree(job.dir, ignore_errors=True)
            raise
        return job

    def check_peer(self, pin: str | None) -> None:
        if pin and pin != self.own_name and pin not in self._names_online():
            online = ", ".join(sorted(self._names_online() | {self.own_name}))
            raise HomieError(f"unknown peer {pin!r} (online: {online})", EXIT_NO_PEER)

    @staticmethod
    def check_plugins(req: dict) -> None:
        """A scheduler or executor no plugin provides is a mistake to report now,
        not a job that silently falls back or waits for a peer that cannot exist."""
        from homie import checks

        for why in (req.get("scheduler") and checks.check_scheduler(req["scheduler"]),
                    req.get("executor") and checks.check_executor(req["executor"])):
            if why:
                raise HomieError(why, EXIT_USAGE)

    def _take_stdin(self, job: Job, path: Path) -> None:
        """The bytes the CLI read from its stdin become part of the job's inputs
        (sent as STDIN_NAME); the file moves into the job's own directory, so
        a restart of this daemon or `homie restart` still has it."""
        stdin_dir = (self.home_root / "stdin").resolve()
        src = path.resolve()
        if src.parent != stdin_dir or not src.is_file():
            raise HomieError("stdin must come from the homie CLI", EXIT_USAGE)
        os.replace(src, job.dir / "stdin")
        job.update(stdin=STDIN_NAME)

    def collect(self, job: Job) -> None:
        """The job's inputs as a manifest (hashed, cached by stat), plus the last complete
        checkpoint when this is a later attempt: what the next upload sends."""
        script_path = Path(job.script_path)
        directory = Path(job.directory) if job.directory else None
        base = directory or script_path.parent
        try:
            collected = files.collect([str(script_path), *job.files], directory=directory, base=base)
        except HomieError as e:
            raise HomieError(str(e), EXIT_USAGE) from None
        entries = []
        sources = {}
        for rel, path in collected.files:
            size, sha = self.hashes.sha256_of(path)
            mode = 0o755 if os.stat(path).st_mode & 0o100 else 0o644
            entries.append(files.FileEntry(rel, mode, size, sha))
            sources[sha] = path
        # By name first (script_path is resolved, and so is the path collected for it
        # unless a link leads there): a resolve per input was most of the intake of a map's job.
        script_rel = next((rel for rel, path in collected.files if path == script_path), None)
        if script_rel is None:
            real = os.path.realpath(script_path)
            script_rel = next((rel for rel, path in collected.files if os.path.realpath(path) == real), None)
        if script_rel is None:
            raise HomieError(f"the script {script_path} is excluded by an ignore rule", EXIT_USAGE)
        if job.stdin:
            if any(e.path == STDIN_NAME for e in entries):
                raise HomieError(f"a file named {STDIN_NAME} is among the inputs: that name is homie's"
                                 " (the job's stdin); rename it", EXIT_USAGE)
            path = job.dir / "stdin"
            size, sha = self.hashes.sha256_of(path)
            entries.append(files.FileEntry(STDIN_NAME, 0o644, size, sha))
            sources[sha] = path
        # A new attempt starts from the last complete checkpoint: its files win over inputs of the same name.
        restored = job.ckpt_store.entries()
        if restored:
            taken = {e.path for e, _ in restored}
            if script_rel in taken:
                raise HomieError(f"the checkpoint holds the script {script_rel}: checkpoint paths must not"
                                 " include the job's inputs", EXIT_USAGE)
            entries = [e for e in entries if e.path not in taken]
            for entry, src in restored:
                entries.append(entry)
                sources[entry.sha256] = src
        job.manifest = entries
        job.sources = sources
        job.update(script=script_rel, upload_files=len(entries), upload_bytes=sum(e.size for e in entries))
        for w in collected.warnings:
            job.log.append(protocol.STDERR, f"homie: {w}\n".encode())

    def request_of(self, job: Job) -> dict:
        """A `run` request that submits this job again (homie restart)."""
        req = {"script": job.script_path, "args": list(job.args or []), "cwd": job.cwd, "files": list(job.files or []),
               "directory": job.directory, "peer": job.peer, "gpu": bool(job.gpu), "executor": job.executor,
               "scheduler": job.scheduler, "tag": job.tag, "env": job.env, "timeout": job.timeout, "name": job.name,
               "checkpoints": list(job.checkpoints or [])}
        if job.retries is not None:
            req["retries"] = job.retries
        if job.stdin and (job.dir / "stdin").is_file():
            d = self.home_root / "stdin"
            d.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="stdin-", dir=d)
            os.close(fd)
            shutil.copyfile(job.dir / "stdin", tmp)
            req["stdin_file"] = tmp
        return req
