"""The benchmark run: build a namespace LAN, measure everything, print and write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from bench import pyapi  # noqa: E402
from bench import sshd as sshmod  # noqa: E402
from bench.util import (BenchError, NETNS, cpu_seconds, machine_facts, timed, vm_hwm_kb,
                        vm_rss_kb)  # noqa: E402

MB = 1_000_000
MiB = 1 << 20
RAW_PORT = 7000
DOC = REPO / "docs" / "benchmarks.md"


def _venv_python() -> Path:
    return REPO / ".venv" / "bin" / "python"


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.size = args.size if args.size else (128 * MiB if args.quick else 1 << 30)
        self.reps = {
            "discovery": 3 if self.quick else 5,
            "hello": 5 if self.quick else 10,
            "peers": 10 if self.quick else 20,
            "baseline": 3 if self.quick else 5,
            "rerun": 3 if self.quick else 5,
            "upload": 2 if self.quick else 3,
        }
        self.t0 = time.monotonic()
        self.py = str(_venv_python())
        self.results: dict = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.sshd = None
        self.ssh_missing: str | None = None

    # -- small helpers ---------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def homie_cli(self) -> str:
        from netns import homie_bin

        return homie_bin()

    def peers(self, host) -> set:
        r = timed(host, [self.homie_cli(), "peers", "--json"], timeout=20)
        if r.rc != 0:
            return set()
        return {p["name"] for p in json.loads(r.out)}

    def wait_sees(self, host, name: str, present: bool = True, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (name in self.peers(host)) == present:
                return
            time.sleep(0.05)
        raise BenchError(f"{host.name} still {'does not see' if present else 'sees'} {name} after {timeout:g}s")

    def up(self, host) -> None:
        r = host.homie("up", "--name", host.name, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"homie up on {host.name} failed ({r.returncode}): {r.stdout}{r.stderr}")

    def down(self, host) -> None:
        pid = self.daemon_pid(host)
        r = host.homie("down", timeout=60)
        if r.returncode != 0:
            raise BenchError(f"homie down on {host.name} failed ({r.returncode}): {r.stdout}{r.stderr}")
        if pid:
            deadline = time.monotonic() + 20
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    @staticmethod
    def daemon_pid(host) -> int | None:
        try:
            return int((host.home / "homie.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def log_events(host, event: str, **match) -> list[tuple[float, dict]]:
        """(unix time, record) of host's daemon log lines with this event and fields."""
        out = []
        try:
            lines = (host.home / "logs" / "homie.log").read_text(errors="replace").splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") != event or any(rec.get(k) != v for k, v in match.items()):
                continue
            ts = rec.get("timestamp")
            try:
                t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
            except (AttributeError, ValueError):
                continue
            out.append((t, rec))
        return out

    def first_event_after(self, host, event: str, after: float, timeout: float = 5, **match) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            ts = [t for t, _ in self.log_events(host, event, **match) if t >= after - 0.001]
            if ts:
                return min(ts)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    # -- set-up ----------------------------------------------------------------------------
    def preflight(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces): sudo .venv/bin/python -m bench")
        if not _venv_python().exists():
            raise BenchError(f"no venv interpreter at {_venv_python()}: run ./scripts/test.sh once to create it")
        if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
            self.notes.append(f"the bench driver ran under {sys.executable}, not the venv; every measured "
                              f"command still uses {self.py}")
        from netns import can_use_netns

        ok, why = can_use_netns()
        if not ok:
            raise BenchError(f"cannot build namespace hosts: {why}")
        if not NETNS.ok:
            self.notes.append("setns() unavailable: timed commands ran through `ip netns exec`, which adds "
                              "its start-up to every measurement")
        self.ssh_missing = sshmod.ensure_openssh(self.log)
        if self.ssh_missing:
            self.log(f"ssh/scp baselines skipped: {self.ssh_missing}")
        self.work = Path(tempfile.mkdtemp(prefix="homie-bench-", dir=self.args.workdir))
        os.chmod(self.work, 0o755)
        fs = _fs_type(self.work)
        if fs in ("tmpfs", "ramfs"):
            raise BenchError(f"{self.work} is on {fs}: use --workdir on a disk-backed file system")
        free = shutil.disk_usage(self.work).free
        need = 3 * self.size + 512 * MiB
        if free < need:
            raise BenchError(f"{self.work} has {free / 2**30:.1f} GiB free; the {self.size / 2**30:.2f} GiB "
                             f"upload needs about {need / 2**30:.1f} GiB (input, worker's cache, received copy)")
        self.results["workdir_fs"] = fs

    def make_group(self, cluster):
        homes = []
        for n in ("a", "b", "c"):
            d = self.work / f"home-{n}"
            d.mkdir(mode=0o700)
            homes.append(d)
        a = cluster.add_host("a", home=homes[0])
        b = cluster.add_host("b", home=homes[1])
        # c: b's twin with the job sandbox off, to measure what the sandbox costs in the same run
        c = cluster.add_host("c", home=homes[2])
        (homes[2] / "config.yaml").write_text("sandbox: off\n")
        self.c = c
        for h in (a, b, c):
            # Measure an installed homie as users have it: bytecode cached, not recompiled each start.
            if h.env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
                note = ("PYTHONDONTWRITEBYTECODE was set in the caller's environment; it was removed for "
                        "every measured command so Python caches bytecode as it does for users")
                if note not in self.notes:
                    self.notes.append(note)
        r = a.homie("init", "--name", "a", timeout=60)
        m = re.search(r"group key: (\S+)", r.stdout)
        if r.returncode != 0 or not m:
            raise BenchError(f"homie init failed ({r.returncode}): {r.stdout}{r.stderr}")
        for h in (b, c):
            r = h.homie("join", m.group(1), timeout=60)
            if r.returncode != 0:
                raise BenchError(f"homie join failed ({r.returncode}): {r.stdout}{r.stderr}")
        self.up(a)
        self.up(b)
        self.up(c)
        self.wait_sees(a, "b")
        self.wait_sees(a, "c")
        self.wait_sees(b, "a")
        return a, b

    def make_project(self) -> Path:
        proj = self.work / "proj"
        proj.mkdir(mode=0o755)
        (proj / "hello.py").write_text('print("hello")\n')
        (proj / "noop.py").write_text("pass\n")
        for f in ("hello.py", "noop.py"):
            (proj / f).chmod(0o644)
        return proj

    def make_big(self, proj: Path) -> Path:
        big = proj / "big.bin"
        self.log(f"writing {self.size / MiB:.0f} MiB of random data to {big}")
        chunk = 4 * MiB
        left = self.size
        with open(big, "wb") as f:
            while left > 0:
                n = min(chunk, left)
                f.write(os.urandom(n))
                left -= n
        big.chmod(0o644)
        # An input written seconds ago is a "racy" hash-cache entry that homie (rightly)
        # does not remember; real datasets are older. Move its mtime back a minute.
        old = time.time() - 60
        os.utime(big, (old, old))
        os.sync()
        return big

    # -- measurements -------------------------------------------------------------------------------
    def discovery(self, a, b) -> None:
        n = self.reps["discovery"]
        self.log(f"discovery: {n} x (homie up on b -> b in a's peers; homie down on b -> gone)")
        self.down(b)
        self.wait_sees(a, "b", present=False, timeout=30)
        ups, downs, ups_log, downs_log, up_cmd, down_cmd = [], [], [], [], [], []
        for i in range(n):
            time.sleep(0.5)
            s = time.time()
            self.up(b)
            ret = time.time()
            up_cmd.append(ret - s)
            while True:
                r = timed(a, [self.homie_cli(), "peers", "--json"], timeout=20)
                if r.rc == 0 and "b" in {p["name"] for p in json.loads(r.out)}:
                    break
                if time.time() - ret > 60:
                    raise BenchError("b did not appear in a's peers within 60 s of `homie up`")
            ups.append(r.ended - ret)
            t = self.first_event_after(a, "peer.seen", s, name="b")
            ups_log.append(t - ret if t else None)
            time.sleep(1.0)
            s = time.time()
            self.down(b)
            ret = time.time()
            down_cmd.append(ret - s)
            while True:
                r = timed(a, [self.homie_cli(), "peers", "--json"], timeout=20)
                if r.rc == 0 and "b" not in {p["name"] for p in json.loads(r.out)}:
                    break
                if time.time() - ret > 60:
                    raise BenchError("b still in a's peers 60 s after `homie down`")
            downs.append(r.ended - ret)
            t = self.first_event_after(a, "peer.gone", s, name="b")
            downs_log.append(t - ret if t else None)
        self.up(b)
        self.wait_sees(a, "b")
        self.wait_sees(b, "a")
        self.results["discovery"] = dict(up=ups, down=downs, up_log=ups_log, down_log=downs_log, up_cmd=up_cmd,
                                         down_cmd=down_cmd)

    def hello(self, a, b, proj: Path) -> None:
        n = self.reps["hello"]
        self.log(f"hello.py: {n} runs each of local python, homie run, ssh (fresh), ssh (ControlMaster)")
        homie = self.homie_cli()
        methods = {
            "local": lambda: timed(a, [self.py, "hello.py"], cwd=proj, timeout=60),
            "homie": lambda: timed(a, [homie, "run", "-n", "b", "hello.py"], cwd=proj, timeout=120),
            "homie_nosandbox": lambda: timed(a, [homie, "run", "-n", "c", "hello.py"], cwd=proj, timeout=120),
        }
        if self.sshd:
            script = str(proj / "hello.py")
            methods["ssh_fresh"] = lambda: timed(a, self.sshd.ssh_argv([self.py, script]), timeout=60)
            methods["ssh_master"] = lambda: timed(a, self.sshd.ssh_argv([self.py, script], master=True), timeout=60)
        times = {k: [] for k in methods}
        timeline = []
        for i in range(n + 1):  # round 0 warms caches and the ssh master; not counted
            for name, fn in methods.items():
                r = fn().check(f"hello.py via {name}")
                if "hello" not in r.out:
                    raise BenchError(f"hello.py via {name} did not print hello: {r.out!r} {r.err!r}")
                if i:
                    times[name].append(r.wall)
                    if name == "homie":
                        timeline.append(self.job_timeline(a, b, r))
        if self.sshd:
            self.sshd.stop_master()
        self.results["hello"] = times
        self.results["hello_timeline"] = timeline

    def job_timeline(self, a, b, r) -> dict:
        """Seconds from the CLI's start to each daemon log event of the job it ran."""
        m = re.search(r"job started: ([0-9a-f]+)", r.err)  # homie's own lines are on stderr
        out = {"CLI exits": r.wall}
        if not m:
            return out
        job = m.group(1)
        for host, event, label in ((a, "job.submitted", "a: job.submitted (queued, inputs hashed)"),
                                   (b, "job.accepted", "b: job.accepted (inputs received, dir ready)"),
                                   (b, "job.started", "b: job.started (process spawned)"),
                                   (b, "job.exited", "b: job.exited"),
                                   (a, "job.finished", "a: job.finished (results fetched)")):
            t = self.first_event_after(host, event, r.started, timeout=2, job_id=job)
            out[label] = None if t is None else t - r.started
        return out

    def peers_vs_click(self, a) -> None:
        n = self.reps["peers"]
        self.log(f"homie peers vs python -c 'import click': {n} runs each")
        cmds = {"peers": [self.homie_cli(), "peers"], "click": [self.py, "-c", "import click"]}
        times = {k: [] for k in cmds}
        for i in range(n + 2):
            for k, argv in cmds.items():
                r = timed(a, argv, timeout=30).check(" ".join(argv))
                if i >= 2:
                    times[k].append(r.wall)
        self.results["peers"] = times

    def homie_job(self, a, b, proj: Path, with_file: bool, label: str) -> dict:
        argv = [self.homie_cli(), "run", "-n", "b", *(["-f", "big.bin"] if with_file else []), "noop.py"]
        timeout = 120 + (self.size / (5 * MB) if with_file else 0)
        pa, pb = self.daemon_pid(a), self.daemon_pid(b)
        ua0, ub0 = cpu_seconds(pa), cpu_seconds(pb)
        ca0, cb0 = a.iface_counters(), b.iface_counters()
        r = timed(a, argv, cwd=proj, timeout=timeout).check(f"homie job ({label})")
        ca1, cb1 = a.iface_counters(), b.iface_counters()
        ua1, ub1 = cpu_seconds(pa), cpu_seconds(pb)
        m = re.search(r"job started: ([0-9a-f]+)", r.err)  # homie's own lines are on stderr
        if not m:
            raise BenchError(f"no job id in homie run's output ({label}): {r.out!r}")
        job = m.group(1)
        sub = self.first_event_after(a, "job.submitted", r.started, job_id=job)
        acc = self.first_event_after(b, "job.accepted", r.started, job_id=job)
        rec = dict(label=label, wall=r.wall, job=job, maxrss_kb=r.maxrss_kb,
                   a_sent=ca1["sent"] - ca0["sent"], a_received=ca1["received"] - ca0["received"],
                   b_received=cb1["received"] - cb0["received"],
                   log_upload=(acc - sub) if (sub and acc) else None,
                   b_hwm_kb=vm_hwm_kb(self.daemon_pid(b) or -1), a_hwm_kb=vm_hwm_kb(pa or -1),
                   a_cpu=None if ua0 is None or ua1 is None else ua1 - ua0,
                   b_cpu=None if ub0 is None or ub1 is None else ub1 - ub0)
        return rec

    def restart_b_empty(self, a, b) -> None:
        """b forgets every blob: stopped, cache dir removed, started again (a keeps its hash cache)."""
        self.down(b)
        shutil.rmtree(b.home / "cache" / "blobs", ignore_errors=True)
        self.up(b)
        self.wait_sees(a, "b")

    def scp_once(self, a, big: Path, recv: Path) -> dict:
        dst = recv / "big.scp"
        ca0 = a.iface_counters()
        r = timed(a, self.sshd.scp_argv(str(big), str(dst)), timeout=120 + self.size / (5 * MB)).check("scp")
        ca1 = a.iface_counters()
        got = dst.stat().st_size if dst.exists() else -1
        if got != self.size:
            raise BenchError(f"scp delivered {got} of {self.size} bytes")
        dst.unlink()
        return dict(seconds=r.wall, a_sent=ca1["sent"] - ca0["sent"], maxrss_kb=r.maxrss_kb, cpu=r.cpu)

    def raw_once(self, a, b, big: Path, recv: Path) -> dict:
        dst = recv / "big.raw"
        env = {"PYTHONPATH": str(REPO)}
        proc = b.spawn(self.py, "-m", "bench.rawtls", "recv", "--bind", b.ip, "--port", str(RAW_PORT),
                       "--out", str(dst), cwd=str(REPO), env=env)
        deadline = time.monotonic() + 30
        while "ready" not in proc.log():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"raw TLS receiver did not start: {proc.log()[-1500:]}")
            time.sleep(0.02)
        ca0 = a.iface_counters()
        r = timed(a, [self.py, "-m", "bench.rawtls", "send", "--host", b.ip, "--port", str(RAW_PORT),
                      "--file", str(big)], cwd=REPO, env=env, timeout=120 + self.size / (5 * MB)).check("raw TLS send")
        ca1 = a.iface_counters()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"raw TLS receiver did not finish: {proc.log()[-1500:]}") from None
        if proc.returncode != 0:
            raise BenchError(f"raw TLS receiver failed: {proc.log()[-1500:]}")
        info = json.loads(r.out.strip().splitlines()[-1])
        try:
            rinfo = json.loads(proc.log().strip().splitlines()[-1])
        except (ValueError, IndexError):
            rinfo = {}
        got = dst.stat().st_size if dst.exists() else -1
        if got != self.size:
            raise BenchError(f"raw TLS delivered {got} of {self.size} bytes")
        dst.unlink()
        return dict(seconds=info["seconds"], wall=r.wall, a_sent=ca1["sent"] - ca0["sent"], maxrss_kb=r.maxrss_kb,
                    send_cpu=info.get("cpu"), recv_cpu=rinfo.get("cpu"))

    def upload(self, a, b, proj: Path) -> None:
        big = self.make_big(proj)
        recv = self.work / "recv"
        recv.mkdir(mode=0o755)
        res = self.results["upload"] = {"baseline": [], "cold": None, "rerun": [], "warm": [], "scp": [],
                                        "raw": [], "a_hwm_kb": None, "b_hwm_kb": []}
        res["idle_rss_kb"] = {"a": vm_rss_kb(self.daemon_pid(a)), "b": vm_rss_kb(self.daemon_pid(b)),
                              "a_hwm": vm_hwm_kb(self.daemon_pid(a) or -1)}
        nb = self.reps["baseline"]
        self.log(f"upload: {nb} tiny jobs without the file (baseline)")
        self.homie_job(a, b, proj, False, "warm-up")
        for _ in range(nb):
            res["baseline"].append(self.homie_job(a, b, proj, False, "baseline"))
        self.log(f"upload: cold run ({self.size / MiB:.0f} MiB, never hashed by a, new to b)")
        os.sync()
        res["cold"] = self.homie_job(a, b, proj, True, "cold")
        res["b_hwm_kb"].append(res["cold"]["b_hwm_kb"])
        nr = self.reps["rerun"]
        self.log(f"upload: {nr} re-runs with the input unchanged (b has it cached)")
        for _ in range(nr):
            res["rerun"].append(self.homie_job(a, b, proj, True, "rerun"))
        nu = self.reps["upload"]
        self.log(f"upload: {nu} rounds of homie (warm hash, b's cache emptied) / scp / raw TLS")
        for i in range(nu):
            self.restart_b_empty(a, b)
            os.sync()
            rec = self.homie_job(a, b, proj, True, "warm-hash")
            res["warm"].append(rec)
            res["b_hwm_kb"].append(rec["b_hwm_kb"])
            os.sync()
            if self.sshd:
                res["scp"].append(self.scp_once(a, big, recv))
                os.sync()
            res["raw"].append(self.raw_once(a, b, big, recv))
            os.sync()
            self.log(f"  round {i + 1}: homie {rec['wall']:.2f}s wall"
                     + (f", scp {res['scp'][-1]['seconds']:.2f}s" if self.sshd else "")
                     + f", raw TLS {res['raw'][-1]['seconds']:.2f}s")
        res["a_hwm_kb"] = vm_hwm_kb(self.daemon_pid(a) or -1)

    # -- the whole run ------------------------------------------------------------------------------
    def run(self) -> int:
        from netns import Cluster

        self.started = dt.datetime.now(dt.timezone.utc)
        self.facts = machine_facts()
        self.preflight()
        try:
            with Cluster() as cluster:
                self.log(f"namespace hosts up; work dir {self.work}")
                a, b = self.make_group(cluster)
                proj = self.make_project()
                if not self.ssh_missing:
                    self.sshd = sshmod.Sshd(self.work / "ssh", server=b, client=a)
                    self.sshd.start()
                    self.results["ssh_cipher"] = self.sshd.cipher()
                steps = [("discovery", lambda: self.discovery(a, b)),
                         ("hello", lambda: self.hello(a, b, proj)),
                         ("peers", lambda: self.peers_vs_click(a)),
                         ("upload", lambda: self.upload(a, b, proj)),
                         ("pyapi", lambda: self.results.__setitem__("pyapi", pyapi.measure(self.log)))]
                for name, fn in steps:
                    if self.args.only and name not in self.args.only:
                        continue
                    try:
                        fn()
                    except (BenchError, AssertionError, OSError, subprocess.SubprocessError, ValueError) as e:
                        msg = f"{name}: {e}"
                        self.errors.append(msg)
                        self.log(f"FAILED {msg}")
                        if self.args.verbose:
                            traceback.print_exc()
                        # a failed step may leave b down; bring it back for the next one
                        try:
                            if not self.daemon_pid(b) or not Path(f"/proc/{self.daemon_pid(b)}").exists():
                                self.up(b)
                        except BenchError:
                            pass
                if self.sshd:
                    self.sshd.stop_master()
        finally:
            if not self.args.keep:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                self.log(f"kept {self.work}")
        from bench.report import render

        table, doc = render(self)
        print(table)
        if not self.args.no_doc:
            DOC.parent.mkdir(exist_ok=True)
            DOC.write_text(doc)
            self.log(f"wrote {DOC.relative_to(REPO)}")
        return 1 if self.errors else 0


def _fs_type(path: Path) -> str:
    best, fs = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) >= len(best):
                best, fs = parts[1], parts[2]
    except OSError:
        pass
    return fs


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 128M, 1G, 512MiB)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    n = int(float(m.group(1)) * mult)
    if n < MiB:
        raise argparse.ArgumentTypeError("size must be at least 1M")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="128 MiB upload and fewer repeats (a fast check)")
    p.add_argument("--size", type=parse_size, help="upload size (binary units: 128M, 1G); default 1G, --quick 128M")
    p.add_argument("--workdir", default="/var/tmp", help="disk-backed directory for the temp files (default /var/tmp)")
    p.add_argument("--only", action="append", choices=["discovery", "hello", "peers", "upload", "pyapi"],
                   help="run only this part (repeatable); the doc then lists only what ran")
    p.add_argument("--no-doc", action="store_true", help="print the table but do not write docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the work dir (homes, logs) for a post-mortem")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks for failed steps")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    b = Bench(args)
    try:
        return b.run()
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted (cleaned up)", file=sys.stderr)
        return 130
