"""An example third-party homie plugin, installed separately:

    pip install ./plugins/homie-roundrobin

- scheduler `round-robin` (config `scheduler: round-robin`, or
  `homie run --scheduler round-robin`): takes turns over the eligible peers;
- executor `nice` (`homie run --executor nice`): runs the job at the lowest
  CPU priority, so the lending machine's owner never feels it.

homie finds it through the `homie` entry-point group in pyproject.toml. It
imports only homie.api, the public plugin API (docs/plugins.md).
"""

import itertools
import threading

from homie.api import ExecutorContext, Job, JobRequest, Peer, hookimpl, script_argv

__version__ = "0.1.0"

# The scheduler names this plugin answers to: `homie up` and `homie run --scheduler`
# refuse a name no plugin declares, so a typo is an error instead of a silent fallback.
SCHEDULERS = ("round-robin",)

_turn = itertools.count()
_lock = threading.Lock()


@hookimpl
def homie_choose_peer(job: JobRequest, peers: "list[Peer]", config) -> "Peer | None":
    if job.scheduler != "round-robin":
        return None  # not chosen: let the next scheduler decide
    ordered = sorted(peers, key=lambda p: (p.name, p.ip))
    with _lock:
        return ordered[next(_turn) % len(ordered)]


class NiceExecutor:
    """Runs the script like the built-in subprocess executor, under `nice -n 19`."""

    name = "nice"
    priority = -200  # never picked by "auto"

    def __init__(self, ctx: ExecutorContext):
        self.ctx = ctx

    def wants(self, job: Job) -> bool:
        return False

    def prepare(self, job: Job, emit) -> None:
        pass

    def command(self, job: Job):
        return ["nice", "-n", "19", *script_argv(job, self.ctx.python)], {}


@hookimpl
def homie_executors():
    return [NiceExecutor]
