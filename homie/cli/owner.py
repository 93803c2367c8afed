"""The lending machine's owner: `homie pause`, `homie resume`, `homie plugins`, `homie karma`."""

from __future__ import annotations

import json

import click

from homie.cli.common import client, example, request, table
from homie.errors import EXIT_NO_DAEMON, EXIT_USAGE, HomieError


@click.command(epilog=example("homie pause", "homie pause --suspend", "homie pause --evict"))
@click.option("--suspend", is_flag=True, help="Also suspend (SIGSTOP) jobs running here.")
@click.option("--evict", is_flag=True,
              help="Also send running jobs away: SIGTERM, evict_grace_seconds to write a checkpoint, then they"
                   " go on elsewhere from it.")
def pause(suspend: bool, evict: bool) -> None:
    """Stop accepting new jobs from friends."""
    if suspend and evict:
        raise HomieError("--suspend keeps jobs here and --evict sends them away: choose one", EXIT_USAGE)
    res = request("pause", suspend=suspend, evict=evict)
    if evict:
        n = res.get("evicted") or 0
        click.echo(f"paused: no new jobs; {n} running job{'s' if n != 1 else ''} evicted (SIGTERM, then"
                   f" {res.get('grace', 10):g} s to checkpoint; their owners' daemons run them on elsewhere)")
        return
    click.echo("paused: no new jobs" + ("; running jobs suspended (homie resume continues them)"
                                         if res.get("suspended") else ""))


@click.command(epilog=example("homie resume"))
def resume() -> None:
    """Accept jobs again (and continue suspended ones)."""
    res = request("resume")
    click.echo(f"resumed: {res['status']}")


@click.command("plugins", epilog=example("homie plugins", "homie plugins --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def plugins_cmd(as_json: bool) -> None:
    """List loaded plugins with their hooks and versions."""
    try:
        found = client().request("plugins")["plugins"]
    except HomieError as e:
        if e.exit_code != EXIT_NO_DAEMON:
            raise
        from homie import plugins

        plugins.load_plugins()
        found = plugins.describe()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    rows = [[p["name"], p.get("version") or "", p.get("package") or "",
             ", ".join(p["hooks"]) if not p.get("disabled") else f"DISABLED: {p['disabled']}"] for p in found]
    click.echo(table(["PLUGIN", "VERSION", "PACKAGE", "HOOKS"], rows))


def _seconds(x: float) -> str:
    """Signed seconds with one decimal, never "-0.0"."""
    r = round(x, 1)
    return f"{r:+.1f}" if r else "0.0"


@click.command(epilog=example("homie karma", "homie karma --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def karma(as_json: bool) -> None:
    """Compute given to and taken from each friend."""
    res = request("karma")
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    if not res["ledger"]:
        click.echo("no jobs exchanged with friends yet")
        return
    rows = [[r["peer"], f'{r["given_cpu_s"]:.1f}', f'{r["taken_cpu_s"]:.1f}', _seconds(r["balance_cpu_s"]),
             f'{r["given_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             f'{r["taken_gpu_s"]:.1f}' if r["given_gpu_s"] or r["taken_gpu_s"] else "",
             str(r["jobs_given"]), str(r["jobs_taken"])] for r in res["ledger"]]
    click.echo(table(["PEER", "GAVE CPU-S", "TOOK CPU-S", "BALANCE", "GAVE GPU-S", "TOOK GPU-S", "JOBS RUN",
                      "JOBS SENT"], rows))


COMMANDS = (pause, resume, plugins_cmd, karma)
