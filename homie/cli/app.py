"""The homie command as a click group: every verb, --help, --version, the one error path.

homie.cli.main loads this module on first use; `homie run` in its common form
never does (homie.cli.fast).
"""

from __future__ import annotations

import importlib
import sys

import click

from homie import __version__
from homie.cli.common import example, failed
from homie.errors import EXIT_USAGE

__all__ = ["main", "VERBS"]

# verb -> the module of homie.cli that defines it (in its COMMANDS). A verb's module is
# imported only when that verb runs (or for --help): `homie peers` must not pay for
# the modules of `ps` and `map`. tests/test_cli_fast.py keeps this table complete.
VERBS = {
    "init": "keys", "join": "keys", "key": "keys",
    "up": "service", "down": "service", "service": "service",
    "status": "net", "peers": "net", "top": "net", "doctor": "net",
    "run": "run",
    "ps": "jobs", "kill": "jobs", "wait": "jobs", "restart": "jobs", "clean": "jobs", "attach": "jobs",
    "logs": "jobs", "results": "jobs",
    "pause": "owner", "resume": "owner", "plugins": "owner", "karma": "owner",
    "map": "map",
}


class _Group(click.Group):
    """The one error path: any HomieError, from any verb, becomes its one-line
    message on stderr and its exit code (homie.errors); never a traceback.
    Verbs are loaded from their modules as they are asked for (VERBS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(VERBS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in VERBS:
            module = importlib.import_module(f"homie.cli.{VERBS[name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # One sentence and where to look, instead of click's three-line usage block.
            where = e.ctx.command_path if e.ctx else "homie"
            click.echo(f"error: {e.format_message()} (see: {where} --help)", err=True)
            sys.exit(EXIT_USAGE)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as e:
            failed(e)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("homie init --name raj", "homie up", "homie run train.py --epochs 10"))
@click.version_option(__version__, prog_name="homie")
def main():
    """Lend idle machines to friends on the same network."""
