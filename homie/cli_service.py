"""`homie service install|uninstall|status`: run homie as an OS service.

Wired into the main CLI with ``main.add_command(service)``. The logic lives in
homie/service.py, imported only when a command runs so `homie --help` stays fast.
"""

from __future__ import annotations


import click

_MODE_HELP = (
    "--system: system-wide systemd unit running as the user 'homie' (needs root). "
    "--user: systemd user unit running as you. Default: --system as root, --user otherwise; "
    "on macOS always a LaunchAgent."
)


def _mode_options(f):
    f = click.option("--system", "mode", flag_value="system", help="System-wide unit (Linux, needs root).")(f)
    f = click.option("--user", "mode", flag_value="user", help="Per-user unit (systemctl --user).")(f)
    return f


# HomieErrors reach the one error path in homie.cli (its group's invoke): one line, its exit code.
@click.group(help="Run homie as an OS service (systemd or launchd). " + _MODE_HELP,
             epilog="\b\nExamples:\n  homie service install --user\n  homie service install --dry-run\n"
                    "  homie service status")
def service() -> None:
    pass


@service.command(help="Install, enable and start the service. " + _MODE_HELP)
@_mode_options
@click.option("--dry-run", is_flag=True, help="Print the rendered file and the commands; change nothing.")
def install(mode: str | None, dry_run: bool) -> None:
    from homie import service as svc

    svc.install(mode, dry_run=dry_run, out=click.echo)


@service.command(help="Stop and disable the service and remove its unit (state is kept).")
@_mode_options
@click.option("--dry-run", is_flag=True, help="Print what would be removed and run; change nothing.")
def uninstall(mode: str | None, dry_run: bool) -> None:
    from homie import service as svc

    svc.uninstall(mode, dry_run=dry_run, out=click.echo)


@service.command(help="Show whether the service is installed and running.")
@_mode_options
def status(mode: str | None) -> None:
    from homie import service as svc

    svc.status(mode, out=click.echo)
