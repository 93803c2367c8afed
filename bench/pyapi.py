"""homie from Python, measured: homie.futures.Executor over three namespace hosts against
concurrent.futures.ProcessPoolExecutor on one host.

    sudo .venv/bin/python -m bench --only pyapi      # as a step of the whole run
    sudo .venv/bin/python -m bench.pyapi             # only this; rewrites only its section of docs/benchmarks.md

Two workloads: 1,000 tiny tasks (x * x) through map(), and 40 tasks of 0.5 s of CPU each. Wall
time runs from creating the executor to having every result (so it includes starting the
process pool, or asking the daemon for its peers), the median of a few rounds.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench/pyapi.py: begin -->", "<!-- bench/pyapi.py: end -->"
TINY, CPU_TASKS, CPU_SECONDS = 1000, 40, 0.5


def square(x):
    return x * x


def burn(seconds):
    """seconds of CPU time in this process (not wall time: a busy machine stretches it)."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(log=print, rounds: int = 3) -> dict:
    """Build three hosts, run both workloads both ways; {workload: {method: [seconds...]}}."""
    from concurrent.futures import ProcessPoolExecutor

    import homie
    from jobhelp import make_group
    from netns import Cluster

    me = sys.modules[__name__]
    res: dict = {"rounds": rounds, "cores": os.cpu_count(), "tiny": {}, "cpu": {}}
    with Cluster() as c:
        log("pyapi: three hosts (p1 submits; p2, p3 and p1 itself lend)")
        p1, p2, p3 = make_group(c, ["p1", "p2", "p3"])
        client = homie.Client(p1.home)
        res["slots"] = sum(p.max_jobs or 1 for p in client.peers(include_self=True))

        def homie_map(fn, items):
            with homie.Executor(client, pickle_by_value=[me], echo=False) as ex:
                out = list(ex.map(fn, items))
            return out

        def pool_map(fn, items):
            with ProcessPoolExecutor() as ex:
                return list(ex.map(fn, items))

        for name, fn, items, check in (
                ("tiny", square, list(range(TINY)), [x * x for x in range(TINY)]),
                ("cpu", burn, [CPU_SECONDS] * CPU_TASKS, None)):
            for method, run in (("homie", homie_map), ("process_pool", pool_map)):
                times = []
                for i in range(rounds + 1):  # round 0 warms caches (the peers' blob cache too); not counted
                    got: list = []
                    t = _timed(lambda got=got, run=run, fn=fn, items=items: got.extend(run(fn, items)))
                    if check is not None and got != check:
                        raise AssertionError(f"{method} returned wrong results for {name}")
                    if len(got) != len(items):
                        raise AssertionError(f"{method} returned {len(got)} results of {len(items)}")
                    if i:
                        times.append(t)
                res[name][method] = times
                log(f"pyapi: {name} via {method}: median {statistics.median(times):.2f} s")
    return res


def details(res: dict | None) -> list[str]:
    """The section of docs/benchmarks.md (markdown lines)."""
    if not res:
        return []
    rows = []
    for name, label, n in (("tiny", f"{TINY} tiny tasks (`x * x`)", TINY),
                           ("cpu", f"{CPU_TASKS} tasks of {CPU_SECONDS:g} s CPU", CPU_TASKS)):
        for method, what in (("homie", "homie.futures.Executor, 3 hosts"),
                             ("process_pool", "ProcessPoolExecutor, 1 host")):
            xs = res[name].get(method) or []
            if not xs:
                continue
            med = statistics.median(xs)
            rate = n / med
            rows.append(f"| {label} | {what} | {med:.2f} s (min {min(xs):.2f}, max {max(xs):.2f}) |"
                        f" {rate:.0f} |" if rate >= 100 else
                        f"| {label} | {what} | {med:.2f} s (min {min(xs):.2f}, max {max(xs):.2f}) | {rate:.1f} |")
    return [
        BEGIN,
        "### From Python: homie.futures.Executor vs ProcessPoolExecutor",
        "",
        "| workload | how | wall time (median) | tasks/s |",
        "|---|---|---|---|",
        *rows,
        "",
        "Measured by `sudo .venv/bin/python -m bench.pyapi` (or as the `pyapi` step of `python -m bench`):"
        f" three namespace hosts (p1 submits and lends; p2, p3 lend), daemons with the default configuration"
        f" ({res.get('slots')} job slots among them), the client in the bench process; the pool has one process"
        f" per core ({res.get('cores')}). Wall time is from creating the executor to the last result, median of"
        f" {res.get('rounds')} rounds after a warm-up round, `map()` with its default batching. The namespace hosts"
        " share this one machine's cores: the 0.5 s tasks get no more CPU over three hosts than in the pool, so"
        " that row shows what homie's scheduling, sandbox and transfers cost when the hosts are really one"
        " machine; on three real machines the same run has three machines' cores. The 1,000 tiny tasks travel in"
        " a few jobs (one per slot), so their cost is that of a few jobs, not of 1,000.",
        END,
    ]


def write_section(res: dict) -> None:
    """Replace (or add) this module's section of docs/benchmarks.md, leaving the rest as it is."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    section = "\n".join(details(res))
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda m: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.pyapi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per method (default 3)")
    p.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.pyapi: needs root (network namespaces)", file=sys.stderr)
        return 2
    res = measure(lambda m: print(m, file=sys.stderr, flush=True), rounds=args.rounds)
    print("\n".join(details(res)))
    if not args.no_doc:
        write_section(res)
        print(f"wrote {DOC.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
