"""The job server's connection gate (homie/admission.py): pure policy, a fake clock."""

from __future__ import annotations

import itertools
import random

import pytest

from homie.admission import ConnectionGate


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, s: float) -> None:
        self.t += s


_ids = itertools.count()


class Conn:
    """Stands in for a socket; the gate only hashes it."""

    def __init__(self, ip: str):
        self.ip = ip
        self.n = next(_ids)

    def __repr__(self) -> str:
        return f"<Conn {self.n} {self.ip}>"


@pytest.fixture
def clock():
    return Clock()


def gate(clock, **kw) -> ConnectionGate:
    return ConnectionGate(clock=clock, **kw)


def connect(g: ConnectionGate, ip: str):
    c = Conn(ip)
    return c, g.admit(ip, c)


def member(g: ConnectionGate, ip: str) -> None:
    """ip completes a handshake and hangs up: it is recently authenticated now."""
    c, d = connect(g, ip)
    assert d.admitted and d.victim is None, d
    assert g.authenticated(c)
    g.release(c)


def junk(g: ConnectionGate, ips: list[str], per_ip: int) -> list[Conn]:
    """Connections that never authenticate; returns those still seated, oldest first."""
    seated = []
    for ip in ips:
        for _ in range(per_ip):
            c, d = connect(g, ip)
            if d.admitted:
                seated.append(c)
            if d.victim in seated:
                seated.remove(d.victim)
    return seated


MEMBERS = [f"10.0.0.{i}" for i in range(1, 9)]
ATTACKERS = [f"10.0.9.{i}" for i in range(1, 5)]


# ---------------------------------------------------------------------------------- the plain caps


def test_admits_up_to_the_caps_and_release_frees_seats(clock):
    g = gate(clock, max_total=8, max_per_address=3, reserved=2)
    a = [connect(g, "a")[0] for _ in range(3)]
    c, d = connect(g, "a")
    assert not d.admitted and "this address" in d.reason
    assert g.held("a") == 3 and g.held() == 3
    g.release(a[0])
    assert connect(g, "a")[1].admitted
    # releasing twice (or an unknown connection) changes nothing
    g.release(a[0])
    g.release(Conn("zz"))
    assert g.held() == 3 and g.held("a") == 3


def test_unknown_addresses_never_take_the_reserved_seats(clock):
    g = gate(clock, max_total=8, max_per_address=8, reserved=3)
    seated = junk(g, ["x", "y"], 8)
    assert len(seated) == 5  # 8 seats - 3 reserved
    c, d = connect(g, "y")
    assert not d.admitted and d.victim is None and d.reason == "no free connection slot"
    # fresh addresses may displace some of it, but never grow past the share
    for i in range(20):
        junk(g, [f"z{i}"], 3)
        assert g.held() == 5


def test_reserved_must_leave_seats_for_everyone():
    with pytest.raises(ValueError):
        ConnectionGate(max_total=4, reserved=4)


# ---------------------------------------------------------------------------------- recent members


def test_a_recent_member_uses_the_reserved_seats(clock):
    g = gate(clock, max_total=8, max_per_address=8, reserved=3)
    member(g, "m")
    junk(g, ["x", "y"], 8)
    seats = [connect(g, "m") for _ in range(3)]
    assert all(d.admitted and d.victim is None for _c, d in seats)
    assert g.held() == 8


def test_a_full_gate_evicts_the_oldest_unauthenticated_for_a_recent_member(clock):
    g = gate(clock, max_total=6, max_per_address=6, reserved=2)
    member(g, "m")
    # the member fills the reserved share and authenticates one of them
    mine = [connect(g, "m")[0] for _ in range(2)]
    assert g.authenticated(mine[0])
    old = junk(g, ["x"], 2)
    clock.tick(0.5)
    newer = junk(g, ["y"], 2)
    assert g.held() == 6
    c, d = connect(g, "m")
    assert d.admitted and d.victim is old[0], d
    assert g.held() == 6 and g.held("x") == 1
    # the next one takes the next oldest, never an authenticated connection
    c2, d2 = connect(g, "m")
    assert d2.victim is old[1]
    c3, d3 = connect(g, "m")
    assert d3.victim is newer[0]
    assert mine[0] not in (d.victim, d2.victim, d3.victim)


def test_an_evicted_connection_learns_it_lost_its_seat(clock):
    g = gate(clock, max_total=2, max_per_address=2, reserved=1)
    member(g, "m")
    (x,) = junk(g, ["x"], 1)
    connect(g, "m")
    c, d = connect(g, "m")
    assert d.victim is x
    # its thread wakes up (the caller shut the socket down) or finishes its handshake late
    assert g.authenticated(x) is False
    g.release(x)  # harmless
    assert g.held() == 2 and g.held("x") == 0 and g.held("m") == 2


def test_authenticated_connections_are_never_evicted(clock):
    g = gate(clock, max_total=4, max_per_address=4, reserved=1)
    member(g, "m")
    member(g, "n")
    held = []
    for ip in ("a", "b", "c"):
        c, d = connect(g, ip)
        assert d.admitted
        assert g.authenticated(c)
        held.append(c)
    c, d = connect(g, "m")
    assert d.admitted and d.victim is None  # the reserved seat
    assert g.authenticated(c)
    c, d = connect(g, "n")
    assert not d.admitted and d.victim is None, "every connection is authenticated: nothing to evict"
    clock.tick(3600)
    c, d = connect(g, "z")
    assert not d.admitted


def test_a_recent_members_handshake_is_not_evicted_for_another(clock):
    g = gate(clock, max_total=3, max_per_address=3, reserved=1)
    member(g, "m")
    member(g, "n")
    pending = [connect(g, "m")[0] for _ in range(3)]
    c, d = connect(g, "n")
    assert not d.admitted, "n must not take m's handshakes in progress"
    clock.tick(2.0)  # past the handshake deadline they are stale: fair game for a member
    c, d = connect(g, "n")
    assert d.admitted and d.victim is pending[0]


def test_recent_means_within_remember_of_the_last_handshake(clock):
    g = gate(clock, max_total=4, max_per_address=4, reserved=2, remember=600)
    member(g, "m")
    clock.tick(599)
    assert g.is_recent("m")
    clock.tick(1)
    assert not g.is_recent("m")
    junk(g, ["x", "y"], 4)  # one each in the 2 unreserved seats
    c, d = connect(g, "m")
    assert not d.admitted, "forgotten: no more reserved seats or evictions for m"


def test_a_long_connection_keeps_its_address_recent_until_it_ends(clock):
    g = gate(clock, max_total=4, max_per_address=4, reserved=1, remember=600)
    job, d = connect(g, "m")
    assert g.authenticated(job)
    clock.tick(5000)  # a long job
    assert g.is_recent("m")
    g.release(job)
    clock.tick(599)
    assert g.is_recent("m")
    clock.tick(2)
    assert not g.is_recent("m")


def test_remembered_addresses_are_bounded(clock, monkeypatch):
    import homie.admission as admission

    monkeypatch.setattr(admission, "_MAX_REMEMBERED", 5)
    g = gate(clock, max_total=8, max_per_address=8, reserved=1)
    for i in range(10):
        member(g, f"m{i}")
    assert [g.is_recent(f"m{i}") for i in range(10)] == [False] * 5 + [True] * 5
    assert len(g._recent) == 5


# ---------------------------------------------------------------------------------- unknown newcomers


def test_stale_junk_gives_way_to_anyone(clock):
    g = gate(clock, max_total=4, max_per_address=4, reserved=1)
    seated = junk(g, ["x", "y", "z"], 1)
    assert len(seated) == 3
    c, d = connect(g, "w")
    assert not d.admitted, "their junk is within its handshake deadline"
    clock.tick(1.99)
    assert not connect(g, "w")[1].admitted
    clock.tick(0.01)
    c, d = connect(g, "w")
    assert d.admitted and d.victim is seated[0]


def test_a_fresh_address_gets_a_seat_from_the_heaviest_junk_address(clock):
    # A member unknown to this daemon (it just restarted): no reserved seats, but
    # junk from a few addresses must not starve it.
    g = gate(clock, max_total=64, max_per_address=16, reserved=16)
    seated = junk(g, ATTACKERS, 16)
    assert len(seated) == 48
    c, d = connect(g, "10.0.0.1")
    assert d.admitted and d.victim is seated[0], d
    # the attackers cannot take it back before the handshake: refused, not evicting
    for ip in ATTACKERS:
        assert not connect(g, ip)[1].admitted, ip
    assert g.authenticated(c)
    # once authenticated it is the member's: the seat it took is reopened to junk, but
    # the member's connection stays and junk holds no more than its share
    for ip in ATTACKERS:
        junk(g, [ip], 16)
    assert c in g._seats and g.held() == 49


def test_evenly_spread_junk_is_not_evicted_for_more_junk(clock):
    g = gate(clock, max_total=8, max_per_address=8, reserved=2)
    junk(g, ["a", "b", "c"], 2)
    for ip in "abc":
        c, d = connect(g, ip)
        assert not d.admitted
    # a fresh address may take one seat (from an address holding 2 >= 0 + 2)...
    c, d = connect(g, "d")
    assert d.admitted and d.victim is not None
    # ...but not a second one: the others hold no more than it does + 1
    c, d = connect(g, "d")
    assert not d.admitted


def test_a_non_member_never_evicts_from_a_recent_address(clock):
    g = gate(clock, max_total=4, max_per_address=4, reserved=1)
    member(g, "m")
    pending = [connect(g, "m")[0] for _ in range(4)]
    clock.tick(10)  # even stale: m is a member, its seats are not for strangers
    c, d = connect(g, "x")
    assert not d.admitted
    assert all(p in g._seats for p in pending)


# ---------------------------------------------------------------------------------- the incident


def test_junk_from_four_addresses_no_longer_stops_members_jobs(clock):
    """The finding: 64 idle connections from 4 addresses, reopened as soon as they
    closed, made 5 of 8 members' job connections fail. Members that sent a job in
    the last 10 minutes, and members unknown to this daemon, all get in now."""
    g = gate(clock)
    rng = random.Random(7)
    for ip in MEMBERS[:4]:
        member(g, ip)  # half the group used this machine recently
    clock.tick(30)
    seated = junk(g, ATTACKERS, 16)
    failures = []
    for round_ in range(50):
        clock.tick(0.1)
        # the attackers reopen whatever was closed (evicted or timed out), all the time
        for ip in ATTACKERS:
            while True:
                c, d = connect(g, ip)
                if not d.admitted:
                    break
                seated.append(c)
        # junk older than the handshake deadline is closed by its own thread
        for c in [c for c in seated if c in g._seats and clock() - g._seats[c].since >= 2.0]:
            g.release(c)
        # a member sends a job: one connection, handshake, the job, hang-up
        ip = rng.choice(MEMBERS)
        c, d = connect(g, ip)
        if not d.admitted:
            failures.append((round_, ip, d.reason))
            continue
        if d.victim is not None:
            g.release(d.victim)  # its thread wakes and leaves
        assert g.authenticated(c)
        g.release(c)
    assert not failures, failures


def test_many_threads_keep_the_counts_right(clock):
    import threading

    g = gate(clock, max_total=16, max_per_address=4, reserved=4)
    errors = []

    def worker(ip: str) -> None:
        try:
            for _ in range(300):
                c, d = connect(g, ip)
                if d.admitted:
                    g.authenticated(c)
                    g.release(c)
                if d.victim is not None:
                    g.release(d.victim)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(f"10.1.0.{i % 6}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert g.held() == 0 and all(g.held(f"10.1.0.{i}") == 0 for i in range(6))
