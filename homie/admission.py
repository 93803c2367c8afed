"""Who gets one of the job server's connection seats before TLS has said who they are.

A connection costs a thread and a seat from accept() on, long before the TLS
handshake proves it holds the group key. With plain caps (64 in all, 16 per
address) a few addresses could hold every seat with idle connections, reopened
the moment they were closed, and members' jobs were refused. The gate keeps the
caps and adds these rules:

* `reserved` seats are only for addresses that completed a handshake within
  `remember` seconds (or hold an authenticated connection now), so
  connections from other addresses never take every seat;
* a full gate makes room by evicting an *unauthenticated* connection, oldest
  first; an authenticated one is never evicted, nor (for anybody else) a
  handshake in progress from a recently authenticated address;
* a recently authenticated newcomer evicts the oldest pending connection of an
  address that is not recent (failing that, any past the handshake deadline:
  it should be gone already); anyone else only one of an address that is not
  recent either: one past the handshake deadline, or else one of
  the address holding the most pending seats when that is at least two more
  than the newcomer's own (so junk from a few addresses cannot starve a fresh
  one, e.g. a member's first job after this daemon restarted).

Pure policy: no sockets, no logging. `admit()` names a victim; the caller shuts
that socket down (so its thread wakes and calls `release()`). The clock is
injected so the tests can step through time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 16
RESERVED = 16  # of MAX_CONNECTIONS, for recently authenticated addresses
REMEMBER = 600.0  # how long an address counts as recently authenticated
HANDSHAKE_DEADLINE = 2.0  # matches the worker's HANDSHAKE_TIMEOUT
_MAX_REMEMBERED = 1024  # addresses; bounds memory if someone with the key cycles through many


@dataclass(frozen=True)
class Decision:
    admitted: bool
    victim: Hashable | None = None  # admitted only once the caller shuts this connection down
    reason: str = ""  # why a refusal, for the log


@dataclass
class _Seat:
    ip: str
    since: float
    authenticated: bool = False


class ConnectionGate:
    def __init__(self, max_total: int = MAX_CONNECTIONS, max_per_address: int = MAX_PER_ADDRESS,
                 reserved: int = RESERVED, remember: float = REMEMBER,
                 handshake_deadline: float = HANDSHAKE_DEADLINE, clock: Callable[[], float] = time.monotonic):
        if not 0 <= reserved < max_total:
            raise ValueError("reserved seats must leave some for everyone else")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.reserved = reserved
        self.remember = remember
        self.handshake_deadline = handshake_deadline
        self.clock = clock
        self._lock = threading.Lock()
        self._seats: dict[Hashable, _Seat] = {}  # insertion order: oldest first
        self._per_ip: dict[str, int] = {}
        self._recent: dict[str, float] = {}  # ip -> when it last authenticated (oldest first)

    # -- the caller's three calls ---------------------------------------------------
    def admit(self, ip: str, conn: Hashable) -> Decision:
        """A connection from ip was just accepted: seat it, refuse it, or seat it
        in place of a victim the caller must shut down."""
        with self._lock:
            now = self.clock()
            self._forget(now)
            if self._per_ip.get(ip, 0) >= self.max_per_address:
                return Decision(False, reason="too many connections from this address")
            recent = self._recent_ips(now)
            victim = None
            if not self._has_room(ip, recent):
                victim = self._victim(ip, recent, now)
                if victim is None:
                    return Decision(False, reason="no free connection slot")
                self._drop(victim)
            self._seats[conn] = _Seat(ip, now)
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
            return Decision(True, victim)

    def authenticated(self, conn: Hashable) -> bool:
        """The handshake of conn succeeded. False if conn was evicted meanwhile:
        the caller must then drop it rather than serve it on a seat it lost."""
        with self._lock:
            seat = self._seats.get(conn)
            if seat is None:
                return False
            seat.authenticated = True
            self._remember(seat.ip, self.clock())
            return True

    def release(self, conn: Hashable) -> None:
        """conn is closed (for any reason, evicted ones included: a no-op then)."""
        with self._lock:
            seat = self._seats.get(conn)
            if seat is None:
                return
            self._drop(conn)
            if seat.authenticated:
                # A job connection may last hours: its address stays recent for
                # `remember` after it ends, not after it began.
                self._remember(seat.ip, self.clock())

    # -- for logs and tests -----------------------------------------------------------
    def held(self, ip: str | None = None) -> int:
        with self._lock:
            return len(self._seats) if ip is None else self._per_ip.get(ip, 0)

    def is_recent(self, ip: str) -> bool:
        with self._lock:
            return ip in self._recent_ips(self.clock())

    # -- the policy ---------------------------------------------------------------------
    def _has_room(self, ip: str, recent: set[str]) -> bool:
        if len(self._seats) >= self.max_total:
            return False
        if ip in recent:
            return True
        held_by_others = sum(1 for s in self._seats.values() if s.ip not in recent)
        return held_by_others < self.max_total - self.reserved

    def _victim(self, ip: str, recent: set[str], now: float) -> Hashable | None:
        """The unauthenticated connection to evict for a newcomer from ip, or None."""
        unauth = [(c, s) for c, s in self._seats.items() if not s.authenticated]
        # Never a recent address's handshake in progress for someone else: those
        # are members. Oldest first.
        others = [(c, s) for c, s in unauth if s.ip != ip and s.ip not in recent]
        if ip in recent:
            if others:
                return others[0][0]
            # Past the deadline, a handshake has failed: its thread is just late to notice.
            return next((c for c, s in unauth if now - s.since >= self.handshake_deadline), None)
        # Everyone else only takes seats from addresses that are not recent either,
        # so the reserved share stays theirs.
        for c, s in others:
            if now - s.since >= self.handshake_deadline:
                return c
        if not others:
            return None
        count: dict[str, int] = {}
        for _c, s in others:
            count[s.ip] = count.get(s.ip, 0) + 1
        heaviest = max(count, key=lambda a: count[a])
        own = sum(1 for _c, s in unauth if s.ip == ip)
        if count[heaviest] >= own + 2:
            return next(c for c, s in others if s.ip == heaviest)
        return None

    def _recent_ips(self, now: float) -> set[str]:
        """Addresses that authenticated within `remember`, or hold an authenticated connection now."""
        ips = {ip for ip, at in self._recent.items() if now - at < self.remember}
        ips.update(s.ip for s in self._seats.values() if s.authenticated)
        return ips

    def _remember(self, ip: str, now: float) -> None:
        self._recent.pop(ip, None)  # re-insert: the dict stays ordered oldest first
        self._recent[ip] = now
        while len(self._recent) > _MAX_REMEMBERED:
            del self._recent[next(iter(self._recent))]

    def _forget(self, now: float) -> None:
        for ip in [ip for ip, at in self._recent.items() if now - at >= self.remember]:
            del self._recent[ip]

    def _drop(self, conn: Hashable) -> None:
        seat = self._seats.pop(conn)
        self._per_ip[seat.ip] -= 1
        if not self._per_ip[seat.ip]:
            del self._per_ip[seat.ip]
