"""The hooks a homie plugin can implement.

Built-in backends are plugins written exactly like third-party ones (see
homie/builtin/). A plugin is a module or object with `@hookimpl` functions,
registered through the `homie` entry-point group or the `plugins:` config key.
docs/plugins.md documents every spec here; a test keeps the two in step.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("homie")
hookimpl = HookimplMarker("homie")


@hookspec
def homie_discovery_backends():
    """Return a list of discovery backend classes.

    Called once at start-up; every plugin's list is used. A backend class has a
    `name` (what the `discovery:` config key selects) and is constructed with
    the running node (`Backend(node)`). It implements `start()`, `stop()` and
    `announce(packet: bytes)`, which sends a signed heartbeat packet to wherever
    this backend reaches; packets it receives itself go to `node.receive(packet,
    (ip, port))`. `None` or an empty list means "no backends here".
    """


@hookspec
def homie_probe_resources(config):
    """Return a dict of resource fields for this node's heartbeats, or None.

    Called before every heartbeat; the dicts of all plugins are merged, later
    plugins (and tryfirst ones) winning on the same key. Known keys:
    `ram_free_gb`, `ram_total_gb`, `cpu_percent_idle`, `gpu` (a name, or None), `gpu_mem_free_gb`,
    `gpus` (a list of {"index", "name", "mem_free_gb", "mem_total_gb"}).
    Keep it fast: it runs every `heartbeat_interval` seconds.
    """


@hookspec
def homie_peer_ineligible(job, peer, config):
    """Say why `peer` cannot take `job`, or None if this plugin has no objection.

    Every plugin is asked; any non-None string excludes the peer, and the strings
    are what `homie run --explain` and `homie ps` show for a waiting job.
    `job` is a homie.scheduling.JobRequest, `peer` a homie.peers.Peer (the local
    node is a Peer with `local=True`).
    """


@hookspec(firstresult=True)
def homie_choose_peer(job, peers, config):
    """Pick the peer to run `job` from the eligible `peers` (never empty).

    First result wins: return a Peer from `peers`, or None to let the next
    plugin decide. The built-in best-idle scheduler is `trylast`, so any
    installed scheduler plugin is asked before it; a scheduler that only wants
    to act when chosen should check `job.scheduler` (the `scheduler:` config
    key or `homie run --scheduler`).
    """


@hookspec
def homie_executors():
    """Return a list of executor classes.

    Called once; every plugin's list is used. An executor has a `name` (what
    `homie run --executor` and the `executor:` config key select) and a method
    `wants(job) -> bool` used when the executor is "auto". It is constructed
    with the worker context and decides *how* a job starts:
    `prepare(job, emit)` runs before the job (emit(stream, bytes) streams
    progress to the submitter; raise homie.errors.HomieError to fail the job)
    and `command(job) -> (argv, env)` returns what to run. The daemon itself
    starts, watches, limits and kills the process for every executor.
    """


@hookspec(firstresult=True)
def homie_order_queue(jobs, karma):
    """Order the jobs waiting for a slot on this worker, or return None.

    First result wins. `jobs` is a list of waiting job requests (each with a
    `submitter` name and `queued_at` time), `karma` maps a peer name to its
    balance (given minus taken, in CPU-seconds). Return the list reordered;
    the first job gets the next free slot.
    """
