"""The live peer table, fed by verified heartbeats.

Peers are keyed by their per-boot instance id, not their name: two machines
configured with one name (a copied home, a cloned VM) both appear, flagged as
a conflict, instead of flapping over each other.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import asdict, dataclass, field

# Heartbeat fields copied onto a Peer (the spec's, plus what scheduling needs).
HB_FIELDS = (
    "name", "port", "ram_free_gb", "ram_total_gb", "cpu_percent_idle", "gpu", "gpu_mem_free_gb", "gpus",
    "status", "timestamp", "slots_free", "max_jobs", "running", "version", "karma",
    "accept_gpu", "sandbox",
)


@dataclass
class Peer:
    name: str
    ip: str
    port: int
    instance: str = ""
    status: str = "idle"
    ram_free_gb: float | None = None
    ram_total_gb: float | None = None
    cpu_percent_idle: float | None = None
    gpu: str | None = None
    gpu_mem_free_gb: float | None = None
    gpus: list = field(default_factory=list)
    slots_free: int | None = None
    max_jobs: int | None = None
    running: int = 0
    version: str | None = None
    karma: dict = field(default_factory=dict)
    accept_gpu: bool = True
    sandbox: str | None = None  # "bwrap", or "none": jobs there run as a plain process
    timestamp: float | None = None
    last_seen: float = 0.0
    local: bool = False
    conflict: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu) or bool(self.gpus)


def peer_from_heartbeat(body: dict, ip: str, instance: str, now: float) -> Peer:
    kw = {k: body[k] for k in HB_FIELDS if k in body and body[k] is not None}
    kw.setdefault("name", "?")
    kw.setdefault("port", 0)
    if not isinstance(kw.get("gpus"), list):
        kw["gpus"] = []
    if not isinstance(kw.get("karma"), dict):
        kw["karma"] = {}
    return Peer(ip=ip, instance=instance, last_seen=now, **kw)


def balance(karma: dict | None) -> float:
    """A peer's karma balance: CPU-seconds given minus taken (heartbeat data: any shape)."""
    k = karma if isinstance(karma, dict) else {}
    try:
        return float(k.get("given", 0.0)) - float(k.get("taken", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _material(p: Peer) -> tuple:
    return (p.name, p.ip, p.port, p.status, p.slots_free, p.max_jobs, p.running, p.accept_gpu, bool(p.gpus or p.gpu))


class PeerTable:
    def __init__(self, timeout: float, clock=time.time):
        self.timeout = timeout
        self.clock = clock
        self._peers: dict[str, Peer] = {}
        self._gone: set[str] = set()  # instances that said goodbye: a late heartbeat must not revive them
        self.changed = threading.Condition()
        self.version = 0  # bumped on every change; waiters compare it

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def update(self, body: dict, ip: str, instance: str) -> tuple[Peer, bool]:
        """Record a heartbeat; returns (peer, is_new)."""
        now = self.clock()
        peer = peer_from_heartbeat(body, ip, instance, now)
        with self.changed:
            if instance in self._gone:
                return peer, False
            is_new = instance not in self._peers
            if is_new:
                # A new instance on the same ip:port is that daemon restarted (only one
                # process can listen there): drop the dead one now, not after peer_timeout.
                for old in [p for p in self._peers.values() if (p.ip, p.port) == (peer.ip, peer.port)]:
                    del self._peers[old.instance]
                    self._gone.add(old.instance)  # a late packet of it must not swap them back
            prev = self._peers.get(instance)
            self._peers[instance] = peer
            if prev is None or prev.name != peer.name:  # prev is None: is_new
                self._mark_conflicts()
            else:
                peer.conflict = prev.conflict
            # A refresh that changes nothing a scheduler looks at wakes nobody:
            # with hundreds of peers heartbeating, that is most packets.
            if prev is None or _material(prev) != _material(peer):
                self._bump()
        return peer, is_new

    def goodbye(self, instance: str) -> Peer | None:
        with self.changed:
            peer = self._peers.pop(instance, None)
            self._gone.add(instance)
            if len(self._gone) > 4096:
                self._gone.pop()
            self._mark_conflicts()
            self._bump()
            return peer

    def expire(self) -> list[Peer]:
        now = self.clock()
        with self.changed:
            dead = [p for p in self._peers.values() if now - p.last_seen > self.timeout]
            for p in dead:
                del self._peers[p.instance]
            if dead:
                self._mark_conflicts()
                self._bump()
            return dead

    def _mark_conflicts(self) -> None:
        names: dict[str, int] = {}
        for p in self._peers.values():
            names[p.name] = names.get(p.name, 0) + 1
        for p in self._peers.values():
            p.conflict = names[p.name] > 1

    def snapshot(self) -> list[Peer]:
        """Copies: callers (the scheduler adjusting free slots) may change them."""
        with self.changed:
            return sorted((copy.copy(p) for p in self._peers.values()), key=lambda p: (p.name, p.ip))

    def by_name(self, name: str) -> list[Peer]:
        return [p for p in self.snapshot() if p.name == name]

    def get(self, instance: str) -> Peer | None:
        with self.changed:
            return self._peers.get(instance)

    def wait_change(self, version: int, timeout: float) -> int:
        with self.changed:
            if self.version == version:
                self.changed.wait(timeout)
            return self.version
