"""The hooks a homie plugin can implement: only `homie_*` specs live here.

A plugin is a module or object with `@hookimpl` functions (`from homie.api
import hookimpl`, or `from homie import hookimpl`), registered through the
`homie` entry-point group or the `plugins:` config key; the built-ins
(homie/builtin/) are written exactly like third-party ones. The types named
below are in homie.api, the public plugin API. docs/plugins.md documents
every spec here; a test keeps the two in step.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("homie")
hookimpl = HookimplMarker("homie")  # public as homie.api.hookimpl


@hookspec
def homie_discovery_backends():
    """Return a list of discovery backend classes (or None).

    Called with no arguments, once at start-up; every plugin's list is used. A
    backend class has a `name` (what the `discovery:` config key selects) and is
    constructed with a `homie.api.DiscoveryContext` (`Backend(ctx)`: `config`,
    `log`, `sendto()`, `broadcast_addresses()`, `receive()`). It implements
    `start()`, `stop()` and `announce(packet: bytes)`, which sends a signed
    heartbeat packet to wherever this backend reaches; packets it receives
    itself go to `ctx.receive(packet, (ip, port))`.
    """


@hookspec
def homie_probe_resources(config):
    """Return a dict of resource fields for this node's heartbeats, or None.

    `config` is the daemon's configuration (read-only). Called before every
    heartbeat; the dicts of all plugins are merged, plugins called first (newer
    registrations, tryfirst ones) winning on the same key. Known keys:
    `ram_free_gb`, `ram_total_gb`, `cpu_percent_idle`, `gpu` (a name, or None),
    `gpu_mem_free_gb`, `gpus` (a list of {"index", "name", "mem_free_gb", "mem_total_gb"}).
    Keep it fast: it runs every `heartbeat_interval` seconds.
    """


@hookspec
def homie_peer_ineligible(job, peer, config):
    """Say why `peer` cannot take `job`, or None if this plugin has no objection.

    `job` is a `homie.api.JobRequest`, `peer` a read-only `homie.api.Peer` (the
    local node is one with `local=True`), `config` the submitting daemon's
    configuration. Every plugin is asked; any non-None string excludes the peer,
    and the strings are what `homie run --explain` and `homie ps` show for a
    waiting job.
    """


@hookspec(firstresult=True)
def homie_choose_peer(job, peers, config):
    """Pick the peer to run `job` from the eligible `peers` (never empty).

    `job` is a `homie.api.JobRequest`, `peers` a list of `homie.api.Peer`,
    `config` the submitting daemon's configuration. First result wins: return
    one of `peers`, or None to let the next plugin decide. The built-in
    best-idle scheduler is `trylast`, so any installed scheduler plugin is
    asked before it; a scheduler that only wants to act when chosen should
    check `job.scheduler` (the `scheduler:` config key or `homie run --scheduler`).
    """


@hookspec
def homie_executors():
    """Return a list of executor classes (or None).

    Called with no arguments; every plugin's list is used. An executor class
    implements the `homie.api.Executor` protocol: a `name` (what `homie run
    --executor` and the `executor:` config key select), a `priority`, and,
    constructed with a `homie.api.ExecutorContext`, `wants(job) -> bool` (used
    when the executor is "auto"), `prepare(job, emit)` (runs before the job;
    raise `homie.api.HomieError` to fail it), `command(job) -> (argv, env)` and
    optionally `venv_dir(job)`. `job` is a read-only `homie.api.Job`. The daemon
    itself starts, watches, limits and kills the process for every executor.
    """


@hookspec(firstresult=True)
def homie_order_queue(jobs, karma):
    """Order the jobs waiting for a slot on this worker, or return None.

    First result wins. `jobs` is a list of `homie.api.QueuedJob` (each with a
    `job_id`, the `submitter`'s name and its `queued_at` time), `karma` maps a
    peer name to its balance (given minus taken, in CPU-seconds). Return the
    same objects reordered; the first job gets the next free slot.
    """
