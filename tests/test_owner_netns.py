"""The lending machine's owner in control, and plugins end to end (issue 5).

Resource limits, busy and paused peers, --gpu placement, the venv executor,
an installed third-party plugin, a raising plugin and `homie doctor`, each on
its own namespaced LAN. Every daemon runs inside a harness namespace; the
submitting host is given `max_jobs: 0` where a test needs jobs to go to friends.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from jobhelp import (
    Run,
    daemon_pid,
    gate_path,
    marker,
    peer_names,
    processes,
    project,
    start_daemon,
    work_dir,
    write_config,
)
from netns import REPO, Cluster, Host, wait_until

pytestmark = pytest.mark.netns

ARROW = "→"
TEST_PLUGINS = str(REPO / "tests" / "plugins")
PIP = [str(REPO / ".venv" / "bin" / "python"), "-m", "pip"]


def group(cluster: Cluster, names: list[str], per_host: dict | None = None,
          env: dict | None = None) -> list[Host]:
    """Hosts sharing one key, each with its config (and extra env, which the daemon inherits),
    daemons started; returns once each sees all the others."""
    per_host, env = per_host or {}, env or {}
    hosts = [cluster.add_host(n) for n in names]
    r = hosts[0].homie("init", "--name", hosts[0].name)
    assert r.returncode == 0, r.stderr
    key = re.search(r"group key: (\S+)", r.stdout).group(1)
    for h in hosts[1:]:
        assert h.homie("join", key).returncode == 0
    for h in hosts:
        h.env.update(env.get(h.name, {}))
        write_config(h, **per_host.get(h.name, {}))
        start_daemon(h)
    for h in hosts:
        others = {o.name for o in hosts if o is not h}
        wait_until(lambda h=h, o=others: o <= peer_names(h), 15, msg=f"{h.name} to see {sorted(others)}")
    return hosts


def peer_status(h: Host, name: str) -> str | None:
    r = h.homie("peers", "--json")
    for p in json.loads(r.stdout) if r.returncode == 0 else []:
        if p["name"] == name:
            return p["status"]
    return None


def sent_to(out: str) -> str:
    m = re.search(rf"{ARROW} sending to (\S+) \(", out)
    assert m, out
    return m.group(1)


def proc_state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split(":", 1)[1].strip()
    return "?"


def nothing_running(h: Host, mark: str) -> None:
    wait_until(lambda: not processes(h, mark), 10, msg=f"no process of the job left on {h.name}"
                                                        f" ({processes(h, mark)})")
    wait_until(lambda: not json.loads(h.homie("ps", "--json").stdout)["here"], 10,
               msg=f"{h.name} to run no jobs")


# -- limits ---------------------------------------------------------------------------------

HOG = """
    import sys, time
    buf = bytearray(300 * 2**20)  # zero-filled: every page is touched
    print("allocated", len(buf) // 2**20, "MB", flush=True)
    time.sleep(30)
    print("survived")
"""

SLEEPER = """
    import sys, time
    print("sleeping", flush=True)
    time.sleep(30)
    print("woke up")
"""


def test_memory_and_time_limits_kill_and_report(cluster):
    you, mem, slow = group(cluster, ["you", "mem", "slow"], per_host={
        "you": {"max_jobs": 0}, "mem": {"max_job_memory_gb": 0.1}, "slow": {"max_job_seconds": 1}})
    mark = marker()
    proj = project(you, {"hog.py": HOG, "sleeper.py": SLEEPER})

    t0 = time.monotonic()
    r = you.homie("run", "-n", "mem", "hog.py", mark, cwd=proj, timeout=40)
    print(f"memory-limited job ended after {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 15, "the hog was not killed promptly"
    assert r.returncode != 0, r.stdout + r.stderr
    assert "survived" not in r.stdout
    assert "memory limit" in r.stderr, r.stderr
    nothing_running(mem, mark)

    t_run = Run(you, proj, "-n", "slow", "sleeper.py", mark)
    assert t_run.wait(20) != 0, t_run.out() + t_run.err()
    took = time.monotonic() - t_run.started
    print(f"time-limited job (max_job_seconds: 1) ended after {took:.2f} s")
    assert took < 10, took
    assert "[slow] sleeping" in t_run.out()
    assert "woke up" not in t_run.out()
    assert "time limit" in t_run.err(), t_run.err()
    assert t_run.proc.returncode != 0
    nothing_running(slow, mark)
    # both workers go on taking jobs
    ok = project(you, {"ok.py": "print('fine')"})
    for h in ("mem", "slow"):
        r = you.homie("run", "-n", h, "ok.py", cwd=ok)
        assert r.returncode == 0 and f"[{h}] fine" in r.stdout, r.stdout + r.stderr


# -- busy, pause, resume, suspend ------------------------------------------------------------

LONG = """
    import os, sys, time
    gate = sys.argv[1]
    print("pid", os.getpid(), flush=True)
    n = 0
    while not os.path.exists(gate):
        n += 1
        time.sleep(0.05)
    print("released", flush=True)
"""

WHERE = "import os; print('ran on', os.environ['HOMIE_PEER'])"


def test_busy_pause_resume_and_suspend(cluster):
    you, a, b = group(cluster, ["you", "a", "b"], per_host={"you": {"max_jobs": 0}, "a": {"max_jobs": 1}})
    gate = gate_path()
    mark = marker()
    proj = project(you, {"long.py": LONG, "where.py": WHERE})
    try:
        long_run = Run(you, proj, "-n", "a", "long.py", str(gate), mark)
        long_run.wait_out("[a] pid ", 20)
        # Its pid as the host sees it: inside its sandbox the job has a pid namespace of its own.
        procs = [ln for ln in processes(a, mark) if "bwrap" not in ln and "prlimit" not in ln]
        assert len(procs) == 1, procs
        pid = int(procs[0].split()[0])

        # max_jobs reached: a is busy in the others' view and not chosen
        wait_until(lambda: peer_status(you, "a") == "busy", 5, msg="you to see a busy")
        wait_until(lambda: peer_status(b, "a") == "busy", 5, msg="b to see a busy")
        for _ in range(2):
            r = you.homie("run", "where.py", cwd=proj)
            assert r.returncode == 0, r.stdout + r.stderr
            assert sent_to(r.stderr) == "b" and "[b] ran on b" in r.stdout

        # pause: paused in the peers' view, not chosen; with a busy the job waits
        r = b.homie("pause")
        assert r.returncode == 0 and "paused" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: peer_status(you, "b") == "paused", 5, msg="you to see b paused")
        assert peer_status(a, "b") == "paused"
        waiting = Run(you, proj, "where.py")
        waiting.wait_out("queued", 10, stream="err")
        assert "paused" in waiting.err() and "busy" in waiting.err(), waiting.err()
        assert ARROW + " sending to" not in waiting.err()
        # resume: b takes the waiting job
        r = b.homie("resume")
        assert r.returncode == 0 and "resumed" in r.stdout, r.stdout + r.stderr
        assert waiting.wait(20) == 0, waiting.out() + waiting.err()
        assert sent_to(waiting.err()) == "b"
        assert peer_status(you, "b") in ("idle", "busy")

        # pause --suspend: the running job is stopped, resume continues it
        assert proc_state(pid).startswith(("S", "R")), proc_state(pid)
        r = a.homie("pause", "--suspend")
        assert r.returncode == 0 and "suspended" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: proc_state(pid).startswith("T"), 5, msg=f"job {pid} stopped ({proc_state(pid)})")
        assert proc_state(pid) == "T (stopped)"
        wait_until(lambda: peer_status(you, "a") == "paused", 5, msg="you to see a paused")
        gate.touch()
        # stopped: it cannot notice the gate
        time.sleep(1.0)
        assert "released" not in long_run.out() and long_run.running()
        assert proc_state(pid) == "T (stopped)"
        r = a.homie("resume")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: "[a] released" in long_run.out(), 10, msg="the resumed job to finish")
        assert long_run.wait(20) == 0, long_run.out() + long_run.err()
        wait_until(lambda: peer_status(you, "a") == "idle", 5, msg="you to see a idle again")
        nothing_running(a, mark)
    finally:
        gate.unlink(missing_ok=True)


# -- GPU placement -----------------------------------------------------------------------------

CUDA = "import os; print('CUDA=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')), 'on', os.environ['HOMIE_PEER'])"


def test_gpu_jobs_go_only_to_the_gpu_host(cluster):
    you, gpu, cpu = group(cluster, ["you", "gpu", "cpu"],
                          per_host={"you": {"max_jobs": 0}, "gpu": {"plugins": "[fake_gpu]"}},
                          env={"gpu": {"PYTHONPATH": TEST_PLUGINS}})
    peers = {p["name"]: p for p in json.loads(you.homie("peers", "--json").stdout)}
    assert peers["gpu"]["gpu"] == "FakeGPU 24GB" and peers["gpu"]["gpu_mem_free_gb"] == 20.0
    assert not peers["cpu"]["gpu"]
    proj = project(you, {"cuda.py": CUDA})
    for _ in range(3):
        r = you.homie("run", "--gpu", "cuda.py", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        assert sent_to(r.stderr) == "gpu"
        assert "[gpu] CUDA='0' on gpu" in r.stdout, r.stdout
    # a job that did not ask for the GPU does not get it, even on the GPU host
    for h in ("gpu", "cpu"):
        r = you.homie("run", "-n", h, "cuda.py", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"[{h}] CUDA='' on {h}" in r.stdout, r.stdout
    # pinned to a host without one: refused at once
    r = you.homie("run", "-n", "cpu", "--gpu", "cuda.py", cwd=proj)
    assert r.returncode == 70, r.stdout + r.stderr
    assert "no GPU" in r.stderr and "sending" not in r.stdout
    # with only GPU-less peers, --gpu fails with 70 and says why
    assert gpu.homie("down").returncode == 0
    wait_until(lambda: "gpu" not in peer_names(you), 5, msg="you to forget gpu")
    r = you.homie("run", "--gpu", "cuda.py", cwd=proj, timeout=20)
    assert r.returncode == 70, r.stdout + r.stderr
    assert "no GPU" in r.stderr and "cpu" in r.stderr, r.stderr
    assert "sending" not in r.stdout
    r = you.homie("run", "cuda.py", cwd=proj)  # a CPU job still runs
    assert r.returncode == 0 and "[cpu] CUDA='' on cpu" in r.stdout, r.stdout + r.stderr


# -- the venv executor ------------------------------------------------------------------------------

TESTPKG = "homie_testpkg"
WHEEL = f"{TESTPKG}-0.1-py3-none-any.whl"


def build_wheel(dest: Path) -> Path:
    src = Path(tempfile.mkdtemp(prefix="homie-testpkg-"))
    try:
        (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{TESTPKG}"
            version = "0.1"

            [tool.setuptools]
            py-modules = ["{TESTPKG}"]
            """))
        (src / f"{TESTPKG}.py").write_text("VALUE = 'testpkg says hi'\n")
        r = subprocess.run([*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        shutil.rmtree(src, ignore_errors=True)
    whl = dest / WHEEL
    assert whl.exists(), list(dest.iterdir())
    whl.chmod(0o644)
    return whl


USE_PKG = f"import sys, {TESTPKG}; print({TESTPKG}.VALUE, 'from', sys.prefix.split('/')[-1])"


def test_venv_executor_installs_local_wheel_offline(cluster):
    you, w = group(cluster, ["you", "w"], per_host={"you": {"max_jobs": 0}})
    # no route anywhere: an install that needed an index would fail
    assert w.run("ip", "route", "get", "1.1.1.1").returncode != 0
    proj = project(you, {"job.py": USE_PKG, "requirements.txt": f"./{WHEEL}\n"})
    build_wheel(proj)
    send = ["-n", "w", "-f", "requirements.txt", "-f", WHEEL, "job.py"]

    r = you.homie("run", *send, cwd=proj, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "building environment" in r.stderr and "reusing" not in r.stderr, r.stderr
    assert re.search(r"\[w\] .*Successfully installed homie[-_]testpkg-0\.1", r.stdout), r.stdout  # pip output streamed
    assert "[w] testpkg says hi from" in r.stdout
    assert "as the 'root' user" not in r.stdout  # pip ran as the job user
    envs = list((work_dir(w) / ".venvs").iterdir())
    assert len([e for e in envs if not e.name.startswith(".")]) == 1, envs
    # built as the job user, then handed back: a later job cannot change it
    env = [e for e in envs if not e.name.startswith(".")][0]
    assert {p.lstat().st_uid for p in [env, *env.rglob("*")]} == {0}
    assert not any(p.lstat().st_mode & 0o022 for p in env.rglob("*") if not p.is_symlink())

    r = you.homie("run", *send, cwd=proj, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "reusing environment" in r.stderr and "building" not in r.stderr, r.stderr
    assert "Successfully installed" not in r.stdout
    assert "[w] testpkg says hi from" in r.stdout

    # an install that fails is a clear failure of that job; the daemon goes on
    pid = daemon_pid(w)
    bad = project(you, {"job.py": USE_PKG, "requirements.txt": f"./{TESTPKG}-9.9-py3-none-any.whl\n"})
    r = you.homie("run", "-n", "w", "-f", "requirements.txt", "job.py", cwd=bad, timeout=120)
    assert r.returncode not in (0, None), r.stdout + r.stderr
    assert "environment setup failed" in r.stderr, r.stderr
    assert "says hi" not in r.stdout
    assert daemon_pid(w) == pid and w.homie("status").returncode == 0
    assert not [e for e in (work_dir(w) / ".venvs").iterdir() if e.name.startswith(".")], "temp env left"
    r = you.homie("run", *send, cwd=proj, timeout=60)
    assert r.returncode == 0 and "reusing environment" in r.stderr, r.stdout + r.stderr


# -- an installed plugin package ----------------------------------------------------------------------

NICE = "import os; print('niceness', os.nice(0))"


@pytest.fixture
def roundrobin_installed():
    src = Path(tempfile.mkdtemp(prefix="homie-rr-"))
    try:
        # a copy: building in place would leave build/ and *.egg-info in the repository
        shutil.copytree(REPO / "plugins" / "homie-roundrobin", src / "homie-roundrobin")
        r = subprocess.run([*PIP, "install", "-q", "--no-deps", "--no-build-isolation", str(src / "homie-roundrobin")],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        yield
    finally:
        subprocess.run([*PIP, "uninstall", "-y", "-q", "homie-roundrobin"], capture_output=True, timeout=120)
        shutil.rmtree(src, ignore_errors=True)
    # other tests' interpreters must not find it any more
    check = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", "import homie_roundrobin"],
                           capture_output=True, cwd="/")
    assert check.returncode != 0


SHOUT = ("import os; print('SHOUT=' + os.environ['SHOUT'],"
         " os.path.isfile(os.path.join(os.environ['SHOUT_DIR'], 'shout.py')))")


def test_installed_roundrobin_plugin(cluster, roundrobin_installed):
    # you and a also load tests/plugins/shout_executor.py: an executor written only against homie.api
    you, a, b = group(cluster, ["you", "a", "b"],
                      per_host={"you": {"max_jobs": 0, "scheduler": "round-robin", "plugins": "[shout_executor]"},
                                "a": {"plugins": "[shout_executor]"}},
                      env={"you": {"PYTHONPATH": TEST_PLUGINS}, "a": {"PYTHONPATH": TEST_PLUGINS}})
    r = you.homie("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rr = {p["name"]: p for p in json.loads(r.stdout)}.get("roundrobin")
    assert rr, r.stdout
    assert rr["version"] == "0.1.0" and not rr.get("disabled")
    assert rr["hooks"] == ["homie_choose_peer", "homie_executors"]
    table = you.homie("plugins").stdout
    line = [ln for ln in table.splitlines() if ln.startswith("roundrobin ")]
    assert line and "0.1.0" in line[0] and "homie_choose_peer" in line[0] and "homie_executors" in line[0], table

    proj = project(you, {"where.py": WHERE, "nice.py": NICE})
    order = []
    for _ in range(4):
        r = you.homie("run", "where.py", cwd=proj)
        assert r.returncode == 0, r.stdout + r.stderr
        order.append(sent_to(r.stderr))
        assert f"[{order[-1]}] ran on {order[-1]}" in r.stdout
    assert set(order) == {"a", "b"} and order[0] == order[2] and order[1] == order[3] \
        and order[0] != order[1], order

    r = you.homie("run", "-n", "a", "--executor", "nice", "nice.py", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[a] niceness 19" in r.stdout, r.stdout
    r = you.homie("run", "-n", "a", "nice.py", cwd=proj)
    assert "[a] niceness 0" in r.stdout, r.stdout

    shout = project(you, {"shout.py": SHOUT})
    r = you.homie("run", "-n", "a", "--executor", "shout", "shout.py", cwd=shout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"shout: shout.py is {len(SHOUT)} bytes, 1 file(s), frozen yes" in r.stderr, r.stderr
    assert "[a] SHOUT=YOU True" in r.stdout, r.stdout
    r = you.homie("run", "-n", "a", "--executor", "shout", "shout.py", "fail", cwd=shout)
    assert r.returncode not in (0, None) and "shout refuses to run this job" in r.stderr, r.stdout + r.stderr
    assert "SHOUT=" not in r.stdout


# -- a plugin that raises --------------------------------------------------------------------------------


def test_raising_plugin_is_disabled_and_daemon_works(cluster):
    x, y = group(cluster, ["x", "y"], per_host={"x": {"plugins": "[raising_plugin]"}},
                 env={"x": {"PYTHONPATH": TEST_PLUGINS}})
    r = x.homie("plugins")
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("raising_plugin")]
    assert line and "DISABLED" in line[0] and "broken on purpose" in line[0], r.stdout
    entry = {p["name"]: p for p in json.loads(x.homie("plugins", "--json").stdout)}["raising_plugin"]
    assert "RuntimeError" in entry["disabled"]
    assert "homie.builtin.probes" in r.stdout  # the others are still there
    # the daemon goes on: it lists peers, is listed, runs and sends jobs
    assert "y" in peer_names(x) and "x" in peer_names(y)
    proj_y = project(y, {"where.py": WHERE})
    r = y.homie("run", "-n", "x", "where.py", cwd=proj_y)
    assert r.returncode == 0 and "[x] ran on x" in r.stdout, r.stdout + r.stderr
    proj_x = project(x, {"where.py": WHERE})
    r = x.homie("run", "where.py", cwd=proj_x)
    assert r.returncode == 0 and "[y] ran on y" in r.stdout, r.stdout + r.stderr
    log = (x.home / "logs" / "homie.log").read_text()
    assert "plugin.disabled" in log and "raising_plugin" in log


# -- homie doctor ----------------------------------------------------------------------------------------


def doctor_lines(h: Host) -> tuple[int, list[str]]:
    r = h.homie("doctor", timeout=40)
    return r.returncode, r.stdout.splitlines()


def test_doctor_healthy_and_broadcast_blocked(cluster):
    a, b = group(cluster, ["a", "b"])
    code, lines = doctor_lines(a)
    text = "\n".join(lines)
    assert code == 0, text
    ok = {}
    for ln in lines:
        m = re.match(r"\[ok  \] ([^:]+): (.*)", ln)
        if m:
            ok.setdefault(m.group(1), []).append(m.group(2))
    for check in ("key", "config", "interface", "hearing peers", "heard by peers", "job port", "clock"):
        assert check in ok, f"no ok finding for {check!r}:\n{text}"
    assert "FAIL" not in text
    assert any("eth0" in f and "broadcast 10.203.0.255" in f for f in ok["interface"]), text
    assert any(" b" in f or f.endswith("b") for f in ok["hearing peers"]), text
    assert len(ok["job port"]) == 2 and any(f.startswith("b ") for f in ok["job port"]), text

    b.block_broadcast()
    state = {}

    def doctor_complains():
        state["code"], state["lines"] = doctor_lines(a)
        return state["code"] == 1 and any(ln.startswith("[FAIL]") for ln in state["lines"])

    wait_until(doctor_complains, 20, interval=0.5, msg=f"doctor on a to report a problem ({state})")
    fails = [ln for ln in state["lines"] if ln.startswith("[FAIL]")]
    assert any("hearing peers" in ln or "heard by peers" in ln for ln in fails), state["lines"]
    assert any(ln.strip().startswith("fix:") for ln in state["lines"])
    b.unblock_broadcast()
