"""The peer table (homie.discovery.peers.PeerTable) with an injected clock: expiry,
goodbye, conflict marking."""

from __future__ import annotations

import threading

import pytest

from homie.discovery.peers import PeerTable, peer_from_heartbeat


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def hb(name: str, **extra) -> dict:
    return {"k": "hb", "name": name, "port": 5556, "status": "idle", "ram_free_gb": 3.5,
            "cpu_percent_idle": 90.0, "gpu": None, **extra}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def table(clock):
    return PeerTable(10.0, clock=clock)


def names(table) -> list[tuple[str, str]]:
    return [(p.name, p.ip) for p in table.snapshot()]


def test_update_records_fields_and_source_address(table, clock):
    peer, new = table.update(hb("mia", ip="6.6.6.6"), "10.0.0.2", "i1")
    assert new is True
    assert peer.ip == "10.0.0.2"  # the packet source, not anything in the body
    assert peer.last_seen == clock.t and peer.ram_free_gb == 3.5 and peer.port == 5556
    _, new = table.update(hb("mia"), "10.0.0.2", "i1")
    assert new is False
    assert names(table) == [("mia", "10.0.0.2")]


def test_expiry_after_timeout_not_before(table, clock):
    table.update(hb("mia"), "10.0.0.2", "i1")
    clock.advance(9.9)
    assert table.expire() == []
    assert names(table) == [("mia", "10.0.0.2")]
    clock.advance(0.2)
    gone = table.expire()
    assert [p.name for p in gone] == ["mia"]
    assert table.snapshot() == []
    assert table.expire() == []  # reported once


def test_heartbeat_refreshes_last_seen(table, clock):
    table.update(hb("mia"), "10.0.0.2", "i1")
    for _ in range(5):
        clock.advance(8)
        table.update(hb("mia"), "10.0.0.2", "i1")
        assert table.expire() == []
    clock.advance(10.5)
    assert [p.name for p in table.expire()] == ["mia"]


def test_expiry_is_per_peer(table, clock):
    table.update(hb("mia"), "10.0.0.2", "i1")
    clock.advance(6)
    table.update(hb("leo"), "10.0.0.3", "i2")
    clock.advance(5)
    assert [p.name for p in table.expire()] == ["mia"]
    assert names(table) == [("leo", "10.0.0.3")]


def test_goodbye_removes_at_once_and_late_heartbeat_does_not_revive(table, clock):
    table.update(hb("mia"), "10.0.0.2", "i1")
    peer = table.goodbye("i1")
    assert peer is not None and peer.name == "mia"
    assert table.snapshot() == []
    table.update(hb("mia"), "10.0.0.2", "i1")  # a heartbeat delayed past its goodbye
    assert table.snapshot() == []
    # the same machine restarted is a new instance, and is welcome
    _, new = table.update(hb("mia"), "10.0.0.2", "i1b")
    assert new and names(table) == [("mia", "10.0.0.2")]
    assert table.goodbye("unknown") is None


def test_conflict_marking(table, clock):
    table.update(hb("twin"), "10.0.0.2", "a")
    table.update(hb("solo"), "10.0.0.4", "c")
    assert not any(p.conflict for p in table.snapshot())
    table.update(hb("twin"), "10.0.0.3", "b")
    snap = {p.instance: p for p in table.snapshot()}
    assert len(snap) == 3  # both twins listed, not one replacing the other
    assert snap["a"].conflict and snap["b"].conflict and not snap["c"].conflict
    assert {p.ip for p in table.by_name("twin")} == {"10.0.0.2", "10.0.0.3"}
    # a refresh keeps both flagged
    clock.advance(1)
    table.update(hb("twin"), "10.0.0.2", "a")
    assert all(p.conflict for p in table.by_name("twin"))
    # one leaves by goodbye: the other is no longer a conflict
    table.goodbye("b")
    assert [(p.instance, p.conflict) for p in table.by_name("twin")] == [("a", False)]
    # again, then one expires
    table.update(hb("twin"), "10.0.0.3", "b2")
    assert all(p.conflict for p in table.by_name("twin"))
    clock.advance(9.5)
    table.update(hb("twin"), "10.0.0.3", "b2")
    table.update(hb("solo"), "10.0.0.4", "c")
    clock.advance(1)
    assert [p.instance for p in table.expire()] == ["a"]
    assert [(p.instance, p.conflict) for p in table.by_name("twin")] == [("b2", False)]


def test_renaming_a_peer_clears_conflict(table):
    table.update(hb("twin"), "10.0.0.2", "a")
    table.update(hb("twin"), "10.0.0.3", "b")
    table.update(hb("other"), "10.0.0.3", "b")  # same instance, new name
    assert not any(p.conflict for p in table.snapshot())


def test_version_bumps_and_wait_change(table, clock):
    v0 = table.version
    table.update(hb("mia"), "10.0.0.2", "i1")
    assert table.version > v0
    v1 = table.version
    assert table.expire() == [] and table.version == v1  # nothing changed, no bump

    got = []
    t = threading.Thread(target=lambda: got.append(table.wait_change(v1, 5.0)))
    t.start()
    table.goodbye("i1")
    t.join(5)
    assert got and got[0] > v1


def test_peer_from_heartbeat_ignores_junk_types():
    p = peer_from_heartbeat({"name": "x", "port": 1, "gpus": "nope", "karma": [1]}, "1.2.3.4", "i", 5.0)
    assert p.gpus == [] and p.karma == {} and p.last_seen == 5.0


def test_restarted_daemon_replaces_its_dead_instance(table, clock):
    """kill -9 sends no goodbye; the restarted daemon (new instance, same ip:port)
    replaces the dead one at once instead of showing as a name conflict."""
    table.update(hb("mia"), "10.0.0.2", "old")
    table.update(hb("leo"), "10.0.0.3", "leo")
    clock.advance(1)
    _, new = table.update(hb("mia"), "10.0.0.2", "new")
    assert new
    assert [(p.instance, p.conflict) for p in table.by_name("mia")] == [("new", False)]
    assert table.get("old") is None and table.get("leo") is not None
    # another daemon on the same machine but another port is a different peer
    table.update(hb("mia2", port=6000), "10.0.0.2", "other")
    assert {p.instance for p in table.snapshot()} == {"new", "leo", "other"}
    # a late packet of the dead instance does not bring it back (or swap them back)
    table.update(hb("mia"), "10.0.0.2", "old")
    assert [p.instance for p in table.by_name("mia")] == ["new"]
