"""What the daemon answers each control request with: one dataclass per reply.

The dataclasses are the schema. The daemon builds them (homie.control.handlers),
so a reply missing a field or carrying the wrong type is a bug caught where it
is made; the client checks every reply against the same classes (`check`) before
anything reads it, so a daemon of another version is a clear ProtocolError, not
a KeyError three calls later. As with messages, fields a reply does not declare
are allowed (a newer daemon may add some) and carried as they are.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from homie.control import shapes
from homie.wire.schema import field_types


@dataclass(frozen=True)
class Reply:
    # Replies whose fields are not all known in advance (a job's summary) carry the rest here.
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def body(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}


@dataclass(frozen=True)
class Status(Reply):
    running: bool
    name: str
    pid: int
    version: str
    uptime: float
    address: str
    port: int
    discovery_port: int
    peers: int
    status: str
    jobs_here: int
    jobs_out: int
    discovery: list
    broadcast: list
    home: str
    key_fingerprint: str
    instance: str
    retries: int
    sandbox: str
    sandbox_reason: str | None


@dataclass(frozen=True)
class Peers(Reply):
    peers: list
    me: dict


@dataclass(frozen=True)
class Stopping(Reply):
    stopping: bool
    name: str


@dataclass(frozen=True)
class Paused(Reply):
    status: str
    suspended: bool
    evicted: int
    grace: float


@dataclass(frozen=True)
class Resumed(Reply):
    status: str


@dataclass(frozen=True)
class Plugins(Reply):
    plugins: list


@dataclass(frozen=True)
class KarmaBook(Reply):
    ledger: list
    totals: dict
    entries: list


@dataclass(frozen=True)
class Findings(Reply):
    findings: list


@dataclass(frozen=True)
class Listed(Reply):
    """The end of `ps` (the jobs came before it, in `ps` events)."""

    now: float


@dataclass(frozen=True)
class Signalled(Reply):
    message: str


@dataclass(frozen=True)
class Detached(Reply):
    job_id: str
    detached: bool


@dataclass(frozen=True)
class Explained(Reply):
    chosen: str | None
    verdict: str
    why: str | None
    peers: list


@dataclass(frozen=True)
class Ended(Reply):
    """How a followed job ended (or stands, for `homie job`): the end of `run`, `follow`, `restart`."""

    job_id: str
    state: str
    exit_code: int | None
    code: int | None
    signal: int | None
    reason: str | None
    message: str | None
    peer: str | None
    results: list
    results_dir: str
    offset: int
    terminal: bool


@dataclass(frozen=True)
class Results(Reply):
    job_id: str
    results: list
    results_dir: str


@dataclass(frozen=True)
class Forgotten(Reply):
    forgotten: str


# request -> the replies it may end with
FOR: dict[str, tuple[type[Reply], ...]] = {
    "status": (Status,), "peers": (Peers,), "down": (Stopping,), "pause": (Paused,), "resume": (Resumed,),
    "plugins": (Plugins,), "karma": (KarmaBook,), "doctor": (Findings,), "ps": (Listed,), "kill": (Signalled,),
    "run": (Detached, Explained, Ended), "restart": (Detached, Ended), "follow": (Ended,), "job": (Ended,),
    "get_results": (Results,), "forget": (Forgotten,),
}
assert all(issubclass(c, Reply) for cs in FOR.values() for c in cs)



_SCHEMAS: dict[type[Reply], dict[str, tuple[type, ...]]] = {}


def _schema(cls: type[Reply]) -> dict[str, tuple[type, ...]]:
    s = _SCHEMAS.get(cls)
    if s is None:
        hints = typing.get_type_hints(cls)
        s = _SCHEMAS[cls] = {f.name: field_types(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "extra"}
    return s


def _mismatch(cls: type[Reply], body: dict[str, Any]) -> str | None:
    return shapes._mismatch(_schema(cls), body)


def check(request: str, body: Any) -> dict[str, Any]:
    """The reply to `request` as sent, if it fits (homie.control.shapes, what the client runs)."""
    return shapes.check(request, body)


def parse(request: str, body: Any) -> Reply:
    """The reply to `request` as its dataclass (fields it does not declare go to `extra`)."""
    check(request, body)
    for cls in FOR[request]:
        if _mismatch(cls, body) is None:
            known = _schema(cls)
            return cls(**{k: v for k, v in body.items() if k in known},
                       extra={k: v for k, v in body.items() if k not in known})
    raise AssertionError("unreachable: check() passed")
