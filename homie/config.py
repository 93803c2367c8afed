"""Node configuration: HOMIE_HOME/config.yaml plus command-line overrides.

Every setting is described once, in CONFIG_KEYS (name, type, default, validator,
help), so the docs and `homie doctor` can be generated from the same table.

Every problem becomes a one-line ConfigError naming the setting and where it came
from, e.g.::

    config error in /home/ann/.homie/config.yaml: port: must be an integer between 1 and 65535 (got 'abc')
    config error in --port: must be an integer between 1 and 65535 (got 0)

yaml is imported lazily (inside the functions that need it): the CLI must start fast.
"""

from __future__ import annotations

import copy
import json
import keyword
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homie.errors import ConfigError

__all__ = [
    "CONFIG_KEYS",
    "Config",
    "KeySpec",
    "config_reference",
    "load_config",
    "parse_peer",
    "save_config_value",
]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_IPV4_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
LOG_LEVELS = ("debug", "info", "warning", "error")
ACCEPT_JOBS = ("always", "idle")


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


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path) -> tuple[dict, str]:
    """The file's top-level mapping ({} if missing or empty) and its text."""
    where = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, ""
    except OSError as e:
        raise _error(where, None, f"cannot read the file ({e.strerror or e})") from None
    if not data.strip():
        return {}, ""
    import yaml

    loader = None
    try:
        loader = yaml.SafeLoader(data)
        node = loader.get_single_node()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str":
                    if key_node.value in seen:
                        raise _error(where, None, f"line {key_node.start_mark.line + 1}: "
                                     f"{key_node.value}: set twice")
                    seen.add(key_node.value)
        doc = loader.construct_document(node) if node is not None else None
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise _error(where, None, f"{at}invalid YAML: {problem}") from None
    except yaml.YAMLError as e:  # e.g. ReaderError: bad UTF-8, control characters
        first = (str(e).splitlines() or ["unreadable"])[0]
        raise _error(where, None, f"invalid YAML: {first}") from None
    except RecursionError:
        raise _error(where, None, "invalid YAML: nested too deeply") from None
    except Exception as e:  # e.g. ValueError for an impossible date like 2001-13-01
        raise _error(where, None, f"invalid YAML: {type(e).__name__}: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    text = data.decode("utf-8", "replace")
    if doc is None:
        return {}, text
    if not isinstance(doc, dict):
        kinds: dict[type, str] = {list: "a list", str: "a string"}
        kind = kinds.get(type(doc), type(doc).__name__)
        raise _error(where, None, f"the top level must be a mapping of 'setting: value' lines (got {kind})")
    return doc, text


def _unknown(key: Any) -> str:
    import difflib

    if not isinstance(key, str):
        return f"{_show(key)}: unknown setting"
    guess = key.strip().lower().replace("-", "_")
    match = [guess] if guess in SPECS else difflib.get_close_matches(guess, list(SPECS), n=1, cutoff=0.6)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    shown = key if re.fullmatch(r"[\w.-]{1,60}", key) else _show(key)
    return f"{shown}: unknown setting{hint}"


def _coerce(spec: KeySpec, value: Any) -> Any:
    """Command-line strings to the setting's type; left alone when that fails."""
    if isinstance(value, tuple):
        return list(value)
    if not isinstance(value, str):
        return value
    text = value.strip()
    if spec.optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if spec.type.startswith("int") and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if spec.type.startswith("float") and re.fullmatch(r"[+-]?[0-9_.eE+-]+", text):
            return float(text)
    except ValueError:
        return value
    if spec.type == "bool":
        low = text.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
    return value


def _from_file(raw: Mapping[Any, Any], where: str) -> tuple[dict, dict]:
    values, sources = {}, {}
    for key, value in raw.items():
        if not isinstance(key, str) or key not in SPECS:
            raise _error(where, None, _unknown(key))
        try:
            values[key] = SPECS[key].check(value)
        except _Bad as e:
            raise _error(where, key, str(e)) from None
        sources[key] = where
    return values, sources


def _build(values: dict, sources: dict) -> Config:
    for spec in CONFIG_KEYS:
        if spec.name not in values:
            values[spec.name] = spec.default_value()
    _cross_check(values, sources)
    cfg = Config(**values)
    object.__setattr__(cfg, "_sources", dict(sources))
    return cfg


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file (if it exists), then overrides (None values ignored).

    path defaults to Home().config. Override keys are setting names ('-' or '_');
    command-line strings are converted to the setting's type ("5557" -> 5557,
    "a,b" -> ["a", "b"], "none" -> None for nullable settings). An override of
    interface or bind replaces the other one if that came from the file.
    Raises ConfigError (one line) for any problem.
    """
    if path is None:
        from homie.home import Home

        path = Home().config
    path = Path(path)
    raw, _ = _read_yaml(path)
    values, sources = _from_file(raw, str(path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        name = key.strip().replace("-", "_") if isinstance(key, str) else key
        if name not in SPECS:
            flag = _flag(name) if isinstance(name, str) else _show(name)
            raise _error(flag, None, _unknown(key))
        spec, flag = SPECS[name], _flag(name)
        try:
            values[name] = spec.check(_coerce(spec, value))
        except _Bad as e:
            raise _error(flag, None, str(e)) from None
        sources[name] = flag
        other = {"interface": "bind", "bind": "interface"}.get(name)
        if other and values.get(other) is not None and not sources.get(other, "").startswith("--"):
            del values[other]
            del sources[other]
    return _build(values, sources)


# ---------------------------------------------------------------- saving


def _atomic_write(path: Path, text: str) -> None:
    import tempfile

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _edit_text(text: str, key: str, new_raw: dict) -> str | None:
    """Replace/append one top-level line, keeping comments; None if that is unsafe."""
    import yaml

    line = "" if key not in new_raw else yaml.safe_dump(
        {key: new_raw[key]}, default_flow_style=False, sort_keys=False, allow_unicode=True, width=10**6
    )
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        node = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    start: int | None = None
    end = 0
    if isinstance(node, yaml.MappingNode) and not node.flow_style:
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and k.start_mark.column == 0:
                first: int = k.start_mark.line
                end = v.end_mark.line - 1 if v.end_mark.column == 0 else v.end_mark.line
                start, end = first, max(end, first)
    if start is not None:
        lines[start:end + 1] = [line]
    elif key in new_raw:
        lines.append(line)
    result = "".join(lines)
    try:
        check = yaml.safe_load(result) if result.strip() else {}
    except Exception:
        return None
    return result if (check or {}) == new_raw else None


def save_config_value(path: Path | str, key: str, value: Any) -> Config:
    """Set one setting in the YAML file, keeping the others (and comments where possible).

    value None removes the setting (back to its default). The value is validated,
    and so is the whole resulting file; the file is written atomically with mode
    0600. Returns the resulting Config (without command-line overrides).
    """
    path = Path(path)
    where = str(path)
    name = key.strip().replace("-", "_") if isinstance(key, str) else key
    if name not in SPECS:
        raise _error(where, None, _unknown(key))
    raw, text = _read_yaml(path)
    new_raw = dict(raw)
    if value is None:
        new_raw.pop(name, None)
    else:
        spec = SPECS[name]
        try:
            new_raw[name] = spec.check(_coerce(spec, value))
        except _Bad as e:
            raise _error(where, name, str(e)) from None
    cfg = _build(*_from_file(new_raw, where))
    new_text = _edit_text(text, name, new_raw)
    if new_text is None:
        import yaml

        new_text = yaml.safe_dump(new_raw, default_flow_style=False, sort_keys=False, allow_unicode=True)
    try:
        _atomic_write(path, new_text)
    except OSError as e:
        raise _error(where, None, f"cannot write the file ({e.strerror or e})") from None
    return cfg
