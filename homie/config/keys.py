"""The settings table (CONFIG_KEYS: name, type, default, validator, help) and the Config it describes.

The docs (config_reference) and `homie doctor` are generated from the same table.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


# ---------------------------------------------------------------- defaults


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


# ---------------------------------------------------------------- the table


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


def _spec(name, type_, default, validate, help_, default_doc=None):
    optional = type_.endswith("|null")
    return KeySpec(name, type_, default, _optional(validate) if optional else validate,
                   help_, default_doc, optional)


CONFIG_KEYS: tuple[KeySpec, ...] = (
    _spec("name", "str", default_name, _name,
          "This node's name as friends see it.", "host name up to the first '.'"),
    _spec("port", "int", 5556, _int(1, 65535), "TCP port of the job channel (mutual TLS)."),
    _spec("discovery_port", "int", 5555, _int(1, 65535),
          "UDP port for discovery beacons; also the default port of static_peers."),
    _spec("interface", "str|null", None, _interface,
          "Network interface to listen and announce on (exclusive with bind)."),
    _spec("bind", "str|null", None, _ipv4,
          "IPv4 address to listen and announce on (exclusive with interface)."),
    _spec("discovery", "list", ["udp"], _list_of(_str, "discovery backend names"),
          "Discovery backends to run."),
    _spec("static_peers", "list", [], _list_of(_peer_item, "'host' or 'host:port' strings"),
          "Peers to contact directly: 'host' or 'host:port' (port defaults to discovery_port)."),
    _spec("heartbeat_interval", "float", 2.0, _float(0, 60),
          "Seconds between beacons/heartbeats (0 < x <= 60)."),
    _spec("peer_timeout", "float", 10.0, _float(0),
          "Seconds without a heartbeat before a peer counts as gone (> heartbeat_interval)."),
    _spec("scheduler", "str", "auto", _str, "Scheduler plugin choosing where jobs run."),
    _spec("executor", "str", "auto", _str, "Executor plugin running jobs here."),
    _spec("max_jobs", "int", default_max_jobs, _int(0),
          "Jobs this node runs for others at once; 0 accepts none.", "number of CPUs"),
    _spec("max_job_seconds", "float|null", None, _float(0),
          "Wall-clock limit for a job run here; null for none."),
    _spec("max_job_memory_gb", "float|null", None, _float(0),
          "Memory limit (GB) for a job run here; null for none."),
    _spec("accept_jobs", "str", "always", _choice(*ACCEPT_JOBS),
          "'always', or 'idle' to take jobs only while the machine is idle."),
    _spec("idle_threshold", "float", 50.0, _float(0, 100, lo_open=False),
          "CPU idle percent (0-100) above which the machine counts as idle."),
    _spec("allow_gpu", "bool", True, _bool, "Let jobs run here use the GPUs."),
    _spec("cache_max_gb", "float", 10.0, _float(0), "Size limit (GB) of the blob cache."),
    _spec("venv_cache_max_gb", "float", 5.0, _float(0),
          "Size limit (GB) of the cached job virtual environments."),
    _spec("keep_results_hours", "float", 24.0, _float(0),
          "Hours to keep finished jobs' results before cleaning them up."),
    _spec("retries", "int", 2, _int(0), "How often a job is retried elsewhere when its peer is lost."),
    _spec("checkpoint_interval", "float", 60.0, _float(1, 86400, lo_open=False),
          "Seconds between checkpoints sent home from a job of ours (at most one per interval; 1-86400)."),
    _spec("evict_grace_seconds", "float", 10.0, _float(0, 3600, lo_open=False),
          "Seconds an evicted job has after SIGTERM to write its last checkpoint (pause --evict, accept_jobs: idle)."),
    _spec("plugins", "list", [], _list_of(_module_item, "module names"),
          "Extra plugin modules to import and register."),
    _spec("disable_plugins", "list", [], _list_of(_str, "plugin names"),
          "Plugins (built-in or installed) not to load."),
    _spec("job_user", "str|null", None, _str,
          "Run every job as this user when the daemon runs as root (never root itself); null gives each"
          " job a uid of its own from job_uids.", "null"),
    _spec("job_uids", "str", "61184-65519", _uid_range,
          "Range of uids a root daemon gives its jobs, one per running job (systemd's DynamicUser range)."),
    _spec("sandbox", "str", "auto", _sandbox_mode,
          "Run jobs in a bubblewrap sandbox: 'auto' (when it works, else warn), 'required' (yes) or 'off' (no)."),
    _spec("job_network", "bool", True, _bool, "Let jobs run here use the network (false: loopback only)."),
    _spec("sandbox_tmp_mb", "int", 1024, _int(16), "Size cap (MB) of a sandboxed job's private /tmp."),
    _spec("sandbox_ro_paths", "list", [], _list_of(_abs_path, "absolute paths"),
          "Host paths shown read-only to sandboxed jobs, at the same path (e.g. a shared data set)."),
    _spec("job_python", "str|null", None, _str,
          "Python interpreter for .py jobs.", "the daemon's own, if the job user can run it"),
    _spec("log_level", "str", "info", _choice(*LOG_LEVELS),
          "'debug', 'info', 'warning' or 'error'."),
)

SPECS: dict[str, KeySpec] = {s.name: s for s in CONFIG_KEYS}


def config_reference() -> str:
    """A Markdown table of every setting (for the docs)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in CONFIG_KEYS:
        rows.append(f"| `{s.name}` | {s.type} | {s.default_text} | {s.help} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- Config


def _field(spec: KeySpec):
    if callable(spec.default) or isinstance(spec.default, (list, dict)):
        return field(default_factory=spec.default_value)
    return field(default=spec.default)


@dataclass(frozen=True)
class Config:
    """A validated node configuration; build it with load_config()."""

    name: str = _field(SPECS["name"])
    port: int = _field(SPECS["port"])
    discovery_port: int = _field(SPECS["discovery_port"])
    interface: str | None = _field(SPECS["interface"])
    bind: str | None = _field(SPECS["bind"])
    discovery: list[str] = _field(SPECS["discovery"])
    static_peers: list[str] = _field(SPECS["static_peers"])
    heartbeat_interval: float = _field(SPECS["heartbeat_interval"])
    peer_timeout: float = _field(SPECS["peer_timeout"])
    scheduler: str = _field(SPECS["scheduler"])
    executor: str = _field(SPECS["executor"])
    max_jobs: int = _field(SPECS["max_jobs"])
    max_job_seconds: float | None = _field(SPECS["max_job_seconds"])
    max_job_memory_gb: float | None = _field(SPECS["max_job_memory_gb"])
    accept_jobs: str = _field(SPECS["accept_jobs"])
    idle_threshold: float = _field(SPECS["idle_threshold"])
    allow_gpu: bool = _field(SPECS["allow_gpu"])
    cache_max_gb: float = _field(SPECS["cache_max_gb"])
    venv_cache_max_gb: float = _field(SPECS["venv_cache_max_gb"])
    keep_results_hours: float = _field(SPECS["keep_results_hours"])
    retries: int = _field(SPECS["retries"])
    checkpoint_interval: float = _field(SPECS["checkpoint_interval"])
    evict_grace_seconds: float = _field(SPECS["evict_grace_seconds"])
    plugins: list[str] = _field(SPECS["plugins"])
    disable_plugins: list[str] = _field(SPECS["disable_plugins"])
    job_user: str | None = _field(SPECS["job_user"])
    job_uids: str = _field(SPECS["job_uids"])
    sandbox: str = _field(SPECS["sandbox"])
    job_network: bool = _field(SPECS["job_network"])
    sandbox_tmp_mb: int = _field(SPECS["sandbox_tmp_mb"])
    sandbox_ro_paths: list[str] = _field(SPECS["sandbox_ro_paths"])
    job_python: str | None = _field(SPECS["job_python"])
    log_level: str = _field(SPECS["log_level"])

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
