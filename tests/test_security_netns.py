"""The job port under hostile input, on namespaced hosts: a wrong group key is
refused before any application byte moves, in both directions; garbage,
oversized frames, silence and connection floods are cut off and the daemon
keeps serving real jobs.

raj and you share a key and run daemons; eve is on the same LAN with python
and homie's code but not the key. Probes are small python scripts run inside
a namespace (h.run), so all traffic stays on the cluster's bridge.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from jobhelp import alive, daemon_pid, make_group, project, work_dir_empty
from netns import Cluster, wait_until

pytestmark = pytest.mark.netns

PY = sys.executable
PORT = 5556

# argv: mode ip port [keyfile]. Prints one JSON line describing what happened.
PROBE = r"""
import json, secrets, socket, ssl, struct, sys, time
from homie.wire import protocol
from homie.keys import load_key
from homie.wire.trust import SERVER_HOSTNAME, Trust

mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = {"mode": mode, "handshake": None, "error": None, "got": b"".hex(), "closed_after": None}


def drain(sock, limit=10.0):
    # read until EOF / error; everything received is recorded
    got = b""
    t = time.monotonic()
    sock.settimeout(limit)
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                res["error"] = res["error"] or "eof"
                break
            got += b
    except ssl.SSLError as e:
        res["error"] = f"SSLError: {e.reason or e}"
    except socket.timeout:
        res["error"] = "timeout"
    except OSError as e:
        res["error"] = f"{type(e).__name__}"
    res["closed_after"] = round(time.monotonic() - t, 3)
    res["got"] = got.hex()
    return got


raw = socket.create_connection((ip, port), timeout=5)
if mode in ("wrong-key", "no-cert"):
    # A client that accepts any server but presents a leaf of another group
    # (or none): only the daemon's verification can stop it.
    if mode == "wrong-key":
        ctx = Trust(secrets.token_bytes(32), "eve").client_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        s = ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
        res["handshake"] = "ok"  # TLS 1.3: the client finishes before the server judges its cert
    except ssl.SSLError as e:
        res["handshake"] = "failed"
        res["error"] = f"SSLError: {e.reason or e}"
    else:
        drain(s)
elif mode == "strict-wrong-key":
    # A homie node of another group: it refuses the daemon's certificate itself.
    try:
        Trust(secrets.token_bytes(32), "eve").client_context().wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
        res["handshake"] = "ok"
    except ssl.SSLError as e:
        res["handshake"] = "failed"
        res["error"] = f"SSLError: {e.reason or e}"
elif mode in ("garbage", "huge-plain", "silent"):
    payload = {"garbage": b"GET / HTTP/1.1\r\nHost: homie\r\n\r\n" + bytes(range(256)) * 8,
               "huge-plain": struct.pack("!IB", 0xFFFFFFFF, protocol.MSG), "silent": b""}[mode]
    raw.sendall(payload)
    drain(raw)
elif mode in ("huge-tls", "bad-json-tls"):
    # A member of the group (right key) that breaks the framing after the hello.
    ctx = Trust(load_key(sys.argv[4]), "mallory").client_context()
    s = ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
    res["handshake"] = "ok"
    hdr = b""
    while len(hdr) < 5:
        hdr += s.recv(5 - len(hdr))
    n, t = struct.unpack("!IB", hdr)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    res["hello"] = json.loads(body)["t"]
    if mode == "huge-tls":
        s.sendall(struct.pack("!IB", 0xFFFFFFFF, protocol.MSG) + b"x" * 1000)
    else:
        s.sendall(struct.pack("!IB", 7, protocol.MSG) + b"{nope!!")
    drain(s)
elif mode == "member":
    # argv[4]: key file. 20 single connection attempts of a member, no retries:
    # how many get a seat and the daemon's hello?
    ctx = Trust(load_key(sys.argv[4]), "you").client_context()
    ok = 0
    for _ in range(20):
        try:
            c = socket.create_connection((ip, port), timeout=3)
            s = ctx.wrap_socket(c, server_hostname=SERVER_HOSTNAME)
            s.settimeout(3)
            hdr = s.recv(5)
            ok += len(hdr) == 5
            s.close()
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.1)
    res["member_ok"] = ok
elif mode == "churn":
    # Hold 16 idle connections for argv[4] seconds; reopen each the moment it is cut.
    import selectors
    sel = selectors.DefaultSelector()
    def opened():
        try:
            c = socket.create_connection((ip, port), timeout=2)
        except OSError:
            return None
        c.setblocking(False)
        sel.register(c, selectors.EVENT_READ)
        return c
    live = [c for c in (raw, *(opened() for _ in range(15))) if c is not None]
    if raw in live:
        raw.setblocking(False)
        sel.register(raw, selectors.EVENT_READ)
    reopened = 0
    end = time.monotonic() + float(sys.argv[4])
    while time.monotonic() < end:
        for key, _ in sel.select(0.002):
            try:
                gone = key.fileobj.recv(1) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if gone:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                if opened() is not None:
                    reopened += 1
        while len(sel.get_map()) < 16 and time.monotonic() < end:
            if opened() is None:
                break
            reopened += 1
    res["reopened"] = reopened
elif mode == "flood":
    socks = [raw] + [socket.create_connection((ip, port), timeout=5) for _ in range(39)]
    time.sleep(0.5)
    cut = 0
    for c in socks:
        c.setblocking(False)
        try:
            if c.recv(1) == b"":
                cut += 1
        except BlockingIOError:
            pass
        except OSError:
            cut += 1
    res["cut_at_once"] = cut
    print(json.dumps(res), flush=True)
    time.sleep(float(sys.argv[4]))  # hold the rest open while a real job runs
    sys.exit(0)
print(json.dumps(res), flush=True)
"""

# A TLS server holding a leaf of ANOTHER group, speaking first like a daemon.
# argv: ip port. Prints "ready", then one JSON line per connection.
FAKE_SERVER = r"""
import json, secrets, socket, ssl, sys
from homie.wire import protocol
from homie.wire.trust import Trust
ctx = Trust(secrets.token_bytes(32), "raj").server_context()
ctx.verify_mode = ssl.CERT_NONE  # it would talk to anyone: only the client can refuse
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    c.settimeout(5)
    try:
        s = ctx.wrap_socket(c, server_side=True)
        s.sendall(protocol.encode_msg("hello", name="raj", proto=1, homie="0", python="3", instance="00"))
        print(json.dumps({"server": "handshake ok, hello sent"}), flush=True)
    except (ssl.SSLError, OSError) as e:
        print(json.dumps({"server": f"refused: {type(e).__name__}: {getattr(e, 'reason', e)}"}), flush=True)
    finally:
        c.close()
"""

# The daemon's own client code (Dialer.connect with the daemon's Trust) against
# the fake server. argv: ip port keyfile.
DAEMON_CLIENT = r"""
import json, sys, types
from homie.errors import HomieError
from homie.keys import load_key
from homie.submit.dial import Dialer
from homie.wire.trust import Trust
res = {}
try:
    Dialer(Trust(load_key(sys.argv[3]), "you")).connect(sys.argv[1], int(sys.argv[2]))
    res["connected"] = True
except HomieError as e:
    res = {"connected": False, "message": str(e), "exit_code": e.exit_code}
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def lan():
    with Cluster() as c:
        raj, you = make_group(c, ["raj", "you"])
        eve = c.add_host("eve")  # same LAN, no key, no daemon
        yield c, raj, you, eve


def probe(h, mode, target, *extra, timeout=30) -> dict:
    r = h.run(PY, "-c", PROBE, mode, target.ip, PORT, *extra, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def still_serving(raj, you, pid) -> None:
    assert alive(pid) and daemon_pid(raj) == pid, "raj's daemon died"
    proj = project(you, {"job.py": "print('still here')"})
    r = you.homie("run", "-n", "raj", "job.py", cwd=proj)
    assert r.returncode == 0 and "[raj] still here" in r.stdout, r.stdout + r.stderr
    wait_until(lambda: work_dir_empty(raj), 5)


def test_wrong_key_client_refused_before_any_byte(lan):
    c, raj, you, eve = lan
    pid = daemon_pid(raj)
    for mode in ("wrong-key", "no-cert"):
        res = probe(eve, mode, raj)
        # Either the handshake fails, or (TLS 1.3) the first read brings the alert:
        # never a single application byte (the daemon speaks first with HELLO).
        assert res["got"] == "", res
        assert res["error"] and res["error"].startswith("SSLError"), res
        assert res["handshake"] == "failed" or res["closed_after"] < 3, res
    res = probe(eve, "strict-wrong-key", raj)
    assert res["handshake"] == "failed" and "CERTIFICATE_VERIFY_FAILED" in res["error"], res
    still_serving(raj, you, pid)


def test_daemon_client_refuses_wrong_key_server(lan):
    c, raj, you, eve = lan
    srv = eve.spawn(PY, "-c", FAKE_SERVER, eve.ip, PORT)
    wait_until(lambda: "ready" in srv.log(), 10, msg="fake server")
    r = you.run(PY, "-c", DAEMON_CLIENT, eve.ip, PORT, you.home / "key")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["connected"] is False and res["exit_code"] == 71, res
    assert "refused our group key" in res["message"] and "CERTIFICATE_VERIFY_FAILED" in res["message"], res
    wait_until(lambda: "refused" in srv.log(), 5, msg="the fake server to see the refusal")
    assert "hello sent" not in srv.log(), srv.log()  # the handshake never completed
    srv.kill()


@pytest.mark.parametrize("mode", ["garbage", "huge-plain", "silent"])
def test_plain_tcp_abuse_is_cut_off(lan, mode):
    c, raj, you, eve = lan
    pid = daemon_pid(raj)
    res = probe(eve, mode, raj)
    assert res["error"] in ("eof",) or res["error"].startswith(("ConnectionResetError", "SSLError")), res
    assert res["error"] != "timeout", res
    assert b"hello" not in bytes.fromhex(res["got"]), res
    # silence is cut by the 2 s handshake timeout, junk at once
    assert res["closed_after"] < (4 if mode == "silent" else 1.5), res
    still_serving(raj, you, pid)


@pytest.mark.parametrize("mode", ["huge-tls", "bad-json-tls"])
def test_member_breaking_the_framing_is_cut_off(lan, mode):
    c, raj, you, eve = lan
    pid = daemon_pid(raj)
    res = probe(eve, mode, raj, raj.home / "key")
    assert res["hello"] == "hello" and res["closed_after"] < 1.5, res
    assert b"protocol error" in bytes.fromhex(res["got"]), res  # told why, then cut
    assert res["error"] in ("eof",) or res["error"].startswith(("ConnectionResetError", "SSLError")), res
    still_serving(raj, you, pid)


def test_connection_flood_is_capped_and_jobs_still_run(lan):
    c, raj, you, eve = lan
    pid = daemon_pid(raj)
    flood = eve.spawn(PY, "-c", PROBE, "flood", raj.ip, PORT, 6)
    wait_until(lambda: "cut_at_once" in flood.log(), 10, msg=f"flood ({flood.log()})")
    res = json.loads(flood.log().strip().splitlines()[-1])
    assert res["cut_at_once"] >= 40 - 16, res  # at most 16 connections per address get a slot
    still_serving(raj, you, pid)
    assert flood.poll() is None  # the job ran while eve still held her connections open
    flood.kill()


# A member of the group running another protocol version: the same key, a HELLO
# announcing protocol 99. argv: ip port keyfile.
OTHER_VERSION_SERVER = r"""
import socket, sys
from homie.wire import protocol
from homie.keys import load_key
from homie.wire.trust import Trust
ctx = Trust(load_key(sys.argv[3]), "raj").server_context()
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = srv.accept()
s = ctx.wrap_socket(c, server_side=True)
s.sendall(protocol.encode_msg("hello", name="raj", proto=99, homie="9.9.0", python="3.99.0", instance="00"))
s.recv(100)
"""


def test_version_mismatch_is_one_clear_sentence(lan):
    c, raj, you, eve = lan
    srv = eve.spawn(PY, "-c", OTHER_VERSION_SERVER, eve.ip, PORT, you.home / "key")
    wait_until(lambda: "ready" in srv.log(), 10, msg="the other-version server")
    r = you.run(PY, "-c", DAEMON_CLIENT, eve.ip, PORT, you.home / "key")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["connected"] is False and res["exit_code"] == 71, res
    msg = res["message"]
    assert "raj runs homie 9.9.0 (protocol 99, Python 3.99.0)" in msg and "upgrade" in msg, msg
    assert "Traceback" not in msg and "\n" not in msg
    srv.kill()


def test_junk_connections_cannot_take_a_members_seat(recorder):
    """64 idle connections from 4 addresses, each reopened the moment it is cut,
    take every seat a plain cap has; members who authenticated recently keep
    seats of their own, so their jobs still run (before: 5 of 8 failed)."""
    with Cluster() as c:
        raj, you = make_group(c, ["raj", "you"], per_host={"you": {"max_jobs": 0}})
        proj = project(you, {"job.py": "print('still here')"})
        r = you.homie("run", "-n", "raj", "job.py", cwd=proj)  # you has authenticated with raj
        assert r.returncode == 0, r.stdout + r.stderr
        pid = daemon_pid(raj)
        junk = [c.add_host(f"junk{i}") for i in range(4)]
        floods = [j.spawn(PY, "-c", PROBE, "churn", raj.ip, PORT, 120) for j in junk]
        time.sleep(3)  # every seat taken, and retaken as soon as one is freed
        seats = probe(you, "member", raj, you.home / "key")["member_ok"]
        ok = 0
        for _ in range(8):
            r = you.homie("run", "-n", "raj", "job.py", cwd=proj, timeout=60)
            ok += r.returncode == 0 and "[raj] still here" in r.stdout
        alive_floods = sum(f.poll() is None for f in floods)
        for f in floods:
            f.kill()
        recorder.record("abuse", "junk connections vs members' seats",
                        "4 addresses x 16 idle connections, reopened as soon as cut, while a member ran 8 jobs",
                        8, f"{seats}/20 single connection attempts got a seat, {ok}/8 jobs completed;"
                           f" daemon alive: {alive(pid)}")
        assert seats == 20, f"only {seats} of 20 connection attempts of a member got a seat"
        assert ok == 8, f"only {ok} of 8 jobs ran while junk held the seats"
        assert alive_floods == 4, f"the floods were meant to run throughout: {[f.log()[-300:] for f in floods]}"
        assert alive(pid) and daemon_pid(raj) == pid
