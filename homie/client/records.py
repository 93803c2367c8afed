"""What the daemon tells about peers and jobs, typed: Peer, JobInfo and its JobState.

Plain classes with __slots__ rather than dataclasses: `homie run` types every
event it follows with these, and importing dataclasses (with inspect and typing)
and building the classes cost each `homie run` ~20 ms at start-up on the bench
machine, a quarter of a whole hello-world job. _Record gives them what
dataclasses would: a repr, == by fields, no hashing of a mutable record.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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


class _Record:
    """A repr and == over the class's __slots__ (its fields, in order)."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value: unhashable, like a dataclass

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    @classmethod
    def _known(cls, d: dict) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k in cls.__slots__}


class Peer(_Record):
    """A machine of the group, from its last heartbeat (`homie peers --json` has the same fields)."""

    __slots__ = ("name", "ip", "port", "status", "ram_free_gb", "ram_total_gb", "cpu_percent_idle", "gpu",
                 "gpu_mem_free_gb", "gpus", "slots_free", "max_jobs", "running", "version", "karma", "sandbox",
                 "conflict", "instance", "timestamp", "last_seen", "local")

    def __init__(self, name: str, ip: str = "", port: int = 0,
                 status: str = "idle",                   # idle, busy, paused
                 ram_free_gb: float | None = None, ram_total_gb: float | None = None,
                 cpu_percent_idle: float | None = None, gpu: str | None = None,
                 gpu_mem_free_gb: float | None = None, gpus: list | None = None,
                 slots_free: int | None = None,          # jobs it would start now
                 max_jobs: int | None = None,            # jobs it runs at once
                 running: int = 0, version: str | None = None, karma: dict | None = None,
                 sandbox: str | None = None,             # "bwrap": jobs there are sandboxed; "none": a plain process
                 conflict: bool = False,                 # two machines claim this name
                 instance: str = "", timestamp: float | None = None, last_seen: float = 0.0,
                 local: bool = False):                   # this machine
        self.name = name
        self.ip = ip
        self.port = port
        self.status = status
        self.ram_free_gb = ram_free_gb
        self.ram_total_gb = ram_total_gb
        self.cpu_percent_idle = cpu_percent_idle
        self.gpu = gpu
        self.gpu_mem_free_gb = gpu_mem_free_gb
        self.gpus = [] if gpus is None else gpus
        self.slots_free = slots_free
        self.max_jobs = max_jobs
        self.running = running
        self.version = version
        self.karma = {} if karma is None else karma
        self.sandbox = sandbox
        self.conflict = conflict
        self.instance = instance
        self.timestamp = timestamp
        self.last_seen = last_seen
        self.local = local

    @classmethod
    def from_dict(cls, d: dict) -> Peer:
        return cls(**{k: v for k, v in cls._known(d).items() if v is not None or k == "name"})


class JobInfo(_Record):
    """Where a job sent from here stands (or how it ended)."""

    __slots__ = ("job_id", "state", "peer", "script", "args", "name", "exit_code", "code", "signal", "reason",
                 "message", "why", "results", "results_dir", "created", "started_at", "finished_at", "attempt",
                 "offset", "terminal")

    def __init__(self, job_id: str, state: JobState | str, peer: str | None = None, script: str | None = None,
                 args: list | None = None, name: str | None = None,
                 exit_code: int | None = None,   # what `homie run` would exit with (the job's code, 128+N for signal N)
                 code: int | None = None,        # the process's own exit status, None if signalled
                 signal: int | None = None,
                 reason: str | None = None,      # why it was stopped (a limit, a kill)
                 message: str | None = None,     # why it failed or was lost
                 why: str | None = None,         # why it is queued
                 results: list | None = None,    # result file names (relative paths)
                 results_dir: str | None = None,  # where the daemon keeps them until collected
                 created: float | None = None, started_at: float | None = None, finished_at: float | None = None,
                 attempt: int = 1,
                 offset: int | None = None,      # the end of its output log so far
                 terminal: bool = False):
        self.job_id = job_id
        self.state = state
        self.peer = peer
        self.script = script
        self.args = [] if args is None else args
        self.name = name
        self.exit_code = exit_code
        self.code = code
        self.signal = signal
        self.reason = reason
        self.message = message
        self.why = why
        self.results = [] if results is None else results
        self.results_dir = results_dir
        self.created = created
        self.started_at = started_at
        self.finished_at = finished_at
        self.attempt = attempt
        self.offset = offset
        self.terminal = terminal

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
