"""What the worker hands the runner for one job: how to start its process
(`Launch`: command, environment, identity, sandbox descriptors, cgroup) and the
limits to hold it to; and how a root daemon starts it as the job's user."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from homie.worker.cgroup import JobCgroup
from homie.worker.identity import Identity


@dataclass
class Limits:
    max_seconds: float | None = None
    max_memory_bytes: int | None = None


@dataclass
class Launch:
    """How to start one job's process, as the worker prepared it.

    `argv` runs with `env` as `user` (None: as the daemon). In the sandbox,
    `argv` is `bwrap --args FD` (the job's own environment is inside FD) and
    `info_fd` reads bubblewrap's --info-fd (the pid of the sandbox's init,
    which leads the job's process group); with a cgroup, bubblewrap waits on
    `block_w` until its first processes have been moved in, so every process
    of the job is born inside. `uid_sweep` is a uid only this job has
    (unsandboxed under a root daemon): at the end, every process of it is the
    job's.
    """

    argv: list[str]
    cwd: str
    env: dict
    user: Identity | None = None
    cgroup: JobCgroup | None = None
    info_fd: int | None = None
    block_w: int | None = None
    pass_fds: tuple = ()
    uid_sweep: int | None = None
    umask: int = 0o077

    @property
    def sandboxed(self) -> bool:
        return self.info_fd is not None


def as_user(argv: list[str], user: Identity, sandboxed: bool) -> tuple[list[str], dict[str, Any]]:
    """How to start argv as user: the command and Popen's extra arguments.

    Popen(user=...) must fork() the whole daemon, not vfork() it (CPython does not
    vfork when it changes ids), which cost ~4 ms per job for a 60 MB daemon with a
    few dozen threads; a root daemon vforks util-linux's setpriv instead, which
    drops to the uid, gid and no supplementary groups (its capabilities go with
    root, as with Popen) and then execs argv: ~2 ms in all. Only for bubblewrap,
    whose environment is the daemon's own: setpriv runs as root with the
    environment it is given, and an unsandboxed job's is the submitter's
    (`-e LD_PRELOAD=./x.so` would load the submitter's code into a root process)."""
    setpriv = _setpriv() if sandboxed and os.geteuid() == 0 else None
    if setpriv is None:
        return argv, {"user": user.uid, "group": user.gid, "extra_groups": []}
    return [setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--", *argv], {}


@functools.cache
def _setpriv() -> str | None:
    from homie.worker.sandbox import system_tool

    return system_tool("setpriv")
