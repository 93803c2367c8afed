"""structlog set-up: the daemon's JSON lines, and where they go.

- Under systemd with stderr connected to the journal (JOURNAL_STREAM names that
  stream's device:inode): stderr only. journald stores and rotates them
  (`journalctl -u homie`, `journalctl --user -u homie`); a file as well would
  hold every line twice.
- Otherwise HOMIE_HOME/logs/homie.log, rotated by size: a line that would take
  it past MAX_BYTES first moves it to homie.log.1 (and .1 to .2, up to BACKUPS),
  so the log never holds more than (BACKUPS + 1) x MAX_BYTES. With --foreground
  in a terminal the lines also go to stdout; not under launchd, whose stdout is
  a file that nothing rotates (the plist's StandardOutPath).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

from homie.errors import HomieError
from homie.home import Home, open_private

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
LAUNCHD_LABEL = "io.homie.agent"  # homie.service.LABEL, the agent's XPC_SERVICE_NAME


class _Target(Protocol):
    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


class _Lines:
    """A thread-safe sink writing each rendered line to every target."""

    def __init__(self, targets: list[_Target]):
        self.targets = targets
        self.lock = threading.Lock()

    def msg(self, line: str) -> None:
        with self.lock:
            for t in self.targets:
                try:
                    t.write(line + "\n")
                    t.flush()
                except (OSError, ValueError):
                    pass

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class RotatingFile:
    """A log file of the home's, rotated by size like logging's RotatingFileHandler,
    but opened (at start and after each rotation) only through open_private: a
    symlink planted in its place is refused, never written through. Not
    thread-safe by itself: _Lines serialises the writes."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = MAX_BYTES, backups: int = BACKUPS):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = _open_log(self.path)
        self._size = os.fstat(self._fd).st_size

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        if self._fd is None:
            self._reopen()  # the one after rotating failed: try again, once per line
            if self._fd is None:
                raise OSError(errno.EIO, f"cannot reopen the log {self.path}")
        os.write(self._fd, data)
        self._size += len(data)

    def flush(self) -> None:
        pass  # every write is a write(2)

    def _rotate(self) -> None:
        self.close()
        try:
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{i}")
                    if os.path.lexists(older):
                        os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            else:
                os.unlink(self.path)
        except OSError:
            pass  # cannot rotate (e.g. a read-only directory): keep appending rather than lose lines
        self._reopen()

    def _reopen(self) -> None:
        try:
            fd = _open_log(self.path)
        except HomieError:
            return  # e.g. a symlink planted meanwhile: refused, and the line dropped
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def journal_stream(env: Mapping[str, str] | None = None, streams: list[Any] | None = None) -> Any | None:
    """The stream (stderr first, then stdout) that systemd connected to the journal,
    or None. JOURNAL_STREAM alone is not enough: a process started from a shell of
    a terminal that itself runs as a systemd service inherits it, with its stderr
    somewhere else; systemd.exec(5) says to compare the device and inode."""
    env = os.environ if env is None else env
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return None
    for stream in [sys.stderr, sys.stdout] if streams is None else streams:
        try:
            st = os.fstat(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if (st.st_dev, st.st_ino) == (int(dev), int(ino)):
            return stream
    return None


def log_targets(home: Home, foreground: bool, env: Mapping[str, str] | None = None) -> list[_Target]:
    """Where the daemon's lines go: see the module's docstring."""
    env = os.environ if env is None else env
    journal = journal_stream(env)
    if journal is not None:
        return [journal]
    home.log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    targets: list[_Target] = [RotatingFile(home.log)]
    if foreground and env.get("XPC_SERVICE_NAME") != LAUNCHD_LABEL:
        targets.append(sys.stdout)
    return targets


def setup_logging(home: Home, level: str = "info", foreground: bool = False,
                  env: Mapping[str, str] | None = None) -> Any:
    sink = _Lines(log_targets(home, foreground, env))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *a: sink,
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger()


def _open_log(path: str | os.PathLike[str]) -> int:
    # The log is the daemon's (often root's): written through a symlink planted
    # in its place it would append to any file on the machine.
    try:
        return open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as e:
        why = "it is a symlink, which homie does not follow" if e.errno == errno.ELOOP else e.strerror
        raise HomieError(f"cannot open the log {path}: {why}") from None
