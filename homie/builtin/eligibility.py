"""Core eligibility rules: which peers can take a job at all."""

from __future__ import annotations

from homie.api import hookimpl


@hookimpl
def homie_peer_ineligible(job, peer, config):
    if peer.status == "paused":
        return "paused by its owner"
    if peer.slots_free is not None and peer.slots_free <= 0:
        if peer.max_jobs == 0:
            return "accepts no jobs (max_jobs: 0)"
        return f"busy ({peer.running}/{peer.max_jobs} jobs)"
    if peer.status == "busy" and peer.slots_free is None:
        return "busy"
    if job.gpu:
        if not peer.has_gpu:
            return "no GPU"
        if not peer.accept_gpu:
            return "its owner does not lend the GPU"
    if job.peer and peer.conflict:
        return f"two machines claim the name {peer.name!r}"
    return None
