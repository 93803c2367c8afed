"""homie from Python: a client of the local daemon, through its control socket.

    import homie

    client = homie.Client()
    job = client.run("train.py", ["--epochs", "10"], files=["data.csv"])
    for ev in job.stream():
        if isinstance(ev, homie.OutputEvent):
            print(ev.text, end="")
    job.results("results")

The `homie` command is a client of this same module (homie/cli/): every verb
that talks to the daemon goes through `Client`, so the shell and Python see
the same jobs, the same errors and the same exit codes (homie.errors).

Light on purpose: the standard library and homie's lightest modules only (no
cryptography, psutil or yaml), so `import homie` and `homie peers` stay fast.
"""

from __future__ import annotations

import enum
import os
import signal as _signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from dataclasses import fields as _fields
from pathlib import Path
from typing import TYPE_CHECKING

from homie.control import replies
from homie.errors import EXIT_NO_DAEMON, HomieError, NoDaemon, error_for

if TYPE_CHECKING:
    from homie.home import Home

__all__ = [
    "Client", "Job", "JobInfo", "JobState", "Peer", "OutputEvent", "JobEvent", "Ended", "Connection", "deliver",
]


# -- the wire: one request per connection ------------------------------------------------


class Connection:
    """One connection to the daemon's control socket, carrying one request.

    Opening it raises NoDaemon (exit 69) when the daemon is not running. A `fail`
    answer raises the HomieError subclass of its exit code (homie.errors.error_for).
    """

    def __init__(self, home, timeout: float | None = 10.0):
        from homie.wire.channel import Channel

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(home.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise NoDaemon("homie is not running; start it with: homie up") from None
        except PermissionError:
            s.close()
            raise NoDaemon(f"no permission to use {home.socket} (is the daemon another user's?)") from None
        self.ch = Channel(s)

    def request(self, t: str, **fields) -> dict:
        """Send one request and return the daemon's reply (a dict)."""
        self.ch.send(t, **fields)
        msg = self.ch.recv_msg("reply", "fail")
        self.ch.close()
        if msg.t == "fail":
            raise error_for(msg["message"], msg.get("exit_code", 1))
        return replies.check(t, msg.body)

    def stream(self, t: str, timeout: float | None = None, **fields):
        """Yield the daemon's events and output frames (homie.wire.protocol objects) until
        it ends the stream with its reply (yielded last). timeout: seconds of silence
        before TimeoutError (None: wait as long as it takes)."""
        from homie.wire import protocol
        from homie.wire.channel import ConnectionClosed

        self.ch.send(t, **fields)
        self.ch.sock.settimeout(timeout)
        try:
            while True:
                try:
                    ev = self.ch.recv()
                except ConnectionClosed:
                    raise HomieError("the homie daemon stopped", EXIT_NO_DAEMON) from None
                except TimeoutError:
                    raise TimeoutError(f"no answer from the homie daemon within {timeout:g} s") from None
                if isinstance(ev, protocol.Message):
                    if ev.t == "fail":
                        raise error_for(ev["message"], ev.get("exit_code", 1))
                    if ev.t == "reply":
                        replies.check(t, ev.body)
                        yield ev
                        return
                yield ev
        finally:
            self.ch.close()

    def close(self) -> None:
        self.ch.close()


# -- what the daemon tells, typed ------------------------------------------------------------


class JobState(str, enum.Enum):
    """A job's state, as the daemon keeps it (and `homie ps` shows it)."""

    QUEUED = "queued"          # waiting for a peer (JobInfo.why says why)
    UPLOADING = "uploading"    # inputs on their way to the peer
    RUNNING = "running"
    FETCHING = "fetching"      # over; results on their way home
    DONE = "done"              # ran to its end (whatever its exit code: JobInfo.exit_code)
    FAILED = "failed"          # could not run: refused, upload or results failed
    LOST = "lost"              # its peer was lost, retries spent
    KILLED = "killed"          # killed before it ran (a running job killed ends DONE with a signal)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def terminal(self) -> bool:
        """True once the job is over: done, failed, lost or killed."""
        return self in (JobState.DONE, JobState.FAILED, JobState.LOST, JobState.KILLED)

    @classmethod
    def of(cls, value) -> JobState | str:
        """The member for a state name; an unknown name (a newer daemon's) stays a str."""
        try:
            return cls(value)
        except ValueError:
            return value


@dataclass
class Peer:
    """A machine of the group, from its last heartbeat (`homie peers --json` has the same fields)."""

    name: str
    ip: str = ""
    port: int = 0
    status: str = "idle"              # idle, busy, paused
    ram_free_gb: float | None = None
    ram_total_gb: float | None = None
    cpu_percent_idle: float | None = None
    gpu: str | None = None
    gpu_mem_free_gb: float | None = None
    gpus: list = field(default_factory=list)
    slots_free: int | None = None     # jobs it would start now
    max_jobs: int | None = None       # jobs it runs at once
    running: int = 0
    version: str | None = None
    karma: dict = field(default_factory=dict)
    sandbox: str | None = None        # "bwrap": jobs there are sandboxed; "none": a plain process
    conflict: bool = False            # two machines claim this name
    instance: str = ""
    timestamp: float | None = None
    last_seen: float = 0.0
    local: bool = False               # this machine

    @classmethod
    def from_dict(cls, d: dict) -> Peer:
        known = {f.name for f in _fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None or k == "name"})


@dataclass
class JobInfo:
    """Where a job sent from here stands (or how it ended)."""

    job_id: str
    state: JobState | str
    peer: str | None = None
    script: str | None = None
    args: list = field(default_factory=list)
    name: str | None = None
    exit_code: int | None = None      # what `homie run` would exit with (the job's code, 128+N for signal N)
    code: int | None = None           # the process's own exit status, None if signalled
    signal: int | None = None
    reason: str | None = None         # why it was stopped (a limit, a kill)
    message: str | None = None        # why it failed or was lost
    why: str | None = None            # why it is queued
    results: list = field(default_factory=list)   # result file names (relative paths)
    results_dir: str | None = None    # where the daemon keeps them until collected
    created: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 1
    offset: int | None = None         # the end of its output log so far
    terminal: bool = False

    @property
    def ok(self) -> bool:
        """Ran to its end with exit status 0."""
        return self.state == JobState.DONE and self.exit_code == 0

    @classmethod
    def from_dict(cls, d: dict) -> JobInfo:
        """From a follow's end, a `job` answer or a `homie ps --json` entry."""
        state = JobState.of(d.get("state") or d.get("status"))
        results = d.get("results")
        info = cls(job_id=d["job_id"], state=state, peer=d.get("peer"), script=d.get("script"),
                   args=list(d.get("args") or []), name=d.get("name"), exit_code=d.get("exit_code"),
                   code=d.get("code"), signal=d.get("signal"), reason=d.get("reason"), message=d.get("message"),
                   why=d.get("why"), results=list(results) if isinstance(results, list) else [],
                   results_dir=d.get("results_dir"), created=d.get("created"), started_at=d.get("started_at"),
                   finished_at=d.get("finished_at"), attempt=d.get("attempt") or 1, offset=d.get("offset"),
                   terminal=bool(d["terminal"]) if "terminal" in d else isinstance(state, JobState) and state.terminal)
        return info


@dataclass
class OutputEvent:
    """A chunk of a job's output, as it arrives."""

    stream: int            # 1: stdout, 2: stderr
    data: bytes
    offset: int            # the job's log offset just past this chunk (resume a stream from here)

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (undecodable bytes replaced). A chunk may end mid-line."""
        return self.data.decode("utf-8", "replace")

    @property
    def is_stderr(self) -> bool:
        return self.stream == 2


@dataclass
class JobEvent:
    """A change in a job's life while it is followed.

    kind: "job" (its id), "queued" (why), "sending" (peer, via, files, bytes), "resumed"
    (peer, attempt, checkpoint_at: it runs again after its peer was lost), "started" (peer),
    "progress" (phase, done, total: bytes of an upload or download)."""

    kind: str
    job_id: str | None = None
    peer: str | None = None
    why: str | None = None
    via: str | None = None
    files: int | None = None
    bytes: int | None = None
    attempt: int | None = None
    checkpoint_at: float | None = None
    phase: str | None = None
    done: int | None = None
    total: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> JobEvent:
        known = {f.name for f in _fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Ended:
    """The last event of a stream: how the job ended (or, for a stream that does not
    follow live, where it stands: info.terminal is then False)."""

    info: JobInfo


Event = OutputEvent | JobEvent | Ended


def typed(events) -> Iterator[Event]:
    """The daemon's raw events (homie.wire.protocol) as OutputEvent, JobEvent and, last, Ended."""
    from homie.wire import protocol

    for ev in events:
        if isinstance(ev, protocol.Output):
            yield OutputEvent(ev.stream, bytes(ev.data), ev.end)
        elif isinstance(ev, protocol.Message):
            if ev.t == "reply":
                yield Ended(JobInfo.from_dict(ev.body))
            elif ev.t == "event":
                yield JobEvent.from_dict(ev.body)


# -- results ---------------------------------------------------------------------------------


def deliver(results: list[str], src_dir: str, out_dir: str, job_id: str | None = None) -> list[str]:
    """Put fetched results into out_dir, each appearing whole under its final name.

    A result that would replace a different file already there (the last run's)
    sends this job's results to out_dir/<job id>/ instead: nothing is overwritten."""
    import filecmp
    import shutil

    if job_id and any(os.path.exists(os.path.join(out_dir, rel))
                      and not filecmp.cmp(os.path.join(src_dir, rel), os.path.join(out_dir, rel), shallow=False)
                      for rel in results):
        out_dir = os.path.join(out_dir, job_id)
    saved = []
    for rel in results:
        src = os.path.join(src_dir, rel)
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.homie-tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        saved.append(dst)
    return saved


def signal_number(name_or_number) -> int:
    """'KILL', 'SIGINT', 9 or '9' -> the signal's number (AttributeError/ValueError if unknown)."""
    if isinstance(name_or_number, int):
        return name_or_number
    s = str(name_or_number).upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    return int(getattr(_signal, s))


# -- the API ---------------------------------------------------------------------------------------


class Job:
    """A job sent from this machine (Client.run, Client.job). Cheap: it holds the id and asks
    the daemon on each call."""

    def __init__(self, client: Client, job_id: str):
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<homie.Job {self.id}>"

    def info(self) -> JobInfo:
        """Where the job stands now."""
        return JobInfo.from_dict(self.client.request("job", job_id=self.id))

    @property
    def status(self) -> JobState | str:
        """The job's state now (JobState)."""
        return self.info().state

    def done(self) -> bool:
        """True once the job is over (done, failed, lost or killed)."""
        return self.info().terminal

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job is over; return how it ended. A job that ran but failed is
        no exception here: look at info.ok, info.exit_code. TimeoutError after timeout s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        end = None
        for ev in self.client.connect().stream("follow", timeout=timeout, job_id=self.id, live=True, quiet=True):
            if getattr(ev, "t", None) == "reply":
                end = ev.body
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout:g} s")
        assert end is not None
        return JobInfo.from_dict(end)

    def stream(self, offset: int = 0, live: bool = True) -> Iterator[Event]:
        """The job's output (OutputEvent) and changes (JobEvent) as they happen, from log
        offset `offset` (0: its whole output so far first), ending with Ended once the job is
        over. live=False: only what is there now (Ended.info.terminal says if it is over)."""
        return typed(self.client.connect().stream("follow", job_id=self.id, live=live, offset=offset))

    def logs(self, stderr: bool = True) -> str:
        """The job's output so far as text (stdout and stderr interleaved as written; only
        stdout with stderr=False)."""
        chunks = [ev.data for ev in self.stream(live=False)
                  if isinstance(ev, OutputEvent) and (stderr or ev.stream == 1)]
        return b"".join(chunks).decode("utf-8", "replace")

    def results(self, dest: str | os.PathLike = "results") -> list[Path]:
        """Copy the files the job created into dest (made if missing) and return their paths.
        A file that would replace a different one already there puts this job's results
        under dest/<job id>/ instead. HomieError if the job is not done."""
        res = self.client.request("get_results", job_id=self.id)
        dest = os.fspath(dest)
        os.makedirs(dest, exist_ok=True)
        return [Path(p) for p in deliver(res["results"], res["results_dir"], dest, res["job_id"])]

    def kill(self, sig: int | str = "KILL") -> str:
        """Stop the job wherever it runs (KILL: SIGTERM, then SIGKILL after 2 s; INT, TERM or a
        number: just that signal). Returns the daemon's sentence about it."""
        return self.client.kill(self.id, sig)

    def forget(self) -> None:
        """Drop a finished job from the daemon (`homie clean JOB`): its kept results and log go too."""
        self.client.request("forget", job_id=self.id)


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
