"""One daemon per home: the pid file, locked for as long as the daemon runs.

A stale file left by a crash holds no lock, so it never counts as a running daemon.
Light on purpose: the CLI asks daemon_pid() without importing the daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os

from homie.errors import HomieError
from homie.home import Home, open_private


def lock_pidfile(home: Home):
    """Take the home's pid file lock and write our pid into it; None if a daemon holds it."""
    try:
        fd = open_private(home.pidfile, os.O_RDWR | os.O_CREAT)
    except OSError as e:
        raise HomieError(f"cannot open the pid file {home.pidfile}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def daemon_pid(home: Home) -> int | None:
    """The pid of the running daemon, or None (judged by the pid file's lock,
    so a stale file left by a crash does not count)."""
    try:
        fd = os.open(home.pidfile, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None  # not a pid file of ours; starting a daemon will say so
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            data = os.read(fd, 32).decode().strip()
            return int(data) if data.isdigit() else -1
    finally:
        os.close(fd)
