"""The homie command: a thin client of the local daemon, one module per verb or family of verbs.

Keep imports light: `homie peers` must start about as fast as
`python -c "import click"`. Anything heavy (cryptography, psutil, yaml, rich)
is imported inside the verb that needs it.

    common   the home, the control-socket client, homie's own lines, tables
    keys     init, join, key                 service  up, down, service install|uninstall|status
    net      status, peers, top, doctor      owner    pause, resume, plugins, karma
    run      run (inputs: its checks; follow: a job's events and results)
    jobs     ps, kill, wait, restart, clean, attach, logs, results
    map      map
"""

from __future__ import annotations

import os
import sys

import click

from homie import __version__
from homie.cli import jobs, keys, net, owner, run, service
from homie.cli import map as map_
from homie.cli.common import ARROW, error_line, example, printable
from homie.errors import EXIT_INTERNAL, EXIT_USAGE, HomieError

__all__ = ["main"]


class _Group(click.Group):
    """The one error path: any HomieError, from any verb, becomes its one-line
    message on stderr and its exit code (homie.errors); never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HomieError as e:
            error_line(str(e))
            sys.exit(e.exit_code)
        except click.UsageError as e:
            # One sentence and where to look, instead of click's three-line usage block.
            where = e.ctx.command_path if e.ctx else "homie"
            click.echo(f"error: {e.format_message()} (see: {where} --help)", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            # Verbs that run jobs handle Ctrl-C themselves; anywhere else nothing is left behind.
            click.echo(f"\n{ARROW} interrupted (jobs already queued go on: homie ps)", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # `homie ps | head`: the reader is gone, which is no error of ours.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise
        except Exception as e:
            if os.environ.get("HOMIE_DEBUG"):
                raise
            click.echo(f"error: internal error: {type(e).__name__}: {printable(str(e))}"
                       " (HOMIE_DEBUG=1 shows the traceback; please report it)", err=True)
            sys.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("homie init --name raj", "homie up", "homie run train.py --epochs 10"))
@click.version_option(__version__, prog_name="homie")
def main():
    """Lend idle machines to friends on the same network."""


for _module in (keys, service, net, run, jobs, owner, map_):
    for _command in _module.COMMANDS:
        main.add_command(_command)
