import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("homie") is None:  # not installed: run from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dataclasses
import os
import stat
import sys

import pytest

from homie.config import CONFIG_KEYS, Config, load_config, parse_peer, save_config_value
from homie.config import keys as config_mod
from homie.errors import EXIT_USAGE, ConfigError


@pytest.fixture
def cfg_path(tmp_path):
    return tmp_path / "config.yaml"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path, text=None, overrides=None):
    if text is not None:
        write(path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert info.value.exit_code == EXIT_USAGE
    return msg


def test_defaults_when_file_missing(cfg_path, monkeypatch):
    monkeypatch.setattr(config_mod.socket, "gethostname", lambda: "laptop.lan.example")
    monkeypatch.setattr(config_mod.os, "cpu_count", lambda: 12)
    c = load_config(cfg_path)
    assert c.name == "laptop"
    assert (c.port, c.discovery_port) == (5556, 5555)
    assert c.interface is None and c.bind is None
    assert c.discovery == ["udp"] and c.static_peers == [] and c.static_addresses == []
    assert (c.heartbeat_interval, c.peer_timeout) == (2.0, 10.0)
    assert (c.scheduler, c.executor) == ("auto", "auto")
    assert c.max_jobs == 12
    assert c.max_job_seconds is None and c.max_job_memory_gb is None
    assert c.accept_jobs == "always" and c.idle_threshold == 50 and c.allow_gpu is True
    assert (c.cache_max_gb, c.venv_cache_max_gb, c.keep_results_hours) == (10, 5, 24)
    assert c.retries == 2 and c.plugins == [] and c.disable_plugins == []
    assert c.log_level == "info"
    assert c.source("port") == "default"


def test_cpu_count_none_defaults_to_one(cfg_path, monkeypatch):
    monkeypatch.setattr(config_mod.os, "cpu_count", lambda: None)
    assert load_config(cfg_path).max_jobs == 1


@pytest.mark.parametrize("host", ["", "-weird host!", "_x", "ünï"])
def test_default_name_always_valid(host, monkeypatch, cfg_path):
    monkeypatch.setattr(config_mod.socket, "gethostname", lambda: host)
    load_config(cfg_path)  # must not raise


@pytest.mark.parametrize("text", ["", "   \n", "# just a comment\n", "~\n", "---\n"])
def test_empty_file_is_defaults(cfg_path, text):
    assert load_config(write(cfg_path, text)) == load_config(cfg_path.with_name("missing.yaml"))


def test_file_values(cfg_path):
    write(cfg_path, """
name: box-1.lab
port: 6000
discovery_port: 6001
bind: 192.168.1.10
discovery: [udp, mdns]
static_peers: ["10.0.0.2", "tower:7000", "nas.local"]
heartbeat_interval: 1
peer_timeout: 5.5
max_jobs: 0
max_job_seconds: 3600
max_job_memory_gb: 8
accept_jobs: IDLE
idle_threshold: 80
allow_gpu: false
cache_max_gb: 2.5
retries: 0
plugins: [my_pkg.plugin]
disable_plugins: [gpu]
log_level: DEBUG
""")
    c = load_config(cfg_path)
    assert c.name == "box-1.lab" and c.port == 6000 and c.bind == "192.168.1.10"
    assert c.discovery == ["udp", "mdns"]
    assert c.static_addresses == [("10.0.0.2", 6001), ("tower", 7000), ("nas.local", 6001)]
    assert c.heartbeat_interval == 1.0 and isinstance(c.heartbeat_interval, float)
    assert c.max_jobs == 0 and c.max_job_seconds == 3600.0 and c.max_job_memory_gb == 8.0
    assert c.accept_jobs == "idle" and c.log_level == "debug" and c.allow_gpu is False
    assert c.plugins == ["my_pkg.plugin"] and c.disable_plugins == ["gpu"]
    assert c.source("port") == str(cfg_path)


def test_overrides_win_and_none_ignored(cfg_path):
    write(cfg_path, "port: 6000\nretries: 5\nlog_level: error\n")
    c = load_config(cfg_path, {"port": 7000, "retries": None, "log-level": "debug", "static_peers": ("a", "b:9")})
    assert c.port == 7000 and c.retries == 5 and c.log_level == "debug"
    assert c.static_addresses == [("a", 5555), ("b", 9)]
    assert c.source("port") == "--port" and c.source("retries") == str(cfg_path)


def test_override_strings_are_converted(cfg_path):
    c = load_config(cfg_path, {"port": "7000", "allow_gpu": "no", "max_job_seconds": "1.5",
                               "discovery": "udp,mdns"})
    assert (c.port, c.allow_gpu, c.max_job_seconds, c.discovery) == (7000, False, 1.5, ["udp", "mdns"])


def test_override_bind_replaces_file_interface(cfg_path):
    write(cfg_path, "interface: eth0\n")
    c = load_config(cfg_path, {"bind": "10.0.0.1"})
    assert c.bind == "10.0.0.1" and c.interface is None


@pytest.mark.parametrize("text, needle", [
    ("port: abc\n", "port: must be an integer between 1 and 65535 (got 'abc')"),
    ("port: 0\n", "port: must be an integer between 1 and 65535 (got 0)"),
    ("port: 70000\n", "port: must be an integer"),
    ("port: 5556.0\n", "port: must be an integer"),
    ("max_jobs: -1\n", "max_jobs: must be an integer >= 0"),
    ("retries: 1.5\n", "retries: must be an integer >= 0"),
    ("heartbeat_interval: 0\n", "heartbeat_interval: must be a number > 0 and <= 60"),
    ("heartbeat_interval: 61\npeer_timeout: 100\n", "heartbeat_interval: must be a number > 0 and <= 60"),
    ("heartbeat_interval: .nan\n", "heartbeat_interval: must be a number"),
    ("cache_max_gb: .inf\n", "cache_max_gb: must be a number > 0"),
    ("cache_max_gb: '10'\n", "cache_max_gb: must be a number > 0 (got '10')"),
    ("idle_threshold: 101\n", "idle_threshold: must be a number between 0 and 100"),
    ("max_job_seconds: 0\n", "max_job_seconds: must be a number > 0"),
    ("max_job_memory_gb: -2\n", "max_job_memory_gb: must be a number > 0"),
    ("accept_jobs: sometimes\n", "accept_jobs: must be 'always' or 'idle'"),
    ("log_level: loud\n", "log_level: must be 'debug' or 'info' or 'warning' or 'error'"),
    ("allow_gpu: 1\n", "allow_gpu: must be true or false (got 1)"),
    ("allow_gpu: 'yes'\n", "allow_gpu: must be true or false"),
    ("name: 'has space'\n", "name: must be 1-63 letters"),
    ("name: -dash\n", "name: must be 1-63 letters"),
    (f"name: {'a' * 64}\n", "name: must be 1-63 letters"),
    ("name: \"ok\\n\"\n", "name: must be 1-63 letters"),
    ("bind: 300.1.1.1\n", "bind: must be an IPv4 address"),
    ("bind: ::1\n", "bind: must be an IPv4 address"),
    ("interface: 'eth0/1'\n", "interface: must be a network interface name"),
    ("discovery: {a: 1}\n", "discovery: must be a list of discovery backend names"),
    ("discovery: [udp, '']\n", "discovery: item 2: must be a non-empty string"),
    ("discovery: [udp, 3]\n", "discovery: item 2: must be a non-empty string (got 3)"),
    ("static_peers: ['a:0']\n", "static_peers: item 1: port must be between 1 and 65535"),
    ("static_peers: ['a:x']\n", "static_peers: item 1: port must be between 1 and 65535"),
    ("static_peers: ['10.0.0.256']\n", "static_peers: item 1: host must be an IPv4 address or a host name"),
    ("static_peers: ['bad host']\n", "static_peers: item 1: host must be"),
    ("static_peers: ['[::1]:5']\n", "static_peers: item 1: must be 'host' or 'host:port'; IPv6"),
    ("plugins: ['not a module']\n", "plugins: item 1: must be an importable module name"),
    ("plugins: ['import']\n", "plugins: item 1: must be an importable module name"),
    ("scheduler: ''\n", "scheduler: must be a non-empty string"),
    ("executor: [a]\n", "executor: must be a non-empty string"),
])
def test_value_errors_name_key_and_file(cfg_path, text, needle):
    msg = error_of(cfg_path, text)
    assert msg.startswith(f"config error in {cfg_path}: ")
    assert needle in msg, msg


@pytest.mark.parametrize("value", ["true", "false", "yes", "on"])
def test_bool_is_not_an_int(cfg_path, value):
    for key in ("port", "max_jobs", "retries"):
        assert f"{key}: must be an integer" in error_of(cfg_path, f"{key}: {value}\n")
    assert "heartbeat_interval: must be a number" in error_of(cfg_path, f"heartbeat_interval: {value}\n")
    assert "--port: must be an integer" in error_of(cfg_path, "", {"port": True})


def test_yaml_syntax_error_is_one_line_with_line_number(cfg_path):
    msg = error_of(cfg_path, "port: 5556\nname: [unclosed\nretries: 1\n")
    assert msg.startswith(f"config error in {cfg_path}: line ")
    assert "invalid YAML" in msg
    msg = error_of(cfg_path, "port: 1\n  bad: indent: here\n")
    assert "line 2" in msg


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd", b"port: \x07\n", b"a: 2001-13-45\n",
                                  b"x: !!python/object:os.system {}\n", b"[" * 5000])
def test_unparseable_files(cfg_path, data):
    cfg_path.write_bytes(data)
    assert "invalid YAML" in error_of(cfg_path)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "int")])
def test_top_level_must_be_mapping(cfg_path, text, kind):
    msg = error_of(cfg_path, text)
    assert "the top level must be a mapping" in msg and kind in msg and str(cfg_path) in msg


def test_unknown_key_suggestion(cfg_path):
    assert error_of(cfg_path, "prot: 1\n").endswith("prot: unknown setting (did you mean 'port'?)")
    assert "did you mean 'max_jobs'" in error_of(cfg_path, "max-jobs: 1\n")
    assert "did you mean 'heartbeat_interval'" in error_of(cfg_path, "heartbeat_intervall: 1\n")
    msg = error_of(cfg_path, "zzzz: 1\n")
    assert msg.endswith("zzzz: unknown setting") and str(cfg_path) in msg
    assert "unknown setting" in error_of(cfg_path, "1: 2\n")
    assert "unknown setting" in error_of(cfg_path, "\"a\\nb\": 2\n")


def test_duplicate_key(cfg_path):
    msg = error_of(cfg_path, "port: 1\nretries: 1\nport: 2\n")
    assert "line 3" in msg and "port: set twice" in msg


def test_interface_and_bind_exclusive(cfg_path):
    msg = error_of(cfg_path, "interface: eth0\nbind: 10.0.0.1\n")
    assert msg == f"config error in {cfg_path}: bind: cannot be combined with interface; set only one"
    msg = error_of(cfg_path, "", {"interface": "eth0", "bind": "10.0.0.1"})
    assert msg.startswith("config error in --") and "cannot be combined" in msg


def test_peer_timeout_must_exceed_heartbeat(cfg_path):
    msg = error_of(cfg_path, "heartbeat_interval: 5\npeer_timeout: 5\n")
    assert "peer_timeout: must be greater than heartbeat_interval" in msg and str(cfg_path) in msg
    msg = error_of(cfg_path, "heartbeat_interval: 30\n")
    assert "heartbeat_interval: must be less than peer_timeout" in msg
    msg = error_of(cfg_path, "heartbeat_interval: 3\n", {"peer_timeout": 2})
    assert msg.startswith("config error in --peer-timeout: must be greater than heartbeat_interval")


def test_override_errors_name_the_flag(cfg_path):
    assert error_of(cfg_path, "", {"port": "abc"}) == (
        "config error in --port: must be an integer between 1 and 65535 (got 'abc')")
    assert error_of(cfg_path, "", {"max_jobs": -3}).startswith("config error in --max-jobs: ")
    assert "did you mean 'port'" in error_of(cfg_path, "", {"prot": 1})


def test_file_errors_beat_override_fixes(cfg_path):
    # A broken file is reported even when the flag would replace the value.
    assert str(cfg_path) in error_of(cfg_path, "port: abc\n", {"port": 1})


def test_unreadable_path(tmp_path):
    msg = error_of(tmp_path)  # a directory
    assert msg.startswith(f"config error in {tmp_path}: cannot read the file")


def test_parse_peer():
    assert parse_peer("10.0.0.1", 5555) == ("10.0.0.1", 5555)
    assert parse_peer(" host-a.lan:80 ", 5555) == ("host-a.lan", 80)
    assert parse_peer("010.000.0.1:65535", 1) == ("10.0.0.1", 65535)
    for bad in ["", ":5", "a:", "a:65536", "a:-1", "a:²", "-a", "a..b", "1.2.3", "a:1:2", "a b"]:
        with pytest.raises(ValueError):
            parse_peer(bad, 5555)


def test_static_addresses_dedup_and_discovery_port(cfg_path):
    write(cfg_path, "discovery_port: 7000\nstatic_peers: [a, 'a:7000', 'b:1']\n")
    assert load_config(cfg_path).static_addresses == [("a", 7000), ("b", 1)]


def test_config_is_frozen_and_validates():
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="port: must be an integer"):
        dataclasses.replace(c, port=0)
    with pytest.raises(ConfigError, match="cannot be combined"):
        Config(interface="eth0", bind="10.0.0.1")


def test_config_keys_table_matches_dataclass():
    names = [s.name for s in CONFIG_KEYS]
    assert names == [f.name for f in dataclasses.fields(Config)]
    assert all(s.help for s in CONFIG_KEYS)
    for s in CONFIG_KEYS:
        assert s.check(s.default_value()) == getattr(Config(), s.name) or s.name in ("name", "max_jobs")
    ref = config_mod.config_reference()
    assert all(f"`{n}`" in ref for n in names)


def test_to_dict_and_dump(cfg_path):
    write(cfg_path, "port: 6000\n")
    c = load_config(cfg_path, {"retries": 4})
    d = c.to_dict()
    assert list(d) == [s.name for s in CONFIG_KEYS] and d["port"] == 6000
    d["discovery"].append("x")
    assert c.discovery == ["udp"]
    text = c.dump(show_sources=True)
    assert f"port: 6000  # {cfg_path}" in text and "retries: 4  # --retries" in text
    import yaml

    assert yaml.safe_load(c.dump()) == c.to_dict()


def test_yaml_is_imported_lazily():
    import subprocess

    code = "import sys, homie.config; print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_save_config_value_round_trip(cfg_path):
    write(cfg_path, "# my settings\nport: 6000  # the job port\nstatic_peers:\n  - a\n  - b:7\n")
    cfg_path.chmod(0o644)
    c = save_config_value(cfg_path, "name", "box1")
    assert c.name == "box1"
    text = cfg_path.read_text()
    assert text.startswith("# my settings\n") and "name: box1" in text
    again = load_config(cfg_path)
    assert (again.name, again.port, again.static_peers) == ("box1", 6000, ["a", "b:7"])
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    save_config_value(cfg_path, "static_peers", ["x:1"])
    save_config_value(cfg_path, "port", None)  # back to the default
    again = load_config(cfg_path)
    assert (again.name, again.port, again.static_peers) == ("box1", 5556, ["x:1"])
    assert [p.name for p in cfg_path.parent.iterdir()] == ["config.yaml"]  # no temp files left


def test_save_config_value_creates_file(tmp_path):
    path = tmp_path / "home" / "config.yaml"
    save_config_value(path, "max-jobs", "3")
    assert load_config(path).max_jobs == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_save_config_value_flow_style_file(cfg_path):
    write(cfg_path, "{port: 6000, retries: 1}\n")
    save_config_value(cfg_path, "retries", 3)
    c = load_config(cfg_path)
    assert (c.port, c.retries) == (6000, 3)


def test_save_config_value_rejects_bad_values(cfg_path):
    write(cfg_path, "interface: eth0\n")
    before = cfg_path.read_text()
    with pytest.raises(ConfigError, match=r"name: must be 1-63"):
        save_config_value(cfg_path, "name", "bad name")
    with pytest.raises(ConfigError, match="unknown setting"):
        save_config_value(cfg_path, "nmae", "x")
    with pytest.raises(ConfigError, match="cannot be combined"):
        save_config_value(cfg_path, "bind", "10.0.0.1")
    assert cfg_path.read_text() == before
    write(cfg_path, "port: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        save_config_value(cfg_path, "name", "ok")
    assert cfg_path.read_text() == "port: [\n"
