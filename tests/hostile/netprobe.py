"""Attack 10: reach other hosts from a job: TCP connects and name resolution.

argv: IP:PORT...
"""
import json
import socket
import sys

rep = {"connect": {}, "resolve": {}}
for target in sys.argv[1:]:
    ip, port = target.rsplit(":", 1)
    try:
        socket.create_connection((ip, int(port)), timeout=3).close()
        rep["connect"][target] = "connected"
    except OSError as e:
        rep["connect"][target] = type(e).__name__
for name in ("localhost", "example.com"):
    try:
        rep["resolve"][name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80)})
    except OSError as e:
        rep["resolve"][name] = type(e).__name__
print("HOSTILE " + json.dumps(rep), flush=True)
