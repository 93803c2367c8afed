"""Self-tests of the network-namespace harness (tests/netns.py), with plain tools only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from netns import BROADCAST, Cluster, netns_list, wait_until

PY = sys.executable

# Receive `count` UDP datagrams on port argv[1]; print "ready", then "got <src> <data>" each.
UDP_LISTEN = r"""
import socket, sys
port, count, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port)); s.settimeout(timeout)
print("ready", flush=True)
for _ in range(count):
    try:
        data, src = s.recvfrom(65535)
    except socket.timeout:
        print("timeout", flush=True); sys.exit(1)
    print("got", src[0], data.decode(), flush=True)
"""

UDP_SEND = r"""
import socket, sys, time
dst, port, msg, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
for _ in range(n):
    s.sendto(msg.encode(), (dst, port)); time.sleep(0.05)  # a filter drop must not raise
"""

TCP_SINK = r"""
import socket
s = socket.create_server(("", 5556)); print("ready", flush=True)
c, _ = s.accept(); n = 0
while (b := c.recv(65536)):
    n += len(b)
c.sendall(b"ok"); print("received", n, flush=True)
"""

TCP_SEND = r"""
import socket, sys, time
n = int(sys.argv[2]); t = time.monotonic()
c = socket.create_connection((sys.argv[1], 5556), timeout=30)
c.sendall(b"x" * n); c.shutdown(socket.SHUT_WR); assert c.recv(2) == b"ok"
print(time.monotonic() - t)
"""


def listen(host, port=5555, count=1, timeout=5.0):
    p = host.spawn(PY, "-c", UDP_LISTEN, port, count, timeout)
    wait_until(lambda: "ready" in p.log(), 10, msg=f"udp listener on {host.name}")
    return p


def send(host, dst, msg, port=5555, n=3):
    host.run(PY, "-c", UDP_SEND, dst, port, msg, n, check=True)


def finished(p, timeout=10):
    p.wait(timeout=timeout)
    return p.returncode, p.log()


def ping(src, dst, count=1, wait=1):
    return src.run("ping", "-n", "-q", "-c", count, "-W", wait, dst.ip, timeout=count * wait + 10).returncode == 0


@pytest.fixture
def three(cluster):
    return [cluster.add_host(f"h{i}") for i in (1, 2, 3)]


@pytest.mark.netns
def test_hosts_are_set_up(three):
    h1 = three[0]
    assert [h.ip for h in three] == ["10.203.0.11", "10.203.0.12", "10.203.0.13"]
    out = h1.run("ip", "-4", "-o", "addr", "show", "dev", "eth0", check=True).stdout
    assert "10.203.0.11/24" in out and f"brd {BROADCAST}" in out
    assert "UP" in h1.run("ip", "link", "show", "lo", check=True).stdout
    env = h1.run(PY, "-c", "import os; print(os.environ['HOMIE_HOME'], os.environ['HOME'])", check=True)
    assert env.stdout.split() == [str(h1.home), str(h1.home)]
    assert h1.env["PATH"].split(os.pathsep)[0].endswith("bin") and h1.env["PYTHONUNBUFFERED"] == "1"
    # no default route: nothing can leave the bridge
    assert "default" not in h1.run("ip", "route", check=True).stdout


@pytest.mark.netns
def test_ping_mesh(three):
    for a in three:
        for b in three:
            if a is not b:
                assert ping(a, b), f"{a.name} cannot ping {b.name}"


@pytest.mark.netns
def test_udp_broadcast_reaches_everyone(three):
    h1, h2, h3 = three
    l2, l3 = listen(h2), listen(h3)
    send(h1, BROADCAST, "hello-bcast")
    for p in (l2, l3):
        rc, log = finished(p)
        assert rc == 0 and f"got {h1.ip} hello-bcast" in log, log


@pytest.mark.netns
def test_link_down_and_up(three):
    h1, h2, _ = three
    assert ping(h1, h2)
    h2.link_down()
    assert not ping(h1, h2, count=2)
    h2.link_up()
    wait_until(lambda: ping(h1, h2), 10, msg="ping after link_up")


@pytest.mark.netns
def test_loss_100_then_clear(three):
    h1, h2, h3 = three
    h2.set_loss(100)
    assert "drop" in h2.run("nft", "list", "ruleset", check=True).stdout
    assert not ping(h1, h2, count=2)
    assert not ping(h2, h3, count=2)
    assert ping(h1, h3)                       # others unaffected
    h2.clear_loss()
    assert h2.run("nft", "list", "tables").stdout.strip() == ""
    assert ping(h1, h2) and ping(h2, h3)


@pytest.mark.netns
def test_loss_partial_is_random(three):
    h1, h2, _ = three
    assert ping(h1, h2)                         # resolve ARP first: it is subject to loss too
    h2.set_loss(50)
    out = h1.run("ping", "-n", "-q", "-c", "40", "-i", "0.01", "-W", "1", h2.ip, timeout=30).stdout
    h2.clear_loss()
    loss = float(re.search(r"([\d.]+)% packet loss", out).group(1))
    assert 20 <= loss <= 98, out                # each ping crosses the filter twice: ~75%


@pytest.mark.netns
def test_set_rate(three):
    h1, h2, _ = three
    sink = h2.spawn(PY, "-c", TCP_SINK)
    wait_until(lambda: "ready" in sink.log(), 10)
    fast = float(h1.run(PY, "-c", TCP_SEND, h2.ip, 250_000, check=True).stdout)
    finished(sink)

    h1.set_rate(1000, burst=16 * 1024, latency=400)
    q = h1.run("tc", "qdisc", "show", "dev", "eth0", check=True).stdout
    assert "tbf" in q and "rate 1Mbit" in q, q
    sink = h2.spawn(PY, "-c", TCP_SINK)
    wait_until(lambda: "ready" in sink.log(), 10)
    slow = float(h1.run(PY, "-c", TCP_SEND, h2.ip, 250_000, check=True).stdout)
    assert "received 250000" in finished(sink)[1]
    assert slow > 1.2 > fast, (fast, slow)      # 2 Mbit at 1 Mbit/s ~ 2 s

    h1.clear_rate()
    assert "tbf" not in h1.run("tc", "qdisc", "show", "dev", "eth0", check=True).stdout


@pytest.mark.netns
def test_block_broadcast_keeps_unicast(three):
    h1, h2, h3 = three
    h1.block_broadcast()
    # broadcast into h1 is dropped, h3 still gets it
    l1, l3 = listen(h1, timeout=1.5), listen(h3)
    send(h2, BROADCAST, "from-h2")
    assert finished(l1)[0] == 1
    assert "got 10.203.0.12 from-h2" in finished(l3)[1]
    # broadcast out of h1 is dropped too
    l2 = listen(h2, timeout=1.5)
    send(h1, BROADCAST, "from-h1")
    send(h1, "255.255.255.255", "from-h1")
    assert finished(l2)[0] == 1
    # unicast UDP both ways still works
    l1 = listen(h1)
    send(h2, h1.ip, "unicast-in")
    assert "got 10.203.0.12 unicast-in" in finished(l1)[1]
    l2 = listen(h2)
    send(h1, h2.ip, "unicast-out")
    assert "got 10.203.0.11 unicast-out" in finished(l2)[1]
    h1.unblock_broadcast()
    l1 = listen(h1)
    send(h2, BROADCAST, "again")
    assert finished(l1)[0] == 0


@pytest.mark.netns
def test_iface_counters_count_link_bytes(three):
    h1, h2, _ = three
    before1, before2 = h1.iface_counters(), h2.iface_counters()
    sink = h2.spawn(PY, "-c", TCP_SINK)
    wait_until(lambda: "ready" in sink.log(), 10)
    h1.run(PY, "-c", TCP_SEND, h2.ip, 500_000, check=True)
    finished(sink)
    after1, after2 = h1.iface_counters(), h2.iface_counters()
    assert after1["sent"] - before1["sent"] >= 500_000
    assert after1["rx_bytes"] == after1["sent"]
    assert after2["received"] - before2["received"] >= 500_000


def _leftovers(names):
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [n for n in names if n in netns_list() or f" {n}:" in links or f" {n}@" in links]


@pytest.mark.netns
def test_teardown_leaves_nothing_behind():
    with pytest.raises(ZeroDivisionError):
        with Cluster() as c:
            hosts = [c.add_host(f"t{i}") for i in range(3)]
            procs = [h.spawn("sleep", "600") for h in hosts]
            # a grandchild outside the tracked process group: found by `ip netns pids`
            hosts[0].run("sh", "-c", "setsid sleep 600 >/dev/null 2>&1 &")
            names = [c.bridge] + [h.ns for h in hosts] + [h.veth for h in hosts]
            homes, logdir = [h.home for h in hosts], c.logdir
            assert _leftovers(names) == names
            raise ZeroDivisionError  # an error inside the with block
    assert _leftovers(names) == []
    assert all(p.poll() is not None for p in procs)
    assert not any(h.exists() for h in homes) and not logdir.exists()
    assert c.close() == []                     # idempotent


@pytest.mark.netns
def test_half_way_setup_failure_is_torn_down(monkeypatch):
    import netns

    real_ip = netns._ip

    def failing_ip(*args, **kw):          # fail in the middle of the 2nd add_host
        if "addr" in args and any(a.endswith("-2") for a in args):
            raise RuntimeError("injected failure")
        return real_ip(*args, **kw)

    monkeypatch.setattr(netns, "_ip", failing_ip)
    c = Cluster()
    with pytest.raises(RuntimeError, match="injected"):
        with c:
            c.add_host("ok")
            c.add_host("bad")
    names = [c.bridge] + [h.ns for h in c.hosts] + [h.veth for h in c.hosts]
    assert len(names) == 5 and _leftovers(names) == []


@pytest.mark.netns
def test_stale_leftovers_of_dead_runs_are_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, br = f"homie-{dead.pid}-1-1", f"hb{dead.pid % 10000}c99"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", br, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", br, "alias", f"homie-netns pid={dead.pid}"], check=True)
    try:
        with Cluster() as c:
            c.add_host("x")
            assert _leftovers([ns, br]) == []
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def test_wait_until():
    t0 = time.monotonic()
    assert wait_until(lambda: time.monotonic() - t0 > 0.1, 2) >= 0.1
    with pytest.raises(AssertionError, match="the answer"):
        wait_until(lambda: False, 0.1, msg="the answer")
