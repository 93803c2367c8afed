"""The benchmark run: build a namespace LAN, measure everything, print and write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
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
PARTS = ["discovery", "hello", "peers", "map", "upload", "pyapi"]


def _venv_python() -> Path:
    return REPO / ".venv" / "bin" / "python"


INSTALL = REPO / ".bench-venv"


def _output(cmd: list[str], cwd: Path | None = None) -> str:
    """A set-up command's stdout; BenchError with its last words if it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    if r.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:4])} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout.strip()


def regular_install(log) -> Path:
    """homie as users install it (`pipx install .`): a wheel of this checkout in a
    venv of its own, not the repo's editable install, whose import hook (a .pth that
    site loads) costs every interpreter start ~8 ms that no user pays. Its
    dependencies come from the repo's venv through a plain path line (free)."""
    venv_py = str(_venv_python())
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    base = _output([venv_py, "-c", "import sys; print(sys._base_executable)"])
    deps = _output([venv_py, "-c", purelib])
    shutil.rmtree(INSTALL, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="homie-wheel-") as wheels:
        _output([venv_py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, str(REPO)],
                cwd=REPO)
        _output([base, "-m", "venv", "--without-pip", str(INSTALL)])
        py = str(INSTALL / "bin" / "python")
        Path(_output([py, "-c", purelib]), "_homie_bench_deps.pth").write_text(deps + "\n")
        wheel = next(Path(wheels).glob("homie-*.whl"))
        _output([venv_py, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", str(wheel)])
    log(f"homie installed from a wheel into {INSTALL}")
    return INSTALL


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
            "breakdown": 5 if self.quick else 10,
            "importtime": 3 if self.quick else 5,
            "map": 1,
        }
        self.map_inputs = args.map_inputs or (250 if self.quick else 1000)
        self.t0 = time.monotonic()
        self.py = str(_venv_python())
        self.results: dict = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.sshd = None
        self.ssh_missing: str | None = None
        self.parallel_missing: str | None = None
        self.user = None        # the baselines' login (bench.sshd.BenchUser); None without ssh
        self.plain_py = None    # the baselines' interpreter: a real binary, no venv, no pyenv shim

    # -- small helpers ---------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[bench {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def wants(self, part: str) -> bool:
        return not self.args.only or part in self.args.only

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
        try:
            inst = regular_install(self.log)
            self.py = str(inst / "bin" / "python")
            os.environ["HOMIE_BIN"] = str(inst / "bin" / "homie")  # the CLI and daemons the hosts run
            self.facts["homie install"] = (f"a wheel of this checkout in {INSTALL.name}/ (what `pipx install .` "
                                           "gives: no editable-install import hook)")
        except (BenchError, OSError, subprocess.SubprocessError, StopIteration) as e:
            self.notes.append(f"measured the repo's editable install ({e}); its import hook adds ~8 ms to "
                              "every homie start")
        from netns import can_use_netns

        ok, why = can_use_netns()
        if not ok:
            raise BenchError(f"cannot build namespace hosts: {why}")
        if not NETNS.ok:
            self.notes.append("setns() unavailable: timed commands ran through `ip netns exec`, which adds "
                              "its start-up to every measurement")
        self.plain_py = sshmod.plain_python(getattr(sys, "_base_executable", None) or sys.executable)
        self.facts["baselines' python"] = f"{self.plain_py} (Python {_py_version(self.plain_py)})"
        self.ssh_missing = sshmod.ensure_openssh(self.log)
        if not self.ssh_missing:
            try:
                self.user = sshmod.BenchUser(self.log).ensure()
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                self.ssh_missing = f"cannot set up the bench user {sshmod.USER}: {e}"
        if self.ssh_missing:
            self.log(f"ssh/scp baselines skipped: {self.ssh_missing}")
        if self.wants("map"):
            self.parallel_missing = sshmod.ensure_parallel(self.log)
            if self.parallel_missing:
                self.log(f"GNU parallel baselines skipped: {self.parallel_missing}")
            else:
                self.facts["GNU parallel"] = _first_line(["parallel", "--version"])
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

    def add_member(self, cluster, name: str):
        """One more host with a default configuration, joined to the group and up."""
        home = self.work / f"home-{name}"
        home.mkdir(mode=0o700)
        h = cluster.add_host(name, home=home)
        h.env.pop("PYTHONDONTWRITEBYTECODE", None)
        r = h.homie("join", self.group_key, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"homie join on {name} failed ({r.returncode}): {r.stdout}{r.stderr}")
        self.up(h)
        return h

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
        self.group_key = m.group(1)
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
        # The baselines run the plain interpreter (no venv, no pyenv shim) as the bench user.
        methods = {
            "local": lambda: timed(a, [self.plain_py, "hello.py"], cwd=proj, timeout=60, user=self.user),
            "homie": lambda: timed(a, [homie, "run", "-n", "b", "hello.py"], cwd=proj, timeout=120),
            "homie_nosandbox": lambda: timed(a, [homie, "run", "-n", "c", "hello.py"], cwd=proj, timeout=120),
        }
        if self.sshd:
            script = str(proj / "hello.py")
            methods["ssh_fresh"] = lambda: self.sshd.ssh_run([self.plain_py, script])
            methods["ssh_master"] = lambda: self.sshd.ssh_run([self.plain_py, script], master=True)
            self.sshd.start_master()  # the master is up before anything is timed
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
        self.breakdown(a, b, proj)

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

    # -- where homie run's time goes ------------------------------------------------------------
    def breakdown(self, a, b, proj: Path) -> None:
        """Split `homie run -n b hello.py` into interpreter start, import, CLI work, the control
        socket, the daemons' job phases (their JSON logs) and the exit, without changing homie:
        the CLI runs under a wrapper (bench/probe.py's code via -c) that stamps the wall clock at
        its first line, after `import homie.cli`, and on the control socket's connect/send/recv."""
        n = self.reps["breakdown"]
        self.log(f"where the time goes: {n} x python -c pass / import homie.cli / instrumented homie run, "
                 f"{self.reps['importtime']} x -X importtime")
        from bench import probe

        res = {"venv_pass": [], "plain_pass": [], "base_pass": [], "import_cli": [], "runs": [], "importtime": []}
        base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        res["base"] = base if base != self.plain_py else None
        for i in range(n + 1):
            rows = [("venv_pass", timed(a, [self.py, "-c", "pass"], timeout=30)),
                    ("plain_pass", timed(a, [self.plain_py, "-c", "pass"], timeout=30, user=self.user)),
                    ("import_cli", timed(a, [self.py, "-c", "import homie.cli"], timeout=30))]
            if res["base"]:  # the venv's base interpreter (e.g. pyenv's build), without the venv
                rows.append(("base_pass", timed(a, [res["base"], "-c", "pass"], timeout=30)))
            stamps = self.work / f"probe-{i}.json"
            r = timed(a, [self.py, "-c", probe.WRAPPER, "run", "-n", "b", "hello.py"], cwd=proj, timeout=120,
                      env={probe.ENV: str(stamps)}).check("instrumented homie run")
            for k, x in rows:
                x.check(k)
                if i:
                    res[k].append(x.wall)
            if not i:
                continue
            try:
                st = json.loads(stamps.read_text())
            except (OSError, ValueError):
                st = {}
            rec = {k: v - r.started for k, v in st.items() if isinstance(v, (int, float))}
            rec["process exit (reaped)"] = r.wall
            tl = self.job_timeline(a, b, r)
            rec.update({k: v for k, v in tl.items() if k != "CLI exits"})
            res["runs"].append(rec)
        for _ in range(self.reps["importtime"]):
            r = timed(a, [self.py, "-X", "importtime", "-c", "import homie.cli"], timeout=30).check("-X importtime")
            res["importtime"].append(probe.parse_importtime(r.err))
        self.results["breakdown"] = res

    # -- map: homie map vs GNU parallel -------------------------------------------------------------
    def map_bench(self, cluster, a, b) -> None:
        n = self.map_inputs
        homie = self.homie_cli()
        mdir = self.work / "map"
        mdir.mkdir(mode=0o755)
        task = mdir / "task.py"
        task.write_text("import sys\n\nwith open(sys.argv[1]) as f:\n    print(int(f.read()) ** 2)\n")
        task.chmod(0o644)

        def inputs(name: str, count: int) -> tuple[Path, Path]:
            d = mdir / name
            d.mkdir(mode=0o755)
            for i in range(count):
                (d / f"{i:04d}.txt").write_text(f"{i}\n")
                (d / f"{i:04d}.txt").chmod(0o644)
            lst = mdir / f"{name}.list"
            lst.write_text("".join(f"{d / f'{i:04d}.txt'}\n" for i in range(count)))
            lst.chmod(0o644)
            return d, lst

        warm_dir, warm_list = inputs("warm", 12)
        in_dir, in_list = inputs("in", n)
        # Three hosts with a default configuration: a (submits, and like every homie daemon also
        # runs jobs), b, and d made now; c (sandbox off) is stopped so that it takes no job.
        self.log("map: adding host d, stopping c")
        d = self.add_member(cluster, "d")
        self.down(self.c)
        hosts = [a, b, d]
        sshds = []
        try:
            self.wait_sees(a, "c", present=False)
            self.wait_sees(a, "d")
            self.wait_sees(b, "a")
            slots = self.slots(a, b, d)
            total = sum(slots.values())
            res = self.results["map"] = {"inputs": n, "hosts": {h.name: slots[h.name] for h in hosts},
                                         "slots": total, "runs": {}}
            methods = {}
            out_root = mdir / "out"
            out_root.mkdir()

            def homie_map(src: Path, tag: str, jobs: list):
                def go():
                    r = timed(a, [homie, "map", *jobs, "task.py", "--over", f"{src.name}/*.txt", "-o",
                                  str(out_root / tag), "--json", "--no-bar"], cwd=mdir, timeout=900 + 2 * n)
                    try:
                        summary = json.loads(r.out)
                    except ValueError:
                        r.check(f"homie map {' '.join(jobs)} ({tag})")
                        raise BenchError(f"homie map printed no JSON summary: {r.out[-500:]}") from None
                    if r.rc not in (0, 4) or not summary.get("ok"):
                        r.check(f"homie map {' '.join(jobs)} ({tag})")
                    per, why = {}, {}
                    for j in summary.get("jobs", []):
                        per[j.get("peer")] = per.get(j.get("peer"), 0) + 1
                        if j.get("state") != "ok":
                            msg = str(j.get("message") or j.get("state"))
                            why[msg] = why.get(msg, 0) + 1
                    # Failed inputs are reported, not hidden: the rate counts only the ok ones.
                    return r, summary["ok"], per, {"failed": summary.get("failed", 0), "why": why}
                return go

            methods["homie"] = {"warm": homie_map(warm_dir, "warm", []), "run": homie_map(in_dir, "run", [])}
            # homie map's default keeps twice the online peers' slots in flight, followed as peers
            # come and go; -j 2×slots fixes the same bound from the bench's count of the slots.
            jn = ["-j", str(2 * total)]
            methods["homie_j"] = {"warm": homie_map(warm_dir, "warm-j", jn), "run": homie_map(in_dir, "run-j", jn)}
            res["homie_j"] = 2 * total
            if not self.parallel_missing:
                def par(argv_of, tag):
                    def go_for(lst: Path, count: int):
                        def go():
                            r = timed(a, ["parallel", "--will-cite", *argv_of(), self.plain_py, str(task), "{}",
                                          "::::", str(lst)], cwd=mdir, timeout=600 + 2 * n,
                                      user=self.user).check(f"GNU parallel ({tag})")
                            lines = [x for x in r.out.splitlines() if x.strip()]
                            if len(lines) != count:
                                raise BenchError(f"GNU parallel ({tag}) printed {len(lines)} lines for {count} "
                                                 f"inputs: {r.err[-500:]}")
                            return r, count, None, None
                        return go
                    return {"warm": go_for(warm_list, 12), "run": go_for(in_list, n)}

            if self.user and not self.parallel_missing:
                sshds = [self.sshd] + [self.start_sshd(h, a) for h in (a, d)]
                by_host = {s.server.name: s for s in sshds}
                # GNU parallel logs in with the same ssh command line as the other ssh baselines;
                # N/login gives each host as many job slots as its homie daemon has.
                ssh_cmd = " ".join(shlex.quote(x) for x in self.sshd.ssh_base())
                logins = ",".join(f"{slots[h.name]}/{by_host[h.name].login}" for h in hosts)
                methods["parallel_ssh"] = par(lambda: ["--ssh", ssh_cmd, "-S", logins], "-S")
                # With ssh's ControlMaster, masters up before timing (as for hello.py). Not parallel's
                # own --controlmaster: in this version it now and then loses jobs and still exits 0.
                ssh_cm = " ".join(shlex.quote(x) for x in self.sshd.ssh_base(master=True))
                for s in sshds:
                    s.start_master()
                methods["parallel_ssh_cm"] = par(lambda: ["--ssh", ssh_cm, "-S", logins], "-S, ControlMaster")
            if not self.parallel_missing:
                methods["parallel_local"] = par(lambda: ["-j", str(total)], "local -j")
            res["a_hwm_before_kb"] = vm_hwm_kb(self.daemon_pid(a) or -1)
            self.log(f"map: {n} inputs, hosts {res['hosts']} ({total} slots): " + ", ".join(methods))
            for name, fns in methods.items():
                fns["warm"]()  # caches, ssh host keys, the script's blob: not counted
            # Rounds interleave the methods, so a slow spell of this shared machine hits them alike;
            # the two the goal compares (homie map, local parallel) run three rounds (their single
            # runs had swung 0.37-0.52x between bench runs), the slow ssh baselines one.
            rounds = {m: (1 if self.quick else self.reps["map"]) for m in methods}
            if not self.quick:
                rounds.update({m: 3 for m in ("homie", "parallel_local") if m in methods})
            for rnd in range(max(rounds.values())):
                for name, fns in methods.items():
                    if rnd >= rounds[name]:
                        continue
                    if name.startswith("homie"):
                        _reset_hwm(self.daemon_pid(a))
                    r, count, per, fail = fns["run"]()
                    res["runs"].setdefault(name, []).append({"wall": r.wall, "inputs": count, "per_host": per,
                                                             "cpu": r.cpu, **(fail or {})})
                    self.log(f"  {name}: {r.wall:.2f}s, {count / r.wall:.1f} inputs/s"
                             + (f", per host {per}" if per else "") + (f", FAILED {fail}" if fail and fail["failed"]
                                                                       else ""))
                    if name.startswith("homie"):
                        hwm = res.setdefault("a_hwm_after_kb", {})
                        hwm[name] = max(hwm.get(name) or 0, vm_hwm_kb(self.daemon_pid(a) or -1) or 0)
        finally:
            for s in sshds:
                s.stop_master()
                if s is not self.sshd:
                    s.stop()
            self.down(d)
            self.up(self.c)
            self.wait_sees(a, "c")

    def start_sshd(self, server, client):
        s = sshmod.Sshd(self.work / "ssh" / server.name, server=server, client=client, user=self.user,
                        client_dir=self.ssh_client_dir)
        s.start()
        return s

    def slots(self, a, b, d) -> dict:
        """Each host's job slots (max_jobs) as its heartbeat tells the others."""
        out = {}
        for viewer, names in ((a, ("b", "d")), (b, ("a",))):
            r = timed(viewer, [self.homie_cli(), "peers", "--json"], timeout=20).check("homie peers --json")
            for p in json.loads(r.out):
                if p["name"] in names:
                    out[p["name"]] = p.get("max_jobs")
        missing = [x for x in ("a", "b", "d") if not out.get(x)]
        if missing:
            raise BenchError(f"no max_jobs in the heartbeats of {missing}")
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
        r = self.sshd.run(self.sshd.scp_argv(str(big), str(dst)), timeout=120 + self.size / (5 * MB)).check("scp")
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
        if self.user:
            self.user.own(recv, 0o755)  # scp writes there as the bench user
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
                    self.ssh_client_dir = self.user.own(self.work / "ssh-client", 0o700)
                    self.sshd = sshmod.Sshd(self.work / "ssh" / "b", server=b, client=a, user=self.user,
                                            client_dir=self.ssh_client_dir)
                    self.sshd.start()
                    self.results["ssh_cipher"] = self.sshd.cipher()
                steps = [("discovery", lambda: self.discovery(a, b)),
                         ("hello", lambda: self.hello(a, b, proj)),
                         ("peers", lambda: self.peers_vs_click(a)),
                         ("upload", lambda: self.upload(a, b, proj)),
                         # last: 1,000 queued jobs raise a's peak RSS, which the upload part reports
                         ("map", lambda: self.map_bench(cluster, a, b)),
                         ("pyapi", lambda: self.results.__setitem__("pyapi", pyapi.measure(self.log)))]
                for name, fn in steps:
                    if not self.wants(name):
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


def _reset_hwm(pid: int | None) -> None:
    """Reset a process's VmHWM to its current RSS (clear_refs 5, Linux >= 4.0)."""
    if pid:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


def _py_version(py: str) -> str:
    try:
        return subprocess.run([py, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                              text=True, timeout=30).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _first_line(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL).stdout
        return (out.strip().splitlines() or ["?"])[0]
    except (OSError, subprocess.SubprocessError):
        return "not installed"


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
    p.add_argument("parts", nargs="*", metavar="PART",
                   help=f"run only these parts ({', '.join(PARTS)}; default: all); the doc then lists only what ran")
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable), like PART")
    p.add_argument("--map-inputs", type=int, metavar="N",
                   help="inputs of the map comparison (default 1000, --quick 250)")
    p.add_argument("--no-doc", action="store_true", help="print the table but do not write docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the work dir (homes, logs) for a post-mortem")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks for failed steps")
    args = p.parse_args(argv)
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}: choose from {', '.join(PARTS)}")
    args.only = sorted(set(args.only or []) | set(args.parts)) or None
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
