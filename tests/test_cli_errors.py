"""The CLI's one error path, through the real `homie` command: a HomieError or a
key mistake is one line on stderr and its documented exit code, never a traceback.

Homes here are loopback only (`bind: 127.0.0.1`, `discovery: [static]`, free ports),
though no daemon should ever start: every case is refused before one could.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from homie.errors import EXIT_NO_DAEMON, EXIT_USAGE

from test_core_cli import free_port, homie, one_line_error


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    port, dport = free_port(), free_port()
    (home / "config.yaml").write_text(
        f"bind: 127.0.0.1\ndiscovery: [static]\nstatic_peers: []\nport: {port}\ndiscovery_port: {dport}\n")
    yield home
    homie(home, "down")  # only if a regression let one start


def _fifo(p: Path) -> None:
    os.mkfifo(p)


MALFORMED = {
    "garbage": lambda p: p.write_text("garbage\n"),
    "empty": lambda p: p.write_bytes(b""),
    "binary": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "too short": lambda p: p.write_text("A" * 51 + "\n"),
    "too long": lambda p: p.write_text("A" * 60 + "\n"),
    "bad checksum": lambda p: p.write_text("A" * 56 + "\n"),
    "NUL bytes": lambda p: p.write_bytes(b"\0" * 56),
    "a directory": lambda p: p.mkdir(),
    "a FIFO": _fifo,
    "a dangling symlink": lambda p: p.symlink_to(p.with_name("nowhere")),
}


@pytest.mark.parametrize("verb", [["up"], ["up", "--foreground"], ["key"], ["init"]])
@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_key_is_one_line_and_exit_2(home, kind, verb):
    MALFORMED[kind](home / "key")
    r = homie(home, *verb, timeout=30)
    assert r.returncode == EXIT_USAGE, r.stdout + r.stderr
    err = one_line_error(r)
    assert err.startswith("error: ") and str(home / "key") in err, err
    assert "internal error" not in err
    assert not (home / "homie.pid").exists() or homie(home, "status").returncode != 0


@pytest.mark.parametrize("verb", [["init", "--force"], ["join", "--force", "KEY"]])
def test_a_key_that_cannot_be_written_is_a_key_error_not_a_bug(home, verb):
    """save_key's OSErrors (here: the key path is a directory) were "internal error ...
    please report it" (exit 73), and a traceback with HOMIE_DEBUG; now a key mistake."""
    (home / "key").mkdir()
    (home / "key" / "x").write_text("")
    if verb[-1] == "KEY":
        from homie import keys

        verb = [*verb[:-1], keys.format_key(keys.generate_key())]
    r = homie(home, *verb)
    assert r.returncode == EXIT_USAGE, r.stdout + r.stderr
    err = one_line_error(r)
    assert err.startswith(f"error: cannot write the group key at {home / 'key'}"), err
    assert (home / "key" / "x").exists()


def test_homie_errors_keep_their_codes(home):
    """A few HomieErrors from different verbs, each one line with its own code."""
    cases = [
        (["kill"], EXIT_USAGE, "name the JOB(s) to kill"),
        (["run", "nosuch.py"], EXIT_USAGE, "script not found"),
        (["peers"], EXIT_NO_DAEMON, "homie is not running"),
        (["ps"], EXIT_NO_DAEMON, "homie is not running"),
        (["join", "AAAA"], EXIT_USAGE, "malformed key"),
    ]
    for argv, code, needle in cases:
        r = homie(home, *argv)
        assert r.returncode == code, (argv, r.stdout + r.stderr)
        assert needle in one_line_error(r), (argv, r.stderr)


def test_an_unsafe_home_is_one_line_even_for_status(home):
    """status answers "not running" for a missing daemon, but an unsafe home is its own error."""
    home.chmod(0o777)
    try:
        for verb in (["status"], ["status", "--json"], ["up"], ["peers"], ["key"]):
            r = homie(home, *verb)
            assert r.returncode == EXIT_USAGE, (verb, r.stdout + r.stderr)
            assert "unsafe home" in one_line_error(r) and r.stdout == "", (verb, r.stdout)
    finally:
        home.chmod(0o700)


def test_no_traceback_from_the_module_entry_point(home):
    """`python -m homie` goes through the same group."""
    (home / "key").write_text("garbage\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMIE_")}
    env["HOMIE_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-m", "homie", "up"], capture_output=True, text=True, env=env,
                       timeout=30, stdin=subprocess.DEVNULL, cwd="/")
    assert r.returncode == EXIT_USAGE
    assert "malformed group key" in one_line_error(r)
