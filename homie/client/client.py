"""The local homie daemon, driven from Python: Client."""

from __future__ import annotations

import os
import time

from homie.client.connection import Connection
from homie.client.job import Job, signal_number
from homie.client.records import JobInfo, Peer
from homie.errors import error_for

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from homie.home import Home


class Client:
    """The local homie daemon, driven from Python.

    home: the homie home (default: $HOMIE_HOME, else ~/.homie); timeout: seconds to wait
    for a plain request's answer. Every method opens its own short connection, so a Client
    is cheap and may be shared between threads. NoDaemon (exit 69) when no daemon runs.
    """

    def __init__(self, home: str | os.PathLike | Home | None = None, timeout: float | None = 10.0, check: bool = True):
        from homie.home import Home

        self.home = home if isinstance(home, Home) else Home(home)
        if check:
            self.home.check(owned=False)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<homie.Client {self.home.root}>"

    # -- the wire (the CLI uses these too) --
    def connect(self, timeout=...) -> Connection:
        """A fresh connection for one request (NoDaemon if the daemon is not running)."""
        return Connection(self.home, timeout=self.timeout if timeout is ... else timeout)

    def request(self, t: str, **fields) -> dict:
        """One request, one reply (a dict); a refusal raises its HomieError."""
        return self.connect().request(t, **fields)

    def stream(self, t: str, **fields):
        """One request answered by a stream of raw events (homie.wire.protocol), the reply last."""
        return self.connect(timeout=None).stream(t, **fields)

    # -- the machine and its friends --
    def status(self) -> dict:
        """The daemon's status (`homie status --json`'s fields)."""
        return self.request("status")

    def peers(self, include_self: bool = False) -> list[Peer]:
        """The friends seen now; include_self adds this machine (Peer.local True) first."""
        res = self.request("peers")
        out = [Peer.from_dict(p) for p in res["peers"]]
        if include_self and res.get("me"):
            me = Peer.from_dict(res["me"])
            me.local = True
            out.insert(0, me)
        return out

    # -- jobs --
    def run_request(self, script: str | os.PathLike, args=(), *, files=(), directory=None, peer=None, gpu=False,
                    env=None, checkpoint=None, retries=None, timeout=None, name=None, executor=None,
                    scheduler=None, tag=None, cwd=None, stdin_file=None, detach=False, explain=False) -> dict:
        """The `run` request for these settings (paths made absolute against cwd)."""
        cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
        here = lambda p: os.path.abspath(os.path.join(cwd, os.fspath(p)))  # noqa: E731
        script = here(script)
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = [checkpoint]
        req = dict(script=script, args=[str(a) for a in args], cwd=cwd,
                   files=[here(f) for f in files], directory=here(directory) if directory is not None else None,
                   peer=peer, gpu=bool(gpu), executor=executor, scheduler=scheduler, detach=detach,
                   explain=explain, env=dict(env or {}), timeout=timeout, name=name)
        if tag is not None:
            req["tag"] = tag
        if checkpoint:
            req["checkpoints"] = [os.fspath(c) for c in checkpoint]
        if retries is not None:
            req["retries"] = int(retries)
        if stdin_file is not None:
            req["stdin_file"] = stdin_file
        return req

    def run(self, script: str | os.PathLike, args=(), *, files=(), directory=None, peer: str | None = None,
            gpu: bool = False, env: dict | None = None, checkpoint=None, retries: int | None = None,
            timeout: float | None = None, name: str | None = None, executor: str | None = None,
            scheduler: str | None = None, stdin: bytes | None = None, cwd=None, tag: str | None = None) -> Job:
        """Send SCRIPT with ARGS to the best idle peer (like `homie run --detach`) and return its Job
        at once; follow it with Job.stream(), Job.wait(), Job.results().

        files: files (or globs) to send besides the script; directory: a whole project folder
        (honouring .gitignore/.homieignore); peer: a peer's name (this machine's own name runs it
        here); gpu: a peer with a free GPU; env: extra environment; checkpoint: path(s) of the job
        holding its checkpoint; retries: run again elsewhere up to N times if the peer is lost;
        timeout: seconds of wall clock; name: a label for `homie ps`; executor: the worker's
        executor (subprocess, venv...); stdin: bytes given to the job as its stdin; cwd: what
        relative paths are relative to (default: the current directory).
        Raises UsageError (2) for bad inputs, NoPeer (70) for an unknown peer, NoDaemon (69)."""
        stdin_file = self._stdin_file(stdin) if stdin else None
        req = self.run_request(script, args, files=files, directory=directory, peer=peer, gpu=gpu, env=env,
                               checkpoint=checkpoint, retries=retries, timeout=timeout, name=name,
                               executor=executor, scheduler=scheduler, tag=tag, cwd=cwd, stdin_file=stdin_file,
                               detach=True)
        job_id = None
        try:
            for ev in self.stream("run", **req):
                if getattr(ev, "t", None) == "reply":
                    job_id = ev["job_id"]
        finally:
            if stdin_file and os.path.exists(stdin_file):
                os.unlink(stdin_file)  # the daemon did not take it: the job was refused
        if not job_id:
            raise error_for("the daemon queued no job (no job id in its answer)", 73)
        return Job(self, job_id)

    def _stdin_file(self, data: bytes) -> str:
        """Where the daemon takes a job's stdin from (it moves the file into the job)."""
        import tempfile

        d = self.home.root / "stdin"
        d.mkdir(mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="stdin-", dir=d)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def job(self, job_id: str) -> Job:
        """The Job with this id (or unique id prefix); HomieError if there is none."""
        info = self.request("job", job_id=job_id)
        return Job(self, info["job_id"])

    def ps(self, all: bool = False) -> dict:
        """`homie ps --json`'s data: {"jobs": [sent from here], "here": [run here for friends],
        "now": the daemon's clock}, each job a dict (schema in docs/cli.md)."""
        from homie.wire import protocol

        sent: list[dict] = []
        here: list[dict] = []
        now = time.time()
        for ev in self.stream("ps", all=all):
            if isinstance(ev, protocol.Message) and ev.t == "event" and ev.get("kind") == "ps":
                sent += ev.get("jobs") or []
                here += ev.get("here") or []
            elif isinstance(ev, protocol.Message) and ev.t == "reply":
                now = ev.get("now", now)
        return {"jobs": sent, "here": here, "now": now}

    def jobs(self, all: bool = True) -> list[JobInfo]:
        """Jobs sent from this machine, oldest first (all=False: only unfinished ones)."""
        return [JobInfo.from_dict(j) for j in self.ps(all)["jobs"]]

    def kill(self, job_id: str, sig: int | str = "KILL") -> str:
        """Signal a job (see Job.kill); returns the daemon's sentence about it."""
        return self.request("kill", job_id=job_id, sig=signal_number(sig))["message"]
