"""The default scheduler, best-idle. `trylast`, so any scheduler plugin is asked first."""

from __future__ import annotations

from homie.api import hookimpl


@hookimpl(trylast=True)
def homie_choose_peer(job, peers, config):
    """The idlest friend; this machine only when no friend can take the job.

    Lending idle machines is the point of homie, and the submitter is usually
    the laptop someone is working on, so the local node is the last resort.
    """
    friends = [p for p in peers if not p.local]
    return max(friends or peers, key=lambda p: p.idleness)  # idle CPU, then free RAM, then fewer jobs
