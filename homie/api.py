"""homie's public plugin API: everything a plugin may import from homie.

A plugin (built-in or third-party) imports from this module only; the rest of
the `homie` package is internal and changes without notice. docs/plugins.md
documents each name here, and a test checks that the built-ins (homie/builtin/)
and the example plugin (plugins/homie-roundrobin/) import nothing else.

- `hookimpl`: marks a hook implementation (the hooks are in homie/hookspecs.py);
- schedulers see a `JobRequest` and read-only `Peer`s; `homie_order_queue` gets `QueuedJob`s;
- discovery backends are constructed with a `DiscoveryContext`;
- executors implement the `Executor` protocol: constructed with an
  `ExecutorContext`, they are handed a read-only `Job` (with its `JobFile`s)
  and return what to run; `script_argv()` is the command the built-ins use;
- `HomieError` fails a job (or a start-up) with a one-line message;
  `STDOUT`/`STDERR` name the streams `emit` writes to;
  `JOB_DIR`, `VENV_DIR` and `HOME_DIR` are where things appear inside the sandbox.

The objects homie hands to plugins are read-only (frozen dataclasses, read-only
mappings): a plugin answers by returning a value, never by changing what it was given.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, ClassVar, Protocol, runtime_checkable

from homie.errors import HomieError
from homie.hookspecs import hookimpl
from homie.wire.protocol import STDERR, STDOUT
from homie.worker.sandbox import HOME_DIR, JOB_DIR, VENV_DIR

__all__ = [
    "hookimpl",
    "Peer", "JobRequest", "QueuedJob", "DiscoveryContext",
    "Job", "JobFile", "SetupResult", "ExecutorContext", "Executor", "script_argv",
    "HomieError", "STDOUT", "STDERR", "JOB_DIR", "VENV_DIR", "HOME_DIR",
]


# -- scheduling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A daemon on the network as its last heartbeat describes it (the local node too,
    with `local=True`). What `homie_peer_ineligible` and `homie_choose_peer` see."""

    name: str
    ip: str
    port: int
    instance: str = ""  # per-boot id: two machines claiming one name differ here
    status: str = "idle"  # idle, busy or paused
    ram_free_gb: float | None = None
    ram_total_gb: float | None = None
    cpu_percent_idle: float | None = None
    gpu: str | None = None  # the name of its best GPU, or None
    gpu_mem_free_gb: float | None = None
    gpus: tuple[Mapping[str, Any], ...] = ()  # {"index", "name", "mem_free_gb", "mem_total_gb"} each
    slots_free: int | None = None  # None: an older daemon that does not say
    max_jobs: int | None = None
    running: int = 0
    version: str | None = None
    karma: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # its owner's "given", "taken"
    accept_gpu: bool = True  # False: its owner does not lend the GPU
    sandbox: str | None = None  # "bwrap", or "none": jobs there run as a plain process
    timestamp: float | None = None  # when its heartbeat was sent
    last_seen: float = 0.0  # when we received it
    local: bool = False  # this machine
    conflict: bool = False  # another machine claims the same name

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu) or bool(self.gpus)

    @property
    def balance(self) -> float:
        """Its owner's karma balance: CPU-seconds given minus taken (0.0 when unknown)."""
        try:
            return float(self.karma.get("given", 0.0)) - float(self.karma.get("taken", 0.0))
        except (TypeError, ValueError, AttributeError):
            return 0.0

    @property
    def idleness(self) -> tuple[float, float, int]:
        """How idle it is, larger is idler: (CPU idle %, free RAM GB, -running jobs).
        The order the default best-idle scheduler picks by."""
        return (self.cpu_percent_idle or 0.0, self.ram_free_gb or 0.0, -(self.running or 0))


@dataclass(frozen=True)
class JobRequest:
    """A job looking for a peer, as the schedulers see it."""

    job_id: str
    script: str
    submitter: str  # the name of the machine submitting it
    gpu: bool = False  # `homie run --gpu`
    peer: str | None = None  # pinned with `homie run -n NAME`
    scheduler: str = "auto"  # the `scheduler:` config key or `homie run --scheduler`
    executor: str = "auto"  # the `executor:` config key or `homie run --executor`
    queued_at: float = field(default_factory=time.time)


class QueuedJob(Protocol):
    """A job waiting for a slot on this worker (`homie_order_queue`)."""

    @property
    def job_id(self) -> str: ...
    @property
    def submitter(self) -> str: ...
    @property
    def queued_at(self) -> float: ...


# -- discovery -----------------------------------------------------------------------------------


class DiscoveryContext(Protocol):
    """What a discovery backend is constructed with (`Backend(ctx)`)."""

    config: Any  # the daemon's configuration, one attribute per config key (read it, never set it)
    log: Any  # the daemon's logger: log.info/warning/error(event, **fields)

    def sendto(self, packet: bytes, addr: tuple[str, int]) -> None:
        """Send a packet from the discovery socket (never blocks; a full buffer drops it)."""

    def broadcast_addresses(self) -> list[str]:
        """The broadcast addresses of the interfaces discovery may use."""

    def receive(self, packet: bytes, addr: tuple[str, int]) -> None:
        """Hand over a packet this backend received itself: it is verified like any other."""


# -- executors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFile:
    """One file the submitter sent with the job."""

    path: str  # relative to the job directory, "/"-separated
    size: int
    sha256: str
    mode: int = 0o644  # 0o644, or 0o755 for an executable


@dataclass(frozen=True)
class Job:
    """The job an executor is asked about: read-only. An executor answers by
    returning values (`wants`, `command`, `venv_dir`), never by changing the job."""

    id: str
    script: str  # relative to the job directory
    args: tuple[str, ...]
    files: tuple[JobFile, ...]  # what the submitter sent (read-only in the job directory)
    dir: Path  # the job directory on the host (inside the sandbox it is JOB_DIR: see ExecutorContext.job_path)
    gpu: bool
    submitter: str

    def has_file(self, path: str) -> bool:
        return any(f.path == path for f in self.files)

    def open(self, path: str) -> BinaryIO:
        """One of the job's files, open for reading in binary. The path is walked one
        component at a time without following a link (a job's files are the
        submitter's to shape); raises HomieError or OSError if it cannot be read."""
        from homie.worker import jobdir  # internal; imported here so `import homie.api` stays light

        return os.fdopen(jobdir.open_beneath(Path(self.dir), path), "rb")


@dataclass(frozen=True)
class SetupResult:
    """How a set-up step run with `ExecutorContext.run_setup` ended."""

    code: int | None  # its exit status; None when it was stopped (killed, timed out)
    reason: str | None = None  # why it was stopped


@runtime_checkable
class ExecutorContext(Protocol):
    """What an executor is constructed with (`Executor(ctx)`): the worker's side.

    Paths as the job sees them differ from host paths when `sandboxed` is true:
    the job directory is JOB_DIR, a directory bound with `venv=` is VENV_DIR and
    HOME is HOME_DIR (inside the job's private /tmp). An executor never runs job
    code itself (it would run as the daemon): set-up steps go through `run_setup`.
    """

    config: Any  # the daemon's configuration, one attribute per config key (read-only)
    python: str  # the Python interpreter jobs run with (a path valid inside and outside the sandbox)
    python_version: str  # "3.12"
    base_env: Mapping[str, str]  # the environment every job starts from (PATH, LANG, PYTHONUNBUFFERED)
    sandboxed: bool  # jobs run in the bubblewrap sandbox
    venvs: str  # host directory for cached environments (see evict_venvs)

    def job_path(self, job: Job) -> str:
        """The job directory as the job sees it (JOB_DIR in the sandbox)."""

    def run_setup(self, job: Job, argv: Sequence[str], *, env: Mapping[str, str], venv: str | None = None,
                  venv_writable: bool = False, job_dir: str | os.PathLike[str] | None = None) -> SetupResult:
        """Run a set-up step (installing packages) as the job: its identity, sandbox,
        cgroup and limits, its output in the job's log; killing the job kills it.
        `venv` (a host path) is bound at VENV_DIR, writable if `venv_writable`;
        `job_dir` (a host path) replaces the job directory at JOB_DIR."""

    def stage_files(self, job: Job, paths: Sequence[str], dest: str | os.PathLike[str]) -> None:
        """Create the new directory `dest` holding copies of the job's files `paths`,
        given to the job's identity: what a set-up step may read (`run_setup(job_dir=dest)`)."""

    def make_setup_dir(self, job: Job, path: str | os.PathLike[str]) -> None:
        """Create the directory `path` (mode 0755) owned by the job's identity, for a set-up step to write."""

    def take_back(self, path: str | os.PathLike[str]) -> None:
        """Make the tree at `path` the daemon's again: every file owned by the daemon, no
        setuid/setgid bit, nothing writable by group or others. Use it on what a set-up
        step built before sharing it with later jobs."""

    def remove_tree(self, path: str | os.PathLike[str]) -> None:
        """Remove a tree, whatever a job made of it (links are removed, never followed)."""

    def evict_venvs(self, keep: Sequence[str] = ()) -> None:
        """Remove the least recently used environments under `venvs` (directories holding a
        `.homie-ready` file; touch it on reuse) beyond `venv_cache_max_gb`, except `keep` (names)."""


class Executor(Protocol):
    """How a job starts on this worker. Return executor *classes* from `homie_executors`;
    the worker constructs one per job with the ExecutorContext. The daemon itself starts,
    sandboxes, limits, watches and kills the process, the same for every executor.

    Optional: `venv_dir(job) -> str | None`, a host directory to bind read-only
    at VENV_DIR for the job (the venv executor's environment).
    """

    name: ClassVar[str]  # what `homie run --executor` and the `executor:` config key select
    priority: ClassVar[int]  # `executor: auto` runs the highest-priority executor that wants the job

    def __init__(self, ctx: ExecutorContext) -> None: ...

    def wants(self, job: Job) -> bool:
        """Whether `executor: auto` may pick this executor for the job."""

    def prepare(self, job: Job, emit: Callable[[int, bytes], None]) -> None:
        """Runs before the job (building an environment). `emit(STDERR, b"...")` streams
        progress to the submitter; raise HomieError to fail the job with that message."""

    def command(self, job: Job) -> tuple[list[str], dict[str, str]]:
        """What to run: (argv, extra environment), paths as the job sees them."""


def script_argv(job: Job, python: str) -> list[str]:
    """The command that runs the job's script with its arguments: a `.py` script with
    `python`; anything else by its `#!` line (read from the job's copy, never through a link)."""
    if job.script.endswith(".py"):
        return [python, job.script, *job.args]
    try:
        with job.open(job.script) as f:
            first = f.readline(512)
    except (OSError, HomieError) as e:
        raise HomieError(f"cannot read {job.script}: {getattr(e, 'strerror', None) or e}") from None
    if first.startswith(b"#!"):
        interp = shlex.split(first[2:].decode(errors="replace").strip())
        if interp:
            return [*interp, job.script, *job.args]
    raise HomieError(f"don't know how to run {job.script}: not a .py file and no #! line")
