"""karma: share the load fairly among friends.

Selected with `scheduler: karma` (or `homie run --scheduler karma`): the peer
whose owner has given least and taken most is asked first. On the worker side
it orders jobs waiting for a slot by their submitter's balance.
"""

from __future__ import annotations

from homie.api import hookimpl


@hookimpl
def homie_choose_peer(job, peers, config):
    if job.scheduler != "karma":
        return None
    return min(peers, key=lambda p: (p.balance, p.local, tuple(-x for x in p.idleness)))


@hookimpl
def homie_order_queue(jobs, karma):
    # Highest balance (gave the most) is served first; ties keep arrival order.
    return sorted(jobs, key=lambda j: (-float(karma.get(j.submitter, 0.0)), j.queued_at))
