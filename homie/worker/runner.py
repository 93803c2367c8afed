"""Running one job's process tree on the worker: start, stream, limit, kill.

Executors decide *what* to run; this module decides *how*, the same for every
executor: a fresh session (so the whole tree gets signals), never as root,
never inside the daemon process, output read from pipes into the job log,
limits enforced by watching the tree, and nothing left behind on kill.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from homie.joblog import JobLog
from homie.wire.protocol import STDERR, STDOUT
from homie.worker.launch import Launch, Limits, as_user
from homie.worker.proctree import process_tree, processes_of_job, processes_of_uid

WATCH_INTERVAL = 0.25


@dataclass
class Outcome:
    code: int | None = None
    signal: int | None = None
    reason: str | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss: int = 0


class JobProcess:
    """One running job. start() returns at once; wait() gives the Outcome."""

    def __init__(self, job_id: str, launch: Launch, log: JobLog, limits: Limits, finish_log: bool = True):
        self.job_id = job_id
        self.finish_log = finish_log  # a set-up step shares the log with the job that follows
        self.launch = launch
        self.log = log
        self.limits = limits
        self._info: dict | None = None
        self.proc: subprocess.Popen | None = None
        self.outcome = Outcome()
        self._done = threading.Event()
        self._exited = threading.Event()
        self._reaped_cpu = 0.0
        self._kill_timer: threading.Thread | None = None
        self._kill_reason: str | None = None
        self._seen: set[int] = set()  # every pid ever seen in the tree
        self._started = 0.0
        self.suspended = False
        self.cpu_seen = 0.0  # CPU seconds of the tree at the last sample

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, stdin=None) -> None:
        la = self.launch
        kw: dict[str, Any] = {}
        argv = la.argv
        if la.user is not None and la.user.differs:
            argv, kw = as_user(argv, la.user, la.sandboxed)
        self._started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv, cwd=la.cwd, env=la.env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                close_fds=True, pass_fds=la.pass_fds, umask=la.umask, **kw,
            )
        except BaseException:
            self._close_launch_fds()
            raise
        for fd in la.pass_fds:
            os.close(fd)  # the child has them now
        self._seen.add(self.proc.pid)
        if la.sandboxed:
            self._read_info()  # bubblewrap writes it at once; EOF if it failed
        if la.cgroup is not None:
            # Unsandboxed, the job already runs: it joins at once, and what it
            # forked meanwhile is found by the uid sweep at its end.
            for pid in (self.proc.pid, self._sandbox_init()):
                if pid is not None:
                    la.cgroup.add(pid)
        if la.block_w is not None:
            try:
                os.write(la.block_w, b"go")
            except OSError:
                pass  # bubblewrap is gone already: _reap reports it
            os.close(la.block_w)
        threading.Thread(target=self._reap, name=f"job-{self.job_id}-reap", daemon=True).start()
        threading.Thread(target=self._pump, name=f"job-{self.job_id}-io", daemon=True).start()
        threading.Thread(target=self._watch, name=f"job-{self.job_id}-watch", daemon=True).start()

    def _close_launch_fds(self) -> None:
        la = self.launch
        for fd in (*la.pass_fds, la.info_fd, la.block_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _reap(self) -> None:
        # wait4 rather than Popen.wait: its rusage counts the CPU time of the
        # main process and every descendant it reaped, even a job too short for
        # the tree sampler to ever see.
        assert self.proc is not None  # started
        while True:
            try:
                _, status, ru = os.wait4(self.proc.pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                status, ru = 0, None
                break
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = (ru.ru_utime + ru.ru_stime) if ru else 0.0
        if self.launch.sandboxed:
            # bubblewrap may exit as soon as its init reports the job's status,
            # before reaping that init; the daemon is a child subreaper
            # (enable_subreaper), so the init is ours now. Reaping it waits
            # until the pid namespace is empty (nothing of the job runs after
            # this), and its rusage holds the job's CPU time.
            init = self._sandbox_init()
            if init is not None:
                try:
                    _, _, iru = os.wait4(init, 0)
                    cpu += iru.ru_utime + iru.ru_stime
                except ChildProcessError:
                    pass  # bubblewrap reaped it itself: its rusage is in ours
        self._reaped_cpu = cpu
        self._exited.set()

    def _read_info(self, timeout: float = 10.0) -> None:
        from homie.wire import waitfd

        data = b""
        fd = self.launch.info_fd
        assert fd is not None  # sandboxed
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not waitfd.ready(fd, deadline - time.monotonic()):
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
                if data.rstrip().endswith(b"}"):
                    break
        except OSError:
            pass
        finally:
            os.close(fd)
        try:
            self._info = json.loads(data or b"null")
        except ValueError:
            self._info = None

    def _sandbox_init(self) -> int | None:
        """The sandbox's init (pid 1 inside): with --new-session it leads the
        session and process group the job runs in. Signals from outside reach
        init only if it handles them, so killpg() reaches the job, not init."""
        init = (self._info or {}).get("child-pid")
        return init if isinstance(init, int) else None

    # -- output ------------------------------------------------------------
    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None and self.proc.stderr is not None  # started
        sel = selectors.DefaultSelector()
        streams = {self.proc.stdout.fileno(): STDOUT, self.proc.stderr.fileno(): STDERR}
        for fd in streams:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        exited_at = None
        while streams:
            # A grandchild may keep the pipes open after the job's main process
            # exited (cpython#119710): stop reading shortly after the exit.
            if exited_at is None and self._exited.is_set():
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > 1.0:
                break
            for key, _ in sel.select(timeout=0.2):
                fd = key.fd
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(fd)
                    streams.pop(fd, None)
                    continue
                self.log.append(streams[fd], data)
        sel.close()
        for f in (self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        self._finish()

    # -- watching ----------------------------------------------------------
    def _sample(self):
        import psutil

        rss = 0
        cpu = 0.0
        assert self.proc is not None  # started
        for p in process_tree(self.proc.pid):
            try:
                self._seen.add(p.pid)
                rss += p.memory_info().rss
                t = p.cpu_times()
                # children_*: descendants already reaped inside the tree
                cpu += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        return rss, cpu

    def _watch(self) -> None:
        max_cpu = 0.0
        # The first look one interval after the start, not at once: at once the tree is only
        # bubblewrap starting, and a look walks every process on the machine (psutil's
        # children() reads all of /proc), ~2 ms of the daemon's CPU that a job shorter than
        # an interval paid for nothing (its CPU comes from wait4's rusage in _reap).
        self._exited.wait(WATCH_INTERVAL)
        while not self._exited.is_set():
            rss, cpu = self._sample()
            max_cpu = max(max_cpu, cpu)
            self.cpu_seen = max_cpu  # read by the owner-activity check (homie.worker.owner)
            self.outcome.peak_rss = max(self.outcome.peak_rss, rss)
            lim = self.limits
            if lim.max_memory_bytes and rss > lim.max_memory_bytes:
                self.kill(f"memory limit exceeded ({rss / 2**30:.2f} GB > {lim.max_memory_bytes / 2**30:.2f} GB)")
                break
            if lim.max_seconds and time.monotonic() - self._started > lim.max_seconds:
                self.kill(f"time limit exceeded ({lim.max_seconds:g} s)")
                break
            if self._exited.wait(WATCH_INTERVAL):
                break
        self._sampled_cpu = max_cpu

    def _finish(self) -> None:
        self._exited.wait()
        assert self.proc is not None  # started
        code = self.proc.returncode
        wall = time.monotonic() - self._started
        # Whatever the main process left behind dies with the job.
        self._kill_tree(signal.SIGKILL)
        o = self.outcome
        o.wall_s = round(wall, 3)
        reaped = self._reaped_cpu
        o.cpu_s = round(max(getattr(self, "_sampled_cpu", 0.0), reaped), 3)
        if code < 0:
            o.signal = -code
            o.code = 128 - code
        elif self.launch.info_fd is not None and 128 < code < 128 + 65:
            # bubblewrap reports a job killed by signal N as exit 128+N
            o.signal = code - 128
            o.code = code
        else:
            o.code = code
        o.reason = self._kill_reason
        if self.finish_log:
            self.log.finish()
        self._done.set()

    # -- control -----------------------------------------------------------
    def _kill_tree(self, sig: int) -> None:
        import psutil

        if self.proc is None:
            return
        la = self.launch
        live = not self._exited.is_set()  # once reaped, the pid may be someone else's
        shell: set = set()
        if la.info_fd is not None and sig != signal.SIGKILL:
            # bubblewrap and its init die of most signals and would take the job
            # with them at once: a SIGTERM must reach the job, not the sandbox.
            shell = {self.proc.pid, (self._info or {}).get("child-pid")}
        elif live:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        targets = {p.pid: p for p in (process_tree(self.proc.pid) if live else []) if p.pid not in shell}
        for pid in self._seen - shell:
            if pid not in targets:
                try:
                    p = psutil.Process(pid)
                    if p.environ().get("HOMIE_JOB_ID") == self.job_id:
                        targets[pid] = p
                except (psutil.Error, OSError):
                    pass
        if sig == signal.SIGKILL:
            if la.cgroup is not None:
                la.cgroup.kill()
            if la.uid_sweep is not None:
                for p in processes_of_uid(la.uid_sweep):
                    targets.setdefault(p.pid, p)
            elif la.info_fd is None:  # unsandboxed, sharing a uid: find setsid escapees by their mark
                uid = la.user.uid if la.user is not None else os.geteuid()
                for p in processes_of_job(self.job_id, uid):
                    targets.setdefault(p.pid, p)
        for p in targets.values():
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass

    def signal(self, sig: int) -> None:
        """Deliver a signal to the job's whole process group (Ctrl-C sends SIGINT)."""
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            self.suspended = sig == signal.SIGSTOP
            self._kill_tree(sig)
            return
        if self.proc is None or self._exited.is_set():
            return  # reaped: its pid may already belong to someone else
        pgid = self.proc.pid
        if self.launch.info_fd is not None:
            # Signalling bubblewrap itself would end the sandbox outright: Ctrl-C
            # goes to the job's own process group inside, as a terminal's would.
            init = self._sandbox_init()
            if init is None:
                return
            pgid = init
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, reason: str | None = None, grace: float = 2.0) -> None:
        """SIGTERM the tree, SIGKILL what is left after `grace` seconds."""
        if reason and not self._kill_reason:
            self._kill_reason = reason
        if self.suspended:
            self._kill_tree(signal.SIGCONT)
        self._kill_tree(signal.SIGTERM)
        if self._kill_timer is not None:
            return  # one SIGKILL timer per job, however often it is asked to stop

        def later():
            if not self._done.wait(grace):
                self._kill_tree(signal.SIGKILL)

        self._kill_timer = threading.Thread(target=later, daemon=True)
        self._kill_timer.start()

    def wait(self, timeout: float | None = None) -> Outcome | None:
        return self.outcome if self._done.wait(timeout) else None

    @property
    def done(self) -> bool:
        return self._done.is_set()
