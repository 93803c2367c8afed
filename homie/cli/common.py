"""What every verb shares: the home, the control-socket client, homie's own lines, tables.

Only the standard library and homie's lightest modules are imported here, not
click: every `homie` command imports this module, and `homie run` in its common
form never loads click (homie.cli.fast).
"""

from __future__ import annotations

import os
import sys

from homie.errors import EXIT_INTERNAL, HomieError
from homie.home import Home

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from typing import NoReturn

ARROW = "→"


def checked_home(owned: bool = False) -> Home:
    """The home, refused (UnsafeHomeError, exit 2) if another user could change it: see Home.check."""
    home = Home()
    home.check(owned=owned)
    return home


def printable(text: str) -> str:
    """Text that may hold undecodable bytes (surrogate escapes), safe to print and to send."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def echo(message: str, err: bool = False) -> None:
    """click.echo for a line of text, without importing click: the line and a newline,
    flushed. click strips ANSI escapes when the stream is not a terminal and copes
    with streams that cannot encode the text: such lines still go through click."""
    out = sys.stderr if err else sys.stdout
    if out is None:
        return
    if "\x1b" not in message:
        try:
            out.write(message + "\n")
            out.flush()
            return
        except UnicodeEncodeError:
            pass
    import click

    click.echo(message, err=err)


def error_line(message: str) -> None:
    """An error as users see every one: `error: ...`, one line, on stderr."""
    echo(f"error: {printable(message)}", err=True)


def say(text: str) -> None:
    """homie's own lines go to stderr, always: stdout carries the job's output alone."""
    echo(f"{ARROW} {text}", err=True)


def failed(e: BaseException) -> NoReturn:
    """The one error path of every verb (homie.cli.app's group, homie.cli.fast): any
    HomieError becomes its one-line message on stderr and its exit code
    (homie.errors); never a traceback."""
    if isinstance(e, HomieError):
        error_line(str(e))
        sys.exit(e.exit_code)
    if isinstance(e, KeyboardInterrupt):
        # Verbs that run jobs handle Ctrl-C themselves; anywhere else nothing is left behind.
        echo(f"\n{ARROW} interrupted (jobs already queued go on: homie ps)", err=True)
        sys.exit(130)
    if isinstance(e, BrokenPipeError):
        # `homie ps | head`: the reader is gone, which is no error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    if os.environ.get("HOMIE_DEBUG"):
        raise e
    echo(f"error: internal error: {type(e).__name__}: {printable(str(e))}"
         " (HOMIE_DEBUG=1 shows the traceback; please report it)", err=True)
    sys.exit(EXIT_INTERNAL)


def client(timeout: float | None = 10.0, home: Home | None = None):
    """The local daemon through the Python API (homie.client.Client): the CLI and Python
    programs share one path. NoDaemon (exit 69) comes when a request finds no daemon."""
    from homie.client import Client

    return Client(home or checked_home(), timeout=timeout, check=False)


def connect(timeout: float | None = None):
    """One connection to the daemon, opened now (NoDaemon, exit 69, if it is not running)."""
    return client(timeout=timeout).connect()


def request(t: str, **fields) -> dict:
    return client().request(t, **fields)


def daemon_running(home: Home) -> int | None:
    """The daemon's pid, or None."""
    from homie.pidfile import daemon_pid

    return daemon_pid(home)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns (rich would cost more start-up time than the table is worth)."""
    # Columns that are empty in every row mean nothing: drop them.
    keep = [i for i in range(len(headers)) if any(str(r[i]) for r in rows)] or list(range(len(headers)))
    headers = [headers[i] for i in keep]
    rows = [[str(r[i]) for i in keep] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()  # noqa: E731
    out = [line(headers), "─" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in rows]
    return "\n".join(out)


def example(*lines: str) -> str:
    """An Examples section for a command's --help (\b keeps click from rewrapping it)."""
    return "\b\nExamples:\n" + "\n".join(f"  {ln}" for ln in lines)


def size(n: float) -> str:
    """Decimal units (1 MB = 10^6 bytes), as the progress bar shows them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)
