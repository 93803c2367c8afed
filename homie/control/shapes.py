"""The shape of every control reply, as the client checks it: a plain table, so
that checking a reply costs `homie run` no import of dataclasses (the classes in
homie.control.replies are the source; tests/test_replies.py keeps this table equal
to what they declare)."""

from __future__ import annotations

from homie.errors import ProtocolError

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from typing import Any

None_ = type(None)

Shape = tuple[str, dict[str, tuple[type, ...]]]  # a reply: its name, and field -> the types it may hold

STATUS: Shape = (
    "Status",
    {
        "running": (bool,),
        "name": (str,),
        "pid": (int,),
        "version": (str,),
        "uptime": (int, float),
        "address": (str,),
        "port": (int,),
        "discovery_port": (int,),
        "peers": (int,),
        "status": (str,),
        "jobs_here": (int,),
        "jobs_out": (int,),
        "discovery": (list,),
        "broadcast": (list,),
        "home": (str,),
        "key_fingerprint": (str,),
        "instance": (str,),
        "retries": (int,),
        "sandbox": (str,),
        "sandbox_reason": (str, None_),
    },
)
PEERS: Shape = ("Peers", {"peers": (list,), "me": (dict,)})
STOPPING: Shape = ("Stopping", {"stopping": (bool,), "name": (str,)})
PAUSED: Shape = ("Paused", {"status": (str,), "suspended": (bool,), "evicted": (int,), "grace": (int, float)})
RESUMED: Shape = ("Resumed", {"status": (str,)})
PLUGINS: Shape = ("Plugins", {"plugins": (list,)})
KARMABOOK: Shape = ("KarmaBook", {"ledger": (list,), "totals": (dict,), "entries": (list,)})
FINDINGS: Shape = ("Findings", {"findings": (list,)})
LISTED: Shape = ("Listed", {"now": (int, float)})
SIGNALLED: Shape = ("Signalled", {"message": (str,)})
DETACHED: Shape = ("Detached", {"job_id": (str,), "detached": (bool,)})
EXPLAINED: Shape = ("Explained", {"chosen": (str, None_), "verdict": (str,), "why": (str, None_), "peers": (list,)})
ENDED: Shape = (
    "Ended",
    {
        "job_id": (str,),
        "state": (str,),
        "exit_code": (int, None_),
        "code": (int, None_),
        "signal": (int, None_),
        "reason": (str, None_),
        "message": (str, None_),
        "peer": (str, None_),
        "results": (list,),
        "results_dir": (str,),
        "offset": (int,),
        "terminal": (bool,),
    },
)
RESULTS: Shape = ("Results", {"job_id": (str,), "results": (list,), "results_dir": (str,)})
FORGOTTEN: Shape = ("Forgotten", {"forgotten": (str,)})

# request -> the replies it may end with
TABLE: dict[str, tuple[Shape, ...]] = {
    "status": (STATUS,),
    "peers": (PEERS,),
    "down": (STOPPING,),
    "pause": (PAUSED,),
    "resume": (RESUMED,),
    "plugins": (PLUGINS,),
    "karma": (KARMABOOK,),
    "doctor": (FINDINGS,),
    "ps": (LISTED,),
    "kill": (SIGNALLED,),
    "run": (
        DETACHED,
        EXPLAINED,
        ENDED,
    ),
    "restart": (
        DETACHED,
        ENDED,
    ),
    "follow": (ENDED,),
    "job": (ENDED,),
    "get_results": (RESULTS,),
    "forget": (FORGOTTEN,),
}


def _mismatch(fields: dict[str, tuple[type, ...]], body: dict[str, Any]) -> str | None:
    for name, allowed in fields.items():
        if name not in body:
            return f"no {name!r}"
        v = body[name]
        if (isinstance(v, bool) and bool not in allowed) or not isinstance(v, allowed):
            return f"{name!r} is {type(v).__name__}"
    return None


def check(request: str, body: Any) -> dict[str, Any]:
    """The reply to `request` as sent, if it is one of the replies that request may get;
    a ProtocolError naming what is wrong otherwise."""
    kinds = TABLE.get(request)
    if kinds is None:
        raise ProtocolError(f"no reply is defined for {request!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"the reply to {request!r} is not an object")
    problems = []
    for name, fields in kinds:
        why = _mismatch(fields, body)
        if why is None:
            return body
        problems.append(f"{name}: {why}")
    raise ProtocolError(
        f"the daemon's reply to {request!r} does not fit ({'; '.join(problems)}):"
        " is the daemon another version of homie? (homie down; homie up)"
    )
