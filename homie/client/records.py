"""What the daemon tells about peers and jobs, typed: Peer, JobInfo and its JobState."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from dataclasses import fields as _fields


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
