"""The homie command: a thin client of the local daemon, one module per verb or family of verbs.

Keep imports light: `homie peers` must start about as fast as
`python -c "import click"`, and `homie run` faster than that: `import homie.cli`
loads nothing but this file, and `homie run` in its common form never loads
click (homie.cli.fast). Anything heavy (cryptography, psutil, yaml, rich)
is imported inside the verb that needs it.

    app      the click group: every verb, --help, --version, the one error path
    fast     `homie run` without click, for the command lines it fully understands
    common   the home, the control-socket client, homie's own lines, tables
    keys     init, join, key                 service  up, down, service install|uninstall|status
    net      status, peers, top, doctor      owner    pause, resume, plugins, karma
    run      run (runjob: its body; inputs: its checks; follow: a job's events and results)
    jobs     ps, kill, wait, restart, clean, attach, logs, results
    map      map
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main"]


class _Main:
    """`homie.cli:main`, the console entry: called with no arguments (as the entry
    point calls it) it serves `homie run` through homie.cli.fast when it can, and
    otherwise is the click group of homie.cli.app, loaded on first use; every
    attribute (click's testing runner calls main.main, add_command...) is the group's."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            from homie.cli import fast

            fast.main()  # returns only when the command line is not one it serves
        return _group()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_group(), name)


def _group() -> Any:
    from homie.cli.app import main as group

    return group


main = _Main()
