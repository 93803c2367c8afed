"""The dialer's idle connections: what a job hands back is the next job's to the same
peer, while it is at rest, fresh and silent; the rest are closed."""

from __future__ import annotations

import socket

import pytest

from homie.submit import dial
from homie.submit.dial import Dialer
from homie.wire import protocol


class FakeConv:
    def __init__(self, state=protocol.IDLE):
        self.state = state


class FakeChannel:
    def __init__(self, state=protocol.IDLE):
        self.sock, self.other = socket.socketpair()
        self.conv = FakeConv(state)
        self.closed = False
        self.sent: list[str] = []

    def send(self, t, **fields):
        self.sent.append(t)

    def close(self):
        self.closed = True
        self.sock.close()
        self.other.close()


@pytest.fixture
def dialer(monkeypatch):
    d = Dialer(trust=None)
    dialed: list[FakeChannel] = []

    def connect(ip, port, timeout=dial.CONNECT_TIMEOUT):
        ch = FakeChannel()
        dialed.append(ch)
        return ch

    monkeypatch.setattr(d, "connect", connect)
    monkeypatch.setattr(d, "_refill", lambda key: None)  # no background dialing here
    d.dialed = dialed  # type: ignore[attr-defined]
    return d


def test_a_connection_at_rest_is_the_next_jobs(dialer):
    first = dialer.connect_warm("10.0.0.2", 7777)
    dialer.give_back("10.0.0.2", 7777, first)
    assert dialer.connect_warm("10.0.0.2", 7777) is first
    # another peer, another pool
    assert dialer.connect_warm("10.0.0.3", 7777) is not first
    assert len(dialer.dialed) == 2


def test_a_connection_mid_conversation_is_closed(dialer):
    ch = FakeChannel(protocol.DOWNLOAD)
    dialer.give_back("10.0.0.2", 7777, ch)
    assert ch.closed
    assert dialer.connect_warm("10.0.0.2", 7777) is not ch


def test_a_connection_the_worker_spoke_on_or_closed_is_dropped(dialer):
    ch = FakeChannel()
    dialer.give_back("10.0.0.2", 7777, ch)
    ch.other.close()  # the worker went away: EOF to read
    assert dialer.connect_warm("10.0.0.2", 7777) is not ch
    assert ch.closed


def test_idle_connections_expire(dialer, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(dial.time, "monotonic", lambda: now[0])
    ch = FakeChannel()
    dialer.give_back("10.0.0.2", 7777, ch)
    now[0] += dial.SPARE_TTL + 1
    assert dialer.connect_warm("10.0.0.2", 7777) is not ch
    assert ch.closed


def test_a_few_per_peer_at_most(dialer):
    chans = [FakeChannel() for _ in range(dial.SPARES_PER_PEER + 2)]
    for ch in chans:
        dialer.give_back("10.0.0.2", 7777, ch)
    kept, extra = chans[:dial.SPARES_PER_PEER], chans[dial.SPARES_PER_PEER:]
    assert all(ch.closed and ch.sent == ["bye"] for ch in extra)
    assert not any(ch.closed for ch in kept)
    taken = [dialer.connect_warm("10.0.0.2", 7777) for _ in kept]
    assert taken == kept[::-1]  # the newest first
    assert not dialer.dialed
