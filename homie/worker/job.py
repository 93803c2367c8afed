"""A friend's job on this machine: what the worker knows of it."""

from __future__ import annotations

import enum
import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from homie import checkpoints
from homie.joblog import JobLog
from homie.worker.cgroup import JobCgroup
from homie.worker.identity import Identity
from homie.worker.runner import JobProcess, Outcome


class WorkerJobState(str, enum.Enum):
    PREPARING = "preparing"  # its directory is built; the executor's set-up step runs
    RUNNING = "running"
    EXITED = "exited"  # over; its results wait for the submitter

    def __str__(self) -> str:
        return self.value


@dataclass
class WorkerJob:
    id: str
    submitter: str
    submitter_ip: str
    script: str
    args: list
    files: list  # manifest dicts
    executor: str
    gpu: bool
    dir: Path
    log: JobLog
    created: float = field(default_factory=time.time)
    state: WorkerJobState = WorkerJobState.PREPARING
    start_offset: int | None = None  # log offset where the job's own output starts
    proc: JobProcess | None = None
    prepare: JobProcess | None = None  # the executor's set-up step (building a venv), while it runs
    cgroup: JobCgroup | None = None  # shared by set-up and the job
    gpu_index: str | None = None
    ident: Identity | None = None
    extra_env: dict = field(default_factory=dict)  # the submitter's -e KEY=VAL
    timeout: float | None = None  # the submitter's --timeout, seconds
    stdin: str | None = None  # the input file the job reads as its stdin
    token_sha: str | None = None  # sha256 of the submitter's secret for this job, if it sent one
    ckpt: checkpoints.Watcher | None = None  # its checkpoint paths, and the last checkpoint taken
    evicted_by: str | None = None  # its owner took the machine back: it ends here and goes on elsewhere

    outcome: Outcome | None = None
    results: list = field(default_factory=list)
    inputs_stat: dict = field(default_factory=dict)
    finished_at: float | None = None
    killed_by: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def answers_to(self, peer: str, token) -> bool:
        if self.token_sha is None:
            return peer == self.submitter  # a submitter that sends no token: the name is all there is
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.token_sha)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def summary(self) -> dict:
        o = self.outcome
        return {
            "job_id": self.id, "from": self.submitter, "script": self.script, "args": self.args,
            "status": (self.state.value if self.state is not WorkerJobState.EXITED
                       else ("killed" if o and o.reason else "exited")),
            "created": self.created, "pid": self.pid, "code": o.code if o else None,
            "reason": o.reason if o else None,
        }


def cut_args(args: list[str], budget: int = 2048) -> list[str]:
    """A job's arguments as far as `budget` characters go (history, not a replay)."""
    out, used = [], 0
    for a in args:
        if used + len(a) > budget:
            out.append("…")
            break
        out.append(a)
        used += len(a) + 1
    return out
