"""`homie run`: one script on the best idle peer, its output streamed back live."""

from __future__ import annotations

import sys

import click

from homie.cli.common import example
from homie.cli.inputs import parse_duration
from homie.cli.runjob import run_job

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
    sys.exit(run_job(script, list(args), peer=peer, files=files, directory=directory, out_dir=out_dir, gpu=gpu,
                     env_pairs=env_pairs, env_file=env_file, timeout=timeout, label=label, quiet=quiet,
                     no_stdin=no_stdin, executor=executor, scheduler=scheduler, checkpoints=checkpoints,
                     retries=retries, detach=detach, explain=explain, as_json=as_json))


COMMANDS = (run,)
