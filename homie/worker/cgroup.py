"""One cgroup per job, where the machine lets us have one.

cgroup v2 gives `cgroup.kill` (the whole tree at once) and, where the
memory and pids controllers are enabled for us, `memory.max` and `pids.max`.
Hybrid machines (v1 controllers plus an empty v2 tree, as these build hosts
are) still have `cgroup.kill` on the v2 side, and a root daemon can use the
v1 `pids` and `memory` hierarchies for the caps. Where none of this is
writable (an unprivileged daemon without systemd delegation) jobs fall back
to rlimits, the pid namespace and the tree kill, and `homie doctor` says so.

A job is placed in its cgroups before it runs any code of its own:
bubblewrap waits (--block-fd) while the daemon moves its two first
processes in, so every process of the job is born inside.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from dataclasses import dataclass, field

V1_CONTROLLERS = ("pids", "memory")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _mounts() -> dict[str, str]:
    """cgroup2 mount point under "" and v1 hierarchies by controller."""
    out: dict[str, str] = {}
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or not rparts:
            continue
        mnt, fstype = parts[4], rparts[0]
        if fstype == "cgroup2":
            out.setdefault("", mnt)
        elif fstype == "cgroup" and len(rparts) >= 3:
            for opt in rparts[2].split(","):
                if opt in V1_CONTROLLERS:
                    out.setdefault(opt, mnt)
    return out


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy ("" for v2)."""
    out = {}
    for line in _read("/proc/self/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in (ctrls.split(",") if ctrls else [""]):
            out[c] = path
    return out


@dataclass
class JobCgroup:
    dirs: list[str] = field(default_factory=list)
    v2: str | None = None

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into every cgroup of the job."""
        for f in self.procs_files:
            _write(f, str(pid))

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files:
            out.update(int(p) for p in _read(f).split() if p.isdigit())
        return out

    def kill(self) -> None:
        """SIGKILL every process in the job's cgroups."""
        if self.v2 and _write(os.path.join(self.v2, "cgroup.kill"), "1"):
            return
        for _ in range(5):  # v1 has no cgroup.kill: a forking tree may need a few passes
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)  # the last processes are still being reaped


class Cgroups:
    """Creates job cgroups under one homie subtree per daemon home."""

    def __init__(self, home_root: str):
        self.tag = "homie-" + hashlib.sha256(os.fsencode(home_root)).hexdigest()[:10]
        self.parents: dict[str, str] = {}  # "" (v2) or controller -> our subtree
        self.limits: set[str] = set()  # "memory", "pids": caps we can set
        self.kill = False
        self._setup()

    def _setup(self) -> None:
        mounts, own = _mounts(), _own_paths()
        if "" in mounts and "" in own:
            parent = os.path.join(mounts[""], own[""].lstrip("/"), self.tag)
            if self._mkdir(parent):
                self.parents[""] = parent
                self.kill = os.path.exists(os.path.join(parent, "cgroup.kill"))
                avail = set(_read(os.path.join(parent, "cgroup.controllers")).split())
                for c in V1_CONTROLLERS:
                    if c in avail and _write(os.path.join(parent, "cgroup.subtree_control"), f"+{c}"):
                        self.limits.add(c)
        if os.geteuid() == 0:
            for c in V1_CONTROLLERS:
                if c in self.limits or c not in mounts:
                    continue
                parent = os.path.join(mounts[c], own.get(c, "/").lstrip("/"), self.tag)
                if self._mkdir(parent):
                    self.parents[c] = parent
                    self.limits.add(c)

    @staticmethod
    def _mkdir(path: str) -> bool:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError:
            return False
        return os.access(os.path.join(path, "cgroup.procs"), os.W_OK)

    def describe(self) -> str:
        if not self.parents:
            return "no writable cgroup: jobs are capped by rlimits and the pid namespace"
        caps = ", ".join(sorted(self.limits)) or "none"
        return f"a cgroup per job ({'cgroup.kill' if self.kill else 'kill by pid list'}; caps: {caps})"

    def create(self, job_id: str, memory_bytes: int | None, pids_max: int | None) -> JobCgroup:
        cg = JobCgroup()
        for key, parent in self.parents.items():
            d = os.path.join(parent, f"job-{job_id}")
            if not self._mkdir(d):
                continue
            cg.dirs.append(d)
            if key == "":
                cg.v2 = d
                if memory_bytes and "memory" in self.limits and "memory" not in self.parents:
                    _write(os.path.join(d, "memory.max"), str(memory_bytes))
                if pids_max and "pids" in self.limits and "pids" not in self.parents:
                    _write(os.path.join(d, "pids.max"), str(pids_max))
            elif key == "pids" and pids_max:
                _write(os.path.join(d, "pids.max"), str(pids_max))
            elif key == "memory" and memory_bytes:
                _write(os.path.join(d, "memory.limit_in_bytes"), str(memory_bytes))
        return cg

    def sweep(self) -> int:
        """After a restart: kill and remove job cgroups the last run left (returns processes killed)."""
        n = 0
        for parent in self.parents.values():
            try:
                names = [e for e in os.listdir(parent) if e.startswith("job-")]
            except OSError:
                continue
            for name in names:
                cg = JobCgroup([os.path.join(parent, name)],
                               os.path.join(parent, name) if parent == self.parents.get("") else None)
                n += len(cg.pids())
                cg.kill()
                cg.remove()
        return n
