"""The one atomic-write helper: a file is replaced whole or not at all."""

from __future__ import annotations

import os
import threading

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600, fsync: bool = True) -> None:
    """Replace `path` with `data` in one rename: a reader (or a restart after a
    power cut) sees the old content or the new one, never half of either. The file
    gets exactly `mode`, whatever the umask (a unit file must be readable by all)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
