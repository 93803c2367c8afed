"""Jobs end to end through the real CLI on namespaced hosts (issue 3).

One module-wide LAN of three hosts (raj, mike, you) as in the spec's example
session; tests that need their own configs or kill daemons build their own
cluster. Every daemon runs inside a harness namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time

import pytest

from jobhelp import (
    Run,
    daemon_pid,
    gate_path,
    make_group,
    marker,
    processes,
    project,
    vm_hwm_kb,
    work_dir,
    work_dir_empty,
)
from netns import Cluster, wait_until

pytestmark = pytest.mark.netns

ARROW = "→"


@pytest.fixture(scope="module")
def lan():
    with Cluster() as c:
        raj, mike, you = make_group(c, ["raj", "mike", "you"])
        yield c, raj, mike, you


@pytest.fixture
def gate():
    g = gate_path()
    yield g
    g.unlink(missing_ok=True)


def workers_clean(*hosts) -> None:
    """Job directories on the workers are gone once the results came home."""
    for h in hosts:
        wait_until(lambda h=h: work_dir_empty(h), 5, msg=f"{h.name}'s work area to be empty "
                                                         f"(has {os.listdir(work_dir(h))})")


TRAIN = """
    import os, sys, time
    epochs = int(sys.argv[sys.argv.index("--epochs") + 1])
    gate = sys.argv[sys.argv.index("--gate") + 1]
    for e in range(1, epochs + 1):
        if e > 1:
            deadline = time.time() + 30  # sleeping before the next epoch until the test says go
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.05)
        print(f"epoch {e}/{epochs} loss={1.0 / e:.3f}")
        print(f"note: epoch {e} on stderr", file=sys.stderr)
    with open("model.pt", "w") as f:
        f.write(f"weights after {epochs} epochs\\n")
"""


def test_example_session_streams_live(lan, gate):
    c, raj, mike, you = lan
    proj = project(you, {"train.py": TRAIN})
    run = Run(you, proj, "train.py", "--epochs", "2", "--gate", str(gate))
    run.wait_out("epoch 1/2", timeout=20)
    # Live: epoch 1 is on the terminal while the job still sleeps before epoch 2.
    time.sleep(0.3)
    assert run.running(), run.out()
    assert "epoch 2/2" not in run.out()
    out, err = run.out(), run.err()
    peer = re.search(rf"{ARROW} sending to (\w+) \(best available\)", err).group(1)
    assert peer in ("raj", "mike")  # a friend, not this machine
    assert re.search(rf"^{ARROW} job started: [0-9a-f]+$", err, re.M), err
    assert f"[{peer}] epoch 1/2 loss=1.000\n" in out
    gate.touch()
    assert run.wait(30) == 0, run.err()
    out, err = run.out(), run.err()
    # stdout is the job's output alone; homie's own lines are on stderr
    assert out.splitlines() == [f"[{peer}] epoch 1/2 loss=1.000", f"[{peer}] epoch 2/2 loss=0.500"], out
    mine = [ln for ln in err.splitlines() if ln.startswith(ARROW)]
    assert mine[0] == f"{ARROW} sending to {peer} (best available)"
    assert mine[1].startswith(f"{ARROW} job started: ")
    assert mine[2:] == [f"{ARROW} job complete", f"{ARROW} saved: results/model.pt"], err
    # the job's stderr stays on stderr, its stdout on stdout
    assert f"[{peer}] note: epoch 1 on stderr" in err and f"[{peer}] note: epoch 2 on stderr" in err
    assert "on stderr" not in out and "epoch 1/2" not in err
    assert (proj / "results" / "model.pt").read_text() == "weights after 2 epochs\n"
    workers_clean(raj, mike, you)


READ_CSV = """
    import csv, sys
    rows = list(csv.reader(open("data.csv")))
    print(f"rows={len(rows)} sum={sum(int(r[1]) for r in rows[1:])} on={__import__('os').environ['HOMIE_PEER']}")
"""


def test_input_file_and_pinned_peer(lan):
    c, raj, mike, you = lan
    data = "name,value\n" + "".join(f"r{i},{i}\n" for i in range(1, 101))
    proj = project(you, {"read.py": READ_CSV, "data.csv": data})
    for pin in ("mike", "raj"):
        r = you.homie("run", "-n", pin, "-f", "data.csv", "read.py", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{ARROW} sending to {pin} (chosen)" in r.stderr
        assert f"[{pin}] rows=101 sum=5050 on={pin}" in r.stdout
    # -n with this machine's own name runs the job here
    r = you.homie("run", "-n", "you", "-f", "data.csv", "read.py", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{ARROW} sending to you (chosen)" in r.stderr
    assert "[you] rows=101 sum=5050 on=you" in r.stdout
    workers_clean(raj, mike, you)


@pytest.mark.parametrize("body,code", [
    ("print('fine')", 0),
    ("import sys; print('failing'); sys.exit(3)", 3),
    ("import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
])
def test_exit_codes_propagate(lan, body, code):
    c, raj, mike, you = lan
    proj = project(you, {"job.py": body})
    r = you.homie("run", "job.py", cwd=proj)
    assert r.returncode == code, r.stdout + r.stderr
    if code == 0:
        assert f"{ARROW} job complete" in r.stderr
    elif code == 3:
        assert "exit code 3" in r.stderr
    else:
        assert "signal 15" in r.stderr


TREE = """
    import os, signal, subprocess, sys, time
    mark = sys.argv[1]
    py = sys.executable
    sleeper = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    # a child, and a child that leaves the session and the tree (setsid + double fork)
    subprocess.Popen([py, "-c", "import time; time.sleep(300)", mark + "-child"])
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(py, [py, "-c", sleeper, mark + "-escaped"])
        os._exit(0)
    subprocess.Popen([py, "-c", "import os, subprocess, sys, time; os.setsid();"
                      " subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1] + '-gc']);"
                      " time.sleep(300)", mark + "-setsid"])
    print("spawned", flush=True)
    time.sleep(300)
"""


def test_kill_leaves_no_process_behind(lan):
    c, raj, mike, you = lan
    mark = marker()
    proj = project(you, {"tree.py": TREE})
    run = Run(you, proj, "-n", "raj", "tree.py", mark)
    job = run.job_id()
    run.wait_out("[raj] spawned")
    tags = ("-child", "-escaped", "-setsid", "-setsid-gc")
    # Every part of the tree, not a count: the sandbox's own processes carry the marker too.
    wait_until(lambda: all(any(mark + t in ln for ln in processes(raj, mark)) for t in tags), 10,
               msg="the job's tree to be up")
    r = you.homie("kill", job)
    assert r.returncode == 0, r.stderr
    assert job in r.stdout
    code = run.wait(20)
    assert code in (128 + signal.SIGTERM, 128 + signal.SIGKILL), (code, run.err())
    assert "killed" in run.err()
    wait_until(lambda: not processes(raj, mark), 10, msg=f"no process of the job left ({processes(raj, mark)})")
    time.sleep(0.5)
    assert not processes(raj, mark)
    workers_clean(raj)


TRAP = """
    import signal, sys, time
    def on_int(signum, frame):
        print("caught SIGINT, saving checkpoint", flush=True)
        sys.exit(42)
    signal.signal(signal.SIGINT, on_int)
    print("ready", sys.argv[1], flush=True)
    time.sleep(120)
"""

STUBBORN = """
    import signal, sys, time
    signal.signal(signal.SIGINT, lambda *a: print("ignoring SIGINT", flush=True))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", sys.argv[1], flush=True)
    while True:
        time.sleep(1)
"""


def test_ctrl_c_interrupts_then_kills(lan):
    c, raj, mike, you = lan
    mark = marker()
    proj = project(you, {"trap.py": TRAP, "stubborn.py": STUBBORN})
    # the first Ctrl-C reaches the job as SIGINT
    run = Run(you, proj, "-n", "mike", "trap.py", mark)
    run.wait_out("[mike] ready")
    assert "homie" in open(f"/proc/{run.pid}/cmdline").read()  # the signal goes to the CLI itself
    run.interrupt()
    assert run.wait(15) == 42, run.out() + run.err()
    assert "[mike] caught SIGINT, saving checkpoint" in run.out()
    assert "interrupting job" in run.err()
    wait_until(lambda: not processes(mike, mark), 5, msg="the trapping job to be gone")
    # a job that ignores SIGINT (and SIGTERM) dies on the second Ctrl-C
    mark = marker()
    run = Run(you, proj, "-n", "mike", "stubborn.py", mark)
    run.wait_out("[mike] ready")
    run.interrupt()
    run.wait_out("[mike] ignoring SIGINT")
    assert run.running()
    run.interrupt()
    t = time.monotonic()
    code = run.wait(15)
    assert code == 128 + signal.SIGKILL, (code, run.out(), run.err())
    assert "killing job" in run.err()
    assert time.monotonic() - t < 8
    wait_until(lambda: not processes(mike, mark), 5, msg="the stubborn job to be gone")
    workers_clean(mike)


def test_ps_on_both_sides(lan, gate):
    c, raj, mike, you = lan
    proj = project(you, {"wait.py": f"""
        import os, time
        print("waiting", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
    """})
    run = Run(you, proj, "-n", "raj", "wait.py", "--some-arg")
    job = run.job_id()
    run.wait_out("[raj] waiting")
    mine = you.homie("ps")
    assert mine.returncode == 0
    row = next(ln for ln in mine.stdout.splitlines() if ln.startswith(job))
    assert re.match(rf"{job}\s+raj\s+wait\.py --some-arg\s+running\s+\d+s$", row), mine.stdout
    assert mine.stdout.splitlines()[:2] == ["sent from here:", mine.stdout.splitlines()[1]]
    assert mine.stdout.splitlines()[1].split() == ["ID", "PEER", "SCRIPT", "STATUS", "AGE"]
    theirs = raj.homie("ps")
    row = next(ln for ln in theirs.stdout.splitlines() if ln.startswith(job))
    assert re.match(rf"{job}\s+you\s+wait\.py --some-arg\s+running\s+\d+s$", row), theirs.stdout
    assert theirs.stdout.splitlines()[0] == "run here for friends:"
    assert theirs.stdout.splitlines()[1].split() == ["ID", "FROM", "SCRIPT", "STATUS", "AGE"]
    j = json.loads(you.homie("ps", "--json").stdout)
    assert [(s["job_id"], s["peer"], s["status"]) for s in j["sent"]] == [(job, "raj", "running")]
    assert j["here"] == []
    j = json.loads(raj.homie("ps", "--json").stdout)
    assert j["sent"] == []
    assert [(s["job_id"], s["from"], s["status"], s["args"]) for s in j["here"]] == \
        [(job, "you", "running", ["--some-arg"])]
    gate.touch()
    assert run.wait(20) == 0
    assert json.loads(you.homie("ps", "--json").stdout) == {"sent": [], "here": []}
    assert json.loads(raj.homie("ps", "--json").stdout) == {"sent": [], "here": []}
    assert re.search(rf"^{job}\s+raj\s+wait\.py --some-arg\s+done\s", you.homie("ps", "--all").stdout, re.M)
    workers_clean(raj)


def test_100k_lines_complete_and_in_order(lan):
    c, raj, mike, you = lan
    n = 100_000
    proj = project(you, {"lines.py": f"for i in range({n}):\n    print(f'line {{i:06d}}')\n"})
    t = time.monotonic()
    r = you.homie("run", "-n", "mike", "lines.py", cwd=proj, timeout=120)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-2000:]
    got = [ln for ln in r.stdout.splitlines() if ln.startswith("[mike] ")]
    assert len(got) == n
    assert got == [f"[mike] line {i:06d}" for i in range(n)]
    print(f"100k lines in {took:.2f}s")
    workers_clean(mike)


BIG_READER = """
    import hashlib, sys
    h = hashlib.sha256()
    n = 0
    with open("big.bin", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    print(n, h.hexdigest())
"""


def test_200mb_input_bounded_memory(lan):
    c, raj, mike, you = lan
    size = 200 * 2**20
    proj = project(you, {"reader.py": BIG_READER})
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    with open(proj / "big.bin", "wb") as f:
        for i in range(size >> 20):
            b = i.to_bytes(8, "big") + block[8:]  # each MiB different: nothing dedups
            f.write(b)
            h.update(b)
    (proj / "big.bin").chmod(0o644)
    t = time.monotonic()
    run = Run(you, proj, "-n", "raj", "-f", "big.bin", "reader.py", measure_rss=True)
    assert run.wait(120) == 0, run.out() + run.err()
    took = time.monotonic() - t
    assert f"[raj] {size} {h.hexdigest()}" in run.out()
    peaks = {"cli": run.maxrss_kb(), "you-daemon": vm_hwm_kb(daemon_pid(you)),
             "raj-daemon": vm_hwm_kb(daemon_pid(raj))}
    print(f"200 MB job in {took:.2f}s; peak RSS (MiB): "
          + ", ".join(f"{k}={v / 1024:.1f}" for k, v in peaks.items()))
    for who, kb in peaks.items():
        assert kb < 100 * 1024, f"{who} peaked at {kb / 1024:.1f} MiB"
    workers_clean(raj)
    (proj / "big.bin").unlink()


def test_bad_input(lan):
    c, raj, mike, you = lan
    proj = project(you, {"ok.py": "print('ok')", "afile": "x"})
    r = you.homie("run", "missing.py", cwd=proj)
    assert r.returncode == 2 and "script not found: missing.py" in r.stderr, r.stderr
    r = you.homie("run", "-n", "bob", "ok.py", cwd=proj)
    assert r.returncode == 70, r.stdout + r.stderr
    assert "unknown peer 'bob'" in r.stderr and "mike" in r.stderr and "raj" in r.stderr
    for out in ("afile", "afile/sub", "/proc/homie-results"):
        r = you.homie("run", "-o", out, "ok.py", cwd=proj)
        assert r.returncode == 2, (out, r.stdout, r.stderr)
        assert "results directory" in r.stderr and "sending to" not in r.stderr
    assert json.loads(you.homie("ps", "--json").stdout)["sent"] == []


def test_no_peers_at_all(cluster):
    (solo,) = make_group(cluster, ["solo"], config={"max_jobs": 0})
    proj = project(solo, {"job.py": "print('never')"})
    t = time.monotonic()
    r = solo.homie("run", "job.py", cwd=proj)
    assert r.returncode == 70, r.stdout + r.stderr
    assert time.monotonic() - t < 10
    assert "no peer can take this job" in r.stderr and "max_jobs: 0" in r.stderr, r.stderr
    assert "never" not in r.stdout


@pytest.mark.parametrize("how", ["kill-9", "link-down"])
def test_peer_dies_mid_job(cluster, gate, how):
    """kill -9 of the worker's daemon (its sockets close), or the machine vanishing
    from the LAN (no FIN at all): either way the run ends within peer_timeout (3 s)
    + a few seconds, exit 71."""
    raj, you = make_group(cluster, ["raj", "you"])
    mark = marker()
    proj = project(you, {"long.py": f"""
        import os, sys, time
        print("started", sys.argv[1], flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.1)
    """})
    run = Run(you, proj, "-n", "raj", "long.py", mark)
    run.wait_out("[raj] started")
    pid = daemon_pid(raj)
    t = time.monotonic()
    if how == "kill-9":
        os.kill(pid, signal.SIGKILL)
    else:
        raj.link_down()
    code = run.wait(3 + 4)  # peer_timeout + a few seconds
    took = time.monotonic() - t
    assert code == 71, (code, run.out(), run.err())
    assert "→ job lost: raj went away" in run.err(), run.err()
    print(f"{how}: lost peer noticed after {took:.2f}s")
    if how == "kill-9":
        # The sandbox dies with its daemon (--die-with-parent, pid namespace): no
        # orphan outlives a kill -9; the next start removes its directory.
        wait_until(lambda: not processes(raj, mark), 5, msg="the job to die with its daemon")
        start_daemon_again = raj.homie("up", "--name", "raj")
        assert start_daemon_again.returncode == 0, start_daemon_again.stderr
        workers_clean(raj)
