"""Every message as a frozen dataclass: the source of the message schemas.

A field without a default is required; `absent_or()` marks one that may be left
out but, when present, is never null. homie.wire.messages validates against a
plain table generated from these classes (so that `homie run` does not build 44
dataclasses at start-up); tests/test_message_classes.py keeps the two equal. `schema.typed(msg)` gives a validated
message as its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homie.wire.schema import _CLASSES, Schema, absent_or, message, schema_of
from homie.wire.schema import typed as typed  # the handlers' way in: registers these classes first


# -- job channel (daemon <-> daemon, over mutual TLS) --------------------------
# The server speaks first, so a client with a bad certificate learns of it at once.
@message("hello")
@dataclass(frozen=True)
class Hello:
    name: str
    proto: int
    homie: str
    python: str
    instance: str | None = absent_or()


@message("submit")
@dataclass(frozen=True)
class Submit:
    job_id: str
    script: str
    args: list[Any]
    files: list[Any]
    submitter: str
    executor: str | None = absent_or()
    gpu: bool | None = absent_or()
    interpreter: str | None = None
    # From `homie run -e/--env-file`, `--timeout` and piped stdin (see _check_submit).
    env: dict[str, Any] | None = absent_or()
    timeout: float | None = None
    stdin: str | None = None
    # The submitter's secret for this job: attach, fetch, ack and signal must carry it.
    token: str | None = absent_or()
    # Checkpoint paths beyond checkpoint/ (homie run --checkpoint), and the attempt.
    checkpoints: list[Any] | None = absent_or()
    checkpoint_interval: float | None = absent_or()
    attempt: int | None = absent_or()


@message("need")
@dataclass(frozen=True)
class Need:
    hashes: list[Any]


@message("refuse")
@dataclass(frozen=True)
class Refuse:
    reason: str
    code: str
    retry_after: float | None = absent_or()


@message("blob")
@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


@message("upload_done")
@dataclass(frozen=True)
class UploadDone:
    pass


@message("started")
@dataclass(frozen=True)
class Started:
    job_id: str
    pid: int | None = None
    gpu: str | None = None


@message("exit")
@dataclass(frozen=True)
class Exit:
    job_id: str
    code: int | None
    signal: int | None = None
    reason: str | None = None
    cpu_s: float | None = absent_or()
    wall_s: float | None = absent_or()
    gpu_s: float | None = absent_or()
    results: int | None = absent_or()
    # evicted: its owner took the machine back; checkpoint: the last one's number (0: none)
    evicted: bool | None = absent_or()
    checkpoint: int | None = absent_or()


# A new complete checkpoint of a running job (in the output stream), and fetching it.
@message("checkpoint")
@dataclass(frozen=True)
class Checkpoint:
    job_id: str
    seq: int
    at: float
    bytes: int | None = absent_or()


@message("ckpt_fetch")
@dataclass(frozen=True)
class CkptFetch:
    job_id: str
    token: str | None = absent_or()


@message("ckpt")
@dataclass(frozen=True)
class Ckpt:
    job_id: str
    seq: int
    at: float
    files: list[Any]


@message("ckpt_want")
@dataclass(frozen=True)
class CkptWant:
    chunks: list[Any]


@message("ckpt_done")
@dataclass(frozen=True)
class CkptDone:
    pass


@message("attach")
@dataclass(frozen=True)
class Attach:
    job_id: str
    offset: int
    token: str | None = absent_or()


@message("fetch")
@dataclass(frozen=True)
class Fetch:
    job_id: str
    token: str | None = absent_or()


@message("results")
@dataclass(frozen=True)
class Results:
    job_id: str
    files: list[Any]


@message("want")
@dataclass(frozen=True)
class Want:
    paths: list[Any]


@message("results_done")
@dataclass(frozen=True)
class ResultsDone:
    pass


@message("ack")
@dataclass(frozen=True)
class Ack:
    job_id: str
    token: str | None = absent_or()


@message("signal")
@dataclass(frozen=True)
class Signal:
    job_id: str
    sig: int
    token: str | None = absent_or()


@message("ok")
@dataclass(frozen=True)
class Ok:
    pass


@message("error")
@dataclass(frozen=True)
class Error:
    message: str
    code: str | None = absent_or()


@message("ping")
@dataclass(frozen=True)
class Ping:
    pass


@message("pong")
@dataclass(frozen=True)
class Pong:
    pass


@message("bye")
@dataclass(frozen=True)
class Bye:
    pass


PEER: dict[str, Schema] = {t: schema_of(c) for t, c in _CLASSES.items()}


# -- control channel (CLI <-> local daemon, over the unix socket) ------------
@message("status")
@dataclass(frozen=True)
class StatusRequest:
    pass


@message("peers")
@dataclass(frozen=True)
class PeersRequest:
    pass


@message("down")
@dataclass(frozen=True)
class Down:
    pass


@message("run")
@dataclass(frozen=True)
class Run:
    script: str
    args: list[Any]
    cwd: str
    files: list[Any] | None = absent_or()
    directory: str | None = None
    peer: str | None = None
    gpu: bool | None = absent_or()
    executor: str | None = None
    detach: bool | None = absent_or()
    explain: bool | None = absent_or()
    scheduler: str | None = None
    tag: str | None = None
    retries: int | None = absent_or()
    env: dict[str, Any] | None = absent_or()
    timeout: float | None = None
    name: str | None = None
    stdin_file: str | None = None
    checkpoints: list[Any] | None = absent_or()


@message("restart")
@dataclass(frozen=True)
class Restart:
    job_id: str
    detach: bool | None = absent_or()


@message("ps")
@dataclass(frozen=True)
class Ps:
    all: bool | None = absent_or()


@message("kill")
@dataclass(frozen=True)
class Kill:
    job_id: str
    sig: int | None = absent_or()


@message("follow")
@dataclass(frozen=True)
class Follow:
    job_id: str
    live: bool | None = absent_or()
    offset: int | None = absent_or()
    quiet: bool | None = absent_or()


@message("get_results")
@dataclass(frozen=True)
class GetResults:
    job_id: str


@message("job")
@dataclass(frozen=True)
class JobRequest:
    job_id: str


@message("forget")
@dataclass(frozen=True)
class Forget:
    job_id: str


@message("pause")
@dataclass(frozen=True)
class Pause:
    suspend: bool | None = absent_or()
    evict: bool | None = absent_or()


@message("resume")
@dataclass(frozen=True)
class Resume:
    pass


@message("karma")
@dataclass(frozen=True)
class KarmaRequest:
    pass


@message("plugins")
@dataclass(frozen=True)
class PluginsRequest:
    pass


@message("doctor")
@dataclass(frozen=True)
class Doctor:
    pass


# Replies and events from the daemon; what each reply holds is homie.control.replies.
@message("reply")
@dataclass(frozen=True)
class Reply:
    pass


@message("event")
@dataclass(frozen=True)
class Event:
    kind: str


@message("fail")
@dataclass(frozen=True)
class Fail:
    message: str
    exit_code: int | None = absent_or()


CONTROL: dict[str, Schema] = {t: schema_of(c) for t, c in _CLASSES.items() if t not in PEER}

# One namespace for both channels, so a name always means one thing (message() refuses a repeat).
ALL: dict[str, Schema] = {**PEER, **CONTROL}
