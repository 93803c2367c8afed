"""Turning a Bench's results into the printed table and docs/benchmarks.md."""

from __future__ import annotations

import shlex

from bench.sshd import PLAIN_PATH
from bench.util import median

MB = 1_000_000
MiB = 1 << 20


def _s(x, unit="s", nd=3):
    return "n/a" if x is None else f"{x:.{nd}f} {unit}"


def _kib_mb(kb):
    return "n/a" if not kb else f"{kb * 1024 / MB:.0f} MB"


def _ms(x):
    return "n/a" if x is None else f"{x * 1000:.0f} ms"


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}×"


def _met(value, limit, higher_is_better: bool):
    if value is None:
        return "n/a"
    return "yes" if (value >= limit if higher_is_better else value <= limit) else "**no**"


def _rows_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _mbps(size, seconds):
    return None if not seconds or seconds <= 0 else size / MB / seconds


def _stats(xs, fmt=_ms):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "n/a"
    return f"{fmt(median(xs))} (min {fmt(min(xs))}, max {fmt(max(xs))}, n={len(xs)})"


PHASES = {
    "interpreter up": "fork → the interpreter runs its first line (exec, site, .pth files)",
    "probe ready": "the probe's own set-up (socket patches; not in a real `homie run`)",
    "import homie.cli done": "`from homie.cli import main`",
    "control socket: connect": "click parses the command line, checks the inputs; connect to the daemon",
    "control socket: first byte sent": "first request byte on the control socket",
    "a: job.submitted (queued, inputs hashed)": "a's daemon: inputs hashed, job queued",
    "b: job.accepted (inputs received, dir ready)": "dispatch, TLS to b, upload; b: job directory ready",
    "b: job.started (process spawned)": "b: sandbox + interpreter spawned",
    "control socket: first byte received": "first byte back on the control socket",
    "control socket: job output received": "the job's `hello` reaches the CLI",
    "b: job.exited": "b: the job's process exited",
    "a: job.finished (results fetched)": "a: exit status and results fetched, job over",
    "control socket: last byte received": "the final reply reaches the CLI",
    "atexit": "the CLI returns from main (atexit)",
    "process exit (reaped)": "interpreter teardown; the bench reaps the process",
}


def _breakdown(bench, bd) -> list[str]:
    out = ["### Where the time goes: `homie run -n b hello.py`", ""]
    vp, pp, imp = median(bd["venv_pass"]), median(bd["plain_pass"]), median(bd["import_cli"])
    out.append(_rows_table(["command (on a)", "wall: median (min, max, n)"], [
        [f"`{bench.py} -c pass` (homie's venv interpreter)", _stats(bd["venv_pass"])],
        [f"`{bench.plain_py} -c pass` (the baselines' plain interpreter)", _stats(bd["plain_pass"])],
        *([[f"`{bd['base']} -c pass` (the venv's base interpreter on its own, with its own site-packages; no bench command uses it)", _stats(bd["base_pass"])]]
          if bd.get("base") else []),
        [f"`{bench.py} -c \"import homie.cli\"`", _stats(bd["import_cli"])],
        ["→ importing homie.cli alone (difference of medians)", _ms(None if imp is None or vp is None else imp - vp)],
        ["→ the venv's start-up over the plain interpreter's (difference of medians)",
         _ms(None if vp is None or pp is None else vp - pp)],
    ]))
    out.append("")
    runs = bd.get("runs") or []
    if runs:
        keys = sorted({k for r in runs for k in r}, key=lambda k: median([r.get(k) for r in runs]) or 0)
        rows, prev = [], 0.0
        for k in keys:
            at = median([r.get(k) for r in runs])
            if at is None:
                continue
            rows.append([k, PHASES.get(k, ""), _ms(at), _ms(at - prev)])
            prev = at
        out.append(f"One `homie run -n b hello.py` split into phases ({len(runs)} runs under bench/probe.py's "
                   "wrapper, which stamps the wall clock in the CLI; daemon events from their JSON logs; "
                   "medians, so the steps need not add up exactly):")
        out.append("")
        out.append(_rows_table(["stamp", "what happened before it", "at (median)", "step"], rows))
        out.append("")
    it = bd.get("importtime") or []
    if it:
        mods = {}
        for run in it:
            for mod, (self_us, cum_us, depth, parent) in run.items():
                mods.setdefault(mod, {"self": [], "cum": [], "depth": depth, "parent": parent})
                mods[mod]["self"].append(self_us / 1e6)
                mods[mod]["cum"].append(cum_us / 1e6)
        rows = []
        if "homie.cli" in mods:
            m = mods["homie.cli"]
            rows.append(["homie.cli, everything it imports", _ms(median(m["cum"])), _ms(median(m["self"]))])
        direct = sorted(((median(m["cum"]), k) for k, m in mods.items() if m["parent"] == "homie.cli"),
                        reverse=True)[:8]
        for cum, k in direct:
            rows.append([f"  {k}", _ms(cum), _ms(median(mods[k]["self"]))])
        for k in ("site", "encodings"):
            if k in mods:
                rows.append([f"{k} (interpreter start-up)", _ms(median(mods[k]["cum"])), _ms(median(mods[k]["self"]))])
        for k, m in mods.items():
            if m["parent"] == "site" and "__editable__" in k:
                rows.append([f"  {k} (the editable install's import hook, loaded by site from a .pth file)",
                             _ms(median(m["cum"])), _ms(median(m["self"]))])
        out.append(f"`python -X importtime -c \"import homie.cli\"`, the largest direct imports of homie.cli "
                   f"(medians of {len(it)} runs; -X importtime itself slows imports down, so these are upper "
                   "bounds and do not add up to the wall times above):")
        out.append("")
        out.append(_rows_table(["module", "cumulative", "self"], rows))
        out.append("")
    return out


def _map(bench, mp) -> tuple[list, list]:
    goals, details = [], []
    n, slots = mp["inputs"], mp["slots"]
    rate = {k: median([x["inputs"] / x["wall"] for x in v]) for k, v in mp["runs"].items()}
    failed = {k: sum(x.get("failed") or 0 for x in v) for k, v in mp["runs"].items()}
    h = rate.get("homie")
    ps, pcm, pl = rate.get("parallel_ssh"), rate.get("parallel_ssh_cm"), rate.get("parallel_local")
    hosts = ", ".join(f"{k} {v}" for k, v in mp["hosts"].items())

    def ips(x):
        return "n/a" if x is None else f"{x:.1f} inputs/s"
    fnote = (f" ({failed['homie']} of {n} inputs failed)" if failed.get("homie") else "")
    hh = ips(h) + fnote

    def met(r, lim):
        return "**no**" if failed.get("homie") else _met(r, lim, True)
    r = _ratio(h, ps)
    goals.append([f"`homie map` of {n} tiny inputs over 3 hosts vs `parallel -S` (ssh)", hh, ips(ps),
                  _fmt_ratio(r), "≥ 3×", met(r, 3.0)])
    r = _ratio(h, pl)
    goals.append([f"`homie map` of {n} tiny inputs vs local `parallel -j {slots}`", hh, ips(pl),
                  _fmt_ratio(r), "≥ 0.5×", met(r, 0.5)])
    hj = rate.get("homie_j")
    if hj is not None:
        goals.append([f"`homie map -j {mp.get('homie_j')}` of {n} tiny inputs vs `parallel -S` (ssh)",
                      ips(hj) + (f" ({failed['homie_j']} failed)" if failed.get("homie_j") else ""), ips(ps),
                      _fmt_ratio(_ratio(hj, ps)), "(report)", ""])
    if pcm is not None:
        goals.append([f"`homie map` of {n} tiny inputs vs `parallel -S` through ssh ControlMasters", ips(h),
                      ips(pcm), _fmt_ratio(_ratio(h, pcm)), "(report)", ""])
    user = bench.user.name if bench.user else "?"
    names = {"homie": "`homie map task.py --over 'in/*.txt'` on a (default: twice the online peers' job slots in flight)",
             "homie_j": f"`homie map -j {mp.get('homie_j')} task.py --over 'in/*.txt'` on a",
             "parallel_ssh": f"`parallel -S {','.join(f'{v}/{user}@{k}' for k, v in mp['hosts'].items())}` "
                             "(a fresh ssh login per input)",
             "parallel_ssh_cm": "the same through warm ssh ControlMasters (`--ssh 'ssh -o ControlMaster=auto ...'`)",
             "parallel_local": f"`parallel -j {slots}` on a (local, same cores)"}
    details.append(f"### map: {n} tiny inputs")
    details.append("")
    details.append(f"Hosts a, b, d with the daemon's default slots (`max_jobs` = CPU count): {hosts}; "
                   f"{slots} slots in all. Every method runs {slots} jobs at a time. The homie rows run one after "
                   "the other in the same daemons (default first, then `-j`): what the first leaves behind in a's "
                   "daemon (memory, open descriptors) carries into the second.")
    details.append("")
    rows = []
    for k, v in mp["runs"].items():
        per = v[-1].get("per_host")
        rows.append([names.get(k, k), _stats([x["wall"] for x in v], lambda x: f"{x:.2f} s"), ips(rate[k]),
                     "" if not per else ", ".join(f"{p} {c}" for p, c in sorted(per.items(), key=str)),
                     _s(median([x.get("cpu") for x in v]), "s", 1)])
    details.append(_rows_table(["method", "wall: median (min, max, n)", "throughput (ok inputs/s)",
                                "jobs per host", "CPU, command + reaped children (homie: the CLI only)"], rows))
    details.append("")
    for k, v in mp["runs"].items():
        for x in v:
            if x.get("failed"):
                details.append(f"- {names.get(k, k)}: {x['failed']} of {n} inputs failed: "
                               + "; ".join(f"{c} × {w}" for w, c in x.get("why", {}).items()))
    hw = mp.get("a_hwm_after_kb") or {}
    if hw:
        details.append("- a's daemon (submits every map job) peak RSS, VmHWM reset (clear_refs) before each homie "
                       "map: " + "; ".join(f"{_kib_mb(v)} during {names.get(k, k).split(' on a')[0]}"
                                            for k, v in hw.items())
                       + f" (before the map part: {_kib_mb(mp.get('a_hwm_before_kb'))})")
    details.append("")
    return goals, details


def compute(bench) -> tuple[list, list]:
    """(goal rows, detail lines)."""
    R = bench.results
    size = bench.size
    goals, details = [], []

    up = R.get("upload")
    if up:
        base_wall = median([r["wall"] for r in up["baseline"]])
        base_wire = median([r["a_sent"] + r["a_received"] for r in up["baseline"]])
        base_log = median([r["log_upload"] for r in up["baseline"]])
        warm_cli = [r["wall"] - base_wall for r in up["warm"]] if base_wall is not None else []
        warm_log = [r["log_upload"] for r in up["warm"]]
        homie_mbps = _mbps(size, median(warm_cli))
        homie_log_mbps = _mbps(size, median(warm_log))
        scp_mbps = _mbps(size, median([r["seconds"] for r in up["scp"]]))
        raw_mbps = _mbps(size, median([r["seconds"] for r in up["raw"]]))
        label = f"{size / 2**30:g} GiB" if size >= 1 << 30 else f"{size / MiB:g} MiB"
        r1 = _ratio(homie_mbps, scp_mbps)
        goals.append([f"{label} upload throughput vs scp", _s(homie_mbps, "MB/s", 0), _s(scp_mbps, "MB/s", 0),
                      _fmt_ratio(r1), "≥ 2×", _met(r1, 2.0, True)])
        r2 = _ratio(homie_mbps, raw_mbps)
        goals.append([f"{label} upload throughput vs raw TLS", _s(homie_mbps, "MB/s", 0),
                      _s(raw_mbps, "MB/s", 0), _fmt_ratio(r2), "≥ 0.8×", _met(r2, 0.8, True)])
        wire = median([r["a_sent"] for r in up["warm"]])
        raw_wire = median([r["a_sent"] for r in up["raw"]])
        wr = _ratio(wire, size)
        goals.append(["bytes on the wire / payload (upload, a→)",
                      "n/a" if wr is None else f"{wr:.4f}",
                      "raw TLS " + ("n/a" if raw_wire is None else f"{raw_wire / size:.4f}"),
                      "n/a" if wr is None else f"{wr:.4f}", "≤ 1.02", _met(wr, 1.02, False)])
        a_hwm = up["a_hwm_kb"]
        b_hwm = max([x for x in up["b_hwm_kb"] if x] or [0]) or None
        jobs = [up["cold"]] + up["warm"] + up["rerun"] if up["cold"] else up["warm"] + up["rerun"]
        cli_rss = max([r["maxrss_kb"] for r in jobs if r] or [0]) or None
        for who, kb in (("submitting daemon (a)", a_hwm), ("worker daemon (b)", b_hwm), ("`homie run` CLI", cli_rss)):
            mbv = None if kb is None else kb * 1024 / MB
            goals.append([f"peak RSS, {who}", _s(mbv, "MB", 1), "", "", "≤ 80 MB", _met(mbv, 80, False)])
        rerun_wire = median([r["a_sent"] + r["a_received"] for r in up["rerun"]])
        goals.append(["re-run, input unchanged: bytes on the wire (both ways)",
                      "n/a" if rerun_wire is None else f"{rerun_wire / 1024:.1f} KiB",
                      "no-file job " + ("n/a" if base_wire is None else f"{base_wire / 1024:.1f} KiB"), "",
                      "≤ 1 MiB", _met(rerun_wire, MiB, False)])
        rerun_wall = median([r["wall"] for r in up["rerun"]])
        added = None if rerun_wall is None or base_wall is None else rerun_wall - base_wall
        goals.append(["re-run, input unchanged: added time", _s(added),
                      "no-file job " + _s(base_wall), "", "≤ 0.5 s", _met(added, 0.5, False)])

        cold = up["cold"]
        details.append(f"### Upload of {label} ({size} bytes of random data)")
        details.append("")
        rows = []
        if cold:
            rows.append(["homie, cold (a hashes the file, b lacks it)", _s(cold["wall"]),
                         _s(cold["wall"] - base_wall if base_wall else None),
                         _s(_mbps(size, cold["wall"] - base_wall if base_wall else None), "MB/s", 0),
                         _s(cold["log_upload"]), _s(_mbps(size, cold["log_upload"]), "MB/s", 0),
                         f"{cold['a_sent'] / size:.4f}"])
        rows.append(["homie, warm hash (a knows the hash, b lacks it)",
                     _s(median([r["wall"] for r in up["warm"]])), _s(median(warm_cli)), _s(homie_mbps, "MB/s", 0),
                     _s(median(warm_log)), _s(homie_log_mbps, "MB/s", 0),
                     "n/a" if wr is None else f"{wr:.4f}"])
        rows.append(["homie, no file (baseline job)", _s(base_wall), "", "", _s(base_log), "",
                     "n/a" if base_wire is None else f"{base_wire} B"])
        rows.append(["homie, re-run unchanged", _s(rerun_wall), _s(added), "", _s(median([r["log_upload"] for r in up["rerun"]])),
                     "", "n/a" if rerun_wire is None else f"{rerun_wire} B"])
        if up["scp"]:
            scp_s = median([r["seconds"] for r in up["scp"]])
            rows.append([f"scp (fresh connection, cipher {bench.results.get('ssh_cipher', '?')})", _s(scp_s), _s(scp_s),
                         _s(scp_mbps, "MB/s", 0), "", "",
                         f"{median([r['a_sent'] for r in up['scp']]) / size:.4f}"])
        if up["raw"]:
            raw_s = median([r["seconds"] for r in up["raw"]])
            rows.append(["raw TLS socket (bench/rawtls.py)", _s(median([r["wall"] for r in up["raw"]])), _s(raw_s),
                         _s(raw_mbps, "MB/s", 0), "", "", f"{raw_wire / size:.4f}"])
        details.append(_rows_table(["method", "CLI wall (median)", "transfer time", "throughput",
                                    "log: submitted→accepted", "log throughput", "wire/payload (a→)"], rows))
        details.append("")
        details.append(f"- homie warm-hash CLI wall: {_stats([r['wall'] for r in up['warm']], lambda x: f'{x:.3f} s')}")
        if up["scp"]:
            details.append(f"- scp: {_stats([r['seconds'] for r in up['scp']], lambda x: f'{x:.3f} s')}")
        details.append(f"- raw TLS: {_stats([r['seconds'] for r in up['raw']], lambda x: f'{x:.3f} s')}")
        details.append(f"- baseline job: {_stats([r['wall'] for r in up['baseline']], lambda x: f'{x:.3f} s')}")
        details.append(f"- re-run: {_stats([r['wall'] for r in up['rerun']], lambda x: f'{x:.3f} s')}, "
                       f"bytes a→ {[r['a_sent'] for r in up['rerun']]}, a← {[r['a_received'] for r in up['rerun']]}")
        if cold and base_wall is not None and cold["log_upload"] is not None:
            h = (cold["wall"] - base_wall) - median(warm_cli) if warm_cli else None
            details.append(f"- hashing cost on the cold run (cold minus warm-hash transfer): {_s(h)}"
                           + (f" ≈ {size / MB / h:.0f} MB/s" if h and h > 0 else ""))
        details.append(f"- peak RSS: a {a_hwm} KiB, b {b_hwm} KiB (max over {len(up['b_hwm_kb'])} daemon lives), "
                       f"CLI {cli_rss} KiB; scp client {max([r['maxrss_kb'] for r in up['scp']] or [0])} KiB, "
                       f"raw TLS sender {max([r['maxrss_kb'] for r in up['raw']] or [0])} KiB")
        idle = up.get("idle_rss_kb") or {}
        details.append(f"- daemons before the upload part: a VmRSS {idle.get('a')} KiB (VmHWM {idle.get('a_hwm')} KiB), "
                       f"b VmRSS {idle.get('b')} KiB; a's VmHWM after the cold run "
                       f"{cold['a_hwm_kb'] if cold else 'n/a'} KiB, after each warm run "
                       f"{[r['a_hwm_kb'] for r in up['warm']]} KiB")

        def _cpu(xs):
            xs = [x for x in xs if x is not None]
            return "n/a" if not xs else f"{median(xs):.2f} s"
        details.append(f"- CPU time (user+system) per transfer, medians: homie sender daemon "
                       f"{_cpu([r['a_cpu'] for r in up['warm']])} (cold run: {_cpu([cold['a_cpu']] if cold else [])}), "
                       f"homie worker daemon {_cpu([r['b_cpu'] for r in up['warm']])}; raw TLS sender {_cpu([r['send_cpu'] for r in up['raw']])}, "
                       f"receiver {_cpu([r['recv_cpu'] for r in up['raw']])}; scp client "
                       f"{_cpu([r['cpu'] for r in up['scp']])} (sshd side not measured)")
        details.append("")

    hello = R.get("hello")
    if hello:
        h = median(hello["homie"])
        f = median(hello.get("ssh_fresh", []))
        cm = median(hello.get("ssh_master", []))
        r = _ratio(h, f)
        goals.append(["`homie run hello.py` vs fresh `ssh peer python3 hello.py`", _ms(h), _ms(f), _fmt_ratio(r),
                      "≤ 0.3×", _met(r, 0.3, False)])
        r = _ratio(h, cm)
        goals.append(["`homie run hello.py` vs ssh with a warm ControlMaster", _ms(h), _ms(cm), _fmt_ratio(r),
                      "≤ 3×", _met(r, 3.0, False)])
        goals.append(["`homie run hello.py` vs local `python3 hello.py`", _ms(h), _ms(median(hello["local"])),
                      _fmt_ratio(_ratio(h, median(hello["local"]))), "(report)", ""])
        if hello.get("homie_nosandbox"):
            # The sandbox's cost: the same job on b (bubblewrap) and on c (sandbox: off), interleaved.
            added = median([x - y for x, y in zip(hello["homie"], hello["homie_nosandbox"])])
            goals.append(["sandbox cost: `homie run hello.py`, sandboxed minus unsandboxed (median of pairs)",
                          _ms(added), _ms(median(hello["homie_nosandbox"])), "", "≤ +15 ms",
                          "yes" if added <= 0.015 else "no"])
        details.append("### hello.py (prints hello)")
        details.append("")
        py = bench.plain_py or "python3"
        who = f"as `{bench.user.name}`" if bench.user else "as root"
        names = {"local": f"`{py} hello.py` on a (local, {who})", "homie": "`homie run -n b hello.py`",
                 "homie_nosandbox": "`homie run -n c hello.py` (c: `sandbox: off`)",
                 "ssh_fresh": f"`ssh {bench.user.name if bench.user else 'root'}@b {py} hello.py` (fresh connection)",
                 "ssh_master": "the same ssh through a warm ControlMaster"}
        details.append(_rows_table(["method", "wall: median (min, max, n)"],
                                   [[names[k], _stats(v)] for k, v in hello.items()]))
        details.append("")
        tl = bench.results.get("hello_timeline") or []
        if tl:
            details.append("The daemons' view of those `homie run -n b hello.py` runs (seconds after the CLI "
                           "started, from their JSON logs; medians):")
            details.append("")
            keys = list(tl[0].keys())
            keys = [k for k in keys if k != "CLI exits"] + ["CLI exits"]
            details.append(_rows_table(["event", "at (median)"],
                                       [[k, _ms(median([t.get(k) for t in tl]))] for k in keys]))
            details.append("")
    bd = R.get("breakdown")
    if bd:
        details.extend(_breakdown(bench, bd))

    mp = R.get("map")
    if mp and mp.get("runs"):
        goals_m, details_m = _map(bench, mp)
        goals.extend(goals_m)
        details.extend(details_m)

    pc = R.get("peers")
    if pc:
        p, c = median(pc["peers"]), median(pc["click"])
        r = _ratio(p, c)
        goals.append(["`homie peers` vs `python -c \"import click\"`", _ms(p), _ms(c), _fmt_ratio(r), "≤ 1.3×",
                      _met(r, 1.3, False)])
        details.append("### Start-up")
        details.append("")
        details.append(f"- `homie peers`: {_stats(pc['peers'])}")
        details.append(f"- `python -c \"import click\"`: {_stats(pc['click'])}")
        details.append("")

    d = R.get("discovery")
    if d:
        goals.append(["discovery: `homie up` returned → visible in `homie peers`", _ms(median(d["up"])),
                      "", "", "(report)", ""])
        goals.append(["discovery: `homie down` returned → gone from `homie peers`", _ms(median(d["down"])),
                      "", "", "(report)", ""])
        details.append("### Discovery")
        details.append("")
        details.append(_rows_table(["interval", "median (min, max, n)"], [
            ["`homie up` on b returned → first `homie peers --json` on a listing b finished", _stats(d["up"])],
            ["`homie up` on b returned → a's log `peer.seen` (negative: before up returned)", _stats(d["up_log"])],
            ["`homie down` on b returned → first `homie peers --json` on a without b finished", _stats(d["down"])],
            ["`homie down` on b returned → a's log `peer.gone`", _stats(d["down_log"])],
            ["`homie up` command itself", _stats(d["up_cmd"])],
            ["`homie down` command itself", _stats(d["down_cmd"])],
        ]))
        details.append("")
    if R.get("pyapi"):
        from bench.pyapi import details as pyapi_details

        details += pyapi_details(R["pyapi"]) + [""]
    return goals, details


def render(bench) -> tuple[str, str]:
    goals, details = compute(bench)
    header = ["measurement", "homie", "baseline", "ratio", "goal", "met"]
    table = _rows_table(header, goals)
    cmd = "sudo .venv/bin/python -m bench" + (" " + " ".join(shlex.quote(a) for a in bench.args.argv)
                                              if bench.args.argv else "")
    when = bench.started.strftime("%Y-%m-%d %H:%M UTC")
    facts = "\n".join(f"- {k}: {v}" for k, v in bench.facts.items())
    errors = "\n".join(f"- {e}" for e in bench.errors)
    notes = "\n".join(f"- {n}" for n in bench.notes)
    ssh_note = (f"- ssh/scp baselines missing: {bench.ssh_missing}\n" if bench.ssh_missing else "")
    if getattr(bench, "parallel_missing", None):
        ssh_note += f"- GNU parallel baselines missing: {bench.parallel_missing}\n"
    user = bench.user.name if bench.user else "homie-bench"
    plain_py = bench.plain_py or "python3"
    load = bench.facts.get("load average at start", "")
    busy = ""
    try:
        cores = int(bench.facts.get("cores", "0"))
        load1 = float(load.split()[0])
    except (ValueError, IndexError):
        cores, load1 = 0, 0.0
    if cores and (cores <= 2 or load1 > cores / 2):
        busy = (f"**Measured on a {cores}-core machine shared with other work (load average at start {load}): "
                "absolute numbers are noisy; the ratios within one run are what to read.**\n\n")
    doc = f"""# Benchmarks

Measured by `bench/` in one run: every figure below comes from the same invocation, on two
network-namespace hosts (`a` 10.203.0.11 submits, `b` 10.203.0.12 works; `c` is b's twin with the
sandbox off, `d` joins for the map comparison) joined by veth pairs to a private bridge
(tests/netns.py), daemons with the default configuration, homie run from its venv. The
baselines (ssh, scp, GNU parallel, local python) run as a dedicated user `{user}` with shell
`/bin/sh` and no rc files, with the plain interpreter `{plain_py}` (a real binary: no venv, no
pyenv shim).

```sh
{cmd}
```

Run {when}{' (quick run: smaller upload, fewer repeats)' if bench.quick else ''}.

{busy}
{facts}

{('**Steps that failed:**' + chr(10) + errors + chr(10)) if errors else ''}{ssh_note}{notes}

## Goals

{table}

Ratios are homie / baseline (for throughput: homie's MB/s over the baseline's). 1 MB = 10^6 bytes.

## Details

{chr(10).join(details)}

## Method

- **Timing.** Commands are started by the bench process itself after it enters the host's network
  namespace (setns), so a wall time is fork-to-reap of that one command, without `ip netns exec`;
  its peak RSS is the `ru_maxrss` of the reaped child (wait4). Medians are reported; round 0 of the
  hello.py and start-up comparisons warms caches and is not counted.
- **Discovery.** `homie up` / `homie down` on b, then `homie peers --json` on a back to back until b
  appears / disappears; the time is from the command returning to the end of the first poll that
  shows the change (so it includes up to one `homie peers` run). The `peer.seen` / `peer.gone`
  lines in a's JSON log give the moment a's daemon itself learned it.
- **The baselines' login.** ssh, scp and GNU parallel log in as `{user}`, a system user the
  bench creates if missing (idempotent): shell `/bin/sh`, home `/var/lib/homie-bench` with no
  rc files (`.profile`, `.bashrc`, ... are removed if present), password field `*`, its own
  ed25519 key in `~/.ssh` authorized for itself. The clients run as that user too, with a
  login's plain environment (`PATH={PLAIN_PATH}`, no venv, no `HOMIE_*`/`PYTHON*`). Earlier
  runs logged in as root, whose `~/.bashrc` on the development machines runs `pyenv init` on
  every ssh command and made every ssh figure (and scp's) slower than ssh itself is. The
  commands they run use `{plain_py}`, the base interpreter resolved to a real binary (a pyenv
  `python3` shim adds its own start-up, and the venv's interpreter loads the venv's `.pth`
  files); homie's worker likewise runs jobs with a base interpreter, not a venv.
- **sshd.** One per server host, started for the run inside that host's namespace (port 2222,
  key-only, `AllowUsers {user}`, `PermitRootLogin no`, `StrictModes yes`, `UsePAM no`, no
  environment accepted, host key made in a temp dir); clients use `ssh -F none` so that no
  ssh_config applies.
- **hello.py.** `homie run -n b hello.py` (ships the script, runs it in a job directory on b,
  streams the output back, looks for results) against `{plain_py} hello.py` on a and
  `ssh ... {user}@b {plain_py} hello.py`. The ssh runs use the same file (the namespaces share one
  file system, so ssh ships nothing); "fresh" opens a new connection each time, "ControlMaster"
  reuses a persistent master (`ControlMaster=auto`, `ControlPersist`) started and checked
  (`ssh -O check`) before anything is timed.
- **Where the time goes.** `python -c pass` with both interpreters and `python -c "import
  homie.cli"` with the venv's, timed like everything else; `-X importtime` for the imports; and
  `homie run -n b hello.py` run through `bench/probe.py`'s wrapper (`python -c WRAPPER run -n b
  hello.py`, the same thing the `homie` console script does) that stamps the wall clock at its
  first line, after `import homie.cli` and at the control socket's connect, first byte sent,
  first/last byte received, next to the daemons' log events of the same job. Separate runs from
  the hello.py rows, so the probe costs those nothing.
- **map.** {getattr(bench, "map_inputs", 1000)} input files of one line (a number each); `task.py` prints its square.
  Three hosts, each with the daemon's default job slots (`max_jobs`, the CPU count): a (which submits
  and, like every homie daemon, also takes jobs), b and d (made for this step; c is stopped).
  `homie map task.py --over 'in/*.txt' --json` on a (every input and the script shipped to the
  job's host, output streamed back) against GNU parallel running `{plain_py} task.py FILE` with
  the same slots: `-S N/{user}@host,...` through the same ssh command line (GNU parallel's
  default: one ssh login per input), the same through warm ssh ControlMasters (ours, not
  parallel's `--controlmaster`, which in this version now and then loses jobs and exits 0), and
  `parallel -j SLOTS` locally on a. The hosts share one file system, so parallel ships nothing
  (homie does): that favours parallel. One uncounted warm-up of 12 inputs per method first;
  every run is checked (all inputs ok, one output line each).
- **Upload.** A file of random bytes on disk (not tmpfs), in the page cache for every method.
  - *homie*: `homie run -n b -f big.bin noop.py`. The upload time is the CLI wall time minus the
    median wall time of the same job without the file (the baseline), measured both *cold* (first
    time ever: a's daemon hashes the file, sha256) and *warm hash* (a's hash cache knows the file;
    b was stopped, its `cache/blobs` removed, and started again). The log columns give the interval
    from `job.submitted` in a's log (written after hashing) to `job.accepted` in b's log (after the
    last byte is written and the job directory is linked), which includes the connection,
    handshake and job negotiation but no hashing.
  - *scp*: `scp -F none` as `{user}` with the default cipher of this OpenSSH, a fresh connection
    each time (the handshake is included, as it is for homie); the file is written on b's side.
  - *raw TLS*: `bench/rawtls.py`: mutual TLS 1.3 with the same `homie.wire.trust.Trust` contexts as
    homie's channel, blocking sockets, 1 MiB buffers, an 8-byte length prefix and nothing else;
    the receiver writes the bytes to a file (as homie's worker and scp do), closes it and
    acknowledges; the time runs from connect to the acknowledgement.
  - Received copies are deleted and `sync` runs between transfers so that writeback of one does
    not land in the next; no method fsyncs.
- **Bytes on the wire** come from the host-side veth counters of a (`rx_bytes` of a's veth is what
  a sent) read before and after each transfer. They count every frame a sent in that window:
  Ethernet, IP and TCP headers, TLS records, homie's framing and control messages, and also a's
  discovery heartbeats and ARP. The veths use segmentation offload, so a large TCP send crosses
  the veth as one super-frame carrying one set of headers: on a real 1500-byte-MTU link each
  ~1448-byte segment would add ~66 bytes of headers (≈ 4.5 %), for homie, scp and raw TLS alike.
  The raw TLS figure is therefore the floor to compare homie's with.
- **Re-run.** The same job with the same unchanged file after b already holds it: bytes counted
  in both directions on a's veth while the CLI ran, and the wall time minus the no-file baseline.
- **Peak RSS.** `VmHWM` from `/proc/PID/status` of each daemon (pids from `HOMIE_HOME/homie.pid`):
  a's covers its whole life through every upload; b is restarted between warm-hash rounds, and the
  maximum over its lives is reported. The CLI's is its `ru_maxrss`.
- The machine was not otherwise idle unless the load average above says so; figures from a busy
  machine are noisy.
"""
    return table, doc
