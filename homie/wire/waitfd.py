"""Waiting for one descriptor with poll(2), never select(2): select() cannot
see a descriptor numbered 1024 or more, and a daemon serving a large
`homie map` holds more open files than that."""

from __future__ import annotations

import select


def ready(fd, timeout: float, write: bool = False) -> bool:
    """True once fd (an int or anything with fileno()) is readable (or writable), False after timeout seconds."""
    p = select.poll()
    p.register(fd, select.POLLOUT if write else select.POLLIN)
    return bool(p.poll(max(0.0, timeout) * 1000.0))
