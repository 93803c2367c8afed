"""Choosing where a job runs: the request the scheduler plugins see, and the
eligibility check shared by `homie run`, the queue and `homie run --explain`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from homie import plugins
from homie.peers import Peer

if TYPE_CHECKING:
    from homie.config import Config


@dataclass
class JobRequest:
    job_id: str
    script: str
    submitter: str
    gpu: bool = False
    peer: str | None = None  # pinned with -n
    scheduler: str = "auto"
    executor: str = "auto"
    queued_at: float = field(default_factory=time.time)


def explain(job: JobRequest, peers: list[Peer], config: Config) -> list[tuple[Peer, list[str]]]:
    """Each candidate with the reasons it cannot take the job (empty = eligible)."""
    out = []
    for peer in peers:
        if job.peer and peer.name != job.peer:
            continue
        reasons = [r for r in plugins.call("homie_peer_ineligible", job=job, peer=peer, config=config) if r]
        out.append((peer, reasons))
    return out


def choose(job: JobRequest, peers: list[Peer], config: Config) -> tuple[Peer | None, list[tuple[Peer, list[str]]]]:
    """The chosen peer (or None: the job waits) and the explanation."""
    verdicts = explain(job, peers, config)
    eligible = [p for p, reasons in verdicts if not reasons]
    if not eligible:
        return None, verdicts
    if job.peer:
        return eligible[0], verdicts
    chosen = plugins.call("homie_choose_peer", job=job, peers=eligible, config=config)
    if chosen is None or chosen not in eligible:
        chosen = eligible[0]
    return chosen, verdicts


def why_waiting(verdicts: list[tuple[Peer, list[str]]], job: JobRequest) -> str:
    if not verdicts:
        if job.peer:
            return f"peer {job.peer!r} is not online"
        return "no peers online"
    return "; ".join(f"{p.name}: {', '.join(r)}" for p, r in verdicts if r)
