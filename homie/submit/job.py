"""A job this machine sent out: its typed record (what the store keeps) and
the state a running daemon holds beside it. Every change goes through
`Job.update`, under the job's condition, so waiters see it."""

from __future__ import annotations

import dataclasses
import enum
import operator
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homie import checkpoints, files
from homie.joblog import JobLog
from homie.submit import migration
from homie.wire.channel import Channel


class JobState(str, enum.Enum):
    """Where a submitted job is. A str, so the store and --json keep plain strings."""

    QUEUED = "queued"  # waiting for a peer
    UPLOADING = "uploading"  # a peer took it; its inputs are on the way
    RUNNING = "running"  # started there; output mirrored here
    FETCHING = "fetching"  # exited there; results (or an evicted attempt's checkpoint) coming home
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"
    KILLED = "killed"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.LOST, JobState.KILLED})


@dataclass
class JobRecord:
    """Everything the store keeps about one job; nothing else survives a restart."""

    id: str
    created: float
    state: JobState = JobState.QUEUED
    # what to run
    script: str | None = None  # its path in the job directory
    script_path: str | None = None
    args: list[str] = field(default_factory=list)
    cwd: str | None = None
    files: list[str] = field(default_factory=list)
    directory: str | None = None
    peer: str | None = None  # pinned with -n
    gpu: bool = False
    executor: str | None = None
    scheduler: str | None = None
    tag: str | None = None
    name: str | None = None
    env: dict[str, str] | None = None
    timeout: float | None = None
    stdin: str | None = None
    checkpoints: list[str] = field(default_factory=list)  # beyond checkpoint/
    retries: int | None = None  # None: migration.retry_budget decides
    # where it is
    peer_name: str | None = None
    peer_ip: str | None = None
    peer_port: int | None = None
    peer_instance: str | None = None
    via: str | None = None
    token: str | None = None  # this attempt's secret
    remote_offset: int = 0
    log_end: int | None = None
    waiting: Any = None
    why: str | None = None
    refusals: dict[str, str] | None = None
    lost_peers: list[str] | None = None
    dispatched_at: float | None = None
    first_dispatched_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    dispatches: int = 0  # every try, refusals included
    # how it ended
    code: int | None = None
    signal: int | None = None
    reason: str | None = None
    exit_code: int | None = None
    message: str | None = None
    results: list[str] = field(default_factory=list)
    cpu_s: float | None = None
    wall_s: float | None = None
    gpu_s: float | None = None
    interrupts: int = 0
    collected: Any = None
    upload_files: int | None = None
    upload_bytes: int | None = None
    sent_bytes: int | None = None
    # attempts and checkpoints (homie.submit.migration)
    attempt: int = 1
    losses: int = 0
    evictions: int = 0
    evicted: dict | None = None  # {"seq", "why"} while an evicted attempt's checkpoint comes home
    ckpt_seq: int | None = None
    ckpt_at: float | None = None
    ckpt_attempt: int | None = None
    ckpt_bytes: int | None = None
    restored_at: float | None = None
    history: list[dict] = field(default_factory=list)
    stale: list[dict] = field(default_factory=list)

    @classmethod
    def from_doc(cls, doc: dict) -> JobRecord:
        """From the store (or a request): unknown keys are dropped, old documents keep their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in doc.items() if k in known and v is not None}
        if "attempts" in doc and "dispatches" not in kw:
            kw["dispatches"] = doc["attempts"] or 0  # before attempts meant runs
        rec = cls(**kw)
        rec.state = JobState(rec.state)
        return rec

    def to_doc(self) -> dict:
        d = {name: getattr(self, name) for name in _NAMES}
        d["state"] = self.state.value
        return d


# Once, not per save: dataclasses.fields() on every to_doc() was ~2% of a submitting daemon's CPU.
_NAMES = tuple(f.name for f in dataclasses.fields(JobRecord))
_FIELDS = frozenset(_NAMES)


class Job:
    """One submitted job in a running daemon: its record, its local output log,
    and what its driver holds while it runs."""

    def __init__(self, rec: JobRecord, outbox: Path):
        self.rec = rec
        self.dir = outbox / rec.id
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log = JobLog(self.dir / "output.log", ended=rec.state.terminal)
        self.cond = threading.Condition()
        self.progress: dict | None = None
        self.manifest: list[files.FileEntry] | None = None
        self.sources: dict[str, Path] = {}
        self.thread: threading.Thread | None = None
        self.channel: Channel | None = None  # the connection a driver hands on (exit -> results)
        self.ckpt_store = checkpoints.Store(self.dir / "checkpoint",
                                            [checkpoints.DEFAULT_DIR, *(rec.checkpoints or [])])
        self.ckpt_lock = threading.Lock()
        self.syncer: migration.Syncer | None = None
        # How many result files the worker's exit message said this attempt made (None: not
        # heard since this daemon started, as after a restart in FETCHING): 0 spares the fetch.
        self.results_told: int | None = None

    def __getattr__(self, name: str):
        # Read access to the record's fields (job.state, job.peer_name...); writes go through update().
        rec = self.__dict__.get("rec")
        if rec is not None and name in _FIELDS:
            return getattr(rec, name)
        raise AttributeError(name)

    def update(self, **changes) -> None:
        with self.cond:
            for k, v in changes.items():
                if k not in _FIELDS:
                    raise AttributeError(f"a job has no field {k!r}")
                setattr(self.rec, k, JobState(v) if k == "state" else v)
            self.cond.notify_all()

    @property
    def doc(self) -> dict:
        """The record as the store and the control channel see it (a copy)."""
        with self.cond:
            return self.rec.to_doc()

    @property
    def wire_id(self) -> str:
        return migration.wire_id(self.rec.id, self.rec.attempt)

    @property
    def checkpointed(self) -> bool:
        return bool(self.rec.checkpoints or self.rec.ckpt_seq)

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    @property
    def terminal(self) -> bool:
        return self.rec.state.terminal

    def summary(self) -> dict:
        d = self.doc
        return {
            "job_id": d["id"], "peer": d["peer_name"], "script": d["script"], "args": d["args"],
            "status": d["state"], "created": d["created"], "exit_code": d["exit_code"], "why": d["why"],
            "reason": d["reason"], "tag": d["tag"], "name": d["name"], "results": len(d["results"] or []),
            "dispatched_at": d["dispatched_at"], "first_dispatched_at": d["first_dispatched_at"],
            "started_at": d["started_at"], "finished_at": d["finished_at"],
            "attempt": d["attempt"], "attempts": list(d["history"]), "checkpoint_at": d["ckpt_at"],
            "checkpoint_seq": d["ckpt_seq"], "stale": len(d["stale"]),
        }


def _record_property(name: str) -> property:
    return property(operator.attrgetter(f"rec.{name}"), doc=f"The record's {name}: read-only, changed by update().")


# Reads of the record's fields are a daemon's most frequent attribute lookups (about 170 for
# each job of a map): as properties, found by the normal lookup, they skip a Python-level
# __getattr__ call each. __getattr__ stays for type checkers and for names no field has.
for _name in _NAMES:
    if not hasattr(Job, _name):
        setattr(Job, _name, _record_property(_name))
