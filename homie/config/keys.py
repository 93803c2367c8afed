"""The settings, each declared once: a field of Config, its type the annotation, the rest in setting().

CONFIG_KEYS (name, type, default, validator, help) is read off Config's fields, so the docs
(config_reference) and `homie doctor` are generated from the same table the loader checks.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

from homie.config.values import (
    _NAME_RE,
    _abs_path,
    _Bad,
    _bool,
    _choice,
    _error,
    _float,
    _int,
    _interface,
    _ipv4,
    _list_of,
    _module_item,
    _name,
    _one_line,
    _optional,
    _peer_item,
    _sandbox_mode,
    _str,
    _uid_range,
    parse_peer,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
ACCEPT_JOBS = ("always", "idle")


# ---------------------------------------------------------------- computed defaults


def default_name() -> str:
    """The host name up to its first '.', made valid for the `name` setting."""
    try:
        host = socket.gethostname().split(".")[0]
    except OSError:
        host = ""
    if _NAME_RE.fullmatch(host):
        return host
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", host).lstrip("_.-")[:63]
    return host if _NAME_RE.fullmatch(host) else "homie"


def default_max_jobs() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class KeySpec:
    name: str
    type: str  # for docs, and for coercing command-line strings: int, float, bool, str, list
    default: Any  # the value, or a zero-argument callable computing it
    validate: Callable[[Any], Any]  # returns the normalized value or raises _Bad
    help: str
    default_doc: str | None = None  # how docs show a computed default
    optional: bool = False  # None (null) is a valid value

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else copy.deepcopy(self.default)

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        return self.validate(value)

    @property
    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        return json.dumps(self.default)


def setting(default: Any, validate: Callable[[Any], Any], help_: str, *, doc: str | None = None) -> Any:
    """One setting, as a field of Config: its default (the value, or a zero-argument callable
    computing it), its validator, its help, and how docs show a computed default."""
    meta = {"homie": (default, validate, help_, doc)}
    if callable(default) or isinstance(default, (list, dict)):
        return field(default_factory=lambda: default() if callable(default) else copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """A validated node configuration; build it with load_config()."""

    name: str = setting(default_name, _name, "This node's name as friends see it.",
        doc="host name up to the first '.'")
    port: int = setting(5556, _int(1, 65535), "TCP port of the job channel (mutual TLS).")
    discovery_port: int = setting(5555, _int(1, 65535),
        "UDP port for discovery beacons; also the default port of static_peers.")
    interface: str | None = setting(None, _interface,
        "Network interface to listen and announce on (exclusive with bind).")
    bind: str | None = setting(None, _ipv4, "IPv4 address to listen and announce on (exclusive with interface).")
    discovery: list[str] = setting(["udp"], _list_of(_str, "discovery backend names"), "Discovery backends to run.")
    static_peers: list[str] = setting([], _list_of(_peer_item, "'host' or 'host:port' strings"),
        "Peers to contact directly: 'host' or 'host:port' (port defaults to discovery_port).")
    heartbeat_interval: float = setting(2.0, _float(0, 60), "Seconds between beacons/heartbeats (0 < x <= 60).")
    peer_timeout: float = setting(10.0, _float(0),
        "Seconds without a heartbeat before a peer counts as gone (> heartbeat_interval).")
    scheduler: str = setting("auto", _str, "Scheduler plugin choosing where jobs run.")
    executor: str = setting("auto", _str, "Executor plugin running jobs here.")
    max_jobs: int = setting(default_max_jobs, _int(0),
        "Jobs this node runs for others at once; 0 accepts none.", doc="number of CPUs")
    max_job_seconds: float | None = setting(None, _float(0), "Wall-clock limit for a job run here; null for none.")
    max_job_memory_gb: float | None = setting(None, _float(0), "Memory limit (GB) for a job run here; null for none.")
    accept_jobs: str = setting("always", _choice(*ACCEPT_JOBS),
        "'always', or 'idle' to take jobs only while the machine is idle.")
    idle_threshold: float = setting(50.0, _float(0, 100, lo_open=False),
        "CPU idle percent (0-100) above which the machine counts as idle.")
    allow_gpu: bool = setting(True, _bool, "Let jobs run here use the GPUs.")
    cache_max_gb: float = setting(10.0, _float(0), "Size limit (GB) of the blob cache.")
    venv_cache_max_gb: float = setting(5.0, _float(0), "Size limit (GB) of the cached job virtual environments.")
    keep_results_hours: float = setting(24.0, _float(0),
        "Hours to keep finished jobs' results before cleaning them up.")
    retries: int = setting(2, _int(0), "How often a job is retried elsewhere when its peer is lost.")
    checkpoint_interval: float = setting(60.0, _float(1, 86400, lo_open=False),
        "Seconds between checkpoints sent home from a job of ours (at most one per interval; 1-86400).")
    evict_grace_seconds: float = setting(10.0, _float(0, 3600, lo_open=False),
        "Seconds an evicted job has after SIGTERM to write its last checkpoint (pause --evict, accept_jobs: idle).")
    plugins: list[str] = setting([], _list_of(_module_item, "module names"),
        "Extra plugin modules to import and register.")
    disable_plugins: list[str] = setting([], _list_of(_str, "plugin names"),
        "Plugins (built-in or installed) not to load.")
    job_user: str | None = setting(None, _str,
        "Run every job as this user when the daemon runs as root (never root itself); null gives each"
        " job a uid of its own from job_uids.", doc="null")
    job_uids: str = setting("61184-65519", _uid_range,
        "Range of uids a root daemon gives its jobs, one per running job (systemd's DynamicUser range).")
    sandbox: str = setting("auto", _sandbox_mode,
        "Run jobs in a bubblewrap sandbox: 'auto' (when it works, else warn), 'required' (yes) or 'off' (no).")
    job_network: bool = setting(True, _bool, "Let jobs run here use the network (false: loopback only).")
    sandbox_tmp_mb: int = setting(1024, _int(16), "Size cap (MB) of a sandboxed job's private /tmp.")
    sandbox_ro_paths: list[str] = setting([], _list_of(_abs_path, "absolute paths"),
        "Host paths shown read-only to sandboxed jobs, at the same path (e.g. a shared data set).")
    job_python: str | None = setting(None, _str,
        "Python interpreter for .py jobs.", doc="the daemon's own, if the job user can run it")
    log_level: str = setting("info", _choice(*LOG_LEVELS), "'debug', 'info', 'warning' or 'error'.")

    def __post_init__(self) -> None:
        # Direct construction (tests, dataclasses.replace) is validated too.
        for spec in CONFIG_KEYS:
            try:
                object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))
            except _Bad as e:
                raise _error(None, spec.name, str(e)) from None
        _cross_check(self.to_dict(), {})
        object.__setattr__(self, "_sources", {})

    @property
    def static_addresses(self) -> list[tuple[str, int]]:
        """static_peers parsed to (host, port); port defaults to discovery_port."""
        out: list[tuple[str, int]] = []
        for entry in self.static_peers:
            addr = parse_peer(entry, self.discovery_port)
            if addr not in out:
                out.append(addr)
        return out

    def source(self, key: str) -> str:
        """Where a setting came from: the config file path, '--flag', or 'default'."""
        if key not in SPECS:
            raise KeyError(key)
        return getattr(self, "_sources", {}).get(key, "default")

    def to_dict(self) -> dict[str, Any]:
        return {s.name: copy.copy(getattr(self, s.name)) for s in CONFIG_KEYS}

    def dump(self, show_sources: bool = False) -> str:
        """YAML text of every setting (for `homie status` / `homie doctor`)."""
        lines = []
        for key, value in self.to_dict().items():
            line = f"{key}: {json.dumps(value, ensure_ascii=False)}"
            if show_sources:
                line += f"  # {self.source(key)}"
            lines.append(_one_line(line))
        return "\n".join(lines) + "\n"


# A field's annotation, as KeySpec.type shows it (docs, coercing command-line strings).
_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list[str]": "list",
          "str | None": "str|null", "float | None": "float|null"}


def _spec(f: Field) -> KeySpec:
    default, validate, help_, doc = f.metadata["homie"]
    type_ = _TYPES[str(f.type)]
    optional = type_.endswith("|null")
    return KeySpec(f.name, type_, default, _optional(validate) if optional else validate, help_, doc, optional)


CONFIG_KEYS: tuple[KeySpec, ...] = tuple(_spec(f) for f in fields(Config))

SPECS: dict[str, KeySpec] = {s.name: s for s in CONFIG_KEYS}


def config_reference() -> str:
    """A Markdown table of every setting (for the docs)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in CONFIG_KEYS:
        rows.append(f"| `{s.name}` | {s.type} | {s.default_text} | {s.help} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- checks spanning settings


def _cross_check(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Checks spanning two settings; blames the one set most explicitly."""

    def rank(key: str) -> int:
        src = sources.get(key, "default")
        return 2 if src.startswith("--") else 0 if src == "default" else 1

    def fail(a: str, b: str, message_a: str, message_b: str) -> None:
        key, msg = (b, message_b) if rank(b) >= rank(a) else (a, message_a)
        where = sources.get(key)
        other_key = a if key == b else b
        other = sources.get(other_key, "default")
        if where and other == "default":
            msg += f" ({other_key} is the default)"
        elif where and other != where:
            msg += f" ({other_key} is set in {other})"
        if where and where.startswith("--"):
            raise _error(where, None, msg)
        raise _error(where, key, msg)

    if values.get("interface") is not None and values.get("bind") is not None:
        fail("interface", "bind", "cannot be combined with bind; set only one",
             "cannot be combined with interface; set only one")
    hb, pt = values["heartbeat_interval"], values["peer_timeout"]
    if not pt > hb:
        fail("heartbeat_interval", "peer_timeout",
             f"must be less than peer_timeout ({hb:g} >= {pt:g})",
             f"must be greater than heartbeat_interval ({pt:g} <= {hb:g})")
