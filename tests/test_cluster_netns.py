"""Owning jobs across a cluster (issue 6): detach/attach/logs/results, link loss,
submitter restarts, the queue, `homie map`, karma, and clear errors.

Every daemon runs inside a harness namespace (broadcast discovery on the
cluster's private bridge only). Two module-wide LANs keep the run short:

- ``pair``: raj (the only worker, max_jobs 1) and you (the submitter, max_jobs 0),
  peer_timeout 8 so that a link can go down for 5 s without the peer counting as gone;
- ``farm``: you (max_jobs 0) and three workers with max_jobs 2, peer_timeout 3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from jobhelp import Run, daemon_pid, gate_path, make_group, marker, peer_names, processes, project, start_daemon
from netns import Cluster, wait_until

pytestmark = pytest.mark.netns

ARROW = "→"
JOB_ID = re.compile(r"^[0-9a-f]{8}$")

LINES = """
    import sys, time
    n, dt = int(sys.argv[1]), float(sys.argv[2])
    for i in range(n):
        print(f"line {i}", flush=True)
        time.sleep(dt)
    with open("out.txt", "w") as f:
        f.write(f"{n} lines\\n")
"""

# Prints a line every 100 ms while waiting for a gate file, then writes a result.
GATED = """
    import os, sys, time
    gate, mark = sys.argv[1], sys.argv[2]
    i = 0
    deadline = time.time() + 60
    while not os.path.exists(gate) and time.time() < deadline:
        print(f"tick {i}", flush=True)
        i += 1
        time.sleep(0.1)
    with open("out.txt", "w") as f:
        f.write(f"{mark} after {i} ticks\\n")
    print(f"end {i}", flush=True)
"""

BURN = """
    import time
    t = time.process_time()
    x = 0
    while time.process_time() - t < 0.5:
        x += 1
    print("burned", round(time.process_time() - t, 2))
"""


def numbered(out: str, prefix: str, n: int) -> None:
    """`out` holds `prefix + 'line i'` for i in 0..n-1, each once and in order."""
    got = [ln[len(prefix):] for ln in out.splitlines() if ln.startswith(prefix + "line ")]
    assert got == [f"line {i}" for i in range(n)], (len(got), got[:5], got[-5:])


def sent(h, job: str) -> dict:
    r = h.homie("ps", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return next(j for j in json.loads(r.stdout)["sent"] if j["job_id"] == job)


def wait_state(h, job: str, states: tuple, timeout: float) -> dict:
    wait_until(lambda: sent(h, job)["status"] in states, timeout,
               msg=f"job {job} on {h.name} to reach {states} (now {sent(h, job)['status']})")
    return sent(h, job)


def detach(h, cwd: Path, *args: str) -> tuple[str, float]:
    t = time.monotonic()
    r = h.homie("run", "--detach", *args, cwd=cwd)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.strip()
    assert JOB_ID.match(job), r.stdout
    return job, took


@pytest.fixture(scope="module")
def pair():
    with Cluster() as c:
        raj, you = make_group(c, ["raj", "you"], config={"peer_timeout": 8},
                              per_host={"raj": {"max_jobs": 1}, "you": {"max_jobs": 0}})
        yield c, raj, you


@pytest.fixture
def duo(pair):
    """The pair, both daemons up and seeing each other (a test may have restarted one)."""
    c, raj, you = pair
    for h in (raj, you):
        if not (h.home / "homie.pid").exists() or h.homie("status").returncode != 0:
            start_daemon(h)
    wait_until(lambda: "raj" in peer_names(you) and "you" in peer_names(raj), 15, msg="raj and you to meet")
    yield c, raj, you


@pytest.fixture
def gate():
    g = gate_path()
    yield g
    g.touch()  # a failed test leaves no job waiting on raj's only slot
    time.sleep(0.3)
    g.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- detach / attach

def test_detach_attach_logs_results(duo):
    c, raj, you = duo
    n = 40  # a line every 50 ms: about 2 s
    proj = project(you, {"lines.py": LINES})
    job, took = detach(you, proj, "lines.py", str(n), "0.05")
    print(f"run --detach returned in {took:.2f}s")
    assert took < 3, took
    assert sent(you, job)["status"] in ("queued", "uploading", "running")
    time.sleep(1.0)
    out_dir = proj / "attached"
    r = you.homie("attach", job, "-o", str(out_dir), cwd=proj, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    numbered(r.stdout, "[raj] ", n)
    assert f"{ARROW} job complete" in r.stderr
    assert (out_dir / "out.txt").read_text() == f"{n} lines\n"
    assert "saved:" in r.stderr
    # attach tells what happened, it does not replay it as news
    assert "sending to" not in r.stderr and f"job {job} was sent to raj" in r.stderr, r.stderr
    # logs: the bare output, once
    r = you.homie("logs", job)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "".join(f"line {i}\n" for i in range(n))
    # results, later, into another folder
    later = proj / "later"
    r = you.homie("results", job, "-o", str(later), cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (later / "out.txt").read_text() == f"{n} lines\n"
    assert f"{ARROW} saved: later/out.txt" in r.stderr
    s = sent(you, job)
    assert (s["status"], s["exit_code"], s["peer"]) == ("done", 0, "raj")


def test_unknown_and_failed_jobs_are_clear_errors(duo):
    c, raj, you = duo
    for verb in (("attach",), ("logs",), ("results",), ("logs", "-f")):
        r = you.homie(*verb, "deadbeef")
        assert r.returncode == 1, (verb, r.stdout, r.stderr)
        assert "no job 'deadbeef'" in r.stderr, (verb, r.stderr)
        assert "Traceback" not in r.stderr
    # a job that failed (nobody here has a GPU): results say why, exit 1
    proj = project(you, {"job.py": "print('never')"})
    job, _ = detach(you, proj, "--gpu", "job.py")
    s = wait_state(you, job, ("failed",), 15)
    assert s["exit_code"] == 70
    r = you.homie("results", job, cwd=proj)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"job {job} ended failed" in r.stderr and "no peer can take this job" in r.stderr, r.stderr
    assert not (proj / "results").exists()
    # attach to it: the reason, and the job's exit code
    r = you.homie("attach", job, cwd=proj)
    assert r.returncode == 70, r.stdout + r.stderr
    assert "job failed: no peer can take this job" in r.stderr


# ----------------------------------------------------------------------------- faults

def test_link_down_5s_mid_job(duo):
    c, raj, you = duo
    n = 80  # a line every 100 ms: about 8 s
    proj = project(you, {"lines.py": LINES})
    run = Run(you, proj, "lines.py", str(n), "0.1")
    run.wait_out("[raj] line 10", timeout=20)
    raj.link_down()
    try:
        time.sleep(5)
    finally:
        raj.link_up()
    t = time.monotonic()
    code = run.wait(60)
    print(f"link down 5 s: job ended {time.monotonic() - t:.2f}s after the link came back")
    assert code == 0, (run.out()[-2000:], run.err())
    numbered(run.out(), "[raj] ", n)
    assert f"{ARROW} job complete" in run.err()
    assert (proj / "results" / "out.txt").read_text() == f"{n} lines\n"


def test_submitter_restart_mid_job(duo, gate):
    c, raj, you = duo
    mark = marker()
    proj = project(you, {"gated.py": GATED})
    job, _ = detach(you, proj, "gated.py", str(gate), mark)
    wait_until(lambda: "tick 5" in you.homie("logs", job).stdout, 20, msg="the job to print")
    r = you.homie("down")
    assert r.returncode == 0, r.stderr
    # the job goes on over there while its submitter is away
    assert processes(raj, mark), "homie down on the submitter killed the job it sent away"
    ticks = len(json.loads(raj.homie("ps", "--json").stdout)["here"])
    assert ticks == 1
    time.sleep(1.5)
    assert processes(raj, mark)
    start_daemon(you)
    time.sleep(1.0)
    assert sent(you, job)["status"] == "running", sent(you, job)
    gate.touch()
    s = wait_state(you, job, ("done", "failed", "lost"), 30)
    assert (s["status"], s["exit_code"]) == ("done", 0), s
    r = you.homie("results", job, "-o", str(proj / "res"), cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (proj / "res" / "out.txt").read_text().startswith(f"{mark} after ")
    # the mirrored log is whole: every tick once, in order, then the end
    out = you.homie("logs", job).stdout.splitlines()
    last = int(out[-1].split()[1])
    assert out == [f"tick {i}" for i in range(last)] + [f"end {last}"], out[:3] + out[-3:]
    wait_until(lambda: not processes(raj, mark), 5, msg="the job to be gone from raj")


# ----------------------------------------------------------------------------- the queue

def test_second_job_queues_with_reason_then_runs(duo, gate):
    c, raj, you = duo
    proj = project(you, {"gated.py": GATED, "lines.py": LINES})
    r = you.homie("run", "--explain", "lines.py", cwd=proj)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^raj\s+10\.203\.0\.\d+\s+eligible$", r.stdout, re.M), r.stdout
    assert re.search(r"^you \(this machine\)\s+\S+\s+not eligible: accepts no jobs \(max_jobs: 0\)$",
                     r.stdout, re.M), r.stdout
    assert f"{ARROW} would run on raj" in r.stdout
    first, _ = detach(you, proj, "gated.py", str(gate), marker())
    wait_state(you, first, ("running",), 20)
    second, _ = detach(you, proj, "lines.py", "3", "0.01")

    def queued_row():
        ps = you.homie("ps").stdout
        row = next(ln for ln in ps.splitlines() if ln.startswith(second))
        return row if "raj: busy" in row else None
    wait_until(queued_row, 10, msg="the second job queued with its reason")
    row = queued_row()
    why = re.search(r"queued \((.*)\)\s+\d+s$", row).group(1)
    assert sorted(why.split("; ")) == ["raj: busy (1/1 jobs)", "you: accepts no jobs (max_jobs: 0)"], row
    assert sent(you, second)["status"] == "queued"
    assert "raj: busy" in sent(you, second)["why"]
    r = you.homie("run", "--explain", "lines.py", cwd=proj)
    assert re.search(r"^raj\s+\S+\s+not eligible: busy \(1/1 jobs\)$", r.stdout, re.M), r.stdout
    assert f"{ARROW} the job would wait" in r.stdout
    assert r.returncode == 75, r.returncode  # EX_TEMPFAIL: it would queue
    time.sleep(1.0)
    assert sent(you, second)["status"] == "queued"
    gate.touch()
    s = wait_state(you, second, ("done", "failed", "lost"), 30)
    assert (s["status"], s["exit_code"], s["peer"]) == ("done", 0, "raj"), s
    assert sent(you, first)["status"] == "done"
    assert you.homie("logs", second).stdout == "line 0\nline 1\nline 2\n"


def test_queued_job_survives_submitter_restart(duo, gate):
    c, raj, you = duo
    mark = marker()
    proj = project(you, {"gated.py": GATED, "lines.py": LINES})
    first, _ = detach(you, proj, "gated.py", str(gate), mark)
    wait_state(you, first, ("running",), 20)
    second, _ = detach(you, proj, "lines.py", "3", "0.01")
    wait_until(lambda: "raj: busy" in (sent(you, second)["why"] or ""), 10, msg="the second job to queue")
    assert you.homie("down").returncode == 0
    start_daemon(you)
    time.sleep(2.0)  # the restarted daemon knows both jobs again; the queued one still waits
    assert sent(you, second)["status"] == "queued", sent(you, second)
    assert sent(you, first)["status"] == "running", sent(you, first)
    assert processes(raj, mark)
    gate.touch()
    for job in (first, second):
        s = wait_state(you, job, ("done", "failed", "lost"), 30)
        assert (s["status"], s["exit_code"]) == ("done", 0), s
    assert you.homie("logs", second).stdout == "line 0\nline 1\nline 2\n"
    # ran once: one job on raj's side, none queued again
    assert [j["job_id"] for j in json.loads(you.homie("ps", "--all", "--json").stdout)["sent"]].count(second) == 1


# ----------------------------------------------------------------------------- karma

def test_karma_agrees_on_both_sides(duo):
    c, raj, you = duo
    proj = project(you, {"burn.py": BURN})
    jobs = []
    for _ in range(3):
        r = you.homie("run", "burn.py", cwd=proj, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "[raj] burned" in r.stdout
        jobs.append(re.search(r"job started: (\w+)", r.stderr).group(1))
    mine = json.loads(you.homie("karma", "--json").stdout)
    theirs = json.loads(raj.homie("karma", "--json").stdout)
    took = {e["job_id"]: e for e in mine["entries"] if e["direction"] == "taken" and e["peer"] == "raj"}
    gave = {e["job_id"]: e for e in theirs["entries"] if e["direction"] == "given" and e["peer"] == "you"}
    for job in jobs:
        assert job in took and job in gave, (job, sorted(took), sorted(gave))
        assert took[job]["cpu_s"] >= 0.4, took[job]
        assert abs(took[job]["cpu_s"] - gave[job]["cpu_s"]) < 0.05, (took[job], gave[job])
    assert set(took) == set(gave)
    row_you = next(r for r in mine["ledger"] if r["peer"] == "raj")
    row_raj = next(r for r in theirs["ledger"] if r["peer"] == "you")
    assert abs(row_you["taken_cpu_s"] - row_raj["given_cpu_s"]) < 0.1, (row_you, row_raj)
    assert row_you["jobs_taken"] == row_raj["jobs_given"] == len(took)
    assert row_you["given_cpu_s"] == 0 and row_raj["taken_cpu_s"] == 0
    assert abs(sum(e["cpu_s"] for e in took.values()) - row_you["taken_cpu_s"]) < 0.01
    print(f"karma: you took {row_you['taken_cpu_s']:.2f} cpu-s, raj gave {row_raj['given_cpu_s']:.2f} cpu-s"
          f" over {len(took)} jobs")
    r = you.homie("karma")
    assert r.returncode == 0 and re.search(r"^raj\s", r.stdout, re.M), r.stdout


# ----------------------------------------------------------------------------- map

MAPPED = """
    import os, sys, time
    print("start", flush=True)
    time.sleep(float(os.environ.get("SLEEP", "0")) or float(sys.argv[1]))
    with open("out.txt", "w") as f:
        f.write(open(sys.argv[2]).read().upper())
"""


@pytest.fixture(scope="module")
def farm():
    with Cluster() as c:
        hosts = make_group(c, ["you", "raj", "mike", "sam"],
                           per_host={"you": {"max_jobs": 0}, "raj": {"max_jobs": 2},
                                     "mike": {"max_jobs": 2}, "sam": {"max_jobs": 2}})
        yield (c, *hosts)


def inputs(proj: Path, n: int) -> None:
    d = proj / "data"
    d.mkdir(mode=0o755)
    for i in range(n):
        (d / f"in{i:02d}.txt").write_text(f"input {i}\n")


def check_results(proj: Path, n: int) -> None:
    res = proj / "results"
    assert sorted(os.listdir(res)) == [f"in{i:02d}.txt" for i in range(n)]
    for i in range(n):
        assert (res / f"in{i:02d}.txt" / "out.txt").read_text() == f"INPUT {i}\n"


def test_map_spreads_over_all_workers(farm):
    c, you, raj, mike, sam = farm
    proj = project(you, {"job.py": MAPPED})
    inputs(proj, 12)
    t = time.monotonic()
    r = you.homie("map", "--over", "data/*.txt", "job.py", "0.5", "{}", cwd=proj, timeout=60)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = next(ln for ln in r.stderr.splitlines() if ln.startswith(f"{ARROW} 12 inputs"))
    assert "12 ok, 0 failed" in summary, summary
    counts = {peer: n for n, peer in re.findall(r"(\d+) on (\w+)", summary.split("; ran ", 1)[1])}
    assert set(counts) == {"raj", "mike", "sam"}, summary
    assert sum(map(int, counts.values())) == 12
    check_results(proj, 12)
    print(f"map of 12 inputs over 3 workers in {took:.2f}s: {summary}")
    # A finished job keeps no descriptor in the submitting daemon, which keeps every job it
    # sent: twelve more jobs leave its open files where the first twelve did (its
    # connections to the workers are pooled by now).
    fds = lambda: len(os.listdir(f"/proc/{daemon_pid(you)}/fd"))  # noqa: E731
    after_first = fds()
    shutil.rmtree(proj / "results")
    r = you.homie("map", "--over", "data/*.txt", "job.py", "0", "{}", cwd=proj, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert fds() <= after_first + 2, f"{fds()} open files after 24 jobs, {after_first} after 12"


def test_map_without_inputs(farm):
    c, you, *_ = farm
    proj = project(you, {"job.py": MAPPED})
    r = you.homie("map", "--over", "nothing/*.csv", "job.py", "{}", cwd=proj)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no inputs match 'nothing/*.csv'" in r.stderr
    assert "Traceback" not in r.stderr and not (proj / "results").exists()


def test_map_survives_a_worker_killed(farm):
    c, you, raj, mike, sam = farm
    proj = project(you, {"job.py": MAPPED})
    inputs(proj, 12)
    from netns import homie_bin
    log = proj / "map.out"
    with open(log, "w") as out:
        proc = you.spawn(homie_bin(), "map", "--over", "data/*.txt", "job.py", "1.5", "{}", cwd=proj,
                         stdout=out, stderr=open(proj / "map.err", "w"))
    wait_until(lambda: "[sam " in log.read_text(), 20, msg="a job to start on sam")
    t = time.monotonic()
    os.kill(daemon_pid(sam), signal.SIGKILL)
    code = proc.wait(timeout=90)
    took = time.monotonic() - t
    out, err = log.read_text(), (proj / "map.err").read_text()
    assert code == 0, out[-2000:] + err[-2000:]
    summary = next(ln for ln in err.splitlines() if ln.startswith(f"{ARROW} 12 inputs"))
    assert "12 ok, 0 failed" in summary, summary
    check_results(proj, 12)
    assert "running it again from the beginning" in err, err[-2000:]
    print(f"map with sam killed: finished {took:.2f}s after the kill: {summary}")
