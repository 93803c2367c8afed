"""What `homie run` and `homie map` check before anything is sent: the script, files,
arguments and environment, each refused with one line and exit 2, and stdin saved for the job."""

from __future__ import annotations

import os
import sys

from homie.cli.common import printable, say, size
from homie.errors import EXIT_USAGE, HomieError
from homie.home import Home

# Arguments and names travel in one message to the daemon and on to the peer:
# far below the 1 MiB frame cap, so a long argument list is a clear error here.
MAX_ARGS_BYTES = 960 * 1024


def utf8(what: str, text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HomieError(f"{what} is not valid UTF-8: {printable(text)!r} (homie sends text only;"
                         " rename the file or pass the value in a file with -f)", EXIT_USAGE) from None
    return text


def check_args(args: list[str]) -> None:
    for i, a in enumerate(args, 1):
        utf8(f"argument {i}", a)
    total = sum(len(a.encode()) + 3 for a in args)  # as JSON: quotes and a comma each
    if total > MAX_ARGS_BYTES:
        raise HomieError(f"the arguments are too long ({size(total)} in all, at most {size(MAX_ARGS_BYTES)}):"
                         " put long inputs in a file and send it with -f", EXIT_USAGE)


def parse_duration(text: str) -> float:
    """'90', '90s', '1.5m', '2h', '1d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    mult = units.get(t[-1:], None)
    num = t[:-1] if mult else t
    try:
        value = float(num) * (mult or 1)
    except ValueError:
        value = -1
    if not value > 0 or value != value or value == float("inf"):
        import click

        raise click.BadParameter(f"{text!r} is not a duration (examples: 30s, 10m, 2h, 1d)")
    return value


def parse_env(pairs: tuple[str, ...], env_file: str | None) -> dict[str, str]:
    import re

    items: list[tuple[str, str]] = []
    if env_file:
        try:
            with open(env_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise HomieError(f"cannot read --env-file {env_file}: {getattr(e, 'strerror', None) or e}",
                             EXIT_USAGE) from None
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise HomieError(f"{env_file}:{n}: expected KEY=VALUE, got {line[:40]!r}", EXIT_USAGE)
            items.append(tuple(line.removeprefix("export ").split("=", 1)))  # type: ignore[arg-type]
    for p in pairs:
        if "=" not in p:
            # like docker: -e NAME passes this shell's value on
            if p not in os.environ:
                raise HomieError(f"-e {p}: expected KEY=VALUE (and {p} is not set here)", EXIT_USAGE)
            items.append((p, os.environ[p]))
        else:
            items.append(tuple(p.split("=", 1)))  # type: ignore[arg-type]
    env = {}
    for k, v in items:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise HomieError(f"-e {printable(k)}=...: not a valid variable name", EXIT_USAGE)
        utf8(f"the value of {k}", v)
        if "\0" in v:
            raise HomieError(f"the value of {k} contains a NUL byte", EXIT_USAGE)
        env[k] = v
    return env


def read_stdin(home: Home) -> str | None:
    """What is piped or redirected into `homie run`, saved for the daemon to send
    as the job's stdin; None on a terminal or /dev/null (nothing to forward)."""
    import stat

    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if sys.stdin.isatty() or not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
        return None
    import select

    if not stat.S_ISREG(mode) and not select.select([0], [], [], 3.0)[0]:
        # A pipe nobody writes to (a caller's inherited stdin) would hang here silently.
        say("reading stdin for the job until it closes (--no-stdin sends none)")
    import tempfile

    d = home.root / "stdin"
    d.mkdir(mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="stdin-", dir=d)
    with os.fdopen(fd, "wb") as f:
        while chunk := os.read(0, 1 << 20):
            f.write(chunk)
    if os.path.getsize(path) == 0:
        os.unlink(path)
        return None
    return path


def check_inputs(script: str, files: tuple[str, ...], directory: str | None) -> None:
    utf8("the script's path", script)
    if not os.path.isfile(script):
        hint = " (options go before SCRIPT; `homie run --help` lists them)" if script.startswith("-") else ""
        raise HomieError(f"script not found: {script}{hint}", EXIT_USAGE)
    if not script.endswith(".py"):
        try:
            with open(script, "rb") as fh:
                first = fh.read(2)
        except OSError as e:
            raise HomieError(f"cannot read {script}: {e.strerror}", EXIT_USAGE) from None
        if first != b"#!":
            raise HomieError(f"{script} is not a .py file and has no #! line, so no machine can tell how to run"
                             " it: add one (e.g. #!/bin/sh) as its first line", EXIT_USAGE)
    if files:
        import glob
    for f in files:
        utf8("-f", f)
        if os.path.isdir(f):
            raise HomieError(f"-f {f} is a directory: send a whole folder with -d {f}", EXIT_USAGE)
        if not glob.has_magic(f) and not os.path.exists(f):
            raise HomieError(f"-f {f}: no such file", EXIT_USAGE)
    if directory is not None:
        utf8("-d", directory)
        if not os.path.isdir(directory):
            raise HomieError(f"-d {directory}: not a directory", EXIT_USAGE)
