"""Every message homie sends, in one place: the job channel between daemons and
the control channel between the CLI and its local daemon share this module.

Each message is a frozen dataclass in homie.wire.classes (its fields and their
types are the schema; a field with a default may be left out); `validate`
checks a decoded body against the plain table below, generated from those
classes and kept equal to them by a test, so that the CLI's start-up does not
build every class. A schema maps a field to (types, required). Unknown fields are ignored so that
a newer peer may add fields; missing or mistyped required ones are a
ProtocolError. Validation never raises anything else, whatever the input.
"""

from __future__ import annotations

from homie.errors import ProtocolError

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from typing import Any

Schema = dict[str, tuple[tuple[type, ...], bool]]  # field -> (types, required)

None_ = type(None)

# Generated from the classes in homie.wire.classes (tests/test_message_classes.py checks
# it is equal): field -> (types, required).
# -- job channel (daemon <-> daemon, over mutual TLS) --------------------------
PEER: dict[str, Schema] = {
    "hello": {
        "name": ((str,), True),
        "proto": ((int,), True),
        "homie": ((str,), True),
        "python": ((str,), True),
        "instance": ((str,), False),
    },
    "submit": {
        "job_id": ((str,), True),
        "script": ((str,), True),
        "args": ((list,), True),
        "files": ((list,), True),
        "submitter": ((str,), True),
        "executor": ((str,), False),
        "gpu": ((bool,), False),
        "interpreter": (
            (
                str,
                None_,
            ),
            False,
        ),
        "env": ((dict,), False),
        "timeout": (
            (
                int,
                float,
                None_,
            ),
            False,
        ),
        "stdin": (
            (
                str,
                None_,
            ),
            False,
        ),
        "token": ((str,), False),
        "checkpoints": ((list,), False),
        "checkpoint_interval": (
            (
                int,
                float,
            ),
            False,
        ),
        "attempt": ((int,), False),
    },
    "need": {"hashes": ((list,), True)},
    "refuse": {
        "reason": ((str,), True),
        "code": ((str,), True),
        "retry_after": (
            (
                int,
                float,
            ),
            False,
        ),
    },
    "blob": {"sha256": ((str,), True), "size": ((int,), True)},
    "upload_done": {},
    "started": {
        "job_id": ((str,), True),
        "pid": (
            (
                int,
                None_,
            ),
            False,
        ),
        "gpu": (
            (
                str,
                None_,
            ),
            False,
        ),
    },
    "exit": {
        "job_id": ((str,), True),
        "code": (
            (
                int,
                None_,
            ),
            True,
        ),
        "signal": (
            (
                int,
                None_,
            ),
            False,
        ),
        "reason": (
            (
                str,
                None_,
            ),
            False,
        ),
        "cpu_s": (
            (
                int,
                float,
            ),
            False,
        ),
        "wall_s": (
            (
                int,
                float,
            ),
            False,
        ),
        "gpu_s": (
            (
                int,
                float,
            ),
            False,
        ),
        "results": ((int,), False),
        "evicted": ((bool,), False),
        "checkpoint": ((int,), False),
    },
    "checkpoint": {
        "job_id": ((str,), True),
        "seq": ((int,), True),
        "at": (
            (
                int,
                float,
            ),
            True,
        ),
        "bytes": ((int,), False),
    },
    "ckpt_fetch": {"job_id": ((str,), True), "token": ((str,), False)},
    "ckpt": {
        "job_id": ((str,), True),
        "seq": ((int,), True),
        "at": (
            (
                int,
                float,
            ),
            True,
        ),
        "files": ((list,), True),
    },
    "ckpt_want": {"chunks": ((list,), True)},
    "ckpt_done": {},
    "attach": {"job_id": ((str,), True), "offset": ((int,), True), "token": ((str,), False)},
    "fetch": {"job_id": ((str,), True), "token": ((str,), False)},
    "results": {"job_id": ((str,), True), "files": ((list,), True)},
    "want": {"paths": ((list,), True)},
    "results_done": {},
    "ack": {"job_id": ((str,), True), "token": ((str,), False)},
    "signal": {"job_id": ((str,), True), "sig": ((int,), True), "token": ((str,), False)},
    "ok": {},
    "error": {"message": ((str,), True), "code": ((str,), False)},
    "ping": {},
    "pong": {},
    "bye": {},
}

# -- control channel (CLI <-> local daemon, over the unix socket) ------------
CONTROL: dict[str, Schema] = {
    "status": {},
    "peers": {},
    "down": {},
    "run": {
        "script": ((str,), True),
        "args": ((list,), True),
        "cwd": ((str,), True),
        "files": ((list,), False),
        "directory": (
            (
                str,
                None_,
            ),
            False,
        ),
        "peer": (
            (
                str,
                None_,
            ),
            False,
        ),
        "gpu": ((bool,), False),
        "executor": (
            (
                str,
                None_,
            ),
            False,
        ),
        "detach": ((bool,), False),
        "explain": ((bool,), False),
        "scheduler": (
            (
                str,
                None_,
            ),
            False,
        ),
        "tag": (
            (
                str,
                None_,
            ),
            False,
        ),
        "retries": ((int,), False),
        "env": ((dict,), False),
        "timeout": (
            (
                int,
                float,
                None_,
            ),
            False,
        ),
        "name": (
            (
                str,
                None_,
            ),
            False,
        ),
        "stdin_file": (
            (
                str,
                None_,
            ),
            False,
        ),
        "checkpoints": ((list,), False),
    },
    "restart": {"job_id": ((str,), True), "detach": ((bool,), False)},
    "ps": {"all": ((bool,), False)},
    "kill": {"job_id": ((str,), True), "sig": ((int,), False)},
    "follow": {
        "job_id": ((str,), True),
        "live": ((bool,), False),
        "offset": ((int,), False),
        "quiet": ((bool,), False),
    },
    "get_results": {"job_id": ((str,), True)},
    "job": {"job_id": ((str,), True)},
    "forget": {"job_id": ((str,), True)},
    "pause": {"suspend": ((bool,), False), "evict": ((bool,), False)},
    "resume": {},
    "karma": {},
    "plugins": {},
    "doctor": {},
    "reply": {},
    "event": {"kind": ((str,), True)},
    "fail": {"message": ((str,), True), "exit_code": ((int,), False)},
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
    if stdin is not None and (
        not stdin or stdin not in {f.get("path") for f in body.get("files") or [] if isinstance(f, dict)}
    ):
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
    for name, (allowed, required) in schema.items():
        if name not in body:
            if required:
                raise ProtocolError(f"{t}: missing field {name!r}")
            continue
        value = body[name]
        # bool is an int in Python; a boolean where a number is expected is a bug
        if isinstance(value, bool) and bool not in allowed:
            raise ProtocolError(f"{t}: field {name!r} must be {_type_name(allowed)}")
        if not isinstance(value, allowed):
            raise ProtocolError(f"{t}: field {name!r} must be {_type_name(allowed)}")
    extra = _EXTRA_CHECKS.get(t)
    if extra:
        extra(t, body)
