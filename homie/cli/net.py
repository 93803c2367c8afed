"""What the network looks like from here: `homie status`, `homie peers`, `homie top`, `homie doctor`."""

from __future__ import annotations

import json
import sys

import click

from homie.cli.common import checked_home, client, example
from homie.cli.peerlist import show_peers
from homie.errors import EXIT_FAILURE, EXIT_OK, HomieError
from homie.fmt import age


@click.command(epilog=example("homie status", "homie status --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def status(as_json: bool) -> None:
    """Is the daemon running? Its name, address, uptime and peer count."""
    home = checked_home()  # an unsafe home is its own error, not "not running"
    try:
        st = client(home=home).request("status")
    except HomieError as e:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("homie is not running (start it with: homie up)")
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f'homie {st["version"]} is running as "{st["name"]}" (pid {st["pid"]})')
    click.echo(f'  address:   {st["address"]}:{st["port"]} (discovery on UDP {st["discovery_port"]}'
               f' via {", ".join(st["discovery"]) or "nothing"})')
    click.echo(f'  uptime:    {age(st["uptime"])}')
    click.echo(f'  peers:     {st["peers"]}')
    click.echo(f'  status:    {st["status"]} ({st["jobs_here"]} job(s) here for others, {st["jobs_out"]} sent out)')
    if st.get("sandbox") is not None:
        on = st["sandbox"] != "none"
        click.echo(f'  sandbox:   {"on (bubblewrap)" if on else "OFF: " + st["sandbox_reason"]}')
    click.echo(f'  group:     {st["key_fingerprint"]}')
    click.echo(f'  home:      {st["home"]}')


@click.command(epilog=example("homie peers", "homie peers --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def peers(as_json: bool) -> None:
    """List peers and their resources."""
    show_peers(as_json)


@click.command(epilog=example("homie top", "homie top --once"))
@click.option("--once", is_flag=True, help="Print one frame and exit (no terminal needed).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=0.5, show_default=True, metavar="SECONDS",
              help="Refresh period in seconds.")
def top(once: bool, interval: float) -> None:
    """A live view of peers and jobs (q quits)."""
    from homie.top import run_top

    run_top(client, once=once, interval=interval)


@click.command(epilog=example("homie doctor", "homie doctor --json"))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema in docs/cli.md).")
def doctor(as_json: bool) -> None:
    """Check key, config, network and peers; print each finding with a fix."""
    from homie.doctor import offline_findings

    findings = offline_findings(checked_home())
    try:
        findings += client(timeout=20).request("doctor")["findings"]
    except HomieError as e:
        findings.append({"ok": False, "check": "daemon", "finding": str(e), "fix": "start it with: homie up"})
    if as_json:
        click.echo(json.dumps(findings, indent=2))
    else:
        for f in findings:
            mark = "ok  " if f["ok"] else ("warn" if f.get("warn") else "FAIL")
            click.echo(f"[{mark}] {f['check']}: {f['finding']}")
            if not f["ok"] and f.get("fix"):
                click.echo(f"       fix: {f['fix']}")
    sys.exit(EXIT_OK if all(f["ok"] or f.get("warn") for f in findings) else EXIT_FAILURE)


COMMANDS = (status, peers, top, doctor)
