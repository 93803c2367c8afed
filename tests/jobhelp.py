"""Helpers for the job tests that drive the real CLI across namespaced hosts
(tests/test_jobs_netns.py, tests/test_security_netns.py).

    from jobhelp import make_group, project, spawn_run
    raj, mike, you = make_group(cluster, ["raj", "mike", "you"])
    proj = project(you, {"train.py": "print('hi')"})
    r = you.homie("run", "train.py", cwd=proj)

Daemons only ever run inside the harness namespaces (discovery by broadcast on
the cluster's private bridge); nothing listens in the root namespace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from netns import Cluster, Host, wait_until

# Fast failure detection: a dead peer is noticed within peer_timeout.
# Jobs run sandboxed and see nothing of the host but what the worker's owner
# shares: the gate files tests open live in a directory shared read-only.
GATES = Path("/tmp/homie-gates")
BASE_CONFIG = {"discovery": "[udp]", "heartbeat_interval": "0.5", "peer_timeout": "3",
               "sandbox_ro_paths": f"[{GATES}]"}


def write_config(h: Host, **extra) -> None:
    cfg = {**BASE_CONFIG, **{k: str(v) for k, v in extra.items()}}
    (h.home / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))


def start_daemon(h: Host) -> int:
    r = h.homie("up", "--name", h.name, timeout=60)
    assert r.returncode == 0, f"homie up on {h.name} failed: {r.stdout}{r.stderr}"
    return daemon_pid(h)


def make_group(cluster: Cluster, names: list[str], config: dict | None = None,
               per_host: dict | None = None, start: bool = True) -> list[Host]:
    """Hosts sharing one group key (init on the first, join on the others), each
    with a config and a running daemon; returns once every host sees all others."""
    hosts = [cluster.add_host(n) for n in names]
    r = hosts[0].homie("init", "--name", hosts[0].name)
    assert r.returncode == 0, r.stderr
    key = re.search(r"group key: (\S+)", r.stdout).group(1)
    for h in hosts[1:]:
        r = h.homie("join", key)
        assert r.returncode == 0, r.stderr
    for h in hosts:
        write_config(h, **(config or {}), **((per_host or {}).get(h.name, {})))
    if start:
        for h in hosts:
            start_daemon(h)
        for h in hosts:
            others = {o.name for o in hosts if o is not h}
            wait_until(lambda h=h, others=others: others <= peer_names(h), 15,
                       msg=f"{h.name} to see {sorted(others)}")
    return hosts


def peer_names(h: Host) -> set[str]:
    r = h.homie("peers", "--json")
    return {p["name"] for p in json.loads(r.stdout)} if r.returncode == 0 else set()


def daemon_pid(h: Host) -> int:
    return int((h.home / "homie.pid").read_text().split()[0])


def project(h: Host, files: dict[str, str | bytes]) -> Path:
    """A project directory under the host's home holding `files` (text is dedented)."""
    d = Path(tempfile.mkdtemp(prefix="proj-", dir=h.home))
    d.chmod(0o755)
    for name, content in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            p.write_text(textwrap.dedent(content).lstrip("\n"))
        else:
            p.write_bytes(content)
        p.chmod(0o644)
    return d


def marker() -> str:
    return f"hmk{uuid.uuid4().hex[:12]}"


def gate_path() -> Path:
    """A file a job waits for, in the directory BASE_CONFIG shares with sandboxed jobs."""
    GATES.mkdir(mode=0o755, exist_ok=True)
    return GATES / f"gate-{uuid.uuid4().hex}"


def processes(h: Host, mark: str) -> list[str]:
    """Lines of `ps -eo pid,args` (run inside h's namespace) carrying `mark`, but for `homie run` itself.
    All namespaces share one PID namespace, so the unique marker is what counts."""
    r = h.run("ps", "-eo", "pid,args", check=True)
    return [ln for ln in r.stdout.splitlines()
            if mark in ln and "ps -eo" not in ln and "homie run" not in ln]  # not the CLI on the submitter


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


class Run:
    """A `homie run` in the background, stdout and stderr kept apart."""

    # Runs the CLI as a child and reports its peak RSS (ru_maxrss of waited-for children, KiB).
    RSS_WRAPPER = ("import resource, subprocess, sys\n"
                   "rc = subprocess.call(sys.argv[2:])\n"
                   "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
                   "sys.exit(rc)\n")

    def __init__(self, h: Host, cwd: Path, *args: str, measure_rss: bool = False):
        from netns import homie_bin

        self.host = h
        tmp = Path(tempfile.mkdtemp(prefix="homie-run-", dir=h.cluster.logdir))
        self.out_path, self.err_path, self.rss_path = tmp / "stdout", tmp / "stderr", tmp / "maxrss"
        cmd = [homie_bin(), "run", *args]
        if measure_rss:
            cmd = [sys.executable, "-c", self.RSS_WRAPPER, str(self.rss_path), *cmd]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = h.spawn(*cmd, cwd=cwd, stdout=out, stderr=err)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_out(self, text: str, timeout: float = 20, stream: str = "out") -> float:
        get = self.out if stream == "out" else self.err
        return wait_until(lambda: text in get(), timeout,
                          msg=f"{text!r} in the CLI's std{stream} (out: {self.out()[-500:]!r}"
                              f" err: {self.err()[-500:]!r})")

    def job_id(self, timeout: float = 20) -> str:
        # homie's own lines go to stderr; stdout is the job's output alone
        self.wait_out("→ job started: ", timeout, stream="err")
        return re.search(r"→ job started: (\w+)", self.err()).group(1)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"homie run still running after {timeout}s; out: {self.out()[-1000:]!r}"
                                 f" err: {self.err()[-1000:]!r}") from None

    def interrupt(self) -> None:
        os.kill(self.proc.pid, signal.SIGINT)

    def maxrss_kb(self) -> int:
        return int(self.rss_path.read_text())


def work_dir(h: Host) -> Path:
    """Where h's (root) daemon keeps job directories."""
    from homie.worker.jobdir import work_root

    return work_root(h.home, per_job_uids=True)


def work_dir_empty(h: Host) -> bool:
    return not [p for p in work_dir(h).iterdir() if not p.name.startswith(".")]


# --------------------------------------------------------------------------- a daemon run by an ordinary user

OWNER = "homie-owner"


def owner_account(name: str = OWNER) -> tuple[int, int]:
    """(uid, gid) of an ordinary system user for daemons not run as root; created if absent."""
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        cp = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                            capture_output=True, text=True)
        if cp.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
            raise AssertionError(f"useradd {name} failed: {cp.stderr}") from None
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def hand_home_to(h: Host, uid: int, gid: int) -> Path:
    """Give h's HOMIE_HOME (keys, config, as init/join left them) to uid, and make it
    a separate HOME (0700, owned by uid) as well; returns that HOME. Call before
    start_daemon_as."""
    home = Path(tempfile.mkdtemp(prefix=f"homie-ownerhome-{h.name}-"))
    for d in (h.home, home):
        for root, dirs, fnames in os.walk(d):
            os.lchown(root, uid, gid)
            for n in dirs + fnames:
                os.lchown(os.path.join(root, n), uid, gid)
        d.chmod(0o700)
    h.env["HOME"] = str(home)
    h.owner = (uid, gid)  # type: ignore[attr-defined]
    return home


def as_owner(h: Host, *args) -> list[str]:
    """argv running `args` as h's owner (see hand_home_to), with its HOME and HOMIE_HOME."""
    uid, gid = h.owner
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--",
            "env", f"HOME={h.env['HOME']}", f"HOMIE_HOME={h.home}", *map(str, args)]


_OWNER_BIN: dict[tuple[int, int, str], str] = {}


def owner_homie_bin(uid: int, gid: int) -> str:
    """A homie CLI that uid can run: homie_bin() when it can (its Python may sit in a
    private home, e.g. pyenv under /root), else one in a virtual environment made from
    the system python3 with the same homie sources installed editable, or a copy of
    them when uid cannot read them (kept in /tmp, keyed by those sources, for the
    next run)."""
    from netns import homie_bin

    hb = homie_bin()
    if (uid, gid, hb) in _OWNER_BIN:
        return _OWNER_BIN[uid, gid, hb]
    _OWNER_BIN[uid, gid, hb] = _owner_homie_bin(uid, gid, hb)
    return _OWNER_BIN[uid, gid, hb]


def _owner_homie_bin(uid: int, gid: int, hb: str) -> str:
    import fcntl
    import hashlib
    import shutil

    # through a shell: an exec straight from setpriv can succeed where the daemon's own
    # re-exec of its interpreter is refused
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--",
                            "/bin/sh", "-c", '"$0" --help', hb], capture_output=True, timeout=60, cwd="/")
    if probe.returncode == 0:
        return hb
    src = Path(subprocess.run([str(Path(hb).parent / "python"), "-c",
                               "import homie, os; print(os.path.dirname(os.path.dirname(homie.__file__)))"],
                              capture_output=True, text=True, check=True, cwd="/").stdout.strip())
    readable = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--",
                               "test", "-r", str(src / "homie" / "__init__.py")], cwd="/").returncode == 0
    h = hashlib.sha256(str(src).encode() + (src / "pyproject.toml").read_bytes())
    if not readable:  # the sources sit in a private home too: the user gets a copy of them
        for f in sorted((src / "homie").rglob("*.py")):
            h.update(str(f.relative_to(src)).encode() + f.read_bytes())
    key = h.hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"homie-owner-venv-{key}"
    system = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    assert system, "no system python3 for the ordinary user's daemon"
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".ready").exists():
            shutil.rmtree(venv, ignore_errors=True)
            if not readable:
                copy = Path(f"{venv}-src")
                shutil.rmtree(copy, ignore_errors=True)
                copy.mkdir(mode=0o755)
                for f in ("pyproject.toml", "README.md", "LICENSE"):
                    if (src / f).exists():
                        shutil.copy2(src / f, copy)
                shutil.copytree(src / "homie", copy / "homie", ignore=shutil.ignore_patterns("__pycache__"))
                for root, dirs, fnames in os.walk(copy):
                    for n in dirs:
                        os.chmod(os.path.join(root, n), 0o755)
                    for n in fnames:
                        os.chmod(os.path.join(root, n), 0o644)
                src = copy
            subprocess.run([system, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            cp = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-e",
                                 str(src)], capture_output=True, text=True, timeout=600, cwd="/")
            assert cp.returncode == 0, f"installing homie for the ordinary user failed: {cp.stderr[-2000:]}"
            (venv / ".ready").touch()
    return str(venv / "bin" / "homie")


def start_daemon_as(h: Host, cwd: str | os.PathLike | None = None) -> int:
    """`homie up` on h as its ordinary owner (hand_home_to first); returns the daemon's pid."""
    r = h.run(*as_owner(h, owner_homie_bin(*h.owner), "up", "--name", h.name), timeout=60, cwd=cwd)
    assert r.returncode == 0, f"homie up as {h.owner} on {h.name} failed: {r.stdout}{r.stderr}"
    pid = daemon_pid(h)
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid == h.owner[0], f"the daemon on {h.name} runs as uid {uid}, not the owner"
    return pid
