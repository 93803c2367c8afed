"""The homie command as a click group: every verb, --help, --version, the one error path.

homie.cli.main loads this module on first use; `homie run` in its common form
never does (homie.cli.fast).
"""

from __future__ import annotations

import sys

import click

from homie import __version__
from homie.cli import jobs, keys, net, owner, run, service
from homie.cli import map as map_
from homie.cli.common import example, failed
from homie.errors import EXIT_USAGE

__all__ = ["main"]


class _Group(click.Group):
    """The one error path: any HomieError, from any verb, becomes its one-line
    message on stderr and its exit code (homie.errors); never a traceback."""

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


for _module in (keys, service, net, run, jobs, owner, map_):
    for _command in _module.COMMANDS:
        main.add_command(_command)
