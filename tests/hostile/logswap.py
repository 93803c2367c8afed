"""Attacks 2 and 12: replace every job output log within reach (its own, a
sibling's found through /proc, anything under the worker's work directory)
with a symlink to DEST, then print lines.

argv: DEST WORK_DIR HOMIE_HOME VICTIM_MARK LINES
"""
import json
import os
import sys
import time

dest, work, home, victim, lines = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rep = {"replaced": [], "refused": {}, "victim_dirs": []}
targets = {os.path.abspath(".homie/output.log"), os.path.join(home, "logs", "homie.log")}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        if victim.encode() in cmd and b"logswap.py" not in cmd:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            rep["victim_dirs"].append(cwd)
            targets.add(os.path.join(cwd, ".homie", "output.log"))
    except OSError:
        pass
try:
    for j in os.listdir(work):  # only the victim's: other tests' jobs share this worker
        if os.path.exists(os.path.join(work, j, f"ticker-{victim}.txt")):
            targets.add(os.path.join(work, j, ".homie", "output.log"))
except OSError as e:
    rep["refused"][work] = type(e).__name__
for t in sorted(targets):
    try:
        tmp = t + ".x"
        os.symlink(dest, tmp)
        os.replace(tmp, t)
        rep["replaced"].append(t)
    except OSError as e:
        rep["refused"][t] = type(e).__name__
        try:
            os.unlink(t + ".x")
        except OSError:
            pass
print("HOSTILE " + json.dumps(rep), flush=True)
for i in range(lines):
    print(f"hostile line {i}", flush=True)
    time.sleep(0.01)
