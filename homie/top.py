"""`homie top`: a live view of the cluster, refreshed as heartbeats arrive."""

from __future__ import annotations

import os
import select
import sys

from homie.cli.peerlist import shown_status
from homie.discovery.peers import balance
from homie.fmt import age as _age


def snapshot(client_factory) -> dict:
    from homie.cli.jobs import ps_jobs

    peers = client_factory().request("peers")
    jobs = ps_jobs(False)
    return {"peers": peers["peers"], "me": peers["me"], "sent": jobs["jobs"], "here": jobs["here"],
            "now": jobs["now"]}


def _karma(k: dict | None) -> str:
    if not k:
        return ""
    b = round(balance(k))
    return f"{b:+d}s" if b else "0s"  # never "-0s"


def _bar(fraction: float | None, width: int = 6) -> str:
    """An htop-style meter: the used share of something, as blocks."""
    if fraction is None:
        return ""
    f = min(1.0, max(0.0, fraction))
    full = round(f * width)
    return "[" + "|" * full + " " * (width - full) + "]"


def _ram(p: dict) -> str:
    free, total = p.get("ram_free_gb"), p.get("ram_total_gb")
    if free is None:
        return "?"
    meter = _bar(1 - free / total) + " " if total else ""  # peers older than the meter send no total
    return f"{meter}{free:.1f} GB"


def render(state: dict, once: bool = False):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    peers = Table(title="peers", title_justify="left", expand=True, pad_edge=False)
    for col in ("NAME", "IP", "CPU USED", "RAM FREE", "GPU", "JOBS", "STATUS", "KARMA"):
        peers.add_column(col, no_wrap=col != "GPU")  # names, addresses, meters and states on one line
    rows = [dict(state["me"], name=state["me"]["name"] + " (me)")] + list(state["peers"])
    for p in rows:
        gpu = p.get("gpu") or "none"
        if p.get("gpu_mem_free_gb") is not None and p.get("gpu"):
            gpus = [g for g in p.get("gpus") or [] if isinstance(g, dict) and g.get("mem_total_gb")]
            best = max(gpus, key=lambda g: g.get("mem_free_gb") or 0, default=None)  # the one shown
            used = _bar(1 - best["mem_free_gb"] / best["mem_total_gb"]) + " " if best else ""
            gpu += f" {used}({p['gpu_mem_free_gb']:.1f} GB free)"
        status = shown_status(p)
        style = {"idle": "green", "busy": "yellow", "paused": "red"}.get(status, "")
        idle = p.get("cpu_percent_idle")
        peers.add_row(
            p["name"], p["ip"],
            f"{_bar(1 - idle / 100)} {100 - idle:.0f}%" if idle is not None else "?",
            _ram(p),
            gpu, f"{p.get('running') or 0}/{p.get('max_jobs') if p.get('max_jobs') is not None else '?'}",
            Text(status + (" (name conflict)" if p.get("conflict") else ""), style=style),
            _karma(p.get("karma")),
        )
    jobs = Table(title="jobs", title_justify="left", expand=True)
    for col in ("ID", "WHERE", "SCRIPT", "STATUS", "AGE"):
        jobs.add_column(col)
    now = state["now"]
    for j in state["sent"]:
        status = j["status"] + (f" ({j['why']})" if j["status"] == "queued" and j.get("why") else "")
        jobs.add_row(j["job_id"], f"→ {j.get('peer') or '?'}", " ".join([os.path.basename(j["script"] or "?"),
                     *j["args"]])[:40], status, _age(now - j["created"]))
    for j in state["here"]:
        jobs.add_row(j["job_id"], f"← {j['from']}", " ".join([j["script"], *j["args"]])[:40], j["status"],
                     _age(now - j["created"]))
    if not state["sent"] and not state["here"]:
        jobs.add_row("", "", "no jobs running or queued", "", "")
    return Group(peers, jobs, *([] if once else [Text("q quits", style="dim")]))


def run_top(client_factory, once: bool = False, interval: float = 0.5) -> None:
    from rich.console import Console
    from rich.live import Live

    # Not a terminal (a file, a pipe): as wide as the table needs, not rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS") or 160))
    if once or not sys.stdin.isatty():
        console.print(render(snapshot(client_factory), once=True))
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with Live(render(snapshot(client_factory)), console=console, screen=True, auto_refresh=False) as live:
            while True:
                ready, _, _ = select.select([sys.stdin], [], [], interval)
                if ready and sys.stdin.read(1).lower() == "q":
                    return
                live.update(render(snapshot(client_factory)), refresh=True)
    except KeyboardInterrupt:
        return
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
