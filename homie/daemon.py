"""The daemon: one process per machine holding discovery, the worker (TLS job
server), the submitter (jobs sent out) and the local control socket.

Shaped like hypercorn's: one tracked set of tasks (threads here, see
docs/architecture.md), an injectable shutdown trigger, and graceful timeouts
on the way down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from homie import __version__, plugins
from homie.discovery.peers import Peer, PeerTable
from homie.errors import HomieError
from homie.home import Home
from homie.pidfile import daemon_pid, lock_pidfile

SHUTDOWN_GRACE = 5.0


class TaskSet:
    """Every long-running thread of the daemon, so shutdown can wait for them."""

    def __init__(self, log):
        self.log = log
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def spawn(self, name: str, fn, *args) -> threading.Thread:
        def run():
            try:
                fn(*args)
            except Exception:
                if not self.stop.is_set():
                    self.log.exception("task.crashed", task=name)

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def join(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]


class RateLimitedLog:
    """Warnings about other machines' packets at most once per period per
    event, with a count of what was suppressed: a flood must not fill the disk."""

    def __init__(self, log, period: float = 10.0):
        self.log = log
        self.period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, event: str) -> bool:
        """Would warn() log now? Lets a hot path skip building the details."""
        if time.monotonic() - self._last.get(event, -1e9) < self.period:
            with self._lock:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return False
        return True

    def warn(self, event: str, msg: str, **kw) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(event, -1e9) < self.period:
                self._suppressed[event] = self._suppressed.get(event, 0) + 1
                return
            self._last[event] = now
            suppressed = self._suppressed.pop(event, 0)
        self.log.warning(event, msg=msg, suppressed=suppressed, **kw)


class Node:
    def __init__(self, home: Home, config, key: bytes, foreground: bool = False, shutdown_trigger=None):
        import secrets

        from homie.logs import setup_logging
        from homie.store import Store
        from homie.wire.trust import Trust

        self.home = home
        self.config = config
        self.key = key
        self.name = config.name
        self.instance = secrets.token_bytes(16)
        self.instance_hex = self.instance.hex()
        self.started = time.time()
        self.log = setup_logging(home, config.log_level, foreground)
        self.rate = RateLimitedLog(self.log)
        self.tasks = TaskSet(self.log)
        self.shutdown_trigger = shutdown_trigger
        self.bind_address = self._bind_address()
        self.trust = Trust(key, self.name)
        self.store = Store(home.db)
        self.store.on_error = lambda op, e: self.rate.warn("store.write_failed", "cannot write the job database",
                                                           op=op, error=str(e))
        self.peers = PeerTable(config.peer_timeout)
        self._resources: dict = {}
        self._resources_at = 0.0
        plugins.on_error(lambda name, hook, exc: self.log.error("plugin.disabled", plugin=name, hook=hook,
                                                                 error=f"{type(exc).__name__}: {exc}"))
        plugins.load_plugins(config.plugins, config.disable_plugins)
        from homie.control.handlers import Services
        from homie.control.server import ControlServer
        from homie.discovery.service import Discovery
        from homie.karma import Karma
        from homie.submit.dial import Dialer
        from homie.submit.schedd import Submitter
        from homie.submit.shadow import Me
        from homie.worker.startd import Worker

        self.karma = Karma(self.store, self.name)
        self.dial = Dialer(self.trust)
        self.discovery = Discovery(config, self.log, key, self.instance, self.name, self.bind_address, self.peers,
                                   heartbeat_fields=self.heartbeat_fields, on_peers_changed=self.peers_changed,
                                   rate=self.rate)
        me = Me(self.name, self.instance_hex, self.started)
        self.worker = Worker(config, home, self.log, self.store, self.karma, me, self.trust, self.peers,
                             resources=self.resources, announce=self.announce_soon, warn=self.rate_warn,
                             peer_name=self.trust_peer_name, bind_address=self.bind_address)
        self.submitter = Submitter(config, self.log, self.store, home, me, self.dial, self.peers, self.local_peer,
                                   self.karma)
        from homie.keys import fingerprint

        self.control = ControlServer(home.socket, self.log, Services(
            name=self.name, instance_hex=self.instance_hex, started=self.started, key_fingerprint=fingerprint(key),
            config=config, home=home, peers=self.peers, karma=self.karma, store=self.store, worker=self.worker,
            submitter=self.submitter, discovery=self.discovery, dial=self.dial, bind_address=self.bind_address,
            local_peer=self.local_peer, announce_soon=self.announce_soon, request_shutdown=self.request_shutdown))

    def _bind_address(self) -> str | None:
        if self.config.bind:
            return self.config.bind
        if self.config.interface:
            import socket

            import psutil

            for a in psutil.net_if_addrs().get(self.config.interface, []):
                if a.family == socket.AF_INET:
                    return a.address
            raise HomieError(f"interface {self.config.interface!r} has no IPv4 address"
                             f" (have: {', '.join(sorted(psutil.net_if_addrs()))})")
        return None

    # -- what others see -----------------------------------------------------------
    def resources(self) -> dict:
        now = time.monotonic()
        if now - self._resources_at > 0.5:
            merged = {}
            # call() lists results first-called first (tryfirst and newest plugins);
            # applying them in reverse lets those win over the built-ins.
            for r in reversed(plugins.call("homie_probe_resources", config=self.config)):
                if isinstance(r, dict):
                    merged.update(r)
            self._resources = merged
            self._resources_at = now
        return self._resources

    def cpu_idle(self) -> float:
        return float(self.resources().get("cpu_percent_idle", 100.0))

    def heartbeat_fields(self) -> dict:
        r = dict(self.resources())
        r.update({
            "status": self.worker.status(),
            "slots_free": self.worker.slots_free(),
            "max_jobs": self.config.max_jobs,
            "running": self.worker.running(),
            "accept_gpu": self.config.allow_gpu,
            "karma": self.karma_totals(),
            # Everyone sees whether jobs here are sandboxed: submitters and owners both know.
            "sandbox": self.worker.sandbox.label,
        })
        r.setdefault("gpu", None)
        r.setdefault("gpu_mem_free_gb", None)
        return r

    def local_peer(self) -> Peer:
        f = self.heartbeat_fields()
        return Peer(
            name=self.name, ip=self.bind_address or "127.0.0.1", port=self.config.port,
            instance=self.instance_hex, status=f["status"], ram_free_gb=f.get("ram_free_gb"),
            ram_total_gb=f.get("ram_total_gb"),
            cpu_percent_idle=f.get("cpu_percent_idle"), gpu=f.get("gpu"), gpu_mem_free_gb=f.get("gpu_mem_free_gb"),
            gpus=f.get("gpus") or [], slots_free=f["slots_free"], max_jobs=f["max_jobs"], running=f["running"],
            version=__version__, karma=f["karma"], accept_gpu=f["accept_gpu"], sandbox=f["sandbox"],
            timestamp=time.time(),
            last_seen=time.time(), local=True,
        )

    def warnings(self) -> list[str]:
        """What the owner must hear at `homie up`."""
        sb = self.worker.sandbox
        if sb.active:
            return []
        return [f"jobs from friends run here unsandboxed ({sb.reason}); friends see this machine marked"
                " unsandboxed"]

    def announce_soon(self) -> None:
        self.discovery.announce_soon()

    def peers_changed(self) -> None:
        self.submitter.kick()

    def rate_warn(self, event: str, msg: str, **kw) -> None:
        self.rate.warn(event, msg, **kw)

    def trust_peer_name(self, tls) -> str:
        from homie.wire.trust import peer_name

        try:
            return peer_name(tls)
        except Exception:
            return "?"

    # -- karma -------------------------------------------------------------------------
    def karma_totals(self) -> dict:
        return self.karma.totals()

    # -- lifecycle -----------------------------------------------------------------------
    def _expire_loop(self, stop: threading.Event) -> None:
        last_janitor = 0.0
        while not stop.wait(0.25):
            for p in self.peers.expire():
                self.log.info("peer.gone", name=p.name, ip=p.ip, why="timeout")
                self.peers_changed()
            if time.monotonic() - last_janitor > 60:
                last_janitor = time.monotonic()
                self.worker.janitor()

    def start(self) -> None:
        # Bind everything first: a port in use is an error before anything runs.
        self.worker.bind()
        self.discovery.bind()
        self.control.bind()
        self.worker.recover()
        stop = self.tasks.stop
        self.tasks.spawn("worker", self.worker.serve, stop)
        self.tasks.spawn("discovery-rx", self.discovery.receive_loop, stop)
        self.tasks.spawn("control", self.control.serve, stop)
        self.tasks.spawn("expiry", self._expire_loop, stop)
        self.tasks.spawn("lending", self.worker.lending_loop, stop)
        self.tasks.spawn("dispatch", self.submitter.dispatch_loop, stop)
        self.submitter.restore()
        self.tasks.spawn("discovery-tx", self.discovery.heartbeat_loop, stop)
        self.log.info("daemon.started", name=self.name, port=self.config.port, pid=os.getpid(),
                      version=__version__, discovery=[b.name for b in self.discovery.backends],
                      broadcast=self.discovery.broadcast_addresses())

    def request_shutdown(self) -> None:
        self.tasks.stop.set()

    def wait(self) -> None:
        if self.shutdown_trigger is not None:
            self.shutdown_trigger(self.tasks.stop)
        else:
            while not self.tasks.stop.wait(1.0):
                pass

    def shutdown(self) -> None:
        self.log.info("daemon.stopping")
        self.tasks.stop.set()
        self.discovery.announce_soon()  # wake the heartbeat loop now, not after its interval
        self.discovery.goodbye()
        self.control.close()
        self.worker.shutdown(grace=3.0)
        self.submitter.save_all()
        self.discovery.stop()
        left = self.tasks.join(SHUTDOWN_GRACE)
        if left:
            self.log.warning("daemon.slow_tasks", tasks=left)
        self.log.info("daemon.stopped")


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena and keeps
    freed 1 MiB transfer buffers in it, so RSS crept up with every upload
    thread; two arenas keep it flat. Harmless elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def settle_process() -> None:
    """First thing in the daemon's process (`homie up --foreground`, which the
    background start and the service units run): cwd /, so the directory
    `homie up` was run from can neither matter (a module or a relative path
    there) nor be kept busy; umask 077, so nothing the daemon creates is open to
    others unless it says so (what jobs must read gets its mode explicitly, and
    each job starts with the umask its Launch names)."""
    os.chdir("/")
    os.umask(0o077)


def _raise_open_files(most: int = 1 << 16) -> None:
    """The soft limit on open files most daemons start with (1024) is a few
    jobs' checkpoint snapshots (up to checkpoints.MAX_FILES descriptors each,
    twice while the next is taken): up to the hard limit, at most `most`."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = most if hard == resource.RLIM_INFINITY else min(hard, most)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


def run(home: Home, config, key: bytes, foreground: bool, ready_fd: int | None = None,
        shutdown_trigger=None) -> int:
    """Run the daemon until shut down. Reports readiness (or the error that
    prevented it) on ready_fd, which `homie up` waits on."""

    def report(text: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, text.encode()[:4000])
                os.close(ready_fd)
            except OSError:
                pass

    _limit_malloc_arenas()
    _raise_open_files()
    try:
        lock = lock_pidfile(home)
    except HomieError as e:
        report(f"error: {e}")
        if ready_fd is None:
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if lock is None:
        report(f"already running (pid {daemon_pid(home)})")
        return 0
    node = None
    try:
        node = Node(home, config, key, foreground=foreground, shutdown_trigger=shutdown_trigger)
        node.start()
    except HomieError as e:
        # Everything let go first (ports, sockets, the pid lock), then the error: the
        # `homie up` told it returns at once, and one run right after must find nothing held.
        if node is not None:
            node.shutdown()
        os.close(lock)
        report(f"error: {e}\nexit {e.exit_code}")
        if ready_fd is None:
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code

    def on_signal(signum, frame):
        node.request_shutdown()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    warnings = node.warnings()
    report("\n".join([f"ok {node.name} {config.port}", *(f"warn {w}" for w in warnings)]))
    if foreground:
        print(f'daemon started, broadcasting as "{node.name}"', flush=True)
        print(f"listening for jobs on :{config.port}", flush=True)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr, flush=True)
    try:
        node.wait()
    finally:
        node.shutdown()
        try:
            Path(home.socket).unlink()
        except FileNotFoundError:
            pass
        os.close(lock)
    return 0
