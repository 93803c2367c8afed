"""The shape of every control reply, as the client checks it: a plain table, so
that checking a reply costs `homie run` no import of dataclasses (the classes in
homie.control.replies are the source; tests/test_replies.py keeps this table equal
to what they declare)."""

from __future__ import annotations

from typing import Any

from homie.errors import ProtocolError

None_ = type(None)

# request -> the replies it may end with: (name, field -> the types it may hold)
TABLE: dict[str, tuple[tuple[str, dict[str, tuple[type, ...]]], ...]] = {
    "status": (
        (
            "Status",
            {
                "running": (bool,),
                "name": (str,),
                "pid": (int,),
                "version": (str,),
                "uptime": (
                    int,
                    float,
                ),
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
                "sandbox_reason": (
                    str,
                    None_,
                ),
            },
        ),
    ),
    "peers": (("Peers", {"peers": (list,), "me": (dict,)}),),
    "down": (("Stopping", {"stopping": (bool,), "name": (str,)}),),
    "pause": (
        (
            "Paused",
            {
                "status": (str,),
                "suspended": (bool,),
                "evicted": (int,),
                "grace": (
                    int,
                    float,
                ),
            },
        ),
    ),
    "resume": (("Resumed", {"status": (str,)}),),
    "plugins": (("Plugins", {"plugins": (list,)}),),
    "karma": (("KarmaBook", {"ledger": (list,), "totals": (dict,), "entries": (list,)}),),
    "doctor": (("Findings", {"findings": (list,)}),),
    "ps": (
        (
            "Listed",
            {
                "now": (
                    int,
                    float,
                )
            },
        ),
    ),
    "kill": (("Signalled", {"message": (str,)}),),
    "run": (
        ("Detached", {"job_id": (str,), "detached": (bool,)}),
        (
            "Explained",
            {
                "chosen": (
                    str,
                    None_,
                ),
                "verdict": (str,),
                "why": (
                    str,
                    None_,
                ),
                "peers": (list,),
            },
        ),
        (
            "Ended",
            {
                "job_id": (str,),
                "state": (str,),
                "exit_code": (
                    int,
                    None_,
                ),
                "code": (
                    int,
                    None_,
                ),
                "signal": (
                    int,
                    None_,
                ),
                "reason": (
                    str,
                    None_,
                ),
                "message": (
                    str,
                    None_,
                ),
                "peer": (
                    str,
                    None_,
                ),
                "results": (list,),
                "results_dir": (str,),
                "offset": (int,),
                "terminal": (bool,),
            },
        ),
    ),
    "restart": (
        ("Detached", {"job_id": (str,), "detached": (bool,)}),
        (
            "Ended",
            {
                "job_id": (str,),
                "state": (str,),
                "exit_code": (
                    int,
                    None_,
                ),
                "code": (
                    int,
                    None_,
                ),
                "signal": (
                    int,
                    None_,
                ),
                "reason": (
                    str,
                    None_,
                ),
                "message": (
                    str,
                    None_,
                ),
                "peer": (
                    str,
                    None_,
                ),
                "results": (list,),
                "results_dir": (str,),
                "offset": (int,),
                "terminal": (bool,),
            },
        ),
    ),
    "follow": (
        (
            "Ended",
            {
                "job_id": (str,),
                "state": (str,),
                "exit_code": (
                    int,
                    None_,
                ),
                "code": (
                    int,
                    None_,
                ),
                "signal": (
                    int,
                    None_,
                ),
                "reason": (
                    str,
                    None_,
                ),
                "message": (
                    str,
                    None_,
                ),
                "peer": (
                    str,
                    None_,
                ),
                "results": (list,),
                "results_dir": (str,),
                "offset": (int,),
                "terminal": (bool,),
            },
        ),
    ),
    "job": (
        (
            "Ended",
            {
                "job_id": (str,),
                "state": (str,),
                "exit_code": (
                    int,
                    None_,
                ),
                "code": (
                    int,
                    None_,
                ),
                "signal": (
                    int,
                    None_,
                ),
                "reason": (
                    str,
                    None_,
                ),
                "message": (
                    str,
                    None_,
                ),
                "peer": (
                    str,
                    None_,
                ),
                "results": (list,),
                "results_dir": (str,),
                "offset": (int,),
                "terminal": (bool,),
            },
        ),
    ),
    "get_results": (("Results", {"job_id": (str,), "results": (list,), "results_dir": (str,)}),),
    "forget": (("Forgotten", {"forgotten": (str,)}),),
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
