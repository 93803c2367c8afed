"""The daemon's hygiene through the real `homie` CLI: an unsafe home is refused,
the daemon's files are private whatever the caller's umask, and the daemon
`homie up` starts imports nothing from the directory it was started in.

Daemons here are loopback only, as in test_core_cli.py: `bind: 127.0.0.1`,
`discovery: [static]` with no static peers, free ports.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from netns import wait_until
from test_core_cli import HOMIE, free_port, group_key_line, one_line_error

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def homie(home: Path, *args, cwd=None, env=None, umask: int = -1, timeout: float = 30):
    e = {k: v for k, v in os.environ.items() if not k.startswith("HOMIE_")}
    e["HOMIE_HOME"] = str(home)
    e.update(env or {})
    return subprocess.run([HOMIE, *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd, umask=umask)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def write_loopback_config(home: Path, extra: str = "") -> None:
    port, dport = free_port(), free_port()
    while dport == port:
        dport = free_port()
    (home / "config.yaml").write_text(
        f"bind: 127.0.0.1\ndiscovery: [static]\nstatic_peers: []\nport: {port}\ndiscovery_port: {dport}\n"
        "heartbeat_interval: 0.2\npeer_timeout: 2\n" + extra)


@pytest.fixture
def daemon_home(tmp_path):
    """A loopback-only home with a key; its daemon (if any) is stopped afterwards."""
    home = tmp_path / "home"
    assert homie(home, "init", "--name", "tidy").returncode == 0
    write_loopback_config(home)
    yield home
    homie(home, "down")
    pid = (home / "homie.pid").read_text().strip() if (home / "homie.pid").exists() else ""
    if pid.isdigit() and homie(home, "status").returncode == 0:
        os.kill(int(pid), 9)


@pytest.fixture(autouse=True)
def no_daemon_left_behind(tmp_path):
    """A regression (a refused home starting a daemon after all) must not leave one running."""
    yield
    for pidfile in tmp_path.rglob("homie.pid"):
        pid = "" if pidfile.is_symlink() else pidfile.read_text().strip()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if pid.isdigit() else []
        except OSError:
            continue
        if f"HOMIE_HOME={pidfile.parent}".encode() in env:  # that daemon, not a reused pid
            os.kill(int(pid), signal.SIGTERM)


# ----------------------------------------------------------------------------- unsafe homes


def refused(cp: subprocess.CompletedProcess[str], what: str) -> None:
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    err = one_line_error(cp)
    assert err.startswith("error: unsafe home") and what in err, err


def test_key_through_a_symlink_is_refused_and_the_target_untouched(tmp_path):
    home = tmp_path / "home"
    key = group_key_line(homie(home, "init").stdout)
    target = tmp_path / "passwd"
    target.write_text(key + "\n")
    os.chmod(target, 0o644)
    (home / "key").unlink()
    (home / "key").symlink_to(target)
    for verb in (["key"], ["up"]):
        cp = homie(home, *verb)
        assert cp.returncode == 2, (verb, cp.returncode, cp.stdout, cp.stderr)
        assert "is a symlink" in one_line_error(cp)
    assert mode(target) == 0o644, "homie chmodded the symlink's target"
    assert not (home / "homie.pid").exists() or homie(home, "status").returncode != 0


@pytest.mark.parametrize("verb", [["init"], ["join", "A" * 52], ["key"], ["up"], ["ps"], ["down"], ["doctor"]])
def test_a_world_writable_home_is_refused_by_every_command(tmp_path, verb):
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o777)
    refused(homie(home, *verb), "other users can write to it")
    assert mode(home) == 0o777 and not list(home.iterdir()), "a refused home was changed"


@pytest.mark.parametrize("verb", [["init"], ["key"], ["up"], ["status"]])
def test_a_symlinked_home_is_refused(tmp_path, verb):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "home").symlink_to(real)
    refused(homie(tmp_path / "home", *verb), "is a symlink")
    assert not list(real.iterdir())


@needs_root
@pytest.mark.parametrize("verb", [["init"], ["join", "A" * 52], ["key"], ["up"]])
def test_a_home_owned_by_another_user_is_refused(tmp_path, verb):
    home = tmp_path / "home"
    assert homie(home, "init").returncode == 0
    for p in [home, *home.rglob("*")]:
        os.lchown(p, NOBODY, NOBODY)
    refused(homie(home, *verb), f"belongs to nobody (uid {NOBODY})")
    assert all(os.lstat(p).st_uid == NOBODY for p in [home, *home.rglob("*")])
    assert mode(home / "key") == 0o600


@needs_root
def test_the_daemons_socket_in_another_users_home_can_still_be_used(tmp_path):
    # group members drive the system service with HOMIE_HOME=/var/lib/homie (owned by homie)
    home = tmp_path / "home"
    home.mkdir(mode=0o750)
    os.chown(home, NOBODY, NOBODY)
    cp = homie(home, "ps")
    assert cp.returncode == 69 and "start it with: homie up" in one_line_error(cp), cp.stderr


# ----------------------------------------------------------------------------- the daemon's files


def test_daemon_files_are_private_under_a_lax_umask(daemon_home):
    home = daemon_home
    cp = homie(home, "up", umask=0o022)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert homie(home, "ps").returncode == 0  # touches the database
    files = [home / "state.db", home / "homie.pid", home / "logs" / "homie.log", home / "logs" / "daemon.err",
             home / "homie.sock", home / "key"]
    for p in files:
        assert p.exists(), p
        assert mode(p) == 0o600, f"{p} is {mode(p):04o}"
    for p in home.glob("state.db-*"):
        assert mode(p) == 0o600, f"{p} is {mode(p):04o}"
    for d in (home, home / "logs", home / "jobs"):
        assert mode(d) == 0o700, f"{d} is {mode(d):04o}"
    assert homie(home, "down").returncode == 0


def test_an_old_open_database_is_tightened_by_up(daemon_home):
    home = daemon_home
    (home / "state.db").touch()
    os.chmod(home / "state.db", 0o644)
    (home / "logs").mkdir(exist_ok=True)
    os.chmod(home / "logs", 0o755)
    cp = homie(home, "up", umask=0o022)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert mode(home / "state.db") == 0o600 and mode(home / "logs") == 0o700
    assert homie(home, "down").returncode == 0


def test_a_symlinked_log_is_not_followed(daemon_home, tmp_path):
    home = daemon_home
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (home / "logs").mkdir(exist_ok=True)
    (home / "logs" / "homie.log").symlink_to(victim)
    cp = homie(home, "up")
    assert cp.returncode != 0, "the daemon logged through a symlink"
    assert victim.read_text() == "precious\n"


# ----------------------------------------------------------------------------- the caller's directory

PLANT = """import os
open({marker!r}, "a").write(__name__ + " imported by pid %d\\n" % os.getpid())
"""


def plant(d: Path, names: list[str], marker: Path) -> None:
    for name in names:
        (d / f"{name}.py").write_text(PLANT.format(marker=str(marker)))


def test_up_imports_nothing_from_the_current_directory(daemon_home, tmp_path):
    """The finding: `homie up` spawned `python -m homie` in the caller's directory,
    so a structlog.py there ran as root."""
    cwd = tmp_path / "downloads"
    cwd.mkdir()
    marker = tmp_path / "imported"
    plant(cwd, ["structlog", "click", "yaml", "pluggy", "psutil", "cryptography", "homie_evil"], marker)
    write_loopback_config(daemon_home, "plugins: [homie_evil]\n")
    cp = homie(daemon_home, "up", cwd=cwd)
    assert not marker.exists(), marker.read_text()
    assert cp.returncode == 0, cp.stdout + cp.stderr
    st = json.loads(homie(daemon_home, "status", "--json").stdout)
    # the daemon does not keep the caller's directory busy either
    assert os.readlink(f"/proc/{st['pid']}/cwd") == "/"
    plugins = {p["name"]: p for p in json.loads(homie(daemon_home, "plugins", "--json").stdout)}
    assert "import failed" in plugins["homie_evil"]["disabled"]
    assert homie(daemon_home, "down").returncode == 0
    assert not marker.exists(), marker.read_text()


def test_a_relative_pythonpath_does_not_bring_the_current_directory_back(daemon_home, tmp_path):
    # PYTHONPATH=. applies to the `homie` command itself (so only modules the
    # command does not import are planted), but never to the daemon it starts.
    cwd = tmp_path / "downloads"
    cwd.mkdir()
    marker = tmp_path / "imported"
    plant(cwd, ["structlog", "cryptography", "homie_evil"], marker)
    write_loopback_config(daemon_home, "plugins: [homie_evil]\n")
    cp = homie(daemon_home, "up", cwd=cwd, env={"PYTHONPATH": os.pathsep.join([".", ""])})
    assert not marker.exists(), marker.read_text()
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert homie(daemon_home, "down").returncode == 0
    assert not marker.exists(), marker.read_text()


def test_the_foreground_daemon_leaves_the_current_directory(daemon_home, tmp_path):
    # `homie up --foreground` is what the service units (and the background start) run
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMIE_")}
    env["HOMIE_HOME"] = str(daemon_home)
    proc = subprocess.Popen([HOMIE, "up", "--foreground"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: homie(daemon_home, "status").returncode == 0, 20, msg="the daemon to start")
        assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
        assert homie(daemon_home, "down").returncode == 0
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_plugin_on_an_absolute_pythonpath_still_loads(daemon_home, tmp_path):
    # Deliberately kept: the daemon gets the import path of the `homie up` that
    # started it (PYTHONPATH included), only never the current directory.
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "homie_hello.py").write_text("import homie\n__version__ = '1.2'\n")
    write_loopback_config(daemon_home, "plugins: [homie_hello]\n")
    cp = homie(daemon_home, "up", env={"PYTHONPATH": str(plugdir)})
    assert cp.returncode == 0, cp.stdout + cp.stderr
    plugins = {p["name"]: p for p in json.loads(homie(daemon_home, "plugins", "--json").stdout)}
    assert "homie_hello" in plugins and not plugins["homie_hello"].get("disabled"), plugins.get("homie_hello")
    assert homie(daemon_home, "down").returncode == 0
