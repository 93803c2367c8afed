"""The real `homie` CLI, run as a subprocess against a temporary HOMIE_HOME:
config errors, key handling, no-daemon behaviour, and a loopback-only daemon
run checking that the group key never reaches the logs.

The one daemon started here runs in the root network namespace, so it is
loopback only: `bind: 127.0.0.1`, `discovery: [static]` with no static peers
(nothing is ever broadcast) and ports picked free for this test.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from netns import homie_bin, wait_until

HOMIE = homie_bin()


def homie(home: Path, *args, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMIE_")}
    env["HOMIE_HOME"] = str(home)
    return subprocess.run([HOMIE, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def group_key_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("group key: ")]
    assert len(lines) == 1, out
    return lines[0].split(": ", 1)[1].strip()


def one_line_error(cp: subprocess.CompletedProcess[str]) -> str:
    err = cp.stderr.strip()
    assert "Traceback" not in cp.stderr + cp.stdout, cp.stderr
    assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
    return err


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "text,key",
    [
        ("port: abc\n", "port"),
        ("discovery_port: 70000\n", "discovery_port"),
        ("heartbeat_interval: -1\n", "heartbeat_interval"),
        ("heartbeat_interval: 5\npeer_timeout: 2\n", "peer_timeout"),
        ("discovery: udp\nstatic_peers: ['host:notaport']\n", "static_peers"),
        ("name: 'has space'\n", "name"),
        ("prot: 5556\n", "prot"),  # unknown setting: named, with a suggestion
    ],
)
def test_up_with_bad_config_value(home, text, key):
    home.mkdir()
    cfg = home / "config.yaml"
    cfg.write_text(text)
    cp = homie(home, "up")
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    err = one_line_error(cp)
    assert key in err and str(cfg) in err, err
    assert not (home / "homie.sock").exists()
    assert not (home / "key").exists(), "no key should be made before the config is known to be good"


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- just\n- a list\n", "port: 1\nport: 2\n", "\tname: x\n"])
def test_up_with_malformed_yaml(home, text):
    home.mkdir()
    cfg = home / "config.yaml"
    cfg.write_text(text)
    cp = homie(home, "up")
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert str(cfg) in one_line_error(cp)


def test_bad_flag_value_names_the_flag(home):
    cp = homie(home, "up", "--port", "0")
    assert cp.returncode == 2
    assert "--port" in one_line_error(cp)


# ----------------------------------------------------------------------------- keys


def test_init_prints_key_and_key_command_matches(home):
    cp = homie(home, "init", "--name", "raj")
    assert cp.returncode == 0, cp.stderr
    key = group_key_line(cp.stdout)
    assert f"homie join {key}" in cp.stdout
    keyfile = home / "key"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    cp = homie(home, "key")
    assert cp.returncode == 0 and cp.stdout.strip() == key
    assert "name: raj" in (home / "config.yaml").read_text()


def test_init_refuses_to_overwrite_without_force(home):
    first = group_key_line(homie(home, "init").stdout)
    cp = homie(home, "init")
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    err = one_line_error(cp)
    assert "already in group" in err and "--force" in err and "NEW group" in err, err
    assert homie(home, "key").stdout.strip() == first, "the key changed without --force"

    cp = homie(home, "init", "--force")
    assert cp.returncode == 0, cp.stderr
    second = group_key_line(cp.stdout)
    assert second != first
    assert homie(home, "key").stdout.strip() == second
    assert stat.S_IMODE((home / "key").stat().st_mode) == 0o600


@pytest.mark.parametrize("garbage", ["garbage", "ABCD-EFGH", "0000" * 13, "x" * 200, ""])
def test_join_garbage_is_a_clear_error(home, garbage):
    cp = homie(home, "join", garbage)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    err = one_line_error(cp)
    assert "malformed key" in err, err
    assert not (home / "key").exists()


def test_join_stores_friends_key(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    key = group_key_line(homie(a, "init").stdout)
    cp = homie(b, "join", key.lower().replace("-", " "))  # typed sloppily
    assert cp.returncode == 0, cp.stderr
    assert homie(b, "key").stdout.strip() == key
    assert stat.S_IMODE((b / "key").stat().st_mode) == 0o600
    # and refuses to replace it with another one without --force
    other = group_key_line(homie(tmp_path / "c", "init").stdout)
    cp = homie(b, "join", other)
    assert cp.returncode == 2 and "--force" in one_line_error(cp)
    assert homie(b, "key").stdout.strip() == key
    assert homie(b, "join", "--force", other).returncode == 0
    assert homie(b, "key").stdout.strip() == other


def test_key_without_a_key(home):
    cp = homie(home, "key")
    assert cp.returncode == 2
    assert "homie init" in one_line_error(cp)


# ----------------------------------------------------------------------------- no daemon


@pytest.mark.parametrize("verb", ["ps", "peers"])
def test_cli_without_daemon_says_how_to_start_it(home, verb):
    cp = homie(home, verb)
    assert cp.returncode == 69, (cp.returncode, cp.stdout, cp.stderr)
    assert "start it with: homie up" in one_line_error(cp)


def test_down_without_daemon_exits_0(home):
    cp = homie(home, "down")
    assert cp.returncode == 0, cp.stderr
    assert "not running" in cp.stdout


# ----------------------------------------------------------------------------- loopback daemon


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (and the wildcard)."""
    for _ in range(50):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")


@pytest.fixture
def loopback_home(home):
    """A home whose daemon is loopback only (never broadcasts); stopped afterwards."""
    home.mkdir()
    port, dport = free_port(), free_port()
    while dport == port:
        dport = free_port()
    (home / "config.yaml").write_text(
        f"bind: 127.0.0.1\ndiscovery: [static]\nstatic_peers: []\nport: {port}\ndiscovery_port: {dport}\n"
        "heartbeat_interval: 0.2\npeer_timeout: 2\n")
    yield home
    cp = homie(home, "down")
    pidfile = home / "homie.pid"
    if cp.returncode != 0 and pidfile.exists():
        pid = pidfile.read_text().strip()
        if pid.isdigit():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_key_never_logged(loopback_home):
    home = loopback_home
    cp = homie(home, "init", "--name", "loop")
    key_text = group_key_line(cp.stdout)
    cp = homie(home, "up")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert 'daemon started as "loop" (heartbeats to static_peers)' in cp.stdout, cp.stdout
    assert "listening for jobs on 127.0.0.1:" in cp.stdout and "broadcasting" not in cp.stdout
    st = json.loads(homie(home, "status", "--json").stdout)
    assert st["discovery"] == ["static"] and st["address"] == "127.0.0.1"
    # some activity: requests, a few heartbeat intervals, a clean stop
    assert homie(home, "peers", "--json").returncode == 0
    assert homie(home, "ps").returncode == 0
    time.sleep(0.6)
    cp = homie(home, "down")
    assert cp.returncode == 0, cp.stderr

    log = home / "logs" / "homie.log"
    wait_until(lambda: "daemon.stopped" in log.read_text(), 5, msg="the daemon to log its stop")
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "daemon.started" in events

    from homie.keys import parse_key

    raw = parse_key(key_text)
    forms = {key_text, key_text.replace("-", ""), key_text.lower(), key_text.replace("-", "").lower(),
             raw.hex(), base64.b64encode(raw).decode(), base64.b32encode(raw).decode().rstrip("=")}
    for f in (home / "logs").iterdir():
        data = f.read_bytes()
        assert raw not in data, f"raw key bytes in {f}"
        text = data.decode("utf-8", "replace")
        for form in forms:
            assert form not in text, f"the group key appears in {f}"


def test_up_without_key_creates_one(loopback_home):
    home = loopback_home
    cp = homie(home, "up", "--name", "solo")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "created one" in cp.stdout
    assert stat.S_IMODE((home / "key").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "homie.sock").stat().st_mode) == 0o600
    key = homie(home, "key").stdout.strip()
    assert key and key in cp.stdout  # printed once, so the user can share it
    cp = homie(home, "up")
    assert cp.returncode == 0 and "already running" in cp.stdout
