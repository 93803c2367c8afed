"""Choosing where a job runs: the request the scheduler plugins see, and the
eligibility check shared by `homie run`, the queue and `homie run --explain`."""

from __future__ import annotations

from dataclasses import fields
from types import MappingProxyType
from typing import TYPE_CHECKING

from homie import api, plugins
from homie.discovery.peers import Peer

if TYPE_CHECKING:
    from homie.config import Config

JobRequest = api.JobRequest  # the request the scheduler plugins see: public, in homie.api

_VIEW_FIELDS = tuple(f.name for f in fields(api.Peer))


def peer_view(peer: Peer | api.Peer) -> api.Peer:
    """The read-only homie.api.Peer the plugins see for a peer of the table."""
    if isinstance(peer, api.Peer):
        return peer
    kw = {name: getattr(peer, name) for name in _VIEW_FIELDS if hasattr(peer, name)}
    kw["gpus"] = tuple(MappingProxyType(dict(g)) if isinstance(g, dict) else g for g in kw.get("gpus") or ())
    kw["karma"] = MappingProxyType(dict(kw.get("karma") or {}) if isinstance(kw.get("karma"), dict) else {})
    return api.Peer(**kw)


def explain(job: JobRequest, peers: list[Peer], config: Config) -> list[tuple[Peer, list[str]]]:
    """Each candidate with the reasons it cannot take the job (empty = eligible)."""
    return [(peer, reasons) for peer, _view, reasons in _judge(job, peers, config)]


def _judge(job: JobRequest, peers: list[Peer], config: Config) -> list[tuple[Peer, api.Peer, list[str]]]:
    out = []
    for peer in peers:
        if job.peer and peer.name != job.peer:
            continue
        view = peer_view(peer)
        reasons = [r for r in plugins.call("homie_peer_ineligible", job=job, peer=view, config=config) if r]
        out.append((peer, view, reasons))
    return out


def choose(job: JobRequest, peers: list[Peer], config: Config) -> tuple[Peer | None, list[tuple[Peer, list[str]]]]:
    """The chosen peer (or None: the job waits) and the explanation."""
    judged = _judge(job, peers, config)
    verdicts = [(peer, reasons) for peer, _view, reasons in judged]
    eligible = [(peer, view) for peer, view, reasons in judged if not reasons]
    if not eligible:
        return None, verdicts
    if job.peer:
        return eligible[0][0], verdicts
    views = [view for _peer, view in eligible]
    chosen = plugins.call("homie_choose_peer", job=job, peers=views, config=config)
    # The plugin returns one of the views it was given: the peer it stands for.
    for peer, view in eligible:
        if chosen is view:
            return peer, verdicts
    for peer, view in eligible:
        if chosen is not None and chosen == view:
            return peer, verdicts
    return eligible[0][0], verdicts


def why_waiting(verdicts: list[tuple[Peer, list[str]]], job: JobRequest) -> str:
    if not verdicts:
        if job.peer:
            return f"peer {job.peer!r} is not online"
        return "no peers online"
    return "; ".join(f"{p.name}: {', '.join(r)}" for p, r in verdicts if r)
