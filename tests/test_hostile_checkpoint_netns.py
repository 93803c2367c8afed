"""Hostile self-checkpointing jobs (and a hostile worker sending checkpoints home).

A job's checkpoint files are read by the worker's daemon (root, or the
owner's uid) while the job runs, after it is evicted (SIGTERM, grace,
SIGKILL, final checkpoint) and sent home to the submitter, who stores them
and restores them into the next attempt's directory. Each attack below
really tries its action against real daemons with the real CLI and asserts
the defence: a marker written where the job must not read it never reaches
the submitter, the daemon stays up and answers, other jobs' checkpoints keep
coming, and the job gets a clear line, never a traceback.

A malicious *worker* cannot be a real daemon here (it would need a patched
homie); its half of `ckpt_fetch` is played over a socket pair against the
submitter's real `checkpoints.fetch` (the first tests, no namespaces).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from homie import checkpoints
from homie.errors import HomieError
from homie.wire import protocol
from homie.wire.channel import Channel, Conversation

from jobhelp import (
    Run,
    daemon_pid,
    make_group,
    marker,
    peer_names,
    processes,
    project,
    start_daemon,
    vm_hwm_kb,
    work_dir,
)
from netns import homie_bin, wait_until

CHUNK = checkpoints.CHUNK


# ----------------------------------------------------------------------------- a malicious worker


def _pair():
    a, b = socket.socketpair()
    server = Channel(a, Conversation(protocol.SERVER))
    client = Channel(b, Conversation(protocol.CLIENT))
    server.send("hello", name="w", proto=1, homie="x", python="3")
    client.recv_msg("hello")
    return server, client


def _evil_worker(server: Channel, files: list[dict], blobs: dict[str, bytes]) -> None:
    """Answer one ckpt_fetch with `files` as the manifest and send whatever chunk is asked for."""
    try:
        server.recv_msg("ckpt_fetch")
        server.send("ckpt", job_id="j1", seq=1, at=1.0, files=files)
        want = server.recv_msg("ckpt_want")["chunks"]
        for sha in want:
            data = blobs.get(sha, b"pwned by the worker\n")
            server.send("blob", sha256=sha, size=len(data))
            server.send_data(data)
        server.send("ckpt_done")
    except Exception:
        pass  # the submitter hung up on us: what it should do


def _fetch_from_evil(tmp_path: Path, files: list[dict], blobs: dict[str, bytes]):
    # the submitter's store of a job run with no --checkpoint beyond checkpoint/ (as homie.submit.job makes it)
    store = checkpoints.Store(tmp_path / "home" / "jobs" / "j1" / "checkpoint", ["checkpoint"])
    server, client = _pair()
    t = threading.Thread(target=_evil_worker, args=(server, files, blobs), daemon=True)
    t.start()
    try:
        return store, checkpoints.fetch(client, "j1", {}, store, 1)
    finally:
        client.close()
        t.join(5)
        server.close()


def _padded(path: str) -> str:
    """`path` written as exactly 64 characters (what a chunk name is checked for), with ./ padding."""
    head, name = os.path.split(path)
    pad = 64 - len(path)
    assert pad >= 0 and pad % 2 == 0, path
    return f"{head}{'/.' * (pad // 2)}/{name}"


def test_a_worker_cannot_make_the_submitter_write_outside_its_store_with_chunk_names(tmp_path):
    """Chunk names come from the worker: an absolute or ../ one of 64 characters
    must not become a file written (as the submitter's user) outside its store."""
    outside = Path(tempfile.mkdtemp(prefix="ck-", dir="/tmp"))
    try:
        data = b"pwned by the worker\n"
        absolute = _padded(str(outside / "abs"))
        # ../ from <store>/incoming-1/chunks/ up to tmp_path, then into `rel`
        depth = len(("home", "jobs", "j1", "checkpoint", "incoming-1", "chunks"))
        (tmp_path / "rel").mkdir()
        prefix = "../" * depth + "rel/"
        relative = prefix + "x" * (64 - len(prefix))
        for name, where in ((absolute, outside / "abs"), (relative, tmp_path / "rel" / relative.rsplit("/", 1)[1])):
            assert len(name) == 64, name
            entry = {"path": "checkpoint/state", "mode": 0o644, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "chunks": [name]}
            with pytest.raises(HomieError) as e:
                _fetch_from_evil(tmp_path, [entry], {name: data})
            assert "Traceback" not in str(e.value)
            assert not where.exists(), f"a worker wrote {where} on the submitter (chunk name {name!r})"
    finally:
        for p in sorted(outside.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        outside.rmdir()


def test_a_worker_cannot_fill_the_submitters_disk_with_one_chunk_listed_thousands_of_times(tmp_path):
    """Chunks are deduplicated: a manifest (under the 1 MiB message limit) listing one
    1 MiB chunk 9216 times would have the submitter write 9 GiB from 1 MiB sent."""
    data = b"\0" * CHUNK
    sha = hashlib.sha256(data).hexdigest()
    n = 9 * 1024
    whole = hashlib.sha256()
    for _ in range(n):
        whole.update(data)
    entry = {"path": "checkpoint/zeros", "mode": 0o644, "size": n * CHUNK, "sha256": whole.hexdigest(),
             "chunks": [sha] * n}
    t = time.monotonic()
    with pytest.raises(HomieError):
        _fetch_from_evil(tmp_path, [entry], {sha: data})
    assert time.monotonic() - t < 10
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size > CHUNK]


def test_a_worker_cannot_slip_files_outside_the_checkpoint_paths_into_the_next_attempt(tmp_path):
    """What a worker sends home as a checkpoint is restored over the job's inputs at
    the next attempt (on another friend's machine): only the declared checkpoint
    paths may come back, not a module the job imports."""
    data = b"import os; os.system('echo owned')\n"
    sha = hashlib.sha256(data).hexdigest()
    entry = {"path": "helper.py", "mode": 0o644, "size": len(data), "sha256": sha, "chunks": [sha]}
    ok = {"path": "checkpoint/state", "mode": 0o644, "size": len(data), "sha256": sha, "chunks": [sha]}
    try:
        store, saved = _fetch_from_evil(tmp_path, [ok, entry], {sha: data})
    except HomieError:
        return  # refused outright: fine
    assert "helper.py" not in {e.path for e, _ in store.entries()}, \
        "a worker's checkpoint replaced an input (helper.py) of the next attempt"


# ----------------------------------------------------------------------------- hostile jobs, real daemons

# A job that checkpoints every STEADY_STEP seconds for a long time: whose checkpoints
# must keep coming home while a hostile job runs beside it on the same worker.
STEADY_STEP = "1.7"  # not a multiple of the daemon's poll period: a write must not always land in its settle pause
STEADY = r'''
import os, sys, time
ck = os.environ["HOMIE_CHECKPOINT_DIR"]
n = 0
while True:
    n += 1
    with open(os.path.join(ck, "n.tmp"), "w") as f:
        f.write(str(n))
    os.replace(os.path.join(ck, "n.tmp"), os.path.join(ck, "n"))
    print("tick", n, flush=True)
    time.sleep(float(sys.argv[1]))
'''

# Swaps its checkpoint files (and the checkpoint directory itself) between
# regular files and links to what it must not read, at random moments so that
# some swaps land between the daemon's scan, its settle pause and its reads;
# tries hard links; leaves a setsid grandchild that keeps swapping; ignores
# SIGTERM. Restored from a checkpoint (the next attempt) it lists what came back.
SWAPPER = r'''
import os, random, signal, sys, time
mark, *targets = sys.argv[1:]
ck = os.environ["HOMIE_CHECKPOINT_DIR"]
if os.path.exists(os.path.join(ck, "f0")):
    print("restored:", sorted(os.listdir(ck)), flush=True)
    for name in sorted(os.listdir(ck)):
        p = os.path.join(ck, name)
        print("restored", name, os.path.islink(p), open(p, "rb").read(60) if os.path.isfile(p) else b"", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
targets += ["/etc/shadow", "/proc/self/environ", "/proc/1/environ", "/proc/self/root/etc/shadow"]
for i, t in enumerate(targets):
    try:
        os.link(t, os.path.join(ck, f"hard{i}"))
        print("hard link made to", t, flush=True)
    except OSError as e:
        print("no hard link to", t, e.strerror, flush=True)
    try:
        os.symlink(t, os.path.join(ck, f"link{i}"))
    except OSError:
        pass
real = ck + ".real"
for i in range(len(targets)):
    with open(os.path.join(ck, f"f{i}"), "w") as out:
        out.write("ok " + str(i))
def swap_forever(rng):
    # One swap at a time, at random moments: a file becomes a link to a target
    # and back, or the directory itself does; between swaps it stays still for
    # about the daemon's settling time, so snapshots are taken, some mid-swap.
    while True:
        time.sleep(rng.random() * 1.5)
        i = rng.randrange(len(targets) + 1)
        try:
            if i == len(targets):  # the directory itself: a link to the first target's directory, then back
                os.rename(ck, real)
                os.symlink(os.path.dirname(targets[0]), ck)
                time.sleep(rng.random() * 0.3)
                os.unlink(ck)
                os.rename(real, ck)
                continue
            f = os.path.join(ck, f"f{i}")
            os.symlink(targets[i], f + ".lnk")
            os.replace(f + ".lnk", f)
            time.sleep(rng.random() * 0.3)
            with open(f + ".tmp", "w") as out:
                out.write("ok " + str(i))
            os.replace(f + ".tmp", f)
        except OSError:
            pass
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        swap_forever(random.Random(2))
    os._exit(0)
print("swapping", mark, flush=True)
swap_forever(random.Random(1))
'''


def _no_marker_under(root: Path, markers: list[str]) -> list[str]:
    """Files under root holding any of the markers (what the job must never have sent home)."""
    found = []
    needles = [m.encode() for m in markers]
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            try:
                if p.is_symlink() or not p.is_file():
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            if any(m in data for m in needles):
                found.append(str(p))
    return found


def _ps(h, job_id: str) -> dict:
    r = h.homie("ps", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return next(j for j in json.loads(r.stdout)["sent"] if j["job_id"] == job_id)


def _seq(h, job_id: str) -> int:
    return _ps(h, job_id).get("checkpoint_seq") or 0


def _why(w, *runs) -> str:
    """What the worker's log and the jobs said, for a failed wait."""
    log = w.home / "logs" / "homie.log"
    tail = log.read_text(errors="replace")[-2500:] if log.exists() else ""
    return "\n".join([*(f"job out: {r.out()[-800:]!r} err: {r.err()[-800:]!r}" for r in runs), f"{w.name} log: {tail}"])


def _daemon_fine(h) -> None:
    r = h.homie("status", timeout=30)
    assert r.returncode == 0, f"{h.name}'s daemon does not answer `homie status`: {r.stdout}{r.stderr}"
    log = h.home / "logs" / "homie.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in text and "checkpoint_crashed" not in text, text[-3000:]


def _pair_of_hosts(cluster, **worker):
    w, you = make_group(cluster, ["w", "you"], config={"checkpoint_interval": 1, "evict_grace_seconds": 2},
                        per_host={"you": {"max_jobs": 0}, "w": {"max_jobs": 4, "sandbox": "required", **worker}},
                        start=False)
    home = Path(tempfile.mkdtemp(prefix="homie-ownerhome-"))
    home.chmod(0o700)
    w.env["HOME"] = str(home)
    for h in (w, you):
        start_daemon(h)
    wait_until(lambda: "w" in peer_names(you), 20, msg="you to see w")
    return w, you, home


@pytest.mark.netns
def test_checkpoint_links_swapped_in_and_out_never_send_what_the_job_cannot_read(cluster, tmp_path):
    w, you, owner_home = _pair_of_hosts(cluster)
    secrets = [marker(), marker(), marker()]
    canary_dir = Path(tempfile.mkdtemp(prefix="homie-canary-"))
    canary_dir.chmod(0o700)
    (canary_dir / "secret").write_text(f"root only {secrets[0]}\n")
    (canary_dir / "secret").chmod(0o600)
    (owner_home / "id_ed25519").write_text(f"owner's key {secrets[1]}\n")
    (owner_home / "id_ed25519").chmod(0o600)
    # another job's directory on the same worker, with a file of its own
    steady = Run(you, project(you, {"steady.py": STEADY}), "-n", "w", "steady.py", STEADY_STEP)
    steady_id = steady.job_id(40)
    other = work_dir(w) / steady_id / "private.txt"
    other.write_text(f"another job's {secrets[2]}\n")
    other.chmod(0o600)
    mark = marker()
    swapper = Run(you, project(you, {"swap.py": SWAPPER}), "-n", "w", "swap.py", mark,
                  str(canary_dir / "secret"), str(owner_home / "id_ed25519"), str(other),
                  str(owner_home), str(w.home), str(work_dir(w) / steady_id))
    job = swapper.job_id(40)
    swapper.wait_out("swapping", 40)
    try:
        try:
            wait_until(lambda: _seq(you, job) >= 2, 90, msg="two checkpoints of the swapping job to come home")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_why(w, swapper)}") from None
        _steady_keeps_checkpointing(you, steady_id, 8, 2)
        # Eviction: SIGTERM (ignored), the grace, SIGKILL, then the final checkpoint,
        # while the setsid grandchild would go on swapping if anything of the job survived.
        r = w.homie("pause", "--evict")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: [a.get("outcome") for a in _ps(you, job)["attempts"]][:1] == ["evicted"], 60,
                   msg="the swapping job to be evicted and its final checkpoint to come home")
        wait_until(lambda: not processes(w, mark), 20, msg="nothing of the evicted job to survive")
        found = _no_marker_under(you.home, secrets)
        assert not found, f"what the job must not read reached the submitter: {found}"
        _daemon_fine(w)
        # The next attempt (same worker, resumed) starts from what came home: only regular files.
        assert w.homie("resume").returncode == 0
        code = swapper.wait(90)
        out = swapper.out()
        assert code == 0 and "restored:" in out, (code, out[-2000:], swapper.err()[-2000:])
        assert "restored f" in out and " True " not in out, out  # no link came back
        assert not any(s in out for s in secrets), out
        assert "Traceback" not in swapper.err(), swapper.err()
        _daemon_fine(w)
    finally:
        you.homie("kill", "--all")
        shutil.rmtree(canary_dir, ignore_errors=True)
        shutil.rmtree(owner_home, ignore_errors=True)


# Everything in its checkpoint directory that is not a plain file, names no
# manifest takes, and a tree deeper than the daemon walks; one good file
# beside them, which must still come home.
ODDITIES = r'''
import os, socket, stat, sys, time
ck = os.environ["HOMIE_CHECKPOINT_DIR"]
os.mkfifo(os.path.join(ck, "fifo"))
s = socket.socket(socket.AF_UNIX)
s.bind(os.path.join(ck, "sock"))
try:
    os.mknod(os.path.join(ck, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    print("made a device node", flush=True)
except OSError as e:
    print("no device node:", e.strerror, flush=True)
for name in ("new\nline", "tab\there", "...", "..a", " ", "x" * 255, "\u202eevil"):
    with open(os.path.join(ck, name), "w") as f:
        f.write("odd name\n")
fd = os.open(os.fsencode(ck) + b"/bad-\xff\xfe-utf8", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"invalid utf-8 name\n")
os.close(fd)
d = os.path.join(ck, "deep")
os.mkdir(d)
fd = os.open(d, os.O_RDONLY)
for i in range(400):
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nfd
with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
    f.write("deep\n")
with open(os.path.join(ck, "state.tmp"), "w") as f:
    f.write("good state\n")
os.replace(os.path.join(ck, "state.tmp"), os.path.join(ck, "state"))
print("ready", flush=True)
time.sleep(600)
'''

# A checkpoint that costs the job nothing and the daemon everything: a 1 TiB
# sparse file, (outside checkpoint/) tens of thousands of empty files the
# daemon would walk every second, and after a while a file that never stops
# growing (so that only the final checkpoint, at eviction, reads it all).
HOG = r'''
import os, sys, time
ck = os.environ["HOMIE_CHECKPOINT_DIR"]
junk = "junk"
os.mkdir(junk)
for i in range(int(sys.argv[1])):
    os.close(os.open(os.path.join(junk, str(i)), os.O_WRONLY | os.O_CREAT, 0o644))
with open(os.path.join(ck, "sparse"), "wb") as f:
    f.truncate(1 << 40)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
n = 0
with open(os.path.join(ck, "grows"), "ab") as f:
    while n < 64 << 20:  # a safety ceiling: the test machine is shared
        f.write(b"x" * 4096)
        f.flush()
        n += 4096
        time.sleep(0.01)
time.sleep(600)
'''


def _steady_keeps_checkpointing(you, steady_id: str, seconds: float = 12, at_least: int = 3) -> None:
    before = _seq(you, steady_id)
    time.sleep(seconds)
    after = _seq(you, steady_id)
    assert after - before >= at_least, (f"the steady job's checkpoints stalled beside the hostile one: seq {before}"
                                        f" -> {after} in {seconds:.0f} s")


@pytest.mark.netns
def test_checkpoint_oddities_neither_hang_nor_crash_the_daemon_and_the_good_file_comes_home(cluster, tmp_path):
    w, you, owner_home = _pair_of_hosts(cluster)
    try:
        steady = Run(you, project(you, {"steady.py": STEADY}), "-n", "w", "steady.py", STEADY_STEP)
        steady_id = steady.job_id(40)
        odd = Run(you, project(you, {"odd.py": ODDITIES}), "-n", "w", "odd.py")
        odd_id = odd.job_id(40)
        odd.wait_out("ready", 60)
        _steady_keeps_checkpointing(you, steady_id)
        wait_until(lambda: _seq(you, odd_id) >= 1, 30, msg="the good file beside the oddities to come home")
        store = next(you.home.rglob(f"{odd_id}/checkpoint/CURRENT")).parent
        got = {str(p.relative_to(store)).split("/files/", 1)[-1] for p in store.rglob("*") if p.is_file()}
        assert "checkpoint/state" in got, got
        assert not any("fifo" in g or "sock" in g or "null" in g for g in got), got
        _daemon_fine(w)
        r = w.homie("pause", "--evict")  # and the final checkpoint of it all
        assert r.returncode == 0, r.stdout + r.stderr
        wait_until(lambda: [a.get("outcome") for a in _ps(you, odd_id)["attempts"]][:1] == ["evicted"], 60,
                   msg="the job to be evicted")
        _daemon_fine(w)
        assert "Traceback" not in odd.err(), odd.err()
    finally:
        you.homie("kill", "--all")
        shutil.rmtree(owner_home, ignore_errors=True)


@pytest.mark.netns
def test_a_checkpoint_that_costs_the_job_nothing_does_not_stall_the_daemon(cluster, tmp_path):
    w, you, owner_home = _pair_of_hosts(cluster)
    try:
        steady = Run(you, project(you, {"steady.py": STEADY}), "-n", "w", "steady.py", STEADY_STEP)
        steady_id = steady.job_id(40)
        _steady_keeps_checkpointing(you, steady_id, 8, 2)
        hog = Run(you, project(you, {"hog.py": HOG}), "-n", "w", "hog.py", "50000", "25")
        hog_id = hog.job_id(40)
        hog.wait_out("ready", 120)
        pid = daemon_pid(w)
        _steady_keeps_checkpointing(you, steady_id)
        t = time.monotonic()
        _daemon_fine(w)
        assert time.monotonic() - t < 10, "homie status took more than 10 s"
        rss = vm_hwm_kb(pid) * 1024
        assert rss < 300 << 20, f"the worker's daemon grew to {rss >> 20} MiB"
        r = w.homie("pause", "--evict")
        assert r.returncode == 0, r.stdout + r.stderr
        try:
            wait_until(lambda: [a.get("outcome") for a in _ps(you, hog_id)["attempts"]][:1] == ["evicted"], 60,
                       msg="the hog to be evicted (its final checkpoint and results must not hold the eviction up)")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_why(w, hog)}") from None
        assert "homie: no final checkpoint: a checkpoint of more than" in hog.out() + hog.err(), _why(w, hog)
        assert w.homie("resume").returncode == 0
        _daemon_fine(w)
        assert not list(you.home.rglob("sparse")), "a 1 TiB sparse checkpoint was stored by the submitter"
    finally:
        you.homie("kill", "--all")
        shutil.rmtree(owner_home, ignore_errors=True)


@pytest.mark.netns
def test_checkpoint_paths_outside_the_job_directory_are_refused_at_submit(cluster, tmp_path):
    [you] = make_group(cluster, ["you"])
    proj = project(you, {"job.py": "print('hi')\n"})
    for bad in ("../../x", "/etc", "checkpoint/../../x", ".homie/x", "a/\n/b"):
        r = you.homie("run", "--checkpoint", bad, "job.py", cwd=proj, timeout=30)
        assert r.returncode != 0, (bad, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip(), (bad, r.stderr)
        assert "checkpoint" in r.stderr, (bad, r.stderr)
    _daemon_fine(you)


# As many checkpoint files as a snapshot may hold open, one rewritten every
# second so that a new snapshot is taken beside the old: descriptors the
# worker's daemon holds for the job, times every job a member sends.
FD_HOG = r'''
import os, time
ck = os.environ["HOMIE_CHECKPOINT_DIR"]
for i in range(250):
    with open(os.path.join(ck, f"part{i:03d}"), "w") as f:
        f.write(str(i))
print("ready", flush=True)
n = 0
while True:
    n += 1
    with open(os.path.join(ck, "step.tmp"), "w") as f:
        f.write(str(n))
    os.replace(os.path.join(ck, "step.tmp"), os.path.join(ck, "step"))
    time.sleep(1.3)
'''


@pytest.mark.netns
def test_checkpoint_snapshots_of_many_jobs_do_not_exhaust_the_daemons_descriptors(cluster, tmp_path):
    """The daemon started as most are (a soft limit of 1024 open files): four
    jobs of 250 checkpoint files each must not leave it unable to open a file
    or take a connection."""
    w, you = make_group(cluster, ["w", "you"], config={"checkpoint_interval": 1},
                        per_host={"you": {"max_jobs": 0}, "w": {"max_jobs": 6, "sandbox": "required"}},
                        start=False)
    start_daemon(you)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    r = w.run("prlimit", f"--nofile=1024:{hard}", homie_bin(), "up", "--name", "w", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: "w" in peer_names(you), 20, msg="you to see w")
    hogs = [Run(you, project(you, {"fds.py": FD_HOG}), "-n", "w", "fds.py") for _ in range(4)]
    try:
        ids = [h.job_id(60) for h in hogs]
        for h in hogs:
            h.wait_out("ready", 60)
        try:
            wait_until(lambda: all(_seq(you, j) >= 2 for j in ids), 90,
                       msg="two checkpoints of every descriptor hog to come home")
        except AssertionError as e:
            raise AssertionError(f"{e}: {[_seq(you, j) for j in ids]}\n{_why(w)}") from None
        time.sleep(5)
        _daemon_fine(w)
        ok = you.homie("run", "-n", "w", "ok.py", cwd=project(you, {"ok.py": "print('still fine')\n"}), timeout=90)
        assert ok.returncode == 0 and "still fine" in ok.stdout, (ok.stdout, ok.stderr, _why(w))
        log = (w.home / "logs" / "homie.log").read_text(errors="replace")
        assert "Too many open files" not in log, log[-3000:]
    finally:
        you.homie("kill", "--all")
