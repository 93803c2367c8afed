"""What every verb shares: the home, the control-socket client, homie's own lines, tables.

Only the standard library, click and homie's lightest modules are imported here:
every `homie` command imports this module.
"""

from __future__ import annotations

import click

from homie.home import Home

ARROW = "→"


def checked_home(owned: bool = False) -> Home:
    """The home, refused (UnsafeHomeError, exit 2) if another user could change it: see Home.check."""
    home = Home()
    home.check(owned=owned)
    return home


def printable(text: str) -> str:
    """Text that may hold undecodable bytes (surrogate escapes), safe to print and to send."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def error_line(message: str) -> None:
    """An error as users see every one: `error: ...`, one line, on stderr."""
    click.echo(f"error: {printable(message)}", err=True)


def say(text: str) -> None:
    """homie's own lines go to stderr, always: stdout carries the job's output alone."""
    click.echo(f"{ARROW} {text}", err=True)


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
