"""`homie run` and `homie peers` without click: their common command lines parsed by hand.

click costs about as much start-up time as the rest of a `homie run hello.py`
on the client side, so `homie run SCRIPT [ARGS]...` with the everyday options,
and `homie peers [--json]`, are parsed here and run by the same bodies as the
click commands (homie.cli.runjob, homie.cli.peerlist). Anything this parser does
not fully understand (--help, a misspelled or rarer option, a missing value,
-nb style values, `--`...) goes to click, which behaves as documented: same
parsing, messages and exit codes either way.
"""

from __future__ import annotations

import os
import sys

# Options taking a value: the name of run_job's parameter. Repeatable ones collect.
VALUE = {"-n": "peer", "--peer": "peer", "-f": "files", "--file": "files", "-d": "directory", "--dir": "directory",
         "-o": "out_dir", "--output": "out_dir", "-e": "env_pairs", "--env": "env_pairs", "--name": "label"}
REPEATABLE = {"files", "env_pairs"}
FLAGS = {"--gpu": "gpu", "-q": "quiet", "--quiet": "quiet", "--no-stdin": "no_stdin"}


def parse_run(argv: list[str]) -> tuple[str, list[str], dict] | None:
    """argv after `run`: (script, args, run_job's keyword arguments), or None when click
    should parse it. Like click with interspersed arguments off: options until the
    first argument, which is SCRIPT; everything after it belongs to the script."""
    opts: dict = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-"):
            break
        name, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if name in FLAGS and not eq:
            opts[FLAGS[name]] = True
            i += 1
            continue
        if name not in VALUE:
            return None  # --help, --, -nb, a misspelling, an option only click handles
        if not eq:
            if i + 1 >= len(argv):
                return None
            i += 1
            value = argv[i]
        if value.startswith("-"):
            return None
        key = VALUE[name]
        if key in REPEATABLE:
            opts[key] = (*opts.get(key, ()), value)
        else:
            opts[key] = value  # given twice: the last one, as click does
        i += 1
    if i >= len(argv):
        return None  # no SCRIPT: click's usage error
    return argv[i], argv[i + 1:], opts


def _body(argv: list[str]):
    """What serves this command line (a function returning the exit status), or None when click should."""
    if argv[:1] == ["run"]:
        parsed = parse_run(argv[1:])
        if parsed is None:
            return None
        script, args, opts = parsed

        def run() -> int:
            from homie.cli.runjob import run_job

            return run_job(script, args, **opts)

        return run
    if argv[:1] == ["peers"] and argv[1:] in ([], ["--json"]):
        def peers() -> int:
            from homie.cli.peerlist import show_peers

            show_peers(as_json=argv[1:] == ["--json"])
            return 0

        return peers
    return None


def main(argv: list[str] | None = None) -> None:
    """Serve `homie run ...` or `homie peers [--json]` and exit, or return at once when click should."""
    body = _body(sys.argv[1:] if argv is None else argv)
    if body is None:
        return
    from homie.cli.common import failed

    try:
        code = body()
    except (Exception, KeyboardInterrupt) as e:
        failed(e)
    # The work is done (for run: the exit status and the results are home): leave now, without the interpreter's
    # teardown (nothing of ours is left to run: no non-daemon thread). atexit handlers
    # (none of homie's; an embedding wrapper's) still run.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (Exception, KeyboardInterrupt) as e:
        failed(e)
    import atexit

    atexit._run_exitfuncs()
    os._exit(code)
