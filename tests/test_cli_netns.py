"""The CLI across machines (issue 13): what the lending machine sees of a friend's
jobs, and how peers are shown. Real daemons on namespace hosts (tests/netns.py)."""

from __future__ import annotations

import json
import re

import pytest

from jobhelp import Run, gate_path, make_group, project
from netns import wait_until

pytestmark = pytest.mark.netns


def test_the_lending_machine_sees_what_ran_on_it(cluster):
    raj, you = make_group(cluster, ["raj", "you"], per_host={"you": {"max_jobs": 0}})
    proj = project(you, {"hello.py": "import sys\nprint('hello', sys.argv[1])\n"})
    done = []
    for i in range(3):
        r = you.homie("run", "hello.py", str(i), cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        done.append(re.search(r"job started: (\w+)", r.stderr).group(1))
    gate = gate_path()
    try:
        proj2 = project(you, {"wait.py": f"""
            import os, time
            print("waiting", flush=True)
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.05)
        """})
        run = Run(you, proj2, "wait.py")
        live = run.job_id()
        run.wait_out("[raj] waiting")
        # raj: the running job, with its output so far
        r = raj.homie("ps")
        assert "run here for friends:" in r.stdout and live in r.stdout and "running" in r.stdout, r.stdout
        r = raj.homie("logs", live)
        assert r.returncode == 0 and r.stdout == "waiting\n", r.stdout + r.stderr
        # raj: the finished ones, from whom, which script
        here = json.loads(raj.homie("ps", "--all", "--json").stdout)["here"]
        over = {j["job_id"]: j for j in here if j["job_id"] in done}
        assert set(over) == set(done), here
        assert all(j["from"] == "you" and j["script"] == "hello.py" and j["status"] == "finished"
                   for j in over.values()), over
        # with their arguments and exit, from the worker's own history
        assert [over[j]["args"] for j in done] == [["0"], ["1"], ["2"]], over
        assert all(j["code"] == 0 for j in over.values()), over
        r = raj.homie("ps", "--all")
        assert all(j in r.stdout for j in done), r.stdout
        # their output went home with them: raj says where it is
        r = raj.homie("logs", done[0])
        assert r.returncode == 1
        assert "ran here for you" in r.stderr and "Traceback" not in r.stderr, r.stderr
        gate.touch()
        assert run.wait(30) == 0, run.err()
    finally:
        gate.unlink(missing_ok=True)


BURN = """
    import multiprocessing, os, time

    def burn(gate):
        while not os.path.exists(gate):
            pass

    if __name__ == "__main__":
        gate = {gate!r}
        procs = [multiprocessing.Process(target=burn, args=(gate,)) for _ in range(4)]
        for p in procs:
            p.start()
        print("burning", flush=True)
        for p in procs:
            p.join()
"""


def test_a_peer_running_jobs_with_no_cpu_left_is_busy(cluster):
    raj, you = make_group(cluster, ["raj", "you"], per_host={"you": {"max_jobs": 0}, "raj": {"max_jobs": 4}})
    gate = gate_path()
    try:
        proj = project(you, {"burn.py": BURN.format(gate=str(gate))})
        run = Run(you, proj, "burn.py")
        run.wait_out("[raj] burning", 30)

        seen = {}

        def raj_row():
            ps = json.loads(you.homie("peers", "--json").stdout)
            p = next(p for p in ps if p["name"] == "raj")
            seen["p"] = p
            return p["running"] and p["cpu_percent_idle"] is not None and p["cpu_percent_idle"] < 10
        try:
            wait_until(raj_row, 40)
        except AssertionError:
            raise AssertionError(f"raj's heartbeat never showed a job and no idle CPU: {seen}") from None
        assert seen["p"]["status"] == "idle", "the heartbeat still says it accepts jobs: the display must not"
        table = you.homie("peers").stdout
        row = next(ln for ln in table.splitlines() if ln.startswith("raj "))
        assert row.rstrip().endswith("busy"), table
        top = you.homie("top", "--once", env={"COLUMNS": "160"}).stdout
        assert re.search(r"raj .*busy", top), top
        gate.touch()
        assert run.wait(30) == 0, run.err()
    finally:
        gate.unlink(missing_ok=True)
