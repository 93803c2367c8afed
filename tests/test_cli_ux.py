"""The CLI as a newcomer meets it (issue 13): each mistake gets one sentence and
its exit code, homie's own lines stay off stdout, and the habits of pueue,
GNU parallel, ssh and docker users work.

Everything runs the real `homie` against one real daemon confined to loopback
(`bind: 127.0.0.1`, static discovery with no peers): it runs the jobs itself.
Several machines are in tests/test_cli_netns.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from netns import homie_bin, wait_until
from test_core_cli import free_port, one_line_error

HOMIE = homie_bin()
ARROW = "→"


class Loop:
    """One home with a loopback-only daemon named `loop`, and a project folder."""

    def __init__(self, root: Path):
        self.home = root / "home"
        self.proj = root / "proj"
        self.proj.mkdir()

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOMIE_")}
        env["HOMIE_HOME"] = str(self.home)
        env.update(extra)
        return env

    def homie(self, *args, timeout: float = 60, input: bytes | None = None, cwd=None,
              text: bool = True) -> subprocess.CompletedProcess:
        kw = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([HOMIE, *map(os.fsdecode, args)], capture_output=True, text=text and input is None,
                              env=self.env(), timeout=timeout, cwd=cwd or self.proj, **kw)

    def spawn(self, *args, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen([HOMIE, *map(str, args)], env=self.env(), cwd=self.proj, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def write(self, name: str, text: str) -> Path:
        p = self.proj / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
        return p

    def config(self, extra: str = "") -> None:
        self.home.mkdir(exist_ok=True)
        port, dport = free_port(), free_port()
        while dport == port:
            dport = free_port()
        (self.home / "config.yaml").write_text(
            f"bind: 127.0.0.1\ndiscovery: [static]\nstatic_peers: []\nport: {port}\ndiscovery_port: {dport}\n"
            f"heartbeat_interval: 0.2\npeer_timeout: 2\n{extra}")

    def ps(self, *args) -> dict:
        r = self.homie("ps", "--json", *args)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def job(self, job_id: str) -> dict:
        return next(j for j in self.ps("--all")["sent"] if j["job_id"] == job_id)

    def wait_status(self, job_id: str, states: tuple, timeout: float = 30) -> dict:
        wait_until(lambda: self.job(job_id)["status"] in states, timeout, msg=f"job {job_id} in {states}")
        return self.job(job_id)

    def stop(self) -> None:
        self.homie("down")
        pidfile = self.home / "homie.pid"
        if pidfile.exists():
            pid = pidfile.read_text().split()[0]
            if pid.isdigit():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _root() -> Path:
    """Under /tmp and traversable: a root daemon runs jobs as `nobody`, who must reach the home."""
    root = Path(tempfile.mkdtemp(prefix="homie-ux-"))
    root.chmod(0o755)
    return root


@pytest.fixture
def bare():
    """A loopback home with a config and no daemon yet."""
    root = _root()
    lo = Loop(root)
    lo.config()
    yield lo
    lo.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def loop(bare):
    bare.config("max_jobs: 4\n")
    r = bare.homie("init", "--name", "loop")
    assert r.returncode == 0, r.stderr
    r = bare.homie("up")
    assert r.returncode == 0, r.stdout + r.stderr
    return bare


SLEEPER = """
    import sys, time
    print("sleeping", flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
    print("woke")
"""


def detach(lo: Loop, *args) -> str:
    r = lo.homie("run", "--detach", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


# ----------------------------------------------------------------------------- stdout is the job's


def test_stdout_carries_the_job_output_alone(loop):
    loop.write("hello.py", "import sys\nprint('hello', *sys.argv[1:])\nprint('oops', file=sys.stderr)\n"
                           "open('out.txt', 'w').write('x')\n")
    r = loop.homie("run", "hello.py", "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[loop] hello a b\n", r.stdout
    assert f"{ARROW} sending to loop" in r.stderr and f"{ARROW} saved: results/out.txt" in r.stderr
    assert "[loop] oops" in r.stderr
    # --quiet: the output as the script wrote it, and nothing from homie
    r = loop.homie("run", "--quiet", "hello.py", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello c\n" and r.stderr == "oops\n", (r.stdout, r.stderr)


def test_a_later_run_never_overwrites_earlier_results(loop):
    loop.write("stamp.py", "import sys\nopen('out.txt', 'w').write(sys.argv[1])\n")
    assert loop.homie("run", "stamp.py", "first").returncode == 0
    r = loop.homie("run", "stamp.py", "second")
    assert r.returncode == 0, r.stderr
    job = re.search(r"job started: (\w+)", r.stderr).group(1)
    assert (loop.proj / "results" / "out.txt").read_text() == "first"
    assert (loop.proj / "results" / job / "out.txt").read_text() == "second"
    assert f"saved: results/{job}/out.txt" in r.stderr


# ----------------------------------------------------------------------------- mistakes: one sentence


def test_a_mistyped_option_before_the_script_is_an_error(loop):
    loop.write("hello.py", "print('hi')\n")
    r = loop.homie("run", "--detatch", "hello.py")
    assert r.returncode == 2
    err = one_line_error(r)
    assert "--detatch" in err and "--detach" in err, err
    # options after SCRIPT are the script's
    r = loop.homie("run", "-q", "hello.py", "--detatch")
    assert r.returncode == 0 and r.stdout == "hi\n", r.stdout + r.stderr
    r = loop.homie("run", "--json", "hello.py")
    assert r.returncode == 2 and "--detach or --explain" in one_line_error(r)


def test_non_utf8_argument_and_file_name(loop):
    loop.write("hello.py", "print('hi')\n")
    r = loop.homie("run", "hello.py", b"caf\xe9", text=False)
    assert r.returncode == 2, r
    err = r.stderr.decode()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "not valid UTF-8" in err, err
    d = loop.proj / "d"
    d.mkdir()
    (d / "ok.py").write_text("print('hi')\n")
    (loop.proj / os.fsdecode(b"d/f\xe9")).write_text("x")
    r = loop.homie("run", "-d", "d", "d/ok.py")
    assert r.returncode == 2, (r.returncode, r.stderr)
    err = one_line_error(r)
    assert "not valid Unicode" in err and "f\\xe9" in err, err
    assert loop.homie("status").returncode == 0, "the daemon must live on"


def test_many_arguments_then_ps_still_works(loop):
    loop.write("count.py", "import sys\nprint(len(sys.argv) - 1)\n")
    args = [str(i) for i in range(1, 120001)]
    r = loop.homie("run", "-q", "count.py", *args, timeout=120)
    assert r.returncode == 0 and r.stdout == "120000\n", r.stderr[-500:]
    for extra in ((), ("--json",)):
        r = loop.homie("ps", "--all", *extra)
        assert r.returncode == 0, r.stderr
    job = loop.ps("--all")["sent"][0]
    assert job["args_cut"] and len(" ".join(job["args"])) < 3000
    # over the limit: one sentence, nothing queued
    r = loop.homie("run", "count.py", *(["x" * 100_000] * 10))  # 1 MB in all (one argv string: < 128 KiB)
    assert r.returncode == 2
    assert "arguments are too long" in one_line_error(r)
    assert len(loop.ps("--all")["sent"]) == 1


def test_inputs_checked_before_anything_is_sent(loop):
    loop.write("hello.py", "print('hi')\n")
    loop.write("noshebang.sh", "echo hi\n")
    (loop.proj / "somedir").mkdir()
    for args, needle in ((("-f", "somedir", "hello.py"), "-d somedir"),
                         (("noshebang.sh",), "no #! line"),
                         (("--scheduler", "alsonot", "hello.py"), "unknown scheduler 'alsonot'"),
                         (("--executor", "nope", "hello.py"), "unknown executor 'nope'"),
                         (("--timeout", "soon", "hello.py"), "not a duration"),
                         (("-e", "1BAD=x", "hello.py"), "not a valid variable name")):
        r = loop.homie("run", *args)
        assert r.returncode == 2, (args, r.returncode, r.stdout, r.stderr)
        err = one_line_error(r)
        assert needle in err, (args, err)
        assert "queued" not in err and "sending" not in r.stderr
    assert loop.ps("--all")["sent"] == []


def test_explain_says_what_the_real_run_does(loop):
    loop.write("hello.py", "print('hi')\n")
    r = loop.homie("run", "--explain", "hello.py")
    assert r.returncode == 0 and f"{ARROW} would run on loop" in r.stdout, r.stdout + r.stderr
    r = loop.homie("run", "--explain", "--gpu", "hello.py")
    assert r.returncode == 70, r.stdout + r.stderr
    assert "cannot run" in r.stdout and "no GPU" in r.stdout, r.stdout
    real = loop.homie("run", "--gpu", "hello.py")
    assert real.returncode == 70, real.stderr  # the same verdict as the real run
    r = loop.homie("run", "--explain", "-n", "unknownpeer", "hello.py")
    assert r.returncode == 70 and "unknown peer 'unknownpeer'" in one_line_error(r)
    r = loop.homie("run", "--explain", "--json", "--gpu", "hello.py")
    assert r.returncode == 70 and json.loads(r.stdout)["verdict"] == "never"


# ----------------------------------------------------------------------------- keys


def test_key_checksum_and_fingerprint(tmp_path):
    (tmp_path / "a").mkdir()
    a = Loop(tmp_path / "a")
    r = a.homie("init", "--name", "a")
    assert r.returncode == 0, r.stderr
    key = re.search(r"group key: (\S+)", r.stdout).group(1)
    fp = re.search(r"group fingerprint: ([0-9a-f]{8})", r.stdout).group(1)
    (tmp_path / "b").mkdir()
    b = Loop(tmp_path / "b")
    typo = key[:7] + ("A" if key[7] != "A" else "B") + key[8:]
    r = b.homie("join", "--force", typo)
    assert r.returncode == 2
    assert "not a valid key" in one_line_error(r)
    assert not (b.home / "key").exists()
    r = b.homie("join", key)
    assert r.returncode == 0 and f"group fingerprint: {fp}" in r.stdout, r.stdout
    r = b.homie("key")
    assert r.stdout.strip() == key and fp in r.stderr
    # init again: says what --force would do instead of inviting it blindly
    r = a.homie("init")
    assert r.returncode == 2
    err = one_line_error(r)
    assert fp in err and "NEW group" in err, err


def test_up_with_a_malformed_key_is_one_line(bare):
    bare.home.mkdir(exist_ok=True)
    (bare.home / "key").write_text("not a key at all\n")
    r = bare.homie("up")
    assert r.returncode == 2
    assert "malformed group key" in one_line_error(r)


# ----------------------------------------------------------------------------- config the machine must judge


@pytest.mark.parametrize("extra,needle", [
    ("job_user: nosuchuser\n", "no user 'nosuchuser'"),
    ("job_user: root\n", "is root"),
    ("scheduler: nosuch\n", "unknown scheduler 'nosuch'"),
    ("executor: nope\n", "unknown executor 'nope'"),
])
def test_up_and_doctor_judge_config_this_machine_cannot_honour(bare, extra, needle):
    bare.config(extra)
    assert bare.homie("init").returncode == 0
    r = bare.homie("up")
    assert r.returncode == 2, r.stdout + r.stderr
    err = one_line_error(r)
    assert needle in err and str(bare.home / "config.yaml") in err, err
    assert not (bare.home / "homie.sock").exists()
    r = bare.homie("doctor")
    assert r.returncode == 1 and "[FAIL] config: " in r.stdout and needle in r.stdout, r.stdout


def test_up_bad_interface_and_bind_are_usage_errors(bare):
    assert bare.homie("init").returncode == 0
    r = bare.homie("up", "--interface", "nosuch0")
    assert r.returncode == 2 and "no network interface 'nosuch0'" in one_line_error(r)
    r = bare.homie("up", "--bind", "10.254.254.254")
    assert r.returncode == 2
    err = one_line_error(r)
    assert "not an address of this machine" in err and "port" not in err, err


def test_up_status_doctor_peers_top_say_what_is_true(loop):
    r = loop.homie("doctor")
    assert "static_peers is empty" in r.stdout and "nobody" not in r.stdout, r.stdout
    r = loop.homie("peers")
    assert str(loop.home / "config.yaml") in r.stdout, r.stdout  # HOMIE_HOME, not ~/.homie
    r = loop.homie("top", "--once")
    assert r.returncode == 0 and "q quits" not in r.stdout and "loop (me)" in r.stdout, r.stdout + r.stderr


# ----------------------------------------------------------------------------- pueue habits


def test_kill_several_and_all(loop):
    loop.write("sleep.py", SLEEPER)
    a, b, c = (detach(loop, "sleep.py", "60") for _ in range(3))
    for j in (a, b, c):
        loop.wait_status(j, ("running",))
    r = loop.homie("kill", a, b)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("SIGTERM, then SIGKILL") == 2, r.stdout
    for j in (a, b):
        assert loop.wait_status(j, ("done", "killed", "failed"))["status"] != "running"
    r = loop.homie("kill", "--all")
    assert r.returncode == 0, r.stderr
    loop.wait_status(c, ("done", "killed", "failed"))
    r = loop.homie("kill", "nosuchjob")
    assert r.returncode == 1 and "no job" in one_line_error(r)


def test_wait_restart_clean_ps_filters_logs_tail(loop):
    loop.write("lines.py", "import sys\nfor i in range(10):\n    print('line', i)\nsys.exit(int(sys.argv[1]))\n")
    good = detach(loop, "--name", "good-one", "lines.py", "0")
    bad = detach(loop, "lines.py", "3")
    r = loop.homie("wait", good)
    assert r.returncode == 0, r.stderr
    r = loop.homie("wait", good, bad)
    assert r.returncode == 3, r.stderr
    # ps: filters, ids only, labels
    assert loop.homie("ps", "-q", "--status", "done").stdout.split() == [good, bad]
    r = loop.homie("ps", "--all")
    assert "sent from here:" in r.stdout and "good-one" in r.stdout, r.stdout
    assert [j["name"] for j in loop.ps("--all")["sent"]] == ["good-one", None]
    assert loop.homie("ps", "-q", "--peer", "nobody-here").stdout == ""
    # logs --tail
    r = loop.homie("logs", "--tail", "2", good)
    assert r.returncode == 0 and r.stdout == "line 8\nline 9\n", r.stdout
    # restart: the same script and arguments, a new job
    r = loop.homie("restart", bad)
    assert r.returncode == 3, r.stderr
    again = re.search(r"job started: (\w+)", r.stderr).group(1)
    assert again != bad and r.stdout.count("line") == 10
    assert loop.job(again)["args"] == ["3"] and loop.job(again)["name"] is None
    # clean: finished jobs are forgotten with their results
    r = loop.homie("clean")
    assert r.returncode == 0 and "forgot 3" in r.stdout, r.stdout
    assert loop.ps("--all")["sent"] == []


def test_ctrl_c_on_attach_detaches_and_says_how_to_stop(loop):
    loop.write("sleep.py", SLEEPER)
    job = detach(loop, "sleep.py", "60")
    loop.wait_status(job, ("running",))
    p = loop.spawn("attach", job)
    wait_until(lambda: loop.homie("logs", job).stdout.startswith("sleeping"), 10)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 130, (out, err)
    assert "Aborted" not in err and "goes on" in err and f"homie kill {job}" in err, err
    assert "sending to" not in err  # attach does not replay the send as if it happened again
    assert loop.job(job)["status"] == "running"
    loop.homie("kill", job)


# ----------------------------------------------------------------------------- parallel habits


MAPPED = """
    import sys, time
    text = open(sys.argv[1]).read()
    if "fail" in text:
        sys.exit(5)
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    open("out.txt", "w").write(text.upper())
"""


def test_map_halt_joblog_json_exit_code(loop):
    loop.write("job.py", MAPPED)
    for i in range(4):
        loop.write(f"data/in{i}.txt", "fail\n" if i == 1 else f"input {i}\n")
    r = loop.homie("map", "--over", "data/*.txt", "--joblog", "jobs.tsv", "--json", "job.py", "{}")
    assert r.returncode == 4, r.stdout + r.stderr  # some input failed: not a count colliding with 69-73
    doc = json.loads(r.stdout)
    assert (doc["inputs"], doc["ok"], doc["failed"]) == (4, 3, 1), r.stderr
    assert [j["state"] for j in doc["jobs"]] == ["ok", "failed", "ok", "ok"]
    log = (loop.proj / "jobs.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval",
                                  "Signal", "Command"]
    rows = sorted(ln.split("\t") for ln in log[1:])
    assert [(row[0], row[1], row[6]) for row in rows] == [("1", "loop", "0"), ("2", "loop", "5"),
                                                         ("3", "loop", "0"), ("4", "loop", "0")]
    assert "4 inputs: 3 ok, 1 failed; ran 4 on loop" in r.stderr, r.stderr
    # --halt now,fail=1: after the first failure nothing more starts
    r = loop.homie("map", "--over", "data/*.txt", "-j", "1", "--halt", "now,fail=1", "job.py", "{}")
    assert r.returncode == 4
    assert "halting after 1 failure" in r.stderr, r.stderr
    assert "cancelled: data/in2.txt" in r.stderr and "cancelled: data/in3.txt" in r.stderr, r.stderr


def test_ctrl_c_on_map_cancels_every_job(loop):
    loop.write("job.py", MAPPED)
    for i in range(6):
        loop.write(f"data/in{i}.txt", f"input {i}\n")
    p = loop.spawn("map", "--over", "data/*.txt", "-j", "3", "job.py", "{}", "60")
    wait_until(lambda: sum(j["status"] == "running" for j in loop.ps()["sent"]) == 3, 30,
               msg="three map jobs running")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, (out, err)
    assert "Aborted" not in err and "cancelling" in err, err
    wait_until(lambda: loop.ps()["sent"] == [], 15, msg="no job of the map left running")
    assert len(loop.ps("--all")["sent"]) == 3, "the queued inputs never started"


# ----------------------------------------------------------------------------- help


def test_every_command_has_an_example_and_named_metavars(loop):
    r = loop.homie("--help")
    commands = re.findall(r"^  ([a-z]+)\s", r.stdout.split("Commands:", 1)[1], re.M)
    assert {"run", "map", "kill", "wait", "restart", "clean", "ps", "logs"} <= set(commands), commands
    for c in commands:
        h = loop.homie(c, "--help")
        assert h.returncode == 0, (c, h.stderr)
        if c != "service":
            assert "Examples:" in h.stdout, f"homie {c} --help has no example:\n{h.stdout}"
        assert " TEXT" not in h.stdout and " INTEGER" not in h.stdout, f"homie {c}: unnamed metavar\n{h.stdout}"
    assert "JOB..." in loop.homie("kill", "--help").stdout
    assert "-n, --peer PEER" in loop.homie("run", "--help").stdout
    assert "--port PORT" in loop.homie("up", "--help").stdout


# ----------------------------------------------------------------------------- ssh and docker habits


def test_env_reaches_the_job(loop):
    loop.write("env.py", "import os\nprint(os.environ.get('FOO'), os.environ.get('BAR'))\n")
    loop.write("vars.env", "# comment\nexport BAR=from file\n")
    r = loop.homie("run", "-q", "-e", "FOO=bar", "--env-file", "vars.env", "env.py")
    assert r.returncode == 0 and r.stdout == "bar from file\n", r.stdout + r.stderr


def test_stdin_reaches_the_job(loop):
    loop.write("upper.py", "import sys\nsys.stdout.write(sys.stdin.read().upper())\n")
    r = loop.homie("run", "-q", "upper.py", input=b"hello\nworld\n")
    assert r.returncode == 0 and r.stdout == b"HELLO\nWORLD\n", r
    assert not (loop.proj / "results" / ".homie-stdin").exists()


def test_timeout_ends_a_sleeping_job(loop):
    loop.write("sleep.py", SLEEPER)
    t = time.monotonic()
    r = loop.homie("run", "--timeout", "1s", "sleep.py", "20")
    assert time.monotonic() - t < 15
    assert r.returncode != 0, r.stdout + r.stderr


def test_submit_side_of_env_stdin_timeout(loop):
    """What the submitter records (and so sends): without the worker's part."""
    loop.write("sleep.py", SLEEPER)
    r = loop.homie("run", "--detach", "-e", "FOO=bar", "--timeout", "2m", "--name", "lbl", "sleep.py", "0",
                   input=b"some input")
    assert r.returncode == 0, r.stderr
    job = r.stdout.decode().strip()
    row = loop.job(job)
    assert row["name"] == "lbl"
    stdin_copy = loop.home / "jobs" / job / "stdin"
    assert stdin_copy.read_bytes() == b"some input"
    assert not any((loop.home / "stdin").iterdir()), "the CLI's copy of stdin moved into the job"


def test_no_stdin_sends_none_even_from_a_pipe(loop):
    loop.write("sleep.py", SLEEPER)
    r = loop.homie("run", "--detach", "--no-stdin", "sleep.py", "0", input=b"not for the job")
    assert r.returncode == 0, r.stderr
    job = r.stdout.decode().strip()
    assert not (loop.home / "jobs" / job / "stdin").exists()
    assert not any((loop.home / "stdin").iterdir()) if (loop.home / "stdin").exists() else True


def test_ctrl_c_elsewhere_is_one_line_not_aborted(loop):
    loop.write("sleep.py", SLEEPER)
    job = detach(loop, "sleep.py", "60")
    p = loop.spawn("wait", job)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 130 and "Aborted" not in err and "Traceback" not in err, err
    assert "interrupted" in err and "go on" in err, err
    assert loop.job(job)["status"] in ("queued", "uploading", "running")
    loop.homie("kill", job)


def test_map_with_bar_and_retries(loop):
    loop.write("job.py", MAPPED)
    for i in range(3):
        loop.write(f"data/in{i}.txt", f"input {i}\n")
    r = loop.homie("map", "--over", "data/*.txt", "--bar", "--retries", "0", "job.py", "{}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "3 inputs: 3 ok, 0 failed" in r.stderr, r.stderr
    assert (loop.proj / "results" / "in1.txt" / "out.txt").read_text() == "INPUT 1\n"
    r = loop.homie("map", "--over", "data/*.txt", "--halt", "whenever", "job.py", "{}")
    assert r.returncode == 2 and "--halt" in one_line_error(r)


def _on_a_terminal(loop, *args, timeout: float = 60) -> tuple[int, str]:
    """Run homie with stderr on a pseudo-terminal (stdout piped): what a user at a terminal sees there."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([HOMIE, *args], env=loop.env(COLUMNS="100"), cwd=loop.proj, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    rc = proc.wait(timeout)
    return rc, seen.decode(errors="replace")


def test_progress_bars_on_a_terminal(loop):
    # The upload bar counts in the send line's decimal MB and is gone once the job starts.
    loop.write("job.py", "print('ran', flush=True)\n")
    with open(loop.proj / "big.bin", "wb") as f:  # big enough for the bar to be drawn at least once
        for _ in range(30):
            f.write(os.urandom(10_000_000))
    rc, tty = _on_a_terminal(loop, "run", "-f", "big.bin", "job.py")
    assert rc == 0, tty
    assert "300.0 MB" in tty and "MiB" not in tty, tty
    assert "/300.0 MB" in tty, tty  # the bar, in decimal MB
    assert tty.rfind("/300.0 MB") < tty.find("job started"), tty  # closed before the job ran
    # map shows its bar by default on a terminal (and not when stderr is a file: test_map_with_bar_and_retries)
    for i in range(3):
        loop.write(f"data/in{i}.txt", f"input {i}\n")
    loop.write("up.py", "import sys\nprint(open(sys.argv[1]).read().upper())\n")
    # one at a time: this checks the bar, not the worker under concurrent submits
    rc, tty = _on_a_terminal(loop, "map", "-j", "1", "--over", "data/*.txt", "up.py", "{}")
    assert rc == 0, tty
    assert "3/3" in tty and "3 inputs: 3 ok, 0 failed" in tty, tty
