"""Every message homie sends, in one place: the job channel between daemons and
the control channel between the CLI and its local daemon share this module.

A schema maps a field to (types, required). Unknown fields are ignored so that
a newer peer may add fields; missing or mistyped required ones are a
ProtocolError. Validation never raises anything else, whatever the input.
"""

from __future__ import annotations

from typing import Any

from homie.errors import ProtocolError

S = (str,)
I = (int,)  # noqa: E741 - one letter per type, like S, N, B, L, D
N = (int, float)
B = (bool,)
L = (list,)
D = (dict,)
OPT_S = (str, type(None))
OPT_I = (int, type(None))
OPT_N = (int, float, type(None))
Schema = dict[str, tuple[tuple[type, ...], bool]]  # field -> (types, required)

# -- job channel (daemon <-> daemon, over mutual TLS) --------------------------
PEER: dict[str, Schema] = {
    # server speaks first, so a client with a bad certificate learns of it at once
    "hello": {"name": (S, True), "proto": (I, True), "homie": (S, True), "python": (S, True),
              "instance": (S, False)},
    "submit": {"job_id": (S, True), "script": (S, True), "args": (L, True), "files": (L, True),
               "submitter": (S, True), "executor": (S, False), "gpu": (B, False),
               "interpreter": (OPT_S, False),
               # From `homie run -e/--env-file`, `--timeout` and piped stdin (see _check_submit).
               "env": (D, False), "timeout": (OPT_N, False), "stdin": (OPT_S, False),
               # The submitter's secret for this job: attach, fetch, ack and signal must carry it.
               "token": (S, False),
               # Checkpoint paths beyond checkpoint/ (homie run --checkpoint), and the attempt.
               "checkpoints": (L, False), "checkpoint_interval": (N, False), "attempt": (I, False)},
    "need": {"hashes": (L, True)},
    "refuse": {"reason": (S, True), "code": (S, True), "retry_after": (N, False)},
    "blob": {"sha256": (S, True), "size": (I, True)},
    "upload_done": {},
    "started": {"job_id": (S, True), "pid": (OPT_I, False), "gpu": (OPT_S, False)},
    "exit": {"job_id": (S, True), "code": (OPT_I, True), "signal": (OPT_I, False),
             "reason": (OPT_S, False), "cpu_s": (N, False), "wall_s": (N, False),
             "gpu_s": (N, False), "results": (I, False),
             # evicted: its owner took the machine back; checkpoint: the last one's number (0: none)
             "evicted": (B, False), "checkpoint": (I, False)},
    # A new complete checkpoint of a running job (in the output stream), and fetching it.
    "checkpoint": {"job_id": (S, True), "seq": (I, True), "at": (N, True), "bytes": (I, False)},
    "ckpt_fetch": {"job_id": (S, True), "token": (S, False)},
    "ckpt": {"job_id": (S, True), "seq": (I, True), "at": (N, True), "files": (L, True)},
    "ckpt_want": {"chunks": (L, True)},
    "ckpt_done": {},
    "attach": {"job_id": (S, True), "offset": (I, True), "token": (S, False)},
    "fetch": {"job_id": (S, True), "token": (S, False)},
    "results": {"job_id": (S, True), "files": (L, True)},
    "want": {"paths": (L, True)},
    "results_done": {},
    "ack": {"job_id": (S, True), "token": (S, False)},
    "signal": {"job_id": (S, True), "sig": (I, True), "token": (S, False)},
    "ok": {},
    "error": {"message": (S, True), "code": (S, False)},
    "ping": {},
    "pong": {},
    "bye": {},
}

# -- control channel (CLI <-> local daemon, over the unix socket) ------------
CONTROL: dict[str, Schema] = {
    "status": {},
    "peers": {},
    "down": {},
    "run": {"script": (S, True), "args": (L, True), "cwd": (S, True), "files": (L, False),
            "directory": (OPT_S, False), "peer": (OPT_S, False), "gpu": (B, False),
            "executor": (OPT_S, False), "detach": (B, False), "explain": (B, False),
            "scheduler": (OPT_S, False), "tag": (OPT_S, False), "retries": (I, False),
            "env": (D, False), "timeout": (OPT_N, False), "name": (OPT_S, False), "stdin_file": (OPT_S, False),
            "checkpoints": (L, False)},
    "restart": {"job_id": (S, True), "detach": (B, False)},
    "ps": {"all": (B, False)},
    "kill": {"job_id": (S, True), "sig": (I, False)},
    "follow": {"job_id": (S, True), "live": (B, False), "offset": (I, False), "quiet": (B, False)},
    "get_results": {"job_id": (S, True)},
    "job": {"job_id": (S, True)},
    "forget": {"job_id": (S, True)},
    "pause": {"suspend": (B, False), "evict": (B, False)},
    "resume": {},
    "karma": {},
    "plugins": {},
    "doctor": {},
    # replies and events from the daemon
    "reply": {},
    "event": {"kind": (S, True)},
    "fail": {"message": (S, True), "exit_code": (I, False)},
}

# One namespace for both channels, so a name always means one thing.
assert not PEER.keys() & CONTROL.keys(), PEER.keys() & CONTROL.keys()
ALL: dict[str, Schema] = {**PEER, **CONTROL}


ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
MAX_ENV = 256


def _check_env(t: str, env: dict[Any, Any]) -> None:
    """env: at most MAX_ENV names of letters, digits and _ (not starting with a digit), str values without NUL."""
    if len(env) > MAX_ENV:
        raise ProtocolError(f"{t}: more than {MAX_ENV} environment variables")
    for k, v in env.items():
        if not (isinstance(k, str) and k and set(k) <= ENV_NAME_CHARS and not k[0].isdigit()):
            raise ProtocolError(f"{t}: bad environment variable name {str(k)[:40]!r}")
        if not isinstance(v, str) or "\0" in v:
            raise ProtocolError(f"{t}: environment variable {k} must be a string without NUL")


def _check_submit(t: str, body: dict[str, Any]) -> None:
    """The optional job settings of `submit` (and the CLI's `run`), beyond their types."""
    if body.get("env") is not None:
        _check_env(t, body["env"])
    timeout = body.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not 0 < timeout < 10**9):
        raise ProtocolError(f"{t}: timeout must be a positive number of seconds")
    stdin = body.get("stdin")
    if stdin is not None and (not stdin or stdin not in {f.get("path") for f in body.get("files") or []
                                                          if isinstance(f, dict)}):
        raise ProtocolError(f"{t}: stdin must name a file of the job")


_EXTRA_CHECKS = {"submit": _check_submit, "run": _check_submit}


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def validate(t: str, body: dict[str, Any]) -> None:
    if not isinstance(t, str):
        raise ProtocolError("message type is not a string")
    schema = ALL.get(t)
    if schema is None:
        raise ProtocolError(f"unknown message type {t[:40]!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{t}: message is not an object")
    for field, (types, required) in schema.items():
        if field not in body:
            if required:
                raise ProtocolError(f"{t}: missing field {field!r}")
            continue
        value = body[field]
        # bool is an int in Python; a boolean where a number is expected is a bug
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(f"{t}: field {field!r} must be {_type_name(types)}")
        if not isinstance(value, types):
            raise ProtocolError(f"{t}: field {field!r} must be {_type_name(types)}")
    extra = _EXTRA_CHECKS.get(t)
    if extra:
        extra(t, body)
