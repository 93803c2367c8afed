"""structlog set-up: JSON lines to HOMIE_HOME/logs/homie.log, and to stdout
with --foreground (journald and launchd collect it from there)."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading

import structlog

from homie.errors import HomieError
from homie.home import open_private

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Lines:
    """A thread-safe sink writing each rendered line to every target."""

    def __init__(self, targets):
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


def setup_logging(home, level: str = "info", foreground: bool = False):
    home.log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    f = os.fdopen(_open_log(home.log), "a", buffering=1, encoding="utf-8")
    targets = [f] + ([sys.stdout] if foreground else [])
    sink = _Lines(targets)
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


def _open_log(path) -> int:
    # The log is the daemon's (often root's): written through a symlink planted
    # in its place it would append to any file on the machine.
    try:
        return open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as e:
        why = "it is a symlink, which homie does not follow" if e.errno == errno.ELOOP else e.strerror
        raise HomieError(f"cannot open the log {path}: {why}") from None
