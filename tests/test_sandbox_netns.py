"""The sandbox as owners and friends meet it, through the real CLI on namespace
hosts: the default root set-up runs jobs without opening the home, everyone
sees which machines are unsandboxed, `sandbox: required` refuses to start
without one, `job_network: false` leaves a job only loopback, and a job's
processes die with a kill -9'd daemon. The attacks are in test_hostile_netns.py."""

from __future__ import annotations

import json
import os
import stat

import pytest

from jobhelp import daemon_pid, make_group, marker, processes, project, write_config
from netns import wait_until

pytestmark = pytest.mark.netns


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_root_with_the_default_home_runs_jobs_and_opens_nothing(cluster):
    """`homie init`, `homie up`, `homie run -n <self> hello.py` as root with HOME a
    private 0700 directory (as /root is) and no HOMIE_HOME: the job runs, as a uid
    of its own, and neither HOME nor the homie home is opened to others."""
    h = cluster.add_host("solo")
    root_home = h.home / "root"
    root_home.mkdir(mode=0o700)
    env = {"HOMIE_HOME": "", "HOME": str(root_home)}
    assert h.homie("init", "--name", "solo", env=env).returncode == 0
    homie_home = root_home / ".homie"
    with open(homie_home / "config.yaml", "a") as f:
        f.write("discovery: [udp]\nheartbeat_interval: 0.5\n")
    before = {p: _mode(p) for p in (root_home, homie_home)}
    r = h.homie("up", env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unsandboxed" not in r.stderr, r.stderr
    try:
        proj = project(h, {"hello.py": "import os; print('hello from uid', os.getuid())"})
        r = h.homie("run", "-n", "solo", "hello.py", cwd=proj, env=env, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        uid = int(r.stdout.split("hello from uid")[1].split()[0])
        assert 61184 <= uid <= 65519, r.stdout
        after = {p: _mode(p) for p in before}
        assert after == before == {root_home: 0o700, homie_home: 0o700}, after
        # Nothing in the home is open to others. Cache blobs are the one thing
        # others may read (a job's own uid reads its hard-linked inputs), but
        # only through the link in its job directory: no way leads to them.
        blobs = homie_home / "cache" / "blobs"
        for p in homie_home.rglob("*"):
            if p.is_symlink() or (p.is_file() and blobs in p.parents and _mode(p) == 0o444):
                continue
            assert not _mode(p) & 0o007, f"{p} is {oct(_mode(p))}"
        st = json.loads(h.homie("status", "--json", env=env).stdout)
        assert st["sandbox"] == "bwrap"
    finally:
        h.homie("down", env=env)


def test_peers_see_an_unsandboxed_machine_and_doctor_says_why(cluster):
    you, bare = make_group(cluster, ["you", "bare"], per_host={"bare": {"sandbox": "off"}})
    seen_by_you = {p["name"]: p for p in json.loads(you.homie("peers", "--json").stdout)}
    seen_by_bare = {p["name"]: p for p in json.loads(bare.homie("peers", "--json").stdout)}
    assert seen_by_you["bare"]["sandbox"] == "none" and seen_by_bare["you"]["sandbox"] == "bwrap"
    table = you.homie("peers").stdout
    line = next(ln for ln in table.splitlines() if ln.startswith("bare"))
    assert "unsandboxed" in line, table
    table = bare.homie("peers").stdout
    assert "unsandboxed" not in next(ln for ln in table.splitlines() if ln.startswith("you")), table
    doc = bare.homie("doctor").stdout
    assert "jobs run unsandboxed: sandbox: off in the config" in doc, doc
    doc = you.homie("doctor").stdout
    assert "jobs run in a bubblewrap sandbox" in doc and "cgroup" in doc, doc
    st = bare.homie("status").stdout
    assert "sandbox:   OFF: sandbox: off in the config" in st, st
    # the owner hears it at `up` too
    bare.homie("down")
    r = bare.homie("up", "--name", "bare")
    assert r.returncode == 0 and "warning: jobs from friends run here unsandboxed" in r.stderr, r.stderr


def test_sandbox_required_refuses_to_start_without_one(cluster):
    h = cluster.add_host("strict")
    assert h.homie("init", "--name", "strict").returncode == 0
    # an interpreter that cannot run in the sandbox: the start-up probe fails
    write_config(h, sandbox="required", job_python="/nonexistent/python3")
    r = h.homie("up", timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert err == ["error: sandbox: required, but the job Python /nonexistent/python3 does not exist"
                   " (set job_python)"], err
    assert "Traceback" not in r.stderr
    assert h.homie("status").returncode == 69


def test_job_network_false_leaves_only_loopback(cluster):
    you, cut, open_ = make_group(cluster, ["you", "cut", "open"], per_host={
        "you": {"max_jobs": 0}, "cut": {"job_network": "false"}})
    probe = f"""
        import socket
        try:
            socket.create_connection(({you.ip!r}, 5556), timeout=3).close()
            print("reached", flush=True)
        except OSError as e:
            print("blocked", type(e).__name__, flush=True)
        import os
        print("ifaces", sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else "?")
    """
    proj = project(you, {"net.py": probe})
    r = you.homie("run", "-n", "cut", "net.py", cwd=proj, timeout=60)
    assert r.returncode == 0 and "[cut] blocked" in r.stdout, r.stdout + r.stderr
    r = you.homie("run", "-n", "open", "net.py", cwd=proj, timeout=60)
    assert r.returncode == 0 and "[open] reached" in r.stdout, r.stdout + r.stderr


def test_kill_9_of_the_daemon_ends_the_job_and_restart_cleans_up(cluster):
    you, w = make_group(cluster, ["you", "w"], per_host={"you": {"max_jobs": 0}})
    mark = marker()
    proj = project(you, {"long.py": f"""
        import os, subprocess, sys, time
        # a grandchild in a session of its own, with an empty environment
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", {mark!r}],
                         start_new_session=True, env={{}})
        print("started", flush=True)
        time.sleep(120)
    """})
    run = you.homie_spawn("run", "-n", "w", "long.py", mark, cwd=proj)
    wait_until(lambda: len(processes(w, mark)) >= 2, 20, msg="the job and its grandchild to run")
    os.kill(daemon_pid(w), 9)
    wait_until(lambda: not processes(w, mark), 5, msg="every process of the job to die with its daemon")
    r = w.homie("up", "--name", "w")
    assert r.returncode == 0, r.stderr
    run.wait(30)
