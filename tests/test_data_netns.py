"""Data path between real daemons on namespace hosts (issue 4).

Two hosts: "sub" (max_jobs 0) submits, "work" runs. What travels is measured on
the wire: the byte counters of sub's veth (what sub *sent*), so "not re-sent"
and "re-sent" are facts about the link, not about homie's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import textwrap
import time
from pathlib import Path

import pytest

from netns import wait_until

FAST = {"heartbeat_interval": 0.5, "peer_timeout": 3.0}
MiB = 2**20

pytestmark = pytest.mark.netns


# ----------------------------------------------------------------------------- helpers


def configure(host, **settings) -> None:
    host.home.mkdir(parents=True, exist_ok=True)
    (host.home / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))


def make_pair(cluster, work_settings: dict | None = None):
    """sub (submits only) and work (runs), sharing one key, both up and seeing each other."""
    sub, work = cluster.add_host("sub"), cluster.add_host("work")
    configure(sub, **FAST, max_jobs=0)
    configure(work, **{**FAST, **(work_settings or {})})
    cp = sub.homie("init")
    assert cp.returncode == 0, cp.stderr
    key = re.search(r"^group key: (\S+)$", cp.stdout, re.M).group(1)
    assert work.homie("join", key).returncode == 0
    for h in (sub, work):
        cp = h.homie("up", "--name", h.name)
        assert cp.returncode == 0, cp.stdout + cp.stderr

    def sees_work():
        cp = sub.homie("peers", "--json")
        return cp.returncode == 0 and "work" in {p["name"] for p in json.loads(cp.stdout)}

    wait_until(sees_work, 10, msg="sub sees work")
    return sub, work


def workdir(host, name: str = "proj") -> Path:
    """A directory readable by the job user (jobs run as nobody under a root daemon)."""
    os.chmod(host.home, 0o755)
    d = host.home / name
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    return d


def put(root: Path, rel: str, data: bytes | str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    parent = p.parent
    while parent != root and root in parent.parents:
        os.chmod(parent, 0o755)
        parent = parent.parent
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(0o644)
    return p


def random_file(path: Path, size: int, seed: str) -> str:
    """Deterministic pseudo-random bytes (sha256 counter blocks); returns the file's sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        block = 0
        left = size
        while left > 0:
            chunk = b"".join(hashlib.sha256(f"{seed}:{block}:{i}".encode()).digest() for i in range(32768))[:left]
            block += 1
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    path.chmod(0o644)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def sent_by(host, fn):
    """Run fn(); return (its result, bytes host sent on its link meanwhile)."""
    before = host.iface_counters()["sent"]
    res = fn()
    return res, host.iface_counters()["sent"] - before


def blob_files(host) -> list[Path]:
    return [p for p in (host.home / "cache" / "blobs").glob("??/*") if p.is_file()]


def daemon_pid(host) -> int:
    return int((host.home / "homie.pid").read_text().split()[0])


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def sub_jobs(sub) -> list[dict]:
    cp = sub.homie("ps", "--json", "--all")
    return json.loads(cp.stdout)["sent"] if cp.returncode == 0 else []


LIST_FILES = """
    import hashlib, os
    for root, dirs, names in os.walk("."):
        if root == ".":
            dirs[:] = [d for d in dirs if d != ".homie"]
        for n in names:
            rel = os.path.relpath(os.path.join(root, n), ".")
            print("FILE", rel, hashlib.sha256(open(rel, "rb").read()).hexdigest(), flush=True)
"""


def listed(out: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[work\] FILE (\S+) ([0-9a-f]{64})$", out, re.M)}


# ----------------------------------------------------------------------------- 1. what a job sees


def test_directory_job_honours_ignore_rules_and_f_globs(cluster):
    sub, work = make_pair(cluster)
    top = workdir(sub, "top")
    proj = top / "proj"
    proj.mkdir()
    proj.chmod(0o755)
    sent = {
        "main.py": textwrap.dedent(LIST_FILES) + "import pkg.util\nprint('util says', pkg.util.answer())\n",
        "pkg/util.py": "def answer():\n    return 42\n",
        "data/in.csv": "a,b\n1,2\n",
        ".gitignore": "*.log\nbuild/\n",
        "pkg/.gitignore": "secret.txt\n",
        ".homieignore": "big/\n",
    }
    skipped = {
        ".git/config": "[core]\n", ".venv/x": "venv", "__pycache__/y.pyc": "pyc", "app.log": "log",
        "build/out": "out", "pkg/secret.txt": "secret", "big/blob.bin": os.urandom(4096),
    }
    for rel, data in {**sent, **skipped}.items():
        put(proj, rel, data)

    cp = sub.homie("run", "-d", "proj", "proj/main.py", cwd=str(top), timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "[work] util says 42" in cp.stdout
    seen = listed(cp.stdout)
    # Python may leave pkg/__pycache__ behind after the import; the listing ran before it.
    want = {rel: hashlib.sha256((proj / rel).read_bytes()).hexdigest() for rel in sent}
    assert seen == want, f"job saw {sorted(seen)}, expected {sorted(want)}"
    for rel in skipped:
        assert rel not in seen
    n_dir = len(seen)
    # The job created nothing, so nothing comes back: no bytecode of the shipped pkg/util.py either.
    back = sorted(str(p.relative_to(top / "results")) for p in (top / "results").rglob("*") if p.is_file()) \
        if (top / "results").exists() else []
    assert back == [], f"results of a job that wrote nothing: {back}"

    # -f with a quoted glob and several -f files; without -d, names are relative to the script's dir.
    fj = workdir(sub, "fjob")
    shipped = {
        "job.py": textwrap.dedent(LIST_FILES),
        "data/a.csv": "x\n1\n", "data/b.csv": "y\n2\n", "notes.txt": "notes\n", "extra/cfg.json": "{}\n",
    }
    for rel, data in {**shipped, "data/skip.txt": "no", "other.txt": "no"}.items():
        put(fj, rel, data)
    cp = sub.homie("run", "-f", "data/*.csv", "-f", "notes.txt", "-f", "extra/cfg.json", "job.py",
                   cwd=str(fj), timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    seen = listed(cp.stdout)
    want = {rel: hashlib.sha256((fj / rel).read_bytes()).hexdigest() for rel in shipped}
    assert seen == want, f"job saw {sorted(seen)}, expected {sorted(want)}"
    print(f"\n[data] -d job saw {n_dir} files, results back: {back}; -f job saw {sorted(seen)}")


# ----------------------------------------------------------------------------- 2. only changes travel

READ_INPUT = """
    import hashlib, sys
    print("sha", hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest(), flush=True)
"""


def test_unchanged_input_is_not_resent_changed_one_is(cluster):
    sub, work = make_pair(cluster)
    d = workdir(sub)
    job = put(d, "job.py", textwrap.dedent(READ_INPUT))
    data = d / "data.bin"
    want = random_file(data, 20 * MiB, "case2")

    def run():
        cp = sub.homie("run", "-f", "data.bin", str(job), "data.bin", cwd=str(d), timeout=120)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        return cp

    t0 = time.monotonic()
    cp, first = sent_by(sub, run)
    t_first = time.monotonic() - t0
    assert f"[work] sha {want}" in cp.stdout
    assert first >= 20 * MiB, first
    m = re.search(r"→ sending to work \([^)]*\) \((\d+) files, ([\d.]+) MB\)", cp.stderr)
    assert m, cp.stderr
    # decimal megabytes, as the progress bar counts them: 20 MiB is 21.0 MB
    assert int(m.group(1)) == 2 and abs(float(m.group(2)) - 20 * MiB / 1e6) < 0.1, m.group(0)

    t0 = time.monotonic()
    cp, again = sent_by(sub, run)
    t_again = time.monotonic() - t0
    assert f"[work] sha {want}" in cp.stdout
    assert again < MiB, f"unchanged 20 MiB input: sub sent {again} bytes"

    with open(data, "r+b") as f:  # one byte changed, same size
        f.seek(12345)
        b = f.read(1)
        f.seek(12345)
        f.write(bytes([b[0] ^ 0xFF]))
    changed = sha256_of(data)
    assert changed != want
    cp, third = sent_by(sub, run)
    assert f"[work] sha {changed}" in cp.stdout
    assert third >= 20 * MiB, f"changed input: sub sent only {third} bytes"
    print(f"\n[data] 20 MiB input: first run sent {first} B ({t_first:.1f} s), unchanged {again} B"
          f" ({t_again:.1f} s), one byte changed {third} B; line: {m.group(0)}")


# ----------------------------------------------------------------------------- 3. eviction under the cap


def test_blob_cache_evicts_oldest_under_cap(cluster):
    sub, work = make_pair(cluster, {"cache_max_gb": 0.05})
    cap = int(0.05 * 2**30)
    d = workdir(sub)
    job = put(d, "job.py", textwrap.dedent(READ_INPUT))
    shas = []
    for i in range(3):
        shas.append(random_file(d / f"in{i}.bin", 20 * MiB, f"case3-{i}"))

    def run(i):
        def go():
            cp = sub.homie("run", "-f", f"in{i}.bin", str(job), f"in{i}.bin", cwd=str(d), timeout=120)
            assert cp.returncode == 0, cp.stdout + cp.stderr
            assert f"[work] sha {shas[i]}" in cp.stdout
            return cp
        return sent_by(sub, go)[1]

    first = [run(i) for i in range(3)]
    assert all(n >= 20 * MiB for n in first), first
    blobs = blob_files(work)
    total = sum(p.stat().st_size for p in blobs)
    names = {p.name for p in blobs}
    assert total <= cap, f"blob cache holds {total} bytes, cap {cap}"
    assert shas[0] not in names, "the oldest blob was not evicted"
    assert shas[1] in names and shas[2] in names
    for p in blobs:
        assert sha256_of(p) == p.name

    again_first = run(0)
    assert again_first >= 20 * MiB, f"evicted input re-sent only {again_first} bytes"
    again_third = run(2)
    assert again_third < MiB, f"cached input sent again: {again_third} bytes"
    total_after = sum(p.stat().st_size for p in blob_files(work))
    assert total_after <= cap
    print(f"\n[data] cap {cap} B: 3 x 20 MiB sent {first} B; cache {total} B after; re-run of the first"
          f" sent {again_first} B, of the third {again_third} B; cache {total_after} B")


# ----------------------------------------------------------------------------- 4. a 500 MB result

BIG_RESULT = """
    import hashlib, os, sys
    size = int(sys.argv[1]) * 2**20
    h = hashlib.sha256()
    with open("big.out", "wb") as f:
        for _ in range(size // 2**20):
            chunk = os.urandom(2**20)
            h.update(chunk)
            f.write(chunk)
    print("sha", h.hexdigest(), flush=True)
"""


def test_500mb_result_arrives_intact_with_flat_memory(cluster):
    sub, work = make_pair(cluster)
    d = workdir(sub)
    job = put(d, "big.py", textwrap.dedent(BIG_RESULT))
    t0 = time.monotonic()
    cp, _ = sent_by(sub, lambda: sub.homie("run", str(job), "500", cwd=str(d), timeout=240))
    took = time.monotonic() - t0
    assert cp.returncode == 0, cp.stdout + cp.stderr
    want = re.search(r"^\[work\] sha ([0-9a-f]{64})$", cp.stdout, re.M).group(1)
    out = d / "results" / "big.out"
    assert out.stat().st_size == 500 * MiB
    assert sha256_of(out) == want
    rss = {h.name: vm_hwm(daemon_pid(h)) for h in (sub, work)}
    for name, peak in rss.items():
        assert peak < 100 * 10**6, f"{name}'s daemon peaked at {peak / 1e6:.0f} MB"
    print(f"\n[data] 500 MiB result in {took:.1f} s (job + transfer); peak RSS "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in rss.items()))


# ----------------------------------------------------------------------------- 5. cut transfers


def test_upload_cut_midway_fails_cleanly(cluster):
    sub, work = make_pair(cluster)
    d = workdir(sub)
    job = put(d, "job.py", textwrap.dedent(READ_INPUT))
    random_file(d / "data.bin", 60 * MiB, "case5a")
    work.set_rate(20_000)  # 20 Mbit/s: 60 MiB take ~25 s
    run = sub.homie_spawn("run", "-f", "data.bin", str(job), "data.bin", cwd=str(d))
    wait_until(lambda: "sending to work" in run.log(), 30, msg="upload started")
    time.sleep(2.0)
    assert "job started" not in run.log()
    work.link_down()
    t0 = time.monotonic()
    code = run.wait(30)
    took = time.monotonic() - t0
    out = run.log()
    assert code in (71, 72), out
    assert took < 15, f"the run took {took:.1f} s to give up"
    assert re.search(r"\bwork\b.*(went away|failed|lost)|(failed|lost).*\bwork\b", out.split("sending to", 1)[1]), out
    assert not (d / "results" / "job.out").exists()

    tmp = work.home / "cache" / "blobs" / "tmp"
    partial_while_down = len(list(tmp.iterdir()))
    work.link_up()
    work.clear_rate()
    waited = wait_until(lambda: not any(tmp.iterdir()), 45, interval=0.5, msg="partial blob removed on work")
    for p in blob_files(work):
        assert sha256_of(p) == p.name, f"{p} does not match its name"
    assert not any((work.home / "work").iterdir()), list((work.home / "work").iterdir())
    msg = [ln for ln in out.splitlines() if "work" in ln and "sending" not in ln]
    print(f"\n[data] upload cut: run exited {code} {took:.1f} s after link down; {partial_while_down} partial"
          f" blob(s) while down, gone {waited:.1f} s after link up; message: {msg[-1] if msg else out[-200:]}")


def test_download_cut_midway_leaves_no_result(cluster):
    sub, work = make_pair(cluster)
    d = workdir(sub)
    job = put(d, "big.py", textwrap.dedent(BIG_RESULT))
    work.set_rate(20_000)  # the 100 MB result takes ~40 s to come home
    run = sub.homie_spawn("run", str(job), "100", cwd=str(d))

    def fetching():
        return any(j["status"] == "fetching" for j in sub_jobs(sub))

    wait_until(fetching, 60, interval=0.1, msg="result download started")
    job_id = next(j["job_id"] for j in sub_jobs(sub) if j["status"] == "fetching")
    incoming = sub.home / "jobs" / job_id / ".incoming"
    wait_until(lambda: any(incoming.rglob("*")), 10, interval=0.05, msg="bytes arrive in .incoming")
    time.sleep(1.0)
    work.link_down()
    t0 = time.monotonic()
    code = run.wait(40)
    took = time.monotonic() - t0
    out = run.log()
    assert code in (71, 72), out
    assert "work" in out.split("sending to", 1)[1], out
    assert not (d / "results" / "big.out").exists()
    leftovers = [p for p in (d / "results").rglob("*") if p.is_file()] if (d / "results").exists() else []
    assert not leftovers, leftovers
    assert not incoming.exists(), "a partial download stayed in .incoming"
    assert not (sub.home / "jobs" / job_id / "results").exists()
    work.link_up()
    print(f"\n[data] download cut: run exited {code} {took:.1f} s after link down; last line:"
          f" {out.strip().splitlines()[-1]}")
