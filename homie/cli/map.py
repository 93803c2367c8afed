"""`homie map`: one script over many inputs, across the peers (like GNU parallel)."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from homie.cli.common import ARROW, client, example, printable, say
from homie.cli.follow import check_out_dir, deliver
from homie.cli.inputs import check_args, check_inputs
from homie.errors import EXIT_MAP_FAILED, EXIT_OK, EXIT_TRANSFER, EXIT_USAGE, HomieError


def _halt_rule(ctx, param, value):
    """GNU parallel's --halt: never, or (now|soon),fail=N."""
    if value in (None, "never"):
        return None
    import re

    m = re.fullmatch(r"(now|soon),fail=(\d+)", value or "")
    if not m or int(m.group(2)) < 1:
        raise click.BadParameter(f"{value!r}: use never, now,fail=N or soon,fail=N")
    return m.group(1), int(m.group(2))


class _MapRun:
    """The shared state of one `homie map`: job ids for Ctrl-C, outcomes, the halt rule."""

    def __init__(self, inputs: list[str], halt):
        import threading

        self.lock = threading.Lock()
        self.ids: dict[str, str] = {}
        self.outcome: dict[str, dict] = {}
        self.halt = halt
        self.stopping = False  # no new job starts (Ctrl-C or --halt)
        self.interrupts = 0
        self.failed = 0
        self.inputs = inputs

    def kill_all(self, sig: int) -> None:
        import threading

        def one(job_id):
            try:
                client().kill(job_id, sig)
            except HomieError:
                pass  # already over

        with self.lock:
            ids = [j for p, j in self.ids.items() if p not in self.outcome]
        for j in ids:
            threading.Thread(target=one, args=(j,), daemon=True).start()

    def record(self, path: str, out: dict) -> None:
        import signal

        with self.lock:
            self.outcome[path] = out
            if out["state"] != "ok":
                self.failed += 1
            halt = self.halt and out["state"] != "ok" and self.failed >= self.halt[1] and not self.stopping
            if halt:
                self.stopping = True
        if halt:
            say(f"halting after {self.failed} failure(s): no new jobs start"
                 + ("; killing the running ones" if self.halt[0] == "now" else "; waiting for the running ones"))
            if self.halt[0] == "now":
                self.kill_all(int(signal.SIGKILL))


MAP_HELP = """Run SCRIPT once per input matching --over, across the peers (like GNU parallel).

The input goes in place of {} in ARGS, or last if there is no {}; each job
gets SCRIPT, its input and the -f files; results go to DIR/<input-name>/.

\b
Ctrl-C cancels every job of this map (queued ones never start); Ctrl-C again
kills them. Exit status: 0 when every input succeeded, 4 when any failed,
130 after Ctrl-C; homie's own errors keep their codes (2, 69-73).
"""


@click.command("map", help=MAP_HELP, context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
              epilog=example("homie map count.py --over 'data/*.csv'",
                              "homie map resize.py --over 'img/*.png' --out-size 64 {} -j 4",
                              "homie map train.py --over 'cfg/*.yaml' --halt now,fail=1 --joblog jobs.tsv"))
@click.option("--over", "pattern", required=True, metavar="GLOB",
              help="Glob of inputs, one job each (quote it: 'data/*.csv').")
@click.option("-j", "--jobs", "max_jobs", type=click.IntRange(min=0), default=0, metavar="N",
              help="At most N jobs in flight (default: twice the job slots of the online peers, this machine's"
                   " included).")
@click.option("-f", "--file", "files", multiple=True, metavar="FILE", help="Also send FILE with every job.")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR",
              help="Results go to DIR/<input-name>/.")
@click.option("--gpu", is_flag=True, help="Run each job on a peer with a free GPU.")
@click.option("--retries", type=click.IntRange(min=0), metavar="N",
              help="Run a job again elsewhere up to N times if its peer is lost (default: config retries).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="PATH",
              help="Each input's checkpoint (besides $HOMIE_CHECKPOINT_DIR): a lost input resumes from it"
                   " (repeatable).")
@click.option("--halt", callback=_halt_rule, metavar="WHEN,fail=N",
              help="now,fail=N: after N failures kill the rest; soon,fail=N: start no more.")
@click.option("--bar/--no-bar", default=None, help="Progress bar with ETA on stderr (default: on a terminal).")
@click.option("--joblog", metavar="FILE", help="Write a GNU parallel style job log (tab-separated) to FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout (job output goes to stderr).")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def map_cmd(pattern, max_jobs, files, out_dir, gpu, retries, checkpoints, halt, bar, joblog, as_json, script, args):
    import glob
    import signal
    import threading

    inputs = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not inputs:
        raise HomieError(f"no inputs match {pattern!r}", EXIT_USAGE)
    check_inputs(script, files, None)
    check_args(list(args))
    check_out_dir(out_dir)
    if retries is None:
        retries = client().request("status").get("retries", 2)
    log = _JobLog(joblog) if joblog else None
    names = _input_names(inputs)
    gate = _Gate(max_jobs if max_jobs > 0 else _in_flight_now(gpu, len(inputs)))
    if max_jobs <= 0:
        threading.Thread(target=_follow_slots, args=(gate, gpu, len(inputs)), daemon=True).start()
    m = _MapRun(inputs, halt)
    bar = _MapBar(len(inputs)) if (bar if bar is not None else sys.stderr.isatty()) else None
    out_lock = threading.Lock()

    def interrupted(signum, frame):
        m.interrupts += 1
        m.stopping = True
        if m.interrupts == 1:
            click.echo(f"\n{ARROW} cancelling {len(m.ids)} job(s) of this map (Ctrl-C again kills them)", err=True)
            m.kill_all(int(signal.SIGTERM))
        elif m.interrupts == 2:
            click.echo(f"\n{ARROW} killing every job of this map", err=True)
            m.kill_all(int(signal.SIGKILL))
        else:
            os._exit(130)

    signal.signal(signal.SIGINT, interrupted)

    def write(stream: int, text: bytes) -> None:
        out = sys.stderr if stream == 2 or as_json else sys.stdout
        with out_lock:
            if bar:
                bar.print(text.decode(errors="replace"), out)
            else:
                out.buffer.write(text)
                out.flush()

    def one(seq: int, path: str) -> None:
        with gate:
            if m.stopping:
                m.record(path, {"state": "cancelled", "peer": None, "exit_code": None, "why": "not started"})
                return
            _map_one(seq, path, names[path], script, args, files, gpu, retries, out_dir, m, write, log,
                     list(checkpoints))
        if bar:
            bar.advance(m)

    threads = [threading.Thread(target=one, args=(i, p), daemon=True) for i, p in enumerate(inputs, 1)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.2)  # short joins: Ctrl-C reaches the handler at once
    if bar:
        bar.close()
    _map_summary(m, inputs, as_json, out_dir, names)
    if m.interrupts:
        sys.exit(130)
    sys.exit(EXIT_MAP_FAILED if m.failed else EXIT_OK)


def _map_one(seq, path, name, script, args, files, gpu, retries, out_dir, m, write, log,
             checkpoints=()) -> None:
    import signal

    from homie.client.events import Ended, JobEvent, OutputEvent, typed

    # Where the input lands in the job directory (same rule as the upload):
    # its path relative to the script's folder when inside it, else its name.
    sdir = os.path.dirname(os.path.abspath(script))
    ap = os.path.abspath(path)
    rel = os.path.relpath(ap, sdir) if ap.startswith(sdir + os.sep) else os.path.basename(ap)
    job_args = [rel if a == "{}" else a.replace("{}", rel) for a in args]
    if not any("{}" in a for a in args):
        job_args.append(rel)
    conn = client(timeout=None)
    req = conn.run_request(script, job_args, files=[path, *files], gpu=gpu, tag=name, retries=retries,
                           checkpoint=list(checkpoints) or None)
    peer, sent, started = "?", 0, time.time()
    out: dict = {"state": "failed", "peer": None, "exit_code": None, "why": "no answer", "job_id": None}
    partial = {1: b"", 2: b""}
    try:
        for ev in typed(conn.stream("run", **req)):
            if isinstance(ev, OutputEvent):
                lines = (partial[ev.stream] + ev.data).split(b"\n")
                partial[ev.stream] = lines.pop()
                if lines:
                    write(ev.stream, b"".join(f"[{peer} {name}] ".encode() + ln + b"\n" for ln in lines))
            elif isinstance(ev, JobEvent):
                if ev.kind == "job":
                    out["job_id"] = ev.job_id
                    with m.lock:
                        m.ids[path] = ev.job_id
                    if m.stopping:  # Ctrl-C came while this one was being queued
                        m.kill_all(int(signal.SIGTERM))
                elif ev.kind == "sending":
                    peer, sent = ev.peer or peer, ev.bytes or 0
            elif isinstance(ev, Ended):
                end = ev.info
                ok = end.state == "done" and end.code == 0
                received = 0
                if end.state == "done" and end.results:
                    for p in deliver(end.results, end.results_dir or "", os.path.join(out_dir, name),
                                     end.job_id):
                        received += os.path.getsize(p)
                why = "ok" if ok else (end.message or end.reason or f"exit {end.exit_code}")
                out = {"state": "ok" if ok else str(end.state) if end.state != "done" else "failed",
                       "peer": end.peer or peer, "exit_code": end.exit_code, "why": why,
                       "job_id": end.job_id, "signal": end.signal, "received": received}
    except HomieError as e:
        out.update(exit_code=e.exit_code, why=str(e), peer=peer if peer != "?" else None)
    except OSError as e:
        out.update(exit_code=EXIT_TRANSFER, why=f"cannot save results: {e}")
    out.update(input=path, sent=sent, started=started, runtime=time.time() - started)
    m.record(path, out)
    if log:
        log.write(seq, out, ["homie", "run", script, *job_args])


# Without -j, twice the slots of the peers are in flight: every slot busy, and as many
# jobs again queued in the daemon, ready the moment a slot frees. More would only sit
# in the submitting daemon (a thread, a connection and a job record each).
IN_FLIGHT_PER_SLOT = 2
SLOTS_EVERY = 5.0  # seconds between looks at the peers' slots while a map runs


def default_in_flight(peers: list[dict], inputs: int, gpu: bool = False) -> int:
    """How many inputs a map keeps in flight without -j: IN_FLIGHT_PER_SLOT per job slot
    the online peers advertise (max_jobs; this machine is among the peers), paused ones
    left out, only GPU peers for a --gpu map; at least IN_FLIGHT_PER_SLOT (the jobs
    wait in the queue for a peer), at most the number of inputs."""
    slots = 0
    for p in peers:
        if p.get("status") == "paused" or (gpu and not p.get("gpu")):
            continue
        n = p.get("max_jobs")
        slots += max(1, n if isinstance(n, int) and not isinstance(n, bool) else 1)
    return max(1, min(inputs, IN_FLIGHT_PER_SLOT * max(1, slots)))


def _in_flight_now(gpu: bool, inputs: int) -> int:
    res = client().request("peers")
    return default_in_flight([*res.get("peers", []), *([res["me"]] if res.get("me") else [])], inputs, gpu)


def _follow_slots(gate: _Gate, gpu: bool, inputs: int) -> None:
    """Peers come and go while a map runs: the bound follows their slots."""
    while True:
        time.sleep(SLOTS_EVERY)
        try:
            gate.set_limit(_in_flight_now(gpu, inputs))
        except Exception:
            pass  # the daemon is busy or going: the bound stays as it was


class _Gate:
    """A semaphore whose size can change while threads wait on it."""

    def __init__(self, limit: int):
        import threading

        self.limit = limit
        self.held = 0
        self.cond = threading.Condition()

    def set_limit(self, limit: int) -> None:
        with self.cond:
            self.limit = limit
            self.cond.notify_all()

    def __enter__(self) -> _Gate:
        with self.cond:
            while self.held >= self.limit:
                self.cond.wait()
            self.held += 1
        return self

    def __exit__(self, *exc) -> None:
        with self.cond:
            self.held -= 1
            self.cond.notify()


class _JobLog:
    """GNU parallel's --joblog format: one tab-separated line per finished job."""

    HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"

    def __init__(self, path: str):
        import threading

        try:
            self.f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise HomieError(f"cannot write the job log {path}: {e.strerror}", EXIT_USAGE) from None
        self.f.write(self.HEADER)
        self.f.flush()
        self.lock = threading.Lock()

    def write(self, seq: int, out: dict, argv: list[str]) -> None:
        import shlex

        code = out.get("exit_code")
        line = (f"{seq}\t{out.get('peer') or ':'}\t{out['started']:.3f}\t{out['runtime']:.3f}\t{out.get('sent') or 0}"
                f"\t{out.get('received') or 0}\t{code if code is not None else -1}\t{out.get('signal') or 0}"
                f"\t{shlex.join(argv)}\n")
        with self.lock:
            self.f.write(line)
            self.f.flush()


class _MapBar:
    """parallel's --bar: done/total, failures, ETA, on stderr."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress("map", BarColumn(), MofNCompleteColumn(), "{task.fields[failed]} failed",
                                 "ETA", TimeRemainingColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("map", total=total, failed=0)
        self.progress.start()

    def print(self, text: str, out) -> None:
        if out is sys.stderr:
            # through rich, so the bar is redrawn below the line instead of through it
            self.console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        else:
            out.write(text)
            out.flush()

    def advance(self, m: _MapRun) -> None:
        self.progress.update(self.task, advance=1, failed=m.failed)

    def close(self) -> None:
        self.progress.stop()


def _map_summary(m: _MapRun, inputs: list[str], as_json: bool, out_dir: str, names: dict) -> None:
    ok = [p for p in inputs if m.outcome.get(p, {}).get("state") == "ok"]
    if as_json:
        click.echo(json.dumps({
            "inputs": len(inputs), "ok": len(ok), "failed": m.failed,
            "jobs": [{"input": p, "job_id": m.outcome.get(p, {}).get("job_id"),
                      "peer": m.outcome.get(p, {}).get("peer"), "state": m.outcome.get(p, {}).get("state", "failed"),
                      "exit_code": m.outcome.get(p, {}).get("exit_code"),
                      "message": None if p in ok else m.outcome.get(p, {}).get("why"),
                      "results_dir": os.path.join(out_dir, names[p])} for p in inputs]}, indent=2))
    by_peer: dict[str, int] = {}
    for p in inputs:
        peer = m.outcome.get(p, {}).get("peer")
        if peer:
            by_peer[peer] = by_peer.get(peer, 0) + 1
    spread = ", ".join(f"{n} on {k}" for k, n in sorted(by_peer.items()))
    say(f"{len(inputs)} inputs: {len(ok)} ok, {m.failed} failed" + (f"; ran {spread}" if spread else ""))
    for p in inputs:
        if p not in ok:
            o = m.outcome.get(p, {"why": "no answer"})
            click.echo(f"   {o.get('state', 'failed')}: {p}: {printable(str(o.get('why')))}", err=True)


def _input_names(inputs: list[str]) -> dict[str, str]:
    """results/<input-name>/: the file name, or the relative path when names repeat."""
    base = {p: os.path.basename(p) for p in inputs}
    counts: dict[str, int] = {}
    for b in base.values():
        counts[b] = counts.get(b, 0) + 1
    return {p: (b if counts[b] == 1 else os.path.normpath(p).replace(os.sep, "_")) for p, b in base.items()}


COMMANDS = (map_cmd,)
