"""An example third-party homie plugin, installed separately:

    pip install ./plugins/homie-roundrobin

- scheduler `round-robin` (config `scheduler: round-robin`, or
  `homie run --scheduler round-robin`): takes turns over the eligible peers;
- executor `nice` (`homie run --executor nice`): runs the job at the lowest
  CPU priority, so the lending machine's owner never feels it.

homie finds it through the `homie` entry-point group in pyproject.toml.
"""

import itertools
import threading

from homie.builtin.executors import SubprocessExecutor
from homie.hookspecs import hookimpl

__version__ = "0.1.0"

# The scheduler names this plugin answers to: `homie up` and `homie run --scheduler`
# refuse a name no plugin declares, so a typo is an error instead of a silent fallback.
SCHEDULERS = ("round-robin",)

_turn = itertools.count()
_lock = threading.Lock()


@hookimpl
def homie_choose_peer(job, peers, config):
    if job.scheduler != "round-robin":
        return None  # not chosen: let the next scheduler decide
    ordered = sorted(peers, key=lambda p: (p.name, p.ip))
    with _lock:
        return ordered[next(_turn) % len(ordered)]


class NiceExecutor(SubprocessExecutor):
    name = "nice"
    priority = -200  # never picked by "auto"

    def wants(self, job):
        return False

    def command(self, job):
        argv, env = super().command(job)
        return ["nice", "-n", "19", *argv], env


@hookimpl
def homie_executors():
    return [NiceExecutor]
