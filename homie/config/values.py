"""Checking one setting's value: the validators of the settings table, and how a bad value is told.

A validator returns the value normalized or raises _Bad with the part of the message after
'key: '; _error() turns that into the one-line ConfigError naming the setting and where it
came from.
"""

from __future__ import annotations

import keyword
import math
import re
import sys
from collections.abc import Callable
from typing import Any

from homie.errors import ConfigError

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")


class _Bad(Exception):
    """A value failed validation; the message is the part after 'key: '."""


# ---------------------------------------------------------------- formatting


def _show(value: Any) -> str:
    """A short, single-line, YAML-flavoured rendering of a user's value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    import reprlib

    r = reprlib.Repr()
    r.maxstring = 60
    r.maxother = 60
    r.maxlong = 40
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    r.maxlevel = 3
    return r.repr(value)


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029\x85]", lambda m: repr(m.group())[1:-1], text)


def _error(where: str | None, key: str | None, message: str) -> ConfigError:
    prefix = f"config error in {where}" if where else "config error"
    text = f"{prefix}: {key}: {message}" if key else f"{prefix}: {message}"
    err = ConfigError(_one_line(text))
    err.where = where  # type: ignore[attr-defined]
    err.key = key  # type: ignore[attr-defined]
    return err


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# ---------------------------------------------------------------- validators


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    want = f"an integer between {lo} and {hi}" if hi is not None else f"an integer >= {lo}"

    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            raise _Bad(f"must be {want} (got {_show(v)})")
        return int(v)

    return check


def _float(lo: float, hi: float | None = None, *, lo_open: bool = True, hi_open: bool = False):
    lo_txt = f"> {lo:g}" if lo_open else f">= {lo:g}"
    if hi is None:
        want = f"a number {lo_txt}"
    elif not lo_open and not hi_open:
        want = f"a number between {lo:g} and {hi:g}"
    else:
        want = f"a number {lo_txt} and {'<' if hi_open else '<='} {hi:g}"

    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"must be {want} (got {_show(v)})")
        try:
            f = float(v)
        except OverflowError:
            raise _Bad(f"must be {want} (got {_show(v)})") from None
        if (
            not math.isfinite(f)
            or (f <= lo if lo_open else f < lo)
            or (hi is not None and (f >= hi if hi_open else f > hi))
        ):
            raise _Bad(f"must be {want} (got {_show(v)})")
        return f

    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false (got {_show(v)})")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"must be a non-empty string (got {_show(v)})")
    return v.strip()


def _choice(*choices: str) -> Callable[[Any], str]:
    want = " or ".join(repr(c) for c in choices)

    def check(v: Any) -> str:
        if not isinstance(v, str) or v.strip().lower() not in choices:
            raise _Bad(f"must be {want} (got {_show(v)})")
        return v.strip().lower()

    return check


def _sandbox_mode(v: Any) -> str:
    # YAML reads a bare `off`/`no` as false and `on`/`yes` as true: take them as meant.
    if isinstance(v, bool):
        return "required" if v else "off"
    return _choice("auto", "required", "off")(v)


def _uid_range(v: Any) -> str:
    from homie.worker.identity import parse_range

    try:
        a, b = parse_range(v)
    except ValueError as e:
        raise _Bad(f"{e} (got {_show(v)})") from None
    return f"{a}-{b}"


def _abs_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "\x00" in v or "/../" in v + "/":
        raise _Bad(f"must be an absolute path (got {_show(v)})")
    return v.rstrip("/") or "/"


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.fullmatch(v):
        raise _Bad(
            "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter "
            f"or digit (got {_show(v)})"
        )
    return v


def _interface(v: Any) -> str:
    ok = isinstance(v, str) and v.strip() not in ("", ".", "..") and "/" not in v
    if ok and sys.platform != "win32":
        ok = len(v) <= 15 and not re.search(r"[\s\x00-\x1f\x7f]", v)
    if not ok:
        raise _Bad(f"must be a network interface name like 'eth0' (got {_show(v)})")
    return v.strip()


def _is_ipv4(host: str) -> bool:
    return bool(_IPV4_RE.fullmatch(host)) and all(int(p) <= 255 for p in host.split("."))


def _ipv4(v: Any) -> str:
    if not isinstance(v, str) or not _is_ipv4(v.strip()):
        raise _Bad(f"must be an IPv4 address like 192.168.1.10 (got {_show(v)})")
    return ".".join(str(int(p)) for p in v.strip().split("."))


def _is_hostname(host: str) -> bool:
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253 or re.fullmatch(r"[0-9.]+", host):
        return False  # all digits and dots: only valid as an IPv4 address
    return all(_LABEL_RE.fullmatch(label) for label in host.split("."))


def parse_peer(entry: str, default_port: int) -> tuple[str, int]:
    """Parse "host" or "host:port" (IPv4 address or host name); raises ValueError."""
    if not isinstance(entry, str):
        raise ValueError(f"must be a string 'host' or 'host:port' (got {_show(entry)})")
    text = entry.strip()
    host, port = text, default_port
    if text.count(":") == 1:
        host, port_text = text.split(":")
        if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port must be between 1 and 65535 (got {_show(entry)})")
        port = int(port_text)
    elif ":" in text:
        raise ValueError(f"must be 'host' or 'host:port'; IPv6 is not supported (got {_show(entry)})")
    if _is_ipv4(host):
        host = ".".join(str(int(p)) for p in host.split("."))
    elif not _is_hostname(host):
        raise ValueError(f"host must be an IPv4 address or a host name (got {_show(entry)})")
    return host, port


def _list_of(item: Callable[[Any], Any], what: str) -> Callable[[Any], list]:
    def check(v: Any) -> list:
        if isinstance(v, str):  # "udp, mdns" -> ["udp", "mdns"]
            v = [part for part in (p.strip() for p in v.split(",")) if part]
        if not isinstance(v, (list, tuple)):
            raise _Bad(f"must be a list of {what} (got {_show(v)})")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except (_Bad, ValueError) as e:
                raise _Bad(f"item {i + 1}: {e}") from None
        return out

    return check


def _peer_item(v: Any) -> str:
    parse_peer(v, 1)
    return v.strip()


def _module_item(v: Any) -> str:
    if isinstance(v, str):
        parts = v.strip().split(".")
        if all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            return v.strip()
    raise _Bad(f"must be an importable module name like 'mypkg.plugin' (got {_show(v)})")


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def opt(v: Any) -> Any:
        return None if v is None else check(v)

    return opt
