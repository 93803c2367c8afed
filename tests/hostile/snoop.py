"""Attacks 5 and 6: read what a job must never see: the worker's home (state.db
with other jobs' arguments, logs, the group key), other processes' command
lines and environments, files given by absolute path.

argv: PATTERN PATH... (a directory is walked)
Reports every readable path and every PATTERN... snippet found.
"""
import hashlib
import json
import os
import re
import sys

pattern, paths = sys.argv[1].encode(), sys.argv[2:]
rx = re.compile(re.escape(pattern) + rb"[A-Za-z0-9_=-]{0,40}")
rep = {"found": [], "readable": {}, "refused": {}, "listed": {}}


def look(path, data):
    for m in rx.findall(data):
        rep["found"].append([path, m.decode(errors="replace")])


def read(path, limit=8 << 20):
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError as e:
        rep["refused"][path] = type(e).__name__
        return
    rep["readable"][path] = hashlib.sha256(data).hexdigest()
    look(path, data)


for p in paths:
    if os.path.isdir(p):
        try:
            rep["listed"][p] = sorted(os.listdir(p))[:30]
        except OSError as e:
            rep["refused"][p] = type(e).__name__
        for d, _dirs, fnames in os.walk(p):
            for f in fnames[:200]:
                read(os.path.join(d, f))
    else:
        read(p)
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    look(f"/proc/{pid}/{what}", f.read())
            except OSError:
                pass
rep["found"] = rep["found"][:50]
rep["readable"] = dict(list(rep["readable"].items())[:200])
print("HOSTILE " + json.dumps(rep), flush=True)
