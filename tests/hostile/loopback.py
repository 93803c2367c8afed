"""Attack 17: reach the lender's own loopback-only services from a job: a TCP
port on 127.0.0.1 and an abstract unix socket.

argv: MARK PORT
"""
import json
import socket
import sys

mark, port = sys.argv[1], int(sys.argv[2])
rep = {}
for what, family, addr in (("tcp", socket.AF_INET, ("127.0.0.1", port)),
                           ("abstract", socket.AF_UNIX, f"\0homie-owner-{mark}")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        rep[what] = s.recv(200).decode(errors="replace").strip()
    except OSError as e:
        rep[what] = type(e).__name__
    finally:
        s.close()
print("HOSTILE " + json.dumps(rep), flush=True)
