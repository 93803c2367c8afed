"""Jobs already sent: `homie ps`, `kill`, `wait`, `restart`, `clean`, `attach`, `logs`, `results`."""

from __future__ import annotations

import json
import os
import sys

import click

from homie.cli.common import client, error_line, example, request, say, table
from homie.cli.follow import check_out_dir, deliver, follow_stream
from homie.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, HomieError
from homie.fmt import age


def ps_jobs(show_all: bool) -> dict:
    """Jobs from the daemon, which sends them in batches: no list is ever too big for one message."""
    return client(timeout=None).ps(show_all)


JOB_STATES = ("queued", "uploading", "running", "fetching", "done", "failed", "lost", "killed",
              "preparing", "exited", "finished")


def _status_list(ctx, param, value):
    if not value:
        return None
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in wanted if v not in JOB_STATES]
    if bad:
        raise click.BadParameter(f"unknown status {bad[0]!r} (one of: {', '.join(JOB_STATES)})")
    return set(wanted)


@click.command(epilog=example("homie ps", "homie ps --all --status failed,lost", "homie ps --peer raj -q",
                              "homie ps --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--status", "statuses", callback=_status_list, metavar="STATUS[,STATUS]",
              help="Only jobs in these states (queued, running, done, failed, lost, killed...); implies --all.")
@click.option("--peer", metavar="PEER", help="Only jobs on (or from) this peer.")
@click.option("-q", "--quiet", "ids_only", is_flag=True, help="Only job ids, one a line (for scripts).")
def ps(as_json, show_all, statuses, peer, ids_only):
    """Jobs sent from here, and jobs that ran here for friends."""
    res = ps_jobs(show_all or bool(statuses))
    sent = [j for j in res["jobs"] if (not statuses or j["status"] in statuses)
            and (not peer or j.get("peer") == peer)]
    here = [j for j in res["here"] if (not statuses or j["status"] in statuses)
            and (not peer or j.get("from") == peer)]
    if as_json:
        click.echo(json.dumps({"sent": sent, "here": here}, indent=2))
        return
    if ids_only:
        for j in sent + here:
            click.echo(j["job_id"])
        return
    now = res["now"]
    if not sent and not here:
        filtered = " matching" if statuses or peer else ""
        click.echo(f"no jobs{filtered}"
                   + ("" if show_all or statuses else " running (homie ps --all shows finished ones)"))
        return
    if sent:
        rows = []
        for j in sent:
            status = j["status"]
            if status == "queued" and j.get("why"):
                status = f"queued ({j['why']})"
            elif j["status"] in ("done",) and j.get("exit_code") not in (None, 0):
                status = f"exit {j['exit_code']}"
            if (j.get("attempt") or 1) > 1:
                status += f" (attempt {j['attempt']})"
            script = " ".join([os.path.basename(j["script"] or "?"), *j["args"]])[:40]
            rows.append([j["job_id"], j.get("name") or "", j.get("peer") or "", script, status,
                         age(now - j["created"])])
        click.echo("sent from here:")
        click.echo(table(["ID", "NAME", "PEER", "SCRIPT", "STATUS", "AGE"], rows))
    if here:
        if sent:
            click.echo()
        rows = [[j["job_id"], j["from"], " ".join([j["script"] or "?", *j["args"]])[:40],
                 j["status"] if j.get("code") in (None, 0) else f"{j['status']} (exit {j['code']})",
                 age(now - j["created"])] for j in here]
        click.echo("run here for friends:")
        click.echo(table(["ID", "FROM", "SCRIPT", "STATUS", "AGE"], rows))


def _signal_arg(sig: str) -> int:
    from homie.client.job import signal_number

    try:
        return signal_number(sig)
    except (AttributeError, ValueError):
        raise HomieError(f"unknown signal {sig!r} (INT, TERM, KILL or a number)", EXIT_USAGE) from None


@click.command(epilog=example("homie kill 3f9a61c2", "homie kill 3f9a 77aa -s INT", "homie kill --all"))
@click.argument("job_ids", nargs=-1, metavar="JOB...")
@click.option("--all", "kill_all", is_flag=True, help="Every unfinished job sent from here.")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, metavar="SIG",
              help="Signal to send (INT, TERM, KILL). KILL stops the job: SIGTERM, then SIGKILL after 2 s.")
def kill(job_ids, kill_all, sig):
    """Kill jobs (each one's whole process tree), wherever they run."""
    num = _signal_arg(sig)
    if kill_all:
        job_ids = tuple(j["job_id"] for j in ps_jobs(False)["jobs"])
        if not job_ids:
            click.echo("no unfinished jobs sent from here")
            return
    elif not job_ids:
        raise HomieError("name the JOB(s) to kill, or --all (see `homie ps`)", EXIT_USAGE)
    failed = None
    for job_id in job_ids:
        try:
            click.echo(request("kill", job_id=job_id, sig=num)["message"])
        except HomieError as e:
            error_line(str(e))  # and on to the next job
            failed = e.exit_code
    if failed is not None:
        sys.exit(failed)


@click.command("wait", epilog=example("homie wait 3f9a61c2", "homie wait $(homie ps -q)"))
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
def wait_cmd(job_ids):
    """Wait until the JOBs end; exit 0 if all succeeded, else the last failure's code."""
    from homie.client import Job

    code = EXIT_OK
    for job_id in job_ids:
        end = Job(client(timeout=None), job_id).wait()
        c = end.exit_code
        ok = end.ok
        say(f"job {end.job_id} {'done' if ok else end.state}"
             + ("" if ok else f" (exit {c}{': ' + end.message if end.message else ''})"))
        if not ok:
            code = c if c else EXIT_FAILURE
    sys.exit(code)


@click.command(epilog=example("homie restart 3f9a61c2", "homie restart 3f9a61c2 --detach"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR",
              help="Where result files go.")
@click.option("--detach", is_flag=True, help="Return at once with the new job id.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job's output, unprefixed.")
def restart(job_id, out_dir, detach, quiet):
    """Run a job again: same script, arguments, files, options (a new job id)."""
    from homie.client.events import Ended, typed

    if not detach:
        check_out_dir(out_dir)
    events = typed(client(timeout=None).stream("restart", job_id=job_id, detach=detach))
    if detach:
        for ev in events:
            if isinstance(ev, Ended):
                click.echo(ev.info.job_id)
        return
    sys.exit(follow_stream(events, out_dir, quiet=quiet))


@click.command(epilog=example("homie clean", "homie clean 3f9a61c2"))
@click.argument("job_ids", nargs=-1, metavar="[JOB...]")
def clean(job_ids):
    """Forget finished jobs (all, or the JOBs named) and delete their kept results and logs."""
    if not job_ids:
        finished = ("done", "failed", "lost", "killed")
        job_ids = tuple(j["job_id"] for j in ps_jobs(True)["jobs"] if j["status"] in finished)
    n = 0
    for job_id in job_ids:
        request("forget", job_id=job_id)
        n += 1
    click.echo(f"forgot {n} finished job(s)" if n else "no finished jobs to forget")


@click.command(epilog=example("homie attach 3f9a61c2"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR",
              help="Where result files go.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job's output, unprefixed.")
def attach(job_id, out_dir, quiet):
    """Follow a job live, with its earlier output first; Ctrl-C detaches (the job goes on)."""
    from homie.client.events import JobEvent, typed

    full = job_id
    events = typed(client(timeout=None).stream("follow", job_id=job_id, live=True))
    first = next(events, None)
    if isinstance(first, JobEvent) and first.kind == "job":
        full = first.job_id

    def chain():
        if first is not None:
            yield first
        yield from events

    sys.exit(follow_stream(chain(), out_dir, quiet=quiet, attached=full))


@click.command(epilog=example("homie logs 3f9a61c2", "homie logs 3f9a61c2 --tail 20", "homie logs -f 3f9a61c2"))
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", is_flag=True, help="Keep following until the job ends.")
@click.option("-n", "--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines so far.")
def logs(job_id, follow, tail):
    """Print a job's output so far (jobs sent from here, or run here for a friend)."""
    from homie.client import Ended, Job, OutputEvent

    job = Job(client(timeout=None), job_id)
    end = None
    chunks: list[tuple[int, bytes]] = []
    for ev in job.stream(live=follow and tail is None):
        if isinstance(ev, OutputEvent):
            if tail is None:
                out = sys.stdout if ev.stream == 1 else sys.stderr
                out.buffer.write(ev.data)
                out.flush()
            else:
                chunks.append((ev.stream, ev.data))
        elif isinstance(ev, Ended):
            end = ev.info
    if tail is not None:
        _print_tail(chunks, tail)
        if follow and end and not end.terminal:
            for ev in job.stream(live=True, offset=end.offset or 0):
                if isinstance(ev, OutputEvent):
                    out = sys.stdout if ev.stream == 1 else sys.stderr
                    out.buffer.write(ev.data)
                    out.flush()
                elif isinstance(ev, Ended):
                    end = ev.info
    if end and end.terminal and end.state not in ("done", None):
        say(f"job {end.state}: {end.message or ''}".rstrip(": "))


def _print_tail(chunks: list[tuple[int, bytes]], n: int) -> None:
    """The last n lines, each to the stream it came from."""
    lines: list[tuple[int, bytes]] = []
    partial = {1: b"", 2: b""}
    for stream, data in chunks:
        parts = (partial[stream] + data).split(b"\n")
        partial[stream] = parts.pop()
        lines += [(stream, p + b"\n") for p in parts]
    lines += [(s, p) for s, p in partial.items() if p]
    for stream, line in lines[len(lines) - n:] if n else []:
        out = sys.stdout if stream == 1 else sys.stderr
        out.buffer.write(line)
        out.flush()


@click.command(epilog=example("homie results 3f9a61c2", "homie results 3f9a61c2 -o later"))
@click.argument("job_id", metavar="JOB")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR",
              help="Where result files go.")
def results(job_id, out_dir):
    """Fetch a finished job's result files."""
    res = client().request("get_results", job_id=job_id)
    check_out_dir(out_dir)
    for p in deliver(res["results"], res["results_dir"], out_dir, res["job_id"]):
        say(f"saved: {os.path.relpath(p)}")
    if not res["results"]:
        say(f"job {res['job_id']} produced no result files")


COMMANDS = (ps, kill, wait_cmd, restart, clean, attach, logs, results)
