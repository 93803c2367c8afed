"""Multi-host test harness built on real Linux network namespaces.

One ``Cluster`` is one isolated L2 segment: a bridge in the root namespace
(no address, no uplink, no NAT, no route) and one network namespace per
``Host``, joined to the bridge by a veth pair. Hosts get 10.203.0.{10+i}/24
(i = 1, 2, ...; broadcast 10.203.0.255) on ``eth0`` inside their namespace;
there is no default route, only the subnet and a 255.255.255.255 route.
Each cluster has its own bridge, so several clusters (even from parallel
test processes) can use the same subnet without seeing each other.

    from netns import Cluster, wait_until      # tests/ is on sys.path

    with Cluster() as c:
        a, b = c.add_host("a"), c.add_host("b")
        a.run("ping", "-c1", b.ip, check=True)
        d = b.homie_spawn("up")                   # tracked; killed at teardown
        a.set_loss(30); a.block_broadcast(); a.link_down()

Needs root, ``ip`` (iproute2) and, for loss/broadcast faults, ``nft``
(nftables); rate limits use ``tc`` tbf (netem is not assumed to exist).
Teardown runs on ``__exit__``, on a failed setup and at interpreter exit;
leftovers of crashed runs (owner pid dead) are removed when a cluster starts.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.203.0"
PREFIXLEN = 24
BROADCAST = f"{SUBNET}.255"
ALIAS = "homie-netns pid="          # ifalias marking links we own
NS_RE = re.compile(r"^homie-(?:probe-)?(\d+)-")

_PID = os.getpid()
_counter = itertools.count(1)
_live: set[Cluster] = set()


# --------------------------------------------------------------------------- helpers

def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") or name


def _cmd(*args: str, check: bool = True, input: str | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a root-namespace command; on failure raise with its stderr."""
    cp = subprocess.run(list(args), capture_output=True, text=True, input=input,
                        timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(args)!r} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _cmd(_tool("ip"), *args, check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _links() -> list[str]:
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []


def _alias(ifname: str) -> str:
    try:
        return Path(f"/sys/class/net/{ifname}/ifalias").read_text().strip()
    except OSError:
        return ""


def netns_list() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_ns(ns: str, grace: float = 0.0) -> None:
    """Kill everything still running in namespace ``ns``."""
    deadline = time.monotonic() + 3
    sig = signal.SIGTERM if grace else signal.SIGKILL
    while True:
        pids = [p for p in _ns_pids(ns) if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        time.sleep(grace or 0.05)
        sig, grace = signal.SIGKILL, 0.0


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05,
               msg: str | None = None) -> float:
    """Poll ``pred`` until it returns something truthy; return the seconds it took.

    Exceptions from ``pred`` count as "not yet" and are reported on timeout.
    """
    start = time.monotonic()
    last: Any = None
    while True:
        try:
            last = pred()
            if last:
                return time.monotonic() - start
        except Exception as e:  # noqa: BLE001 - polled predicate
            last = e
        if time.monotonic() - start >= timeout:
            what = msg or getattr(pred, "__name__", repr(pred))
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def homie_bin() -> str:
    """The homie CLI: $HOMIE_BIN, else <repo>/.venv/bin/homie, else `homie` on PATH."""
    cand = [os.environ.get("HOMIE_BIN"), str(REPO / ".venv" / "bin" / "homie"), shutil.which("homie")]
    for c in cand:
        if c and os.access(c, os.X_OK):
            return c
    raise FileNotFoundError("homie CLI not found: set HOMIE_BIN or `pip install -e .` into .venv")


def _venv_bin() -> str:
    v = REPO / ".venv" / "bin"
    return str(v if v.is_dir() else Path(sys.executable).parent)


_probe_result: tuple[bool, str] | None = None


def can_use_netns() -> tuple[bool, str]:
    """(ok, reason): root, iproute2, and a probe namespace + bridge can be created."""
    global _probe_result
    if _probe_result is not None:
        return _probe_result
    if not sys.platform.startswith("linux"):
        ok = (False, "network namespaces need Linux")
    elif os.geteuid() != 0:
        ok = (False, "needs root and ip netns: run as root, e.g. sudo .venv/bin/pytest")
    elif not shutil.which("ip") and not shutil.which("ip", path="/usr/sbin:/sbin"):
        ok = (False, "`ip` not found: apt-get install iproute2")
    else:
        ns, br = f"homie-probe-{_PID}-0", f"hbp{_PID % 100000}"
        try:
            _ip("netns", "add", ns)
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _ip("link", "add", br, "type", "bridge")
            ok = (True, "ok")
        except Exception as e:  # noqa: BLE001
            ok = (False, f"cannot create a network namespace/bridge: {e}")
        finally:
            _ip("link", "del", br, check=False)
            _ip("netns", "del", ns, check=False)
    _probe_result = ok
    return ok


def cleanup_stale() -> list[str]:
    """Remove namespaces/links left by earlier runs whose owning process is dead."""
    removed = []
    for ns in netns_list():
        m = NS_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _kill_ns(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    for link in _links():
        alias = _alias(link)
        if re.match(r"^h[bv]", link) and alias.startswith(ALIAS):
            pid = alias[len(ALIAS):].split()[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                _ip("link", "del", link, check=False)
                removed.append(link)
    return removed


# --------------------------------------------------------------------------- Host

class Host:
    """One machine of the cluster: a namespace with eth0 on the cluster bridge."""

    def __init__(self, cluster: Cluster, name: str, index: int, ns: str, veth: str,
                 home: str | os.PathLike | None):
        self.cluster, self.name, self.index, self.ns, self.veth = cluster, name, index, ns, veth
        self.ip = f"{SUBNET}.{10 + index}"
        self._own_home = home is None
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix=f"homie-{name}-"))
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("HOMIE_") and k != "HOMIE_BIN") and not k.startswith("XDG_")}
        env.update(
            HOMIE_HOME=str(self.home),
            HOME=str(self.home),
            PATH=os.pathsep.join([_venv_bin(), env.get("PATH", ""), "/usr/sbin:/sbin"]),
            PYTHONUNBUFFERED="1",
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            XDG_DATA_HOME=str(self.home / ".local" / "share"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
        )
        self.env: dict[str, str] = env

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} ns={self.ns}>"

    # ---- running things inside the namespace
    def _argv(self, args: tuple) -> list[str]:
        return [_tool("ip"), "netns", "exec", self.ns, *map(str, args)]

    def _env(self, env: dict | None) -> dict[str, str]:
        return {**self.env, **(env or {})}

    def run(self, *args: Any, timeout: float = 30, check: bool = False, input: str | None = None,
            cwd: str | os.PathLike | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in this host's namespace and wait; output captured as text."""
        return subprocess.run(self._argv(args), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, cwd=cwd, env=self._env(env),
                              stdin=None if input is not None else subprocess.DEVNULL)

    def homie(self, *args: Any, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run(homie_bin(), *args, **kw)

    def spawn(self, *args: Any, **popen_kw: Any) -> subprocess.Popen:
        """Start a background process in the namespace (own session; killed at teardown).

        stdout+stderr go to ``proc.log_path`` unless given; ``proc.log()`` reads it.
        """
        popen_kw["env"] = self._env(popen_kw.get("env"))
        popen_kw.setdefault("start_new_session", True)
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        popen_kw.setdefault("text", True)
        log = None
        if "stdout" not in popen_kw:
            n = len(self.cluster.procs)
            log_path = self.cluster.logdir / f"{self.name}-{n}-{Path(str(args[0])).name}.log"
            log = open(log_path, "w")
            popen_kw["stdout"] = log
            popen_kw.setdefault("stderr", subprocess.STDOUT)
        try:
            proc = subprocess.Popen(self._argv(args), **popen_kw)
        finally:
            if log:
                log.close()
        proc.log_path = Path(log.name) if log else None  # type: ignore[attr-defined]
        proc.log = lambda: proc.log_path.read_text() if proc.log_path else ""  # type: ignore
        self.cluster.procs.append(proc)
        return proc

    def homie_spawn(self, *args: Any, **popen_kw: Any) -> subprocess.Popen:
        return self.spawn(homie_bin(), *args, **popen_kw)

    # ---- link / fault control
    def link_down(self) -> None:
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        _ip("link", "set", self.veth, "up")
        self.cluster.flush_neighbours()

    def _nft(self, script: str) -> None:
        if not shutil.which("nft") and not shutil.which("nft", path="/usr/sbin:/sbin"):
            raise RuntimeError("nft not found: apt-get install nftables")
        _cmd(_tool("ip"), "netns", "exec", self.ns, _tool("nft"), "-f", "-", input=script)

    def _nft_table(self, table: str, in_rules: list[str], out_rules: list[str]) -> None:
        """(Re)create ``table`` filtering eth0 frames: netdev ingress/egress hooks, so drops
        look like the wire (senders get no EPERM); inet input/output on kernels without
        netdev egress."""
        self._nft_drop(table)

        def chain(hook: str, rules: list[str], dev: str) -> str:
            body = "".join(f"    {r}\n" for r in rules)
            return (f"  chain {hook} {{\n    type filter hook {hook}{dev} priority 0; policy accept;\n"
                    f"{body}  }}\n")
        dev = ' device "eth0"'
        try:
            self._nft(f"table netdev {table} {{\n{chain('ingress', in_rules, dev)}"
                      f"{chain('egress', out_rules, dev)}}}\n")
        except RuntimeError:
            self._nft(f"table inet {table} {{\n"
                      + chain("input", [f'iifname "eth0" {r}' for r in in_rules], "")
                      + chain("output", [f'oifname "eth0" {r}' for r in out_rules], "") + "}\n")

    def _nft_drop(self, table: str) -> None:
        self._nft("".join(f"table {f} {table}\ndelete table {f} {table}\n" for f in ("netdev", "inet")))

    def set_loss(self, percent: float) -> None:
        """Drop ``percent``% of the frames in and out of eth0, at random (nftables)."""
        p = int(round(percent))
        if not 0 <= p <= 100:
            raise ValueError("percent must be within 0..100")
        if p == 0:
            return self.clear_loss()
        rule = "drop" if p == 100 else f"numgen random mod 100 < {p} drop"
        self._nft_table("homie_fault", [rule], [rule])

    def clear_loss(self) -> None:
        self._nft_drop("homie_fault")
        self.cluster.flush_neighbours()

    def block_broadcast(self, multicast: bool = True) -> None:
        """Drop IPv4 broadcast (and, by default, multicast) to/from this host. Unicast and
        ARP pass, so static peer lists keep working."""
        dst = {BROADCAST, "255.255.255.255"} | ({"224.0.0.0/4"} if multicast else set())
        rule = f"ip daddr {{ {', '.join(sorted(dst))} }} drop"
        self._nft_table("homie_bcast", [rule], [rule])

    def unblock_broadcast(self) -> None:
        self._nft_drop("homie_bcast")

    def set_rate(self, kbit: int, burst: int | str = 32 * 1024, latency: float | str = 400,
                 both: bool = True) -> None:
        """Token-bucket limit eth0 egress (tc tbf) to ``kbit``; with ``both`` also the
        traffic towards this host (tbf on the host-side veth). burst: bytes or tc
        size string; latency: ms or tc time string."""
        spec = ["root", "tbf", "rate", f"{kbit}kbit", "burst", str(burst),
                "latency", f"{latency}ms" if isinstance(latency, (int, float)) else latency]
        _cmd(_tool("ip"), "netns", "exec", self.ns, _tool("tc"), "qdisc", "replace", "dev", "eth0", *spec)
        if both:
            _cmd(_tool("tc"), "qdisc", "replace", "dev", self.veth, *spec)

    def clear_rate(self) -> None:
        _cmd(_tool("ip"), "netns", "exec", self.ns, _tool("tc"), "qdisc", "del", "dev", "eth0", "root",
             check=False)
        _cmd(_tool("tc"), "qdisc", "del", "dev", self.veth, "root", check=False)

    def iface_counters(self) -> dict[str, int]:
        """Byte counters of the host-side veth. Note the direction: rx_bytes is what this
        host *sent* (also given as ``sent``), tx_bytes what it received (``received``)."""
        stats = Path("/sys/class/net") / self.veth / "statistics"
        rx = int((stats / "rx_bytes").read_text())
        tx = int((stats / "tx_bytes").read_text())
        return {"rx_bytes": rx, "tx_bytes": tx, "sent": rx, "received": tx}


# --------------------------------------------------------------------------- Cluster

class Cluster:
    """An isolated LAN of namespaced hosts on one bridge. Use as a context manager."""

    def __init__(self) -> None:
        self.id = next(_counter)
        self.bridge = f"hb{_PID % 10000}c{self.id}"
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._started = self._closed = False
        self.logdir = Path()                      # set by start(): spawned processes' logs

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        errors = self.close()
        if errors and exc_type is None:
            raise RuntimeError("cluster teardown incomplete: " + "; ".join(errors))

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        _live.add(self)
        self.logdir = Path(tempfile.mkdtemp(prefix=f"homie-netns-{_PID}-{self.id}-"))
        cleanup_stale()
        self._links.append(self.bridge)
        _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
        _ip("link", "set", self.bridge, "alias", f"{ALIAS}{_PID}")
        _sysctl_if(self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str, home: str | os.PathLike | None = None) -> Host:
        self.start()
        i = len(self.hosts) + 1
        if i > 240:
            raise ValueError("at most 240 hosts per cluster")
        if any(h.name == name for h in self.hosts):
            raise ValueError(f"duplicate host name {name!r}")
        ns, veth = f"homie-{_PID}-{self.id}-{i}", f"hv{_PID % 10000}c{self.id}h{i}"
        assert len(veth) <= 15, veth
        # record before creating, so a half-way failure is still torn down
        self._namespaces.append(ns)
        self._links.append(veth)
        host = Host(self, name, i, ns, veth, home)
        self.hosts.append(host)
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "alias", f"{ALIAS}{_PID}")
        _sysctl_if(veth)
        _ip("link", "set", veth, "master", self.bridge, "up")
        nse = ["netns", "exec", ns]
        _ip(*nse, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", check=False)
        _ip(*nse, "ip", "link", "set", "lo", "up")
        _ip(*nse, "ip", "addr", "add", f"{host.ip}/{PREFIXLEN}", "broadcast", BROADCAST, "dev", "eth0")
        _ip(*nse, "ip", "link", "set", "eth0", "up")
        # no default route (nothing can go anywhere else), but 255.255.255.255 works as on a LAN
        _ip(*nse, "ip", "route", "add", "255.255.255.255/32", "dev", "eth0", "scope", "link")
        return host

    def flush_neighbours(self) -> None:
        """Forget ARP entries on all hosts, so that resolutions which failed or are still
        pending from a fault period don't fail the first packets after it is cleared
        (link_up and clear_loss do this)."""
        for h in self.hosts:
            _ip("netns", "exec", h.ns, "ip", "neigh", "flush", "dev", "eth0", check=False)

    def __getitem__(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def close(self) -> list[str]:
        """Tear everything down (idempotent, best effort). Returns what could not be removed."""
        if self._closed:
            return []
        self._closed = True
        _live.discard(self)
        for p in self.procs:                      # polite first, as a group
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
        present = set(netns_list())
        for ns in self._namespaces:
            if ns in present:
                _kill_ns(ns)
                _ip("netns", "del", ns, check=False)
        for link in reversed(self._links):      # veths normally vanish with their ns
            if os.path.exists(f"/sys/class/net/{link}"):
                _ip("link", "del", link, check=False)
        for h in self.hosts:
            if h._own_home:
                shutil.rmtree(h.home, ignore_errors=True)
        if self._started and not os.environ.get("HOMIE_KEEP_LOGS"):
            shutil.rmtree(self.logdir, ignore_errors=True)
        left = set(netns_list()) & set(self._namespaces)
        left |= {link for link in self._links if os.path.exists(f"/sys/class/net/{link}")}
        return [f"still present: {x}" for x in sorted(left)]


def _sysctl_if(ifname: str) -> None:
    """No IPv6 (link-local chatter) on our root-namespace links."""
    try:
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1")
    except OSError:
        pass


@atexit.register
def _close_all() -> None:
    for c in list(_live):
        c.close()
