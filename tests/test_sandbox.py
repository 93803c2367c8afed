"""The sandbox pieces on one machine: what bubblewrap is told, job uids, the
job directory's hand-over and read-back, and real sandboxed processes
(signals, setsid escapees, fork bombs, /tmp). The hostile jobs through the
real CLI on namespace hosts are in tests/test_hostile_netns.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from homie.errors import HomieError, ManifestError
from homie.joblog import JobLog, read_records
from homie.worker import jobdir, sandbox
from homie.worker.identity import Identities, Identity, parse_range
from homie.worker.launch import Launch, Limits
from homie.worker.runner import JobProcess

ROOT = os.geteuid() == 0
BWRAP = sandbox.bwrap_path()
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (per-job uids, chown)")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed (apt-get install bubblewrap)")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


# ---------------------------------------------------------------- the command line

def _pairs(argv, flag):
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_command_binds_only_what_the_job_needs():
    spec = sandbox.Spec(job_dir="/srv/w/abc", network=True, ro_paths=["/data/set"], tmp_bytes=5 << 20)
    argv = sandbox.command("/usr/bin/bwrap", ["/usr/bin/python3", "x.py"], spec, python="/usr/bin/python3")
    sep = argv.index("--")
    opts, cmd = argv[:sep], argv[sep + 1:]
    assert cmd == ["/usr/bin/python3", "x.py"]
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
                 "--new-session", "--disable-userns"):
        assert flag in opts
    assert "--unshare-net" not in opts
    assert ("/srv/w/abc", sandbox.JOB_DIR) in _pairs(opts, "--bind")
    assert opts[opts.index("--chdir") + 1] == sandbox.JOB_DIR
    assert ("/data/set", "/data/set") in _pairs(opts, "--ro-bind-try")
    assert opts[opts.index("--size") + 1] == str(5 << 20)
    # nothing of the homes, the daemon's state or the whole root
    sources = {s for flag in ("--bind", "--ro-bind", "--dev-bind") for s, _ in _pairs(opts, flag)}
    assert not {s for s in sources if s in ("/", "/home", "/root", "/var", "/run") or s.startswith("/home/")}


def test_command_cuts_network_and_binds_a_private_interpreter(tmp_path):
    prefix = tmp_path / "py312"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3.12").write_text("")
    py = str(prefix / "bin" / "python3.12")
    spec = sandbox.Spec(job_dir="/w/j", network=False)
    argv = sandbox.command("bwrap", ["python", "x.py"], spec, python=py)
    assert "--unshare-net" in argv
    assert (str(prefix), str(prefix)) in _pairs(argv, "--ro-bind")
    assert sandbox.interpreter_roots("/usr/bin/python3") == []
    # never a prefix that holds a home or the homie home
    with pytest.raises(sandbox.SandboxError, match="holds"):
        sandbox.interpreter_roots(py, private=(str(prefix / "home"),))
    with pytest.raises(sandbox.SandboxError, match="does not exist"):
        sandbox.interpreter_roots(str(tmp_path / "nope" / "bin" / "python3"))


def test_probe_off_and_missing():
    st = sandbox.probe(sandbox.Mode.OFF, None, PY)
    assert not st.active and "off" in st.reason and st.label == "none"


# ---------------------------------------------------------------- job uids

def test_parse_range():
    assert parse_range("61184-65519") == (61184, 65519)
    for bad in ("", "5", "0-100", "70000-60000", "a-b"):
        with pytest.raises(ValueError):
            parse_range(bad)


@needs_root
def test_each_job_gets_its_own_uid_and_daemons_never_share_one(tmp_path):
    lock_dir = str(tmp_path / "uids")
    a = Identities((62000, 62002), lock_dir=lock_dir)
    b = Identities((62000, 62002), lock_dir=lock_dir)  # a second daemon on the same machine
    x, y = a.acquire("job1"), a.acquire("job2")
    z = b.acquire("job3")
    assert len({x.uid, y.uid, z.uid}) == 3 and all(i.differs for i in (x, y, z))
    assert a.acquire("job1") == x  # the same job keeps its uid
    with pytest.raises(HomieError, match="no free job uid"):
        b.acquire("job4")
    a.release("job1")
    assert b.acquire("job4").uid == x.uid  # freed for anyone once the job is gone


@needs_root
def test_job_user_root_or_unknown_is_refused():
    with pytest.raises(HomieError, match="must not be root"):
        Identities(fixed_user="root")
    with pytest.raises(HomieError, match="does not exist"):
        Identities(fixed_user="no-such-user-here")


# ---------------------------------------------------------------- the job directory

@needs_root
def test_give_never_follows_a_link(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    tree = tmp_path / "job"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")
    (tree / "link").symlink_to(secret)
    (tree / "sub" / "flink").symlink_to(secret)
    jobdir.give(tree, 62010, 62010)
    assert secret.stat().st_uid == 0 and (secret.stat().st_mode & 0o777) == 0o700
    assert (tree / "sub" / "f").stat().st_uid == 62010
    assert (tree / "link").lstat().st_uid == 62010


def test_scan_and_open_beneath_skip_links_and_specials(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    root = tmp_path / "job"
    (root / "d").mkdir(parents=True)
    (root / "d" / "ok.txt").write_text("fine")
    (root / "link.txt").symlink_to(outside)
    (root / "dlink").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    (root / ".homie").mkdir()
    (root / ".homie" / "own").write_text("homie's")
    assert set(jobdir.scan(root)) == {"d/ok.txt"}
    fd = jobdir.open_beneath(root, "d/ok.txt")
    assert os.read(fd, 10) == b"fine"
    os.close(fd)
    for rel in ("link.txt", "dlink/outside.txt", "fifo"):
        with pytest.raises((OSError, ManifestError)):
            os.close(jobdir.open_beneath(root, rel))
    with pytest.raises(ManifestError):
        jobdir.open_beneath(root, "../outside.txt")


# ---------------------------------------------------------------- real sandboxed processes

@pytest.fixture
def passable(tmp_path):
    """A directory a job's own uid can reach (bubblewrap resolves its binds as that uid)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="homie-sbx-", dir="/tmp"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(tmp_path, code: str, *, uid: int | None = None, nproc: int | None = None, tmp_bytes=64 << 20,
           network=True):
    job = tmp_path / "job"
    job.mkdir(exist_ok=True)
    (job / "main.py").write_text(textwrap.dedent(code))
    ident = Identity(uid, uid, "t") if uid is not None else None
    if ident is not None:
        jobdir.give(job, uid, uid)
    r, w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": sandbox.HOME_DIR}
    spec = sandbox.Spec(job_dir=str(job), tmp_bytes=tmp_bytes, info_fd=w, network=network, env=env)
    args, cmd = sandbox.args_fd(sandbox.options([PY, "main.py"], spec, python=PY))
    argv = [BWRAP, "--args", str(args), "--", *cmd]
    if nproc:
        argv = ["prlimit", f"--nproc={nproc}", "--", *argv]
    log = JobLog(tmp_path / "out.log")
    la = Launch(argv=argv, cwd="/", env={"PATH": "/usr/bin:/bin"}, user=ident, info_fd=r, pass_fds=(args, w),
                uid_sweep=uid)
    p = JobProcess("t" + os.urandom(4).hex(), la, log, Limits())
    p.start()
    return p, log


def _text(log: JobLog) -> str:
    return b"".join(d for _, _, d in read_records(log.path, 0, 1 << 22)).decode()


def _wait_for(log, text, timeout=10):
    deadline = time.monotonic() + timeout
    while text not in _text(log):
        assert time.monotonic() < deadline, _text(log)
        time.sleep(0.05)


@needs_bwrap
@needs_root
def test_sandboxed_job_sees_only_its_directory(passable):
    tmp_path = passable
    p, log = _start(tmp_path, """
        import os, json
        out = {"uid": os.getuid(), "cwd": os.getcwd(), "top": sorted(os.listdir("/")),
               "pids": sorted(int(x) for x in os.listdir("/proc") if x.isdigit())}
        for path in ("/root", "/home", %r):
            try:
                os.listdir(path); out[path] = "LISTED"
            except OSError as e:
                out[path] = type(e).__name__
        print(json.dumps(out))
        open("made.txt", "w").write("hi")
    """ % str(tmp_path), uid=62020)  # noqa: UP031 - the script's braces would need doubling in an f-string
    o = p.wait(30)
    assert o.code == 0, _text(log)
    seen = json.loads(_text(log).strip().splitlines()[-1])
    assert seen["uid"] == 62020 and seen["cwd"] == sandbox.JOB_DIR
    assert "root" not in seen["top"] and "home" not in seen["top"] and "var" not in seen["top"]
    assert seen["pids"] == [1, 2]  # its own pid namespace: bwrap's init and itself
    assert all(v == "FileNotFoundError" for k, v in seen.items() if k.startswith("/")), seen
    assert (tmp_path / "job" / "made.txt").stat().st_uid == 62020


@needs_bwrap
def test_ctrl_c_reaches_the_job_and_kill_ends_it(tmp_path):
    p, log = _start(tmp_path, """
        import signal, sys, time
        signal.signal(signal.SIGINT, lambda *a: sys.exit(42))
        print("ready", flush=True)
        time.sleep(60)
    """)
    _wait_for(log, "ready")
    time.sleep(0.2)
    p.signal(signal.SIGINT)
    assert p.wait(10).code == 42


@needs_bwrap
def test_sigterm_reaches_the_job_not_the_sandbox(tmp_path):
    p, log = _start(tmp_path, """
        import signal, sys, time
        def bye(*a):
            print("cleaning up", flush=True); sys.exit(7)
        signal.signal(signal.SIGTERM, bye)
        print("ready", flush=True)
        time.sleep(60)
    """)
    _wait_for(log, "ready")
    time.sleep(0.2)
    p.kill("test", grace=5)
    o = p.wait(10)
    assert o.code == 7 and "cleaning up" in _text(log), _text(log)


@needs_bwrap
def test_setsid_escapee_dies_with_the_job(tmp_path):
    mark = "esc" + os.urandom(6).hex()
    p, log = _start(tmp_path, f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{mark}"], {{}})
            os._exit(0)
        time.sleep(0.5)
        print("main exits", flush=True)
    """)
    assert p.wait(20).code == 0

    def alive():
        out = []
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and mark.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(d)
            except OSError:
                pass
        return out
    deadline = time.monotonic() + 5
    while alive():
        assert time.monotonic() < deadline, f"escapee still running: {alive()}"
        time.sleep(0.05)


@needs_bwrap
@needs_root
def test_fork_bomb_stops_at_the_cap(passable):
    tmp_path = passable
    p, log = _start(tmp_path, """
        import os, time
        n = 0
        try:
            while n < 5000:
                if os.fork() == 0:
                    time.sleep(5); os._exit(0)
                n += 1
            print("unbounded", n, flush=True)
        except OSError as e:
            print("capped at", n, e.errno, flush=True)
    """, uid=62030, nproc=100)
    o = p.wait(60)
    assert o.code == 0, _text(log)
    text = _text(log)
    assert "capped at" in text and int(text.split("capped at")[1].split()[0]) <= 100, text


@needs_bwrap
def test_tmp_is_private_and_capped(tmp_path):
    marker = Path("/tmp") / ("homie-host-" + os.urandom(4).hex())
    marker.write_text("host")
    try:
        p, log = _start(tmp_path, f"""
            import os, errno
            print("sees host tmp:", os.path.exists({str(marker)!r}), flush=True)
            n = 0
            try:
                with open("/tmp/fill", "wb") as f:
                    while n < 200:
                        f.write(b"x" * (1 << 20)); f.flush(); n += 1
            except OSError as e:
                print("full after", n, "MB", errno.errorcode[e.errno], flush=True)
        """, tmp_bytes=8 << 20)
        assert p.wait(30).code == 0
        text = _text(log)
        assert "sees host tmp: False" in text and "full after" in text and "ENOSPC" in text, text
        assert int(text.split("full after")[1].split()[0]) <= 8, text
    finally:
        marker.unlink()


@needs_bwrap
def test_cpu_time_of_a_sandboxed_job_is_counted(tmp_path):
    from homie.worker.proctree import enable_subreaper

    assert enable_subreaper()  # as the daemon does: bubblewrap's orphaned init is ours to reap
    p, log = _start(tmp_path, """
        import time
        t = time.process_time()
        while time.process_time() - t < 0.5:
            pass
        print("burned", flush=True)
    """)
    o = p.wait(30)
    assert o.code == 0 and "burned" in _text(log)
    assert o.cpu_s >= 0.45, o


def _deep(root: Path, levels: int) -> Path:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):  # by descriptor: the path gets longer than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("deep")
    os.close(fd)
    return root


def test_a_job_tree_deeper_than_recursion_is_walked_and_removed(tmp_path):
    root = tmp_path / "job"
    root.mkdir()
    (root / "top.txt").write_text("top")
    _deep(root, 3000)
    assert set(jobdir.scan(root)) == {"top.txt"}  # what lies below MAX_DEPTH is not sent back
    with pytest.raises(jobdir.TooDeep):
        jobdir.give(root, os.geteuid(), os.getegid())
    (root / "d" / "d").chmod(0)  # and a directory the job made unreadable on the way
    jobdir.remove(root)
    assert not root.exists()


def test_remove_unlinks_links_and_never_follows_them(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    root = tmp_path / "job"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "to_keep").symlink_to(keep)
    (root / "to_file").symlink_to(keep / "precious")
    jobdir.remove(root)
    assert not root.exists() and (keep / "precious").read_text() == "x"
    link = tmp_path / "job2"
    link.symlink_to(keep)  # the job directory itself replaced by a link
    jobdir.remove(link)
    assert not link.exists() and (keep / "precious").exists()


@needs_root
def test_taking_a_venv_back_strips_what_a_job_could_leave_in_it(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    s = venv / "bin" / "s"
    s.write_text("#!/bin/sh\n")
    os.link(s, venv / "bin" / "s2")  # a second link: must not keep the job's uid
    jobdir.give(venv, 62040, 62040)
    s.chmod(0o4777)
    venv.chmod(0o777)
    jobdir.give(venv, 0, 0, shared_blobs=False, strip_modes=True)
    for p in (venv, s, venv / "bin" / "s2"):
        st = p.lstat()
        assert st.st_uid == 0 and not st.st_mode & (0o7000 | 0o022), (p, oct(st.st_mode))


def test_what_a_venv_build_may_read_is_what_requirements_name():
    from homie.builtin.executors import _relative_refs

    text = """
        # comment
        numpy>=1.26
        ./dist/pkg-0.1-py3-none-any.whl
        -r more.txt
        --constraint=pins.txt
        -e .
        -f wheels/  # local index
        https://example.invalid/x.whl
        /abs/path.whl
        sub/project[extra]
    """
    assert _relative_refs(text) == ["./dist/pkg-0.1-py3-none-any.whl", "more.txt", "pins.txt", ".", "wheels/",
                                    "sub/project"]


# -- hard links to files the job does not own --------------------------------------------------
# Without a sandbox and with fs.protected_hardlinks off, a job's own uid can hard-link any file
# of the machine into its directory; the daemon reads results and checkpoints as root. Here the
# test (root) makes the links the hostile job would have made.

@pytest.fixture
def linked_job(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: files of another owner and the job's own uid")
    from types import SimpleNamespace

    from homie.worker.job import WorkerJob
    from homie.worker.starter import Starter

    uid = 62041
    secret = tmp_path / "secret"
    secret.write_text("root's only\n")
    secret.chmod(0o600)
    jd = tmp_path / "job"
    jd.mkdir()
    blob = tmp_path / "blob"  # an input: a hard link into the blob cache, owned by the daemon
    blob.write_text("input\n")
    os.link(blob, jd / "data.csv")
    os.chown(jd, uid, uid)
    job = WorkerJob(id="j1", submitter="raj", submitter_ip="10.0.0.2", script="t.py", args=[], files=[],
                    executor="subprocess", gpu=False, dir=jd, log=JobLog(tmp_path / "j1.log"),
                    ident=Identity(uid, uid, "homie-job"))
    job.inputs_stat = jobdir.scan(jd)
    # What the job does: a result of its own (and a second name for it), the secret linked
    # in, another user's file linked in and then renamed over at its home (so the job's name
    # is its only one), a setuid binary linked in, its input renamed.
    (jd / "out.txt").write_text("mine\n")
    os.chown(jd / "out.txt", uid, uid)
    os.link(jd / "out.txt", jd / "out2.txt")
    os.link(secret, jd / "loot.txt")
    alices = tmp_path / "alices"
    alices.write_text("alice's only\n")
    os.chown(alices, 62043, 62043)
    alices.chmod(0o600)
    os.link(alices, jd / "rotated.txt")
    alices.unlink()
    suid = tmp_path / "suid"
    suid.write_bytes(b"#!/bin/sh\n")
    suid.chmod(0o4755)
    os.link(suid, jd / "suid")
    os.rename(jd / "data.csv", jd / "renamed.csv")
    worker = SimpleNamespace(blobs=SimpleNamespace(has=lambda sha: False))
    return SimpleNamespace(job=job, starter=Starter(worker), dir=jd, uid=uid, secret=secret)


def test_a_result_hard_linked_to_a_file_the_job_does_not_own_stays_there(linked_job):
    results = linked_job.starter._results(linked_job.job)
    assert sorted(r["path"] for r in results) == ["out.txt", "out2.txt", "renamed.csv"]
    said = _text(linked_job.job.log)
    assert "not sending result 'loot.txt': it is a hard link to a file the job does not own" in said


def test_taking_a_directory_back_leaves_what_the_job_linked_in_as_it_was(linked_job):
    jobdir.give(linked_job.dir, os.geteuid(), os.getegid(), shared_blobs=False, only_from=linked_job.uid)
    st = {name: os.stat(linked_job.dir / name) for name in ("out.txt", "rotated.txt", "suid", "loot.txt")}
    assert st["out.txt"].st_uid == os.geteuid()  # the job's own: back to the daemon
    assert st["rotated.txt"].st_uid == 62043 and st["rotated.txt"].st_mode & 0o777 == 0o600
    assert st["suid"].st_mode & 0o7777 == 0o4755  # a chown would have cleared the setuid bit


def test_a_checkpoint_hard_linked_to_a_file_the_job_does_not_own_is_not_taken(linked_job):
    from homie import checkpoints

    jd, uid = linked_job.dir, linked_job.uid
    inputs = jobdir.inodes(linked_job.job.inputs_stat)
    for foreign in ("loot.txt", "rotated.txt"):
        sig = checkpoints.signature(jd, [foreign])
        assert checkpoints.take(jd, sig, 1, 0.0, uid=uid, inputs=inputs) is None
    # the job's own file, and its own input (a checkpoint restored from an earlier attempt is one)
    for rel in ("out.txt", "renamed.csv"):
        snap = checkpoints.take(jd, checkpoints.signature(jd, [rel]), 1, 0.0, uid=uid, inputs=inputs)
        assert snap is not None and [f.path for f in snap.files] == [rel]
        snap.close()


# -- the submitter's environment never reaches a process running as root ---------------------

def test_an_unsandboxed_jobs_ld_preload_never_runs_as_root(passable):
    """`homie run -e LD_PRELOAD=./x.so` with x.so among the job's files: the library must load
    only into the job's own processes (its uid), never into a helper the root daemon starts
    before the uid drop (the daemon once started jobs through a root setpriv with the job's env)."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root: a job uid of its own")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the preloaded library")
    tmp_path = passable
    marks = tmp_path / "marks"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)
    src = tmp_path / "x.c"
    src.write_text(textwrap.dedent(f"""
        #include <stdio.h>
        #include <unistd.h>
        __attribute__((constructor)) static void mark(void) {{
            char p[256];
            snprintf(p, sizeof p, "{marks}/%d-%d", (int)getuid(), (int)getpid());
            FILE *f = fopen(p, "w");
            if (f) fclose(f);
        }}
    """))
    lib = tmp_path / "x.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    lib.chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    uid = 62042
    jobdir.give(job, uid, uid)
    log = JobLog(tmp_path / "out.log")
    la = Launch(argv=["/bin/true"], cwd=str(job), env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(lib)},
                user=Identity(uid, uid, "t"), uid_sweep=uid)
    p = JobProcess("t" + os.urandom(4).hex(), la, log, Limits())
    p.start()
    assert p.wait(10) is not None
    uids = {int(m.name.split("-")[0]) for m in marks.iterdir()}
    assert uids == {uid}, f"the preloaded library ran as uid(s) {sorted(uids)}"


@needs_root
def test_a_root_daemon_caps_its_jobs_processes_by_inheritance_not_itself(tmp_path):
    """Without a pids cgroup, a root daemon with per-job uids holds RLIMIT_NPROC at PIDS_MAX
    as its own, so that every job inherits it without a prlimit exec: the daemon's own
    threads go past it (root is exempt), a job's uid stops at it."""
    from homie.worker import starter

    if not starter._first_user_namespace():
        pytest.skip("root of a user namespace: the daemon keeps prlimit per job")
    script = tmp_path / "daemonish.py"
    script.write_text(textwrap.dedent(f"""
        import os, subprocess, sys, threading
        from homie.worker import starter
        import resource
        assert starter.cap_nproc_for_jobs()
        assert resource.getrlimit(resource.RLIMIT_NPROC) == (starter.PIDS_MAX, starter.PIDS_MAX)
        stop = threading.Event()
        threads = [threading.Thread(target=stop.wait) for _ in range(starter.PIDS_MAX + 100)]
        for t in threads:
            t.start()  # a capped daemon would fail here: "can't start new thread"
        stop.set()
        bomb = ("import os, time\\nn = 0\\ntry:\\n    while n < 5000:\\n        if os.fork() == 0:\\n"
                "            time.sleep(3); os._exit(0)\\n        n += 1\\n    print('unbounded', n)\\n"
                "except OSError as e:\\n    print('capped at', n)\\n")
        out = subprocess.run(["setpriv", "--reuid=62033", "--regid=62033", "--clear-groups", "--",
                              {PY!r}, "-c", bomb], capture_output=True, text=True, timeout=120)
        print(out.stdout.strip(), len(threads))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                         cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[:2] == ["capped", "at"], out.stdout
    assert int(words[2]) <= 1024 and int(words[3]) == 1124, out.stdout


def test_the_options_memfd_holds_each_argument_as_os_fsencode_would():
    items = ["--setenv", "K", "caf\u00e9 \udcff", Path("/srv/job"), b"raw\xff"]
    fd = sandbox._memfd(items, "t")
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    assert data == b"".join(os.fsencode(a) + b"\0" for a in items)
