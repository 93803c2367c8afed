"""A raw TLS 1.3 bulk sender/receiver: the ceiling homie's upload is measured against.

Same TLS set-up as homie's job channel (homie.wire.trust.Trust contexts from the group
key in HOMIE_HOME, mutual TLS 1.3), blocking sockets, 1 MiB application buffers,
no framing beyond an 8-byte length prefix. The receiver writes the bytes to a
file (like homie's worker and scp do) and acknowledges once the file is closed.

    python -m bench.rawtls recv --bind IP --port P --out FILE      # prints "ready"
    python -m bench.rawtls send --host IP --port P --file FILE     # prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time

BUF = 1 << 20


def _trust(name: str):
    from homie.home import Home
    from homie.keys import load_key
    from homie.wire.trust import Trust

    return Trust(load_key(Home().key), name)


def _cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _recv_exact(sock, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise ConnectionError("connection closed early")
        out += b
    return bytes(out)


def recv(args) -> int:
    trust = _trust("bench-recv")
    ctx = trust.server_context()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.bind, args.port))
    srv.listen(1)
    srv.settimeout(args.timeout)
    print("ready", flush=True)
    raw, _ = srv.accept()
    raw.settimeout(args.timeout)
    sock = ctx.wrap_socket(raw, server_side=True)
    t0 = time.perf_counter()
    size = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    buf = bytearray(BUF)
    view = memoryview(buf)
    got = 0
    with open(args.out, "wb", buffering=0) as f:
        while got < size:
            n = sock.recv_into(view, min(BUF, size - got))
            if n == 0:
                raise ConnectionError(f"connection closed after {got} of {size} bytes")
            f.write(view[:n])
            got += n
    sock.sendall(b"ok")
    elapsed = time.perf_counter() - t0
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
    srv.close()
    print(json.dumps({"bytes": got, "seconds": elapsed, "cpu": _cpu()}), flush=True)
    return 0


def send(args) -> int:
    from homie.wire.trust import SERVER_HOSTNAME

    trust = _trust("bench-send")
    ctx = trust.client_context()
    size = os.path.getsize(args.file)
    buf = bytearray(BUF)
    view = memoryview(buf)
    t0 = time.perf_counter()  # connect + handshake count, as they do for scp
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
    sock.sendall(struct.pack("!Q", size))
    sent = 0
    with open(args.file, "rb", buffering=0) as f:
        while sent < size:
            n = f.readinto(view[: min(BUF, size - sent)])
            if not n:
                raise RuntimeError(f"{args.file} shrank while sending")
            sock.sendall(view[:n])
            sent += n
    ack = _recv_exact(sock, 2)
    elapsed = time.perf_counter() - t0
    sock.close()
    if ack != b"ok":
        raise RuntimeError(f"bad acknowledgement {ack!r}")
    print(json.dumps({"bytes": sent, "seconds": elapsed, "cpu": _cpu()}), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rawtls")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--bind", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--timeout", type=float, default=300)
    s = sub.add_parser("send")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--file", required=True)
    s.add_argument("--timeout", type=float, default=300)
    args = p.parse_args(argv)
    return recv(args) if args.cmd == "recv" else send(args)


if __name__ == "__main__":
    sys.exit(main())
