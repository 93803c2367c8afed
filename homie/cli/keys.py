"""The group key: `homie init`, `homie join`, `homie key`."""

from __future__ import annotations

import click

from homie.cli.common import checked_home, daemon_running, example
from homie.errors import EXIT_USAGE, HomieError


def show_key(key: bytes, intro: str) -> None:
    """Wherever a key is shown, the group fingerprint goes with it: friends compare it aloud."""
    from homie import keys

    click.echo(intro)
    click.echo(f"group key: {keys.format_key(key)}")
    click.echo(f"group fingerprint: {keys.fingerprint(key)} (friends who joined see the same one)")


@click.command(epilog=example("homie init --name raj"))
@click.option("--name", metavar="NAME", help="This machine's name as friends see it.")
@click.option("--force", is_flag=True, help="Replace an existing group key with a NEW group (friends must join again).")
def init(name: str | None, force: bool) -> None:
    """Create a new group: a home and a fresh random key."""
    from homie import keys
    from homie.config import save_config_value

    home = checked_home()
    home.ensure()
    if not force and home.key.exists():
        current = keys.load_key(home.key)
        raise HomieError(f"this machine is already in group {keys.fingerprint(current)} (key in {home.key});"
                         " `homie key` prints it; `homie init --force` would make a NEW group that friends"
                         " must join again", EXIT_USAGE)
    if name:
        save_config_value(home.config, "name", name)
    key = keys.generate_key()
    keys.save_key(home.key, key, force=force)
    show_key(key, f"created a new group key in {home.key}")
    click.echo("friends join with:")
    click.echo(f"  homie join {keys.format_key(key)}")
    click.echo("anyone with this key can run code on your machine (in a sandbox where bubblewrap works):"
               " share it only with people you trust")


@click.command(epilog=example("homie join ABCD-EFGH-...   (the line `homie init` printed)"))
@click.argument("key")
@click.option("--force", is_flag=True, help="Replace an existing group key.")
def join(key: str, force: bool) -> None:
    """Join a friend's group with their KEY."""
    from homie import keys

    home = checked_home()
    raw = keys.parse_key(key)
    home.ensure()
    keys.save_key(home.key, raw, force=force)
    click.echo(f"joined group {keys.fingerprint(raw)}; key stored in {home.key}")
    click.echo(f"group fingerprint: {keys.fingerprint(raw)} (check it matches the one your friend sees)")
    if daemon_running(home):
        click.echo("restart the daemon to use it: homie down && homie up")


@click.command(epilog=example("homie key"))
def key() -> None:
    """Print the group key (to share with a friend) and its fingerprint."""
    from homie import keys

    k = keys.load_key(checked_home(owned=True).key)
    click.echo(keys.format_key(k))
    # stderr: `homie key | ...` still pipes the key alone
    click.echo(f"group fingerprint: {keys.fingerprint(k)}", err=True)


COMMANDS = (init, join, key)
