"""The daemon's own log (homie/logs.py): size rotation, and journal-only under systemd."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
import structlog

from homie import logs, service
from homie.home import Home


@pytest.fixture
def home(tmp_path):
    h = Home(tmp_path / "home")
    h.root.mkdir(mode=0o700)
    yield h
    structlog.reset_defaults()


def _lines(n: int, width: int = 50) -> list[str]:
    return [f"{i:06d} " + "x" * (width - 8) + "\n" for i in range(n)]


def test_the_log_rotates_past_its_size_and_keeps_the_newest_lines(home):
    home.log.parent.mkdir(mode=0o700)
    f = logs.RotatingFile(home.log, max_bytes=1000, backups=3)
    lines = _lines(200)  # 10 000 bytes: ten times the limit
    for line in lines:
        f.write(line)
    f.close()
    names = sorted(p.name for p in home.log.parent.iterdir())
    assert names == ["homie.log", "homie.log.1", "homie.log.2", "homie.log.3"]
    kept = ""
    for p in (f"{home.log}.3", f"{home.log}.2", f"{home.log}.1", home.log):
        assert 0 < os.path.getsize(p) <= 1000, p
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        kept += open(p).read()
    # nothing lost or doubled between the files, and the oldest beyond .3 gone
    assert kept == "".join(lines[-len(kept.splitlines()):])
    assert len(kept.splitlines()) >= 3 * (1000 // 50)


def test_an_existing_log_counts_towards_the_limit(home):
    home.log.parent.mkdir(mode=0o700)
    home.log.write_text("y" * 990 + "\n")
    f = logs.RotatingFile(home.log, max_bytes=1000, backups=1)
    f.write("z" * 20 + "\n")
    f.close()
    assert open(f"{home.log}.1").read() == "y" * 990 + "\n"
    assert home.log.read_text() == "z" * 20 + "\n"


def test_rotation_never_writes_through_a_planted_symlink(home, tmp_path):
    home.log.parent.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    f = logs.RotatingFile(home.log, max_bytes=100, backups=2)
    f.write("a" * 60 + "\n")
    os.symlink(victim, f"{home.log}.1")  # the rotation moves it away, as a link
    for _ in range(5):
        f.write("b" * 60 + "\n")
    assert victim.read_text() == "precious\n"
    assert not home.log.is_symlink()
    # one planted in the log's own place before a reopen: refused, the line dropped
    f.close()
    home.log.unlink()
    home.log.symlink_to(victim)
    with pytest.raises(OSError):  # _Lines swallows it: the daemon goes on
        f.write("c" * 10 + "\n")
    assert victim.read_text() == "precious\n"


def test_setup_logging_writes_json_lines_to_the_rotating_file(home):
    log = logs.setup_logging(home, "info", foreground=False, env={})
    log.info("hello", n=1)
    log.debug("not at info")
    rec = [json.loads(line) for line in home.log.read_text().splitlines()]
    assert [(r["event"], r["level"], r["n"]) for r in rec] == [("hello", "info", 1)]


def test_under_systemd_the_journal_gets_the_lines_and_no_file_is_written(home, tmp_path, monkeypatch):
    journal = open(tmp_path / "journal", "w")  # stands in for journald's stream on stderr
    st = os.fstat(journal.fileno())
    monkeypatch.setattr(sys, "stderr", journal)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "0" * 32}
    log = logs.setup_logging(home, "info", foreground=True, env=env)
    log.info("daemon.started", name="raj")
    journal.flush()
    assert not (home.root / "logs").exists(), "journal-only: nothing under HOMIE_HOME/logs"
    journal.close()
    rec = json.loads((tmp_path / "journal").read_text())
    assert rec["event"] == "daemon.started" and rec["name"] == "raj"


def test_an_inherited_journal_stream_that_is_not_stderr_keeps_the_file(home, tmp_path):
    # `homie up` from a terminal that runs as a systemd service: JOURNAL_STREAM is
    # set but names the terminal's stream, not the daemon's stderr.
    other = tmp_path / "elsewhere"
    other.write_text("")
    st = os.stat(other)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    assert logs.journal_stream(env) is None
    targets = logs.log_targets(home, foreground=False, env=env)
    assert [type(t) for t in targets] == [logs.RotatingFile]
    targets[0].close()


@pytest.mark.parametrize("env,stdout_too", [({}, True), ({"XPC_SERVICE_NAME": "0"}, True),
                                            ({"XPC_SERVICE_NAME": service.LABEL}, False)])
def test_foreground_copies_to_stdout_except_under_launchd(home, env, stdout_too):
    targets = logs.log_targets(home, foreground=True, env=env)
    assert isinstance(targets[0], logs.RotatingFile)
    assert targets[1:] == ([sys.stdout] if stdout_too else [])
    targets[0].close()


def test_the_launchd_label_is_the_agents():
    assert logs.LAUNCHD_LABEL == service.LABEL
