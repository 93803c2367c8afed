"""Client-side stamps of one `homie` CLI run, for the "where the time goes" table.

WRAPPER is run as `python -c WRAPPER ARGS...` in place of the `homie` console script (which is
`from homie.cli import main; sys.exit(main())` under the same interpreter). It changes nothing in
homie: it records time.time() at its first line, after `import homie.cli`, and at the first
connect / send / received byte and the last received byte on AF_UNIX sockets (the control
socket), then writes them as JSON to $HOMIE_BENCH_PROBE at exit.
"""

from __future__ import annotations

import re

ENV = "HOMIE_BENCH_PROBE"

WRAPPER = r"""
import time
T = {"interpreter up": time.time()}
import atexit, json, os, socket, sys
_S = socket.socket
_connect, _sendall, _recv_into = _S.connect, _S.sendall, _S.recv_into
def _unix(s):
    return s.family == socket.AF_UNIX
def connect(self, addr):
    if _unix(self):
        T.setdefault("control socket: connect", time.time())
    return _connect(self, addr)
def sendall(self, data, *a):
    if _unix(self):
        T.setdefault("control socket: first byte sent", time.time())
    r = _sendall(self, data, *a)
    return r
def recv_into(self, buf, *a):
    r = _recv_into(self, buf, *a)
    if r and _unix(self):
        now = time.time()
        T.setdefault("control socket: first byte received", now)
        T["control socket: last byte received"] = now
        if b"hello" in bytes(memoryview(buf)[:r]):
            T.setdefault("control socket: job output received", now)
    return r
_S.connect, _S.sendall, _S.recv_into = connect, sendall, recv_into
import types, _socket as _real_socket
# homie's client makes its control socket with _socket (no socket-module import): hand it a
# _socket whose socket is the stamped class (socket.py keeps its own reference to the real one).
_shim = types.ModuleType("_socket")
_shim.__getattr__ = lambda name: getattr(_real_socket, name)
_shim.socket = _S
sys.modules["_socket"] = _shim
def _dump():
    T["atexit"] = time.time()
    with open(os.environ["HOMIE_BENCH_PROBE"], "w") as f:
        json.dump(T, f)
atexit.register(_dump)
T["probe ready"] = time.time()
from homie.cli import main
T["import homie.cli done"] = time.time()
sys.argv = ["homie", *sys.argv[1:]]
sys.exit(main())
"""

_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def parse_importtime(stderr: str) -> dict:
    """`-X importtime` lines -> {module: (self µs, cumulative µs, depth, parent)}; depth 0 = imported
    by the -c code itself (or by site at start-up). Children are printed before their parent, so a
    module's parent is the first later line one level up."""
    out, pending = {}, {}  # pending: depth -> modules waiting for their parent
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        depth = (len(m.group(3)) - 1) // 2
        mod = m.group(4)
        out[mod] = [int(m.group(1)), int(m.group(2)), depth, None]
        for child in pending.pop(depth + 1, []):
            out[child][3] = mod
        pending.setdefault(depth, []).append(mod)
    return {k: tuple(v) for k, v in out.items()}
