"""The daemon's life: `homie up`, `homie down`, and `homie service` (run it as an OS service)."""

from __future__ import annotations

import os
import sys
import time

import click

from homie.cli.common import checked_home, client, daemon_running, example
from homie.errors import EXIT_FAILURE, HomieError
from homie.home import Home


def _check_runtime_config(home: Home, config, interface, bind, with_plugins: bool = True) -> None:
    """What only this machine can judge (users, plugins, addresses): one line, exit 2, before any start.
    Plugins are imported only by the daemon's own process (cwd /, isolated import path),
    never by the `homie up` that starts it from wherever the user stands."""
    from homie import checks
    from homie.errors import ConfigError

    if interface and (why := checks.check_interface(interface)):
        raise ConfigError(f"--interface: {why}")
    if bind and (why := checks.check_bind(bind)):
        raise ConfigError(f"--bind: {why}")
    if config.bind and not bind and (why := checks.check_bind(config.bind)):
        raise ConfigError(f"config error in {home.config}: bind: {why}")
    if config.interface and not interface and (why := checks.check_interface(config.interface)):
        raise ConfigError(f"config error in {home.config}: interface: {why}")
    for setting, why in checks.config_problems(config) if with_plugins else ():
        raise ConfigError(f"config error in {home.config}: {setting}: {why}")


def _group_key(home: Home) -> bytes:
    """The group key; with none yet, a new group. A bad key (or a symlink) is reported, never replaced."""
    from homie import keys
    from homie.cli.keys import show_key

    try:
        return keys.load_key(home.key)
    except HomieError:
        if os.path.lexists(home.key):
            raise
    key = keys.generate_key()
    keys.save_key(home.key, key)
    show_key(key, f"no group key yet: created one in {home.key}")
    click.echo(f"friends join with: homie join {keys.format_key(key)}")
    return key


@click.command(epilog=example("homie up", "homie up --interface wlan0", "homie up --bind 192.168.1.20 --port 6000"))
@click.option("--name", metavar="NAME", help="Name to broadcast (default: config, then host name).")
@click.option("--port", type=str, metavar="PORT", help="TCP port for jobs (default 5556).")
@click.option("--discovery-port", type=str, metavar="PORT", help="UDP port for discovery (default 5555).")
@click.option("--interface", metavar="IFACE", help="Network interface to use (e.g. wlan0).")
@click.option("--bind", metavar="ADDRESS", help="IPv4 address to use (instead of --interface).")
@click.option("--foreground", is_flag=True, help="Stay in the foreground (for systemd/launchd).")
@click.option("--ready-fd", type=int, hidden=True)
def up(name, port, discovery_port, interface, bind, foreground, ready_fd):
    """Start the daemon: discovery and the job server."""
    from homie.config import load_config

    home = checked_home()
    if foreground:
        from homie.daemon import settle_process

        settle_process()  # cwd /: before the daemon opens or imports anything
    home.ensure()
    config = load_config(home.config, {"name": name, "port": port, "discovery_port": discovery_port,
                                       "interface": interface, "bind": bind})
    pid = daemon_running(home)
    if pid:
        try:
            st = client().request("status")
            click.echo(f'homie is already running as "{st["name"]}" (pid {st["pid"]})')
        except HomieError:
            click.echo(f"homie is already running (pid {pid})")
        return
    try:
        _check_runtime_config(home, config, interface, bind, with_plugins=foreground)
        key = _group_key(home)
    except HomieError as e:
        if ready_fd is not None:  # the `homie up` that started us says it, with our exit code
            os.write(ready_fd, f"error: {e}\nexit {e.exit_code}".encode()[:4000])
        raise
    if foreground:
        from homie import daemon

        sys.exit(daemon.run(home, config, key, foreground=True, ready_fd=ready_fd))
    _start_background(home, name, port, discovery_port, interface, bind)


_DAEMON_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv.pop(1)); from homie.cli import main;"
                " main(prog_name='homie')")


def _daemon_python() -> list[str]:
    """The interpreter command line for the background daemon.

    `python -m homie` put the current directory first on the daemon's import
    path, so a structlog.py lying there ran as root. -I drops it, the user site
    and every PYTHON* variable; the daemon gets this command's own import path
    instead, so it runs the same homie and plugins (PYTHONPATH included, as for
    this command), minus the current directory and relative entries, unless
    homie itself was imported from there."""
    import json

    import homie

    own = os.path.dirname(os.path.dirname(os.path.abspath(homie.__file__)))
    try:
        here = os.getcwd()
    except OSError:
        here = None  # the directory was removed: nothing there to import
    path = [p for p in sys.path if p == own or (os.path.isabs(p) and os.path.realpath(p) != here)]
    return [sys.executable, "-I", "-c", _DAEMON_BOOT, json.dumps(path)]


def _start_background(home: Home, name, port, discovery_port, interface, bind) -> None:
    import select
    import subprocess

    from homie.home import open_private

    r, w = os.pipe()
    argv = [*_daemon_python(), "up", "--foreground", "--ready-fd", str(w)]
    for flag, value in (("--name", name), ("--port", port), ("--discovery-port", discovery_port),
                        ("--interface", interface), ("--bind", bind)):
        if value is not None:
            argv += [flag, str(value)]
    err_path = home.root / "logs" / "daemon.err"
    # cwd /: see _daemon_python(); HOMIE_HOME absolute, as a relative one meant this directory.
    env = {**os.environ, "HOMIE_HOME": str(home.root)}
    try:
        err_fd = open_private(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as e:
        raise HomieError(f"cannot open {err_path}: {e.strerror}") from None
    with os.fdopen(err_fd, "ab") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                pass_fds=(w,), start_new_session=True, close_fds=True, cwd="/", env=env)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], 0.2)
        if ready:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    os.close(r)
    text = data.decode(errors="replace").strip()
    if text.startswith("ok "):
        first, *rest = text.splitlines()
        _, nm, prt = first.split(" ", 2)
        _started(nm, prt)
        for line in rest:
            if line.startswith("warn "):
                click.echo(f"warning: {line[5:]}", err=True)
        return
    if text.startswith("already running"):
        click.echo(f"homie is {text}")
        return
    if text.startswith("error: "):
        # The daemon's own error line and exit code, as if it had been this command's.
        message, _, code = text.partition("\nexit ")
        click.echo(message, err=True)
        sys.exit(int(code) if code.strip().isdigit() else EXIT_FAILURE)
    click.echo(f"error: the daemon did not start; see {err_path} and {home.log}", err=True)
    sys.exit(EXIT_FAILURE)


def _started(name: str, port: str) -> None:
    """Say how friends find us: broadcast, static peers, or both, and the address they reach."""
    try:
        st = client().request("status")
    except HomieError:
        click.echo(f'daemon started as "{name}"; listening for jobs on port {port}')
        return
    how = []
    if "udp" in st["discovery"]:
        how.append("broadcasting" + (f" to {', '.join(st['broadcast'])}" if st.get("broadcast") else ""))
    if "static" in st["discovery"]:
        how.append("heartbeats to static_peers")
    click.echo(f'daemon started as "{name}" ({"; ".join(how) or "no discovery"})')
    click.echo(f"listening for jobs on {st['address']}:{st['port']}")
    click.echo(f"group fingerprint: {st['key_fingerprint']}")


@click.command(epilog=example("homie down"))
def down() -> None:
    """Stop the daemon (says goodbye to peers first)."""
    home = checked_home()
    pid = daemon_running(home)
    if not pid:
        click.echo("homie is not running")
        return
    try:
        client().request("down")
    except HomieError:
        import signal

        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and daemon_running(home):
        time.sleep(0.05)
    if daemon_running(home):
        raise HomieError(f"the daemon (pid {pid}) did not stop within 20 s")
    click.echo("homie stopped")


# -- homie service install|uninstall|status: the logic lives in homie/service.py ---------

_MODE_HELP = (
    "--system: system-wide systemd unit running as the user 'homie' (needs root). "
    "--user: systemd user unit running as you. Default: --system as root, --user otherwise; "
    "on macOS always a LaunchAgent."
)


def _mode_options(f):
    f = click.option("--system", "mode", flag_value="system", help="System-wide unit (Linux, needs root).")(f)
    f = click.option("--user", "mode", flag_value="user", help="Per-user unit (systemctl --user).")(f)
    return f


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


COMMANDS = (up, down, service)
