"""`homie run`: one script on the best idle peer, its output streamed back live."""

from __future__ import annotations

import json
import os
import sys

import click

from homie.cli.common import ARROW, checked_home, client, example
from homie.cli.follow import check_out_dir, follow_stream
from homie.cli.inputs import check_args, check_inputs, parse_duration, parse_env, read_stdin, utf8
from homie.client.events import Ended, typed
from homie.errors import EXIT_NO_PEER, EXIT_OK, EXIT_USAGE, EXIT_WOULD_WAIT, HomieError

RUN_HELP = """Run SCRIPT [ARGS]... on the best idle peer; output streams back live.

Everything after SCRIPT is passed to the script untouched; homie's options go
before SCRIPT.

\b
What is sent: SCRIPT only, unless you add files. A script that reads
data.csv needs `-f data.csv` (repeatable, globs allowed) or the whole folder
with `-d .` (honours .gitignore and .homieignore). Sent files are read-only in
the job; files the job creates come back into -o DIR (default ./results).

\b
Job output goes to stdout/stderr prefixed with [peer]; homie's own lines go to
stderr. With --quiet the job's output is passed through untouched and homie
says nothing but errors. Piped or redirected stdin is forwarded to the job.
"""


@click.command(help=RUN_HELP, context_settings={"allow_interspersed_args": False},
              epilog=example("homie run hello.py", "homie run -f data.csv train.py --epochs 10",
                              "homie run -d . train.py --epochs 10", "homie run -n raj --gpu train.py",
                              "homie run -e SEED=1 --timeout 2h --name exp1 train.py",
                              "homie run --quiet count.py < words.txt > counts.txt",
                              "homie run --checkpoint ckpt/ --retries 5 train.py --epochs 100"))
@click.option("-n", "--peer", metavar="PEER", help="Run on this peer (by name; your own name runs it here).")
@click.option("-f", "--file", "files", multiple=True, metavar="FILE",
              help="Also send FILE (repeatable; globs allowed).")
@click.option("-d", "--dir", "directory", metavar="DIR",
              help="Send this whole project directory (honours .gitignore/.homieignore).")
@click.option("-o", "--output", "out_dir", default="results", show_default=True, metavar="DIR",
              help="Where result files go.")
@click.option("--gpu", is_flag=True, help="Run on a peer with a free GPU.")
@click.option("-e", "--env", "env_pairs", multiple=True, metavar="KEY=VAL",
              help="Set an environment variable in the job (repeatable).")
@click.option("--env-file", metavar="FILE", help="Read KEY=VAL lines (# comments) into the job's environment.")
@click.option("--timeout", type=parse_duration, metavar="DURATION", help="Stop the job after DURATION (30s, 10m, 2h).")
@click.option("--name", "label", metavar="LABEL", help="A label for the job, shown by homie ps.")
@click.option("-q", "--quiet", is_flag=True,
              help="Only the job's output, unprefixed; homie's own lines only on errors.")
@click.option("--no-stdin", is_flag=True,
              help="Send the job no stdin even if one is piped (like ssh -n; for loops reading a list).")
@click.option("--executor", metavar="NAME", help="Executor on the worker (subprocess, venv, ...; default auto).")
@click.option("--scheduler", metavar="NAME", help="Scheduler choosing the peer (default from config).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="PATH",
              help="A file or directory of the job (besides $HOMIE_CHECKPOINT_DIR) holding its checkpoint: sent home"
                   " as it changes, restored if the job has to move (repeatable).")
@click.option("--retries", type=click.IntRange(min=0), metavar="N",
              help="Run the job again (from its checkpoint, if any) up to N times if its peer is lost"
                   " (default: 3 with a checkpoint, else 0).")
@click.option("--detach", is_flag=True, help="Return at once with the job id; follow it with homie attach.")
@click.option("--explain", is_flag=True,
              help="Only say which peers could take the job, and why not (exit 0: would run now, 75: would wait,"
                   " 70: cannot run).")
@click.option("--json", "as_json", is_flag=True, help="With --detach or --explain: machine-readable output.")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(peer, files, directory, out_dir, gpu, env_pairs, env_file, timeout, label, quiet, no_stdin, executor,
        scheduler, checkpoints, retries, detach, explain, as_json, script, args):
    if as_json and not (detach or explain):
        raise HomieError("--json goes with --detach or --explain (a running job's output is not JSON)", EXIT_USAGE)
    check_inputs(script, files, directory)
    check_args(list(args))
    env = parse_env(env_pairs, env_file)
    if label is not None:
        utf8("--name", label)
    if not explain and not detach:
        check_out_dir(out_dir)
    req = client(timeout=None).run_request(
        script, list(args), cwd=utf8("this directory", os.getcwd()), files=list(files), directory=directory,
        peer=peer, gpu=gpu, executor=executor, scheduler=scheduler, detach=detach, explain=explain, env=env,
        timeout=timeout, name=label, retries=retries,
        checkpoint=[utf8("--checkpoint", c) for c in checkpoints] or None)
    if explain:
        _explain(req, as_json)
        return
    conn = client(timeout=None).connect()  # NoDaemon (69) now, before stdin is read
    req["stdin_file"] = None if no_stdin else read_stdin(checked_home())
    try:
        if detach:
            job_id = None
            for ev in typed(conn.stream("run", **req)):
                if isinstance(ev, Ended):
                    job_id = ev.info.job_id
            click.echo(json.dumps({"job_id": job_id}) if as_json else job_id)
            return
        code = follow_stream(typed(conn.stream("run", **req)), out_dir, quiet=quiet)
    finally:
        if req["stdin_file"] and os.path.exists(req["stdin_file"]):
            os.unlink(req["stdin_file"])  # the daemon did not take it: the job was refused
    sys.exit(code)


def _explain(req: dict, as_json: bool) -> None:
    res = client(timeout=None).request("run", **req)
    code = EXIT_OK if res["chosen"] else (EXIT_WOULD_WAIT if res.get("verdict") == "wait" else EXIT_NO_PEER)
    if as_json:
        click.echo(json.dumps(res, indent=2))
        sys.exit(code)
    for p in res["peers"]:
        mark = "eligible" if p["eligible"] else "not eligible: " + "; ".join(p["reasons"])
        who = p["name"] + (" (this machine)" if p["local"] else "")
        click.echo(f"{who:24} {p['ip']:16} {mark}")
    if res["chosen"]:
        click.echo(f"{ARROW} would run on {res['chosen']}")
    elif res.get("verdict") == "wait":
        click.echo(f"{ARROW} the job would wait: {res.get('why') or 'no peer is free now'}")
    else:
        click.echo(f"{ARROW} the job cannot run: {res.get('why') or 'no peer can take it'}")
    sys.exit(code)


COMMANDS = (run,)
