"""Jobs survive friends leaving: a training job that checkpoints every epoch
finishes on another peer with byte-identical results when its worker is
killed, cut off, evicted, comes back mid-migration, or when the submitter
itself restarts mid-migration. Real daemons on namespace hosts, real CLI."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobhelp import Run, daemon_pid, make_group, marker, processes, project, start_daemon, vm_hwm_kb
from netns import wait_until

pytestmark = pytest.mark.netns

INTERVAL = 1.0  # checkpoint_interval of the submitter
PEER_TIMEOUT = 3.0  # jobhelp's BASE_CONFIG
EPOCHS = 14
STEP = 0.5  # seconds one epoch sleeps, on top of its (tiny) compute

# Model state, optimizer state and RNG state, pickled into one file that is written
# and renamed into place after every epoch: what PyTorch/Keras trainers do.
TRAIN = r'''
import os, pickle, random, sys, time

epochs, step = int(sys.argv[1]), float(sys.argv[2])
ckpt = os.path.join(os.environ["HOMIE_CHECKPOINT_DIR"], "state.pkl")
if os.path.exists(ckpt):
    with open(ckpt, "rb") as f:
        state = pickle.load(f)
    print(f"resumed at epoch {state['epoch']}", flush=True)
else:
    state = {"epoch": 0, "w": [0.0] * 2000, "m": [0.0] * 2000, "rng": random.Random(1234).getstate()}
rng = random.Random()
rng.setstate(state["rng"])
w, m = state["w"], state["m"]
while state["epoch"] < epochs:
    for i in range(len(w)):
        g = rng.gauss(0.0, 1.0) + 0.1 * w[i]
        m[i] = 0.9 * m[i] + g
        w[i] -= 0.01 * m[i]
    time.sleep(step)
    state["epoch"] += 1
    state["rng"] = rng.getstate()
    with open(ckpt + ".tmp", "wb") as f:
        pickle.dump(state, f)
    os.replace(ckpt + ".tmp", ckpt)
    print(f"epoch {state['epoch']}/{epochs} loss {sum(x * x for x in w):.9f}", flush=True)
with open("model.txt", "w") as f:
    f.write(repr(w))
print("done", flush=True)
'''


def expected_model(tmp_path: Path, epochs: int = EPOCHS) -> str:
    """The same training, uninterrupted, run here by plain Python."""
    d = tmp_path / f"reference-{epochs}"
    (d / "checkpoint").mkdir(parents=True)
    (d / "train.py").write_text(TRAIN)
    subprocess.run([sys.executable, "train.py", str(epochs), "0"], cwd=d, check=True, capture_output=True,
                   env={**os.environ, "HOMIE_CHECKPOINT_DIR": str(d / "checkpoint")})
    return (d / "model.txt").read_text()


def trio(cluster, **extra):
    # "you" only submits (max_jobs 0), so a job lost by one friend must move to the other.
    return make_group(cluster, ["raj", "mike", "you"], config={"checkpoint_interval": INTERVAL, **extra},
                      per_host={"you": {"max_jobs": 0}})


def worker_of(run: Run, hosts) -> tuple:
    run.wait_out("epoch 3/", 40)
    name = re.search(r"\[(\w+)\] epoch 3/", run.out()).group(1)
    first = next(h for h in hosts if h.name == name)
    other = next(h for h in hosts if h.name != name)
    return first, other


def ps_job(h, job_id: str) -> dict:
    r = h.homie("ps", "--all", "--json")
    assert r.returncode == 0, r.stderr
    return next(j for j in json.loads(r.stdout)["sent"] if j["job_id"] == job_id)


def wait_checkpoint(h, job_id: str, seq: int = 1, timeout: float = 20) -> dict:
    wait_until(lambda: (ps_job(h, job_id).get("checkpoint_seq") or 0) >= seq, timeout,
               msg=f"checkpoint {seq} of {job_id} to reach {h.name}")
    return ps_job(h, job_id)


def redone_epochs(out: str) -> int:
    """Epochs computed more than once: printed epoch lines beyond the EPOCHS of one run."""
    return len(re.findall(r"\] epoch \d+/", out)) - EPOCHS


def check_finished(run: Run, proj: Path, tmp_path: Path, resumed_on: str, code_timeout: float = 90,
                   epochs: int = EPOCHS) -> None:
    code = run.wait(code_timeout)
    assert code == 0, (code, run.out()[-2000:], run.err()[-2000:])
    assert re.search(rf"→ resumed on {resumed_on} from the checkpoint of \d\d:\d\d:\d\d \(attempt 2\)",
                     run.err()), run.err()
    got = (proj / "results" / "model.txt").read_text()
    assert got == expected_model(tmp_path, epochs), "results differ from an uninterrupted run"


def test_kill_9_of_the_worker_resumes_elsewhere_from_the_last_checkpoint(cluster, tmp_path):
    hosts = trio(cluster)
    raj, mike, you = hosts
    proj = project(you, {"train.py": TRAIN})
    run = Run(you, proj, "train.py", str(EPOCHS), str(STEP))
    job = run.job_id()
    first, other = worker_of(run, [raj, mike])
    before = wait_checkpoint(you, job)
    t = time.monotonic()
    os.kill(daemon_pid(first), signal.SIGKILL)
    run.wait_out(f"[{other.name}] resumed at epoch", 30)
    moved = time.monotonic() - t
    check_finished(run, proj, tmp_path, other.name)
    redone = redone_epochs(run.out())
    bound = math.ceil((INTERVAL + PEER_TIMEOUT) / STEP)
    print(f"kill -9: resumed on {other.name} {moved:.1f} s after the kill; {redone} epochs redone"
          f" ({redone * STEP:.1f} s of work; bound {bound} epochs); checkpoint before the kill: seq"
          f" {before['checkpoint_seq']}")
    assert 0 <= redone <= bound, run.out()
    info = ps_job(you, job)
    assert [a["peer"] for a in info["attempts"]] == [first.name, other.name], info["attempts"]
    assert [a["outcome"] for a in info["attempts"]] == ["lost", "done"], info["attempts"]


def test_link_cut_then_the_old_worker_comes_back_mid_run(cluster, tmp_path):
    """The first worker vanishes from the LAN (no FIN), the job resumes on the
    other; when the first comes back while the job runs there, its old attempt is
    killed and dropped: one result, from the attempt that finished."""
    hosts = trio(cluster)
    raj, mike, you = hosts
    mark = marker()
    proj = project(you, {"train.py": TRAIN})
    run = Run(you, proj, "train.py", str(EPOCHS), str(STEP), mark)
    job = run.job_id()
    first, other = worker_of(run, [raj, mike])
    wait_checkpoint(you, job)
    first.link_down()
    run.wait_out(f"[{other.name}] resumed at epoch", 30)
    assert processes(first, mark), "the cut-off worker's attempt should still be running"
    first.link_up()
    # Back on the LAN: the submitter stops the old attempt and the worker drops it.
    wait_until(lambda: not processes(first, mark), 20, msg="the stale attempt to be killed")
    check_finished(run, proj, tmp_path, other.name)
    wait_until(lambda: not ps_job(you, job)["stale"], 20, msg="the stale attempt to be forgotten")
    r = first.homie("ps", "--json")
    assert job not in r.stdout, r.stdout
    assert redone_epochs(run.out()) <= math.ceil((INTERVAL + PEER_TIMEOUT) / STEP) + 1


def test_eviction_takes_the_last_checkpoint_and_keeps_the_karma(cluster, tmp_path):
    hosts = trio(cluster, evict_grace_seconds=2)
    raj, mike, you = hosts
    proj = project(you, {"train.py": TRAIN})
    run = Run(you, proj, "train.py", str(EPOCHS), str(STEP))
    job = run.job_id()
    first, other = worker_of(run, [raj, mike])
    r = first.homie("pause", "--evict")
    assert r.returncode == 0 and "evict" in r.stdout, r.stdout + r.stderr
    run.wait_out(f"[{other.name}] resumed at epoch", 30)
    check_finished(run, proj, tmp_path, other.name)
    # An eviction is not a failure: no retry spent, the final checkpoint came home.
    assert redone_epochs(run.out()) <= 1, run.out()
    info = ps_job(you, job)
    assert [a["outcome"] for a in info["attempts"]] == ["evicted", "done"], info["attempts"]
    karma = json.loads(first.homie("karma", "--json").stdout)
    given = next(k for k in karma["ledger"] if k["peer"] == "you")
    assert given["given_cpu_s"] > 0 and given["jobs_given"] >= 1, karma


def test_the_owner_coming_back_under_accept_jobs_idle_evicts(cluster, tmp_path):
    hosts = make_group(cluster, ["raj", "mike", "you"],
                       config={"checkpoint_interval": INTERVAL, "evict_grace_seconds": 2},
                       per_host={"you": {"max_jobs": 0}, "raj": {"accept_jobs": "idle"}})
    raj, mike, you = hosts
    assert mike.homie("pause").returncode == 0  # so the job starts on raj
    proj = project(you, {"train.py": TRAIN})
    epochs = 60  # long enough for the owner to be noticed (about 6 s of load) before it ends
    run = Run(you, proj, "train.py", str(epochs), str(STEP))
    job = run.job_id()
    run.wait_out("[raj] epoch 2/", 40)
    assert mike.homie("resume").returncode == 0
    burners = [raj.spawn(sys.executable, "-c", "while True: pass") for _ in range(os.cpu_count() or 2)]
    try:
        try:
            run.wait_out("[mike] resumed at epoch", 40)
        except AssertionError:
            for h in (raj, you):
                print(h.name, (h.home / "logs" / "homie.log").read_text()[-6000:])
            raise
    finally:
        for b in burners:
            b.kill()
            b.wait()
    check_finished(run, proj, tmp_path, "mike", epochs=epochs)
    info = ps_job(you, job)
    assert [a["outcome"] for a in info["attempts"]] == ["evicted", "done"], info["attempts"]
    assert "owner is using it" in (info["attempts"][0]["why"] or ""), info["attempts"]


def test_submitter_restart_during_the_migration_loses_nothing(cluster, tmp_path):
    hosts = trio(cluster)
    raj, mike, you = hosts
    epochs = 2 * EPOCHS  # this test does more between checkpoint 2 and the kill: room for a loaded machine
    proj = project(you, {"train.py": TRAIN})
    r = you.homie("run", "--detach", "train.py", str(epochs), str(STEP), cwd=proj)
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()
    wait_checkpoint(you, job, seq=2, timeout=40)
    first = next(h for h in (raj, mike) if ps_job(you, job)["peer"] == h.name)
    other = mike if first is raj else raj
    assert other.homie("pause").returncode == 0  # nowhere to go yet: the migration waits in the queue
    os.kill(daemon_pid(first), signal.SIGKILL)
    seen: list[tuple] = []

    def requeued() -> bool:
        info = ps_job(you, job)
        if not seen or seen[-1] != (info["status"], info["attempt"]):
            seen.append((info["status"], info["attempt"]))
        return info["status"] == "queued" and info["attempt"] == 2

    try:
        wait_until(requeued, 20, msg="the job to wait for its second attempt")
    except AssertionError as e:
        raise AssertionError(f"{e}; its (status, attempt) went {seen}") from None
    os.kill(daemon_pid(you), signal.SIGKILL)  # the submitter dies mid-migration
    start_daemon(you)
    assert ps_job(you, job)["attempt"] == 2
    assert other.homie("resume").returncode == 0
    a = you.homie("attach", job, cwd=proj, timeout=90)
    assert a.returncode == 0, a.stdout + a.stderr
    assert f"[{other.name}] resumed at epoch" in a.stdout, a.stdout
    assert (proj / "results" / "model.txt").read_text() == expected_model(tmp_path, epochs)


def test_a_200mb_checkpoint_with_1mb_changed_sends_about_1mb(cluster):
    raj, you = make_group(cluster, ["raj", "you"], config={"checkpoint_interval": INTERVAL},
                          per_host={"you": {"max_jobs": 0}})
    proj = project(you, {"big.py": r'''
import os, random, sys, time
MB = 1 << 20
path = os.path.join(os.environ["HOMIE_CHECKPOINT_DIR"], "weights.bin")
data = bytearray(random.Random(7).randbytes(200 * MB))
for epoch in range(1, 5):
    data[epoch * 37 * MB: epoch * 37 * MB + MB] = random.Random(epoch).randbytes(MB)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
    print("epoch", epoch, flush=True)
    time.sleep(6)
'''})
    run = Run(you, proj, "big.py")
    job = run.job_id()
    wait_checkpoint(you, job, seq=1, timeout=60)  # the first one travels whole
    c1 = raj.iface_counters()["sent"]
    info1 = ps_job(you, job)
    wait_checkpoint(you, job, seq=3, timeout=30)
    c3 = raj.iface_counters()["sent"]
    per = (c3 - c1) / (ps_job(you, job)["checkpoint_seq"] - info1["checkpoint_seq"])
    print(f"200 MB checkpoint, 1 MB changed per epoch: {per / 1e6:.2f} MB on raj's veth per checkpoint")
    assert per < 4e6, per
    # Memory stays flat on both sides: 1 MiB at a time, whatever the checkpoint's size.
    hwm = {h.name: vm_hwm_kb(daemon_pid(h)) / 1024 for h in (raj, you)}
    print(f"daemons' peak RSS after 200 MB checkpoints: {hwm}")
    assert all(mb < 150 for mb in hwm.values()), hwm
    run.proc.kill()


def test_retries_restart_a_plain_job_from_scratch(cluster, tmp_path):
    """--retries N without a checkpoint: the job runs again from the beginning elsewhere."""
    hosts = trio(cluster)
    raj, mike, you = hosts
    proj = project(you, {"plain.py": "import sys, time\nfor i in range(12):\n"
                                     "    print('tick', i, flush=True)\n    time.sleep(0.4)\n"})
    run = Run(you, proj, "--retries", "1", "plain.py")
    run.wait_out("tick 3", 40)
    first = next(h for h in (raj, mike) if f"[{h.name}] tick 3" in run.out())
    other = mike if first is raj else raj
    os.kill(daemon_pid(first), signal.SIGKILL)
    code = run.wait(60)
    assert code == 0, (run.out()[-2000:], run.err()[-2000:])
    assert f"→ resumed on {other.name} from the beginning (attempt 2)" in run.err(), run.err()
    assert f"[{other.name}] tick 0" in run.out() and f"[{other.name}] tick 11" in run.out()


MAPPED_STEPS = r'''
import os, sys, time
path = os.path.join(os.environ["HOMIE_CHECKPOINT_DIR"], "step")
step = int(open(path).read()) if os.path.exists(path) else 0
if step:
    print("resumed at step", step, flush=True)
while step < 12:
    time.sleep(0.5)
    step += 1
    with open(path + ".tmp", "w") as f:
        f.write(str(step))
    os.replace(path + ".tmp", path)
    print("step", step, flush=True)
with open("done-" + os.path.basename(sys.argv[1]), "w") as f:
    f.write(open(sys.argv[1]).read())
'''


def test_map_resumes_a_lost_input_from_its_checkpoint(cluster):
    from netns import homie_bin

    hosts = trio(cluster)
    raj, mike, you = hosts
    proj = project(you, {"steps.py": MAPPED_STEPS, "data/a.txt": "A\n", "data/b.txt": "B\n"})
    log, err = proj / "map.out", proj / "map.err"
    with open(log, "w") as out, open(err, "w") as e:
        proc = you.spawn(homie_bin(), "map", "-j", "2", "--over", "data/*.txt", "steps.py", cwd=proj,
                         stdout=out, stderr=e)
    wait_until(lambda: "step 2" in log.read_text(), 40, msg="the inputs to get going")
    first = next(h for h in (raj, mike) if f"[{h.name} " in log.read_text())

    def checkpointed_there():
        sent = json.loads(you.homie("ps", "--json").stdout)["sent"]
        return [j for j in sent if j["peer"] == first.name and (j.get("checkpoint_seq") or 0) >= 1]

    # Kill it once a checkpoint of an input running there has come home.
    wait_until(checkpointed_there, 30, msg=f"a checkpoint from {first.name}")
    os.kill(daemon_pid(first), signal.SIGKILL)
    code = proc.wait(timeout=120)
    out = log.read_text()
    assert code == 0, out[-2000:] + err.read_text()[-2000:]
    resumed = [int(m) for m in re.findall(r"resumed at step (\d+)", out)]
    assert resumed and min(resumed) >= 1, out
    done = {p.name: p.read_text() for p in (proj / "results").rglob("done-*")}
    assert done == {"done-a.txt": "A\n", "done-b.txt": "B\n"}, done
    print(f"map: a lost input resumed at step(s) {resumed} instead of 0")
