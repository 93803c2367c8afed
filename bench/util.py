"""Helpers: timing commands inside a namespace host, statistics, machine facts."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


class _Netns:
    """Enter a host's network namespace in this thread around a fork, so that timed
    commands are direct children (exact wall time and rusage) and carry no
    `ip netns exec` start-up cost. Falls back to `ip netns exec` if setns fails."""

    def __init__(self) -> None:
        self.ok = False
        try:
            self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self._root = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self.ok = True
        except (OSError, AttributeError):
            pass

    @contextlib.contextmanager
    def inside(self, ns: str):
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self._libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns({ns}): {os.strerror(e)}")
            try:
                yield
            finally:
                if self._libc.setns(self._root, CLONE_NEWNET) != 0:
                    # Never carry on in the wrong namespace.
                    os._exit(99)
        finally:
            os.close(fd)


NETNS = _Netns()


@dataclass
class Result:
    argv: list
    rc: int
    wall: float          # seconds, fork to reap
    out: str
    err: str
    maxrss_kb: int       # peak RSS of the command (ru_maxrss of the reaped child)
    cpu: float           # user+system CPU seconds of the command
    started: float       # time.time() at start
    ended: float         # time.time() at the end

    def check(self, what: str) -> "Result":
        if self.rc != 0:
            raise BenchError(f"{what} failed (exit {self.rc}): {' '.join(map(str, self.argv))}\n"
                             f"stdout: {self.out[-1500:]}\nstderr: {self.err[-1500:]}")
        return self


def timed(host, argv, cwd=None, timeout: float = 120, env: dict | None = None, user=None) -> Result:
    """Run argv inside host's namespace with host's environment; measure it.

    With `user` (a bench.sshd.BenchUser), run it as that user with a login's plain
    environment (user.env() plus env) instead of the host's."""
    argv = [str(a) for a in argv]
    full_env = {**user.env(), **(env or {})} if user is not None else host._env(env)
    ids = dict(user=user.uid, group=user.gid, extra_groups=[]) if user is not None else {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if NETNS.ok:
            ctx = NETNS.inside(host.ns)
            real = argv
        else:
            ctx = contextlib.nullcontext()
            if ids:  # `ip netns exec` needs root: drop to the user after it
                real = host._argv(("setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
                                   *argv))
                ids = {}
            else:
                real = host._argv(tuple(argv))
        with ctx:
            started = time.time()
            t0 = time.perf_counter()
            p = subprocess.Popen(real, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=err, start_new_session=True, **ids)
        killed = []

        def kill() -> None:
            killed.append(True)
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        ended = time.time()
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        res = Result(argv, p.returncode, wall, out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"), ru.ru_maxrss, ru.ru_utime + ru.ru_stime, started, ended)
    if killed:
        raise BenchError(f"timed out after {timeout:g}s: {' '.join(argv)}\nstdout: {res.out[-1500:]}\n"
                         f"stderr: {res.err[-1500:]}")
    return res


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"min {min(xs):.3f} / max {max(xs):.3f} (n={len(xs)})"


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    """utime+stime of a running process (all its threads), from /proc/PID/stat."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def vm_rss_kb(pid: int | None) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_facts() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    import ssl

    try:
        sshv = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        sshv = "not installed"
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_version()} ({sys.executable})",
        "OpenSSL (Python)": ssl.OPENSSL_VERSION,
        "OpenSSH": sshv,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def wait_port(fn, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.1)
    raise BenchError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
